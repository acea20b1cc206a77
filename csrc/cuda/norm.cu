// CUDA adapters of the norm family: validate, describe the rows, pick the vector width, launch.
#include <torch/library.h>

#include "../kernels/norm.cuh"
#include "utils.cuh"

namespace flashinfer {
namespace {

using norm::Kind;

// out/residual may be the input (fused add writes `input` in place).
// `out_name` names the written tensor in errors: "out", or "input" for the fused variant that rewrites it.
template <Kind K>
void launch_norm(const char* op, const char* out_name, const at::Tensor& out, const at::Tensor& input,
                 const at::Tensor* residual, const at::Tensor& weight, const at::Tensor* bias, double eps,
                 bool gemma) {
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t hidden = input.size(-1);
  check_int32_range(hidden, "hidden size", op);
  norm::Params p{};
  p.out = out.data_ptr();
  p.in = input.data_ptr();
  p.weight = weight.data_ptr();
  p.bias = bias ? bias->data_ptr() : nullptr;
  p.residual = residual ? residual->data_ptr() : nullptr;
  p.out_layout = rows_writable(out, out_name, op);
  p.in_layout = rows_writable(input, "input", op);
  p.res_layout = residual ? rows_writable(*residual, "residual", op) : RowLayout{1, 0, 0};
  p.hidden = (int)hidden;
  p.rows = hidden == 0 ? 0 : input.numel() / hidden;
  p.eps = (float)eps;
  p.weight_offset = gemma ? 1.f : 0.f;

  int vec = widest_vec(input.element_size(), hidden,
                       {addr(input), addr(out), residual ? addr(*residual) : 0},
                       {p.in_layout.stride0, p.in_layout.stride1, p.out_layout.stride0, p.out_layout.stride1,
                        p.res_layout.stride0, p.res_layout.stride1});
  const uint64_t wbytes = weight.element_size();
  while (vec > 1 && (addr(weight) % (vec * wbytes) || (bias && addr(*bias) % (vec * wbytes)))) vec /= 2;

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t err = cudaSuccess;
  FI_DISPATCH_FLOAT(input.scalar_type(), T, {
    if (weight.scalar_type() == at::kFloat) {
      err = norm::launch<T, float, K>(p, vec, stream);
    } else {
      err = norm::launch<T, T, K>(p, vec, stream);
    }
  });
  check_launch(err, op);
}

void rmsnorm_out_cuda(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight, double eps, bool gemma) {
  const char* op = "rmsnorm";
  check_norm_input(input, op);
  check_param_vector(weight, "weight", input, op);
  check_out(out, "out", input, "input", input.sizes(), op);
  launch_norm<Kind::kRms>(op, "out", out, rows_readable(input), nullptr, weight.contiguous(), nullptr, eps, gemma);
}

at::Tensor rmsnorm_cuda(const at::Tensor& input, const at::Tensor& weight, double eps, bool gemma) {
  auto out = at::empty(input.sizes(), input.options());
  rmsnorm_out_cuda(out, input, weight, eps, gemma);
  return out;
}

void fused_add_rmsnorm_cuda(at::Tensor& input, at::Tensor& residual, const at::Tensor& weight, double eps,
                            bool gemma) {
  const char* op = "fused_add_rmsnorm";
  check_norm_input(input, op);
  check_fused_add(input, residual, op);
  check_param_vector(weight, "weight", input, op);
  launch_norm<Kind::kFusedAddRms>(op, "input", input, input, &residual, weight.contiguous(), nullptr, eps, gemma);
}

at::Tensor layernorm_cuda(const at::Tensor& input, const at::Tensor& gamma, const at::Tensor& beta, double eps) {
  const char* op = "layernorm";
  check_norm_input(input, op);
  check_param_vector(gamma, "gamma", input, op);
  check_param_vector(beta, "beta", input, op);
  check_same_dtype(beta, "beta", gamma, "gamma", op);
  auto out = at::empty(input.sizes(), input.options());
  const at::Tensor b = beta.contiguous();
  launch_norm<Kind::kLayer>(op, "out", out, rows_readable(input), nullptr, gamma.contiguous(), &b, eps, false);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(flashinfer, CUDA, m) {
  m.impl("rmsnorm", &rmsnorm_cuda);
  m.impl("rmsnorm_out", &rmsnorm_out_cuda);
  m.impl("fused_add_rmsnorm", &fused_add_rmsnorm_cuda);
  m.impl("layernorm", &layernorm_cuda);
}

}  // namespace flashinfer
