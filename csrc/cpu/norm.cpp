// CPU implementations of the norm family, built from ATen ops in fp32 (the CUDA kernels' precision).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"

namespace flashinfer {
namespace {

at::Tensor rms_scaled(const at::Tensor& x, const at::Tensor& weight, double eps, bool gemma) {
  auto rstd = at::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps);
  auto w = weight.to(at::kFloat);
  return x * rstd * (gemma ? w + 1 : w);
}

void rmsnorm_out_cpu(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight, double eps, bool gemma) {
  const char* op = "rmsnorm";
  check_norm_input(input, op);
  check_param_vector(weight, "weight", input, op);
  check_out(out, "out", input, "input", input.sizes(), op);
  out.copy_(rms_scaled(input.to(at::kFloat), weight, eps, gemma));
}

at::Tensor rmsnorm_cpu(const at::Tensor& input, const at::Tensor& weight, double eps, bool gemma) {
  auto out = at::empty(input.sizes(), input.options());
  rmsnorm_out_cpu(out, input, weight, eps, gemma);
  return out;
}

void fused_add_rmsnorm_cpu(at::Tensor& input, at::Tensor& residual, const at::Tensor& weight, double eps,
                           bool gemma) {
  const char* op = "fused_add_rmsnorm";
  check_norm_input(input, op);
  check_fused_add(input, residual, op);
  check_param_vector(weight, "weight", input, op);
  // The sum is normalised before rounding, as on CUDA; the residual stream keeps the rounded sum.
  auto sum = input.to(at::kFloat) + residual.to(at::kFloat);
  residual.copy_(sum);
  input.copy_(rms_scaled(sum, weight, eps, gemma));
}

at::Tensor layernorm_cpu(const at::Tensor& input, const at::Tensor& gamma, const at::Tensor& beta, double eps) {
  const char* op = "layernorm";
  check_norm_input(input, op);
  check_param_vector(gamma, "gamma", input, op);
  check_param_vector(beta, "beta", input, op);
  check_same_dtype(beta, "beta", gamma, "gamma", op);
  auto x = input.to(at::kFloat);
  auto mean = x.mean(-1, true);
  auto var = (x - mean).pow(2).mean(-1, true);
  auto y = (x - mean) * at::rsqrt(var + eps) * gamma.to(at::kFloat) + beta.to(at::kFloat);
  auto out = at::empty(input.sizes(), input.options());
  out.copy_(y);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(flashinfer, CPU, m) {
  m.impl("rmsnorm", &rmsnorm_cpu);
  m.impl("rmsnorm_out", &rmsnorm_out_cpu);
  m.impl("fused_add_rmsnorm", &fused_add_rmsnorm_cpu);
  m.impl("layernorm", &layernorm_cpu);
}

}  // namespace flashinfer
