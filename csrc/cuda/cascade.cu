// CUDA adapters of the attention-state merges: validate, describe the states' strides, pick the vector width,
// launch on the current stream.
#include <torch/library.h>

#include "../kernels/cascade.cuh"
#include "utils.cuh"

namespace flashinfer {
namespace {

// v [seq, N, H, D] (N = 1 for a single [seq, H, D] state: a unit dim inserted) and s [seq, N, H]. Inputs read
// with a strided last dim are copied once; everything else is read in place.
cascade::States describe(const at::Tensor& v, const at::Tensor& s) {
  const at::Tensor v4 = v.dim() == 3 ? v.unsqueeze(1) : v, s3 = s.dim() == 2 ? s.unsqueeze(1) : s;
  return {v4.data_ptr(), s3.data_ptr<float>(), v4.stride(0), v4.stride(1), v4.stride(2),
          s3.stride(0),  s3.stride(1),         s3.stride(2), (int)v4.size(1)};
}

// Unlike rows_readable, any leading strides are kept: the kernels address v by (row, state, head) strides.
at::Tensor last_dim_unit(const at::Tensor& t) { return t.size(-1) <= 1 || t.stride(-1) == 1 ? t : t.contiguous(); }

// Merges the states of p.in into out_v / out_s (the first state's own tensors for the in-place form). An unused
// p.in[1] is all zeros, which every alignment test passes.
void launch_merge(cascade::Params& p, const at::Tensor& out_v, const at::Tensor& out_s, const char* op) {
  const c10::cuda::CUDAGuard guard(out_v.device());
  check_int32_range(out_v.size(0) * out_v.size(1), "seq_len * num_heads", op);
  check_int32_range(out_v.size(2), "head_dim", op);
  p.v_out = out_v.data_ptr();
  p.s_out = out_s.data_ptr<float>();
  p.vo_seq = out_v.stride(0), p.vo_head = out_v.stride(1);
  p.so_seq = out_s.stride(0), p.so_head = out_s.stride(1);
  p.pairs = (uint32_t)(out_v.size(0) * out_v.size(1));
  p.heads = FastDiv((uint32_t)std::max<int64_t>(out_v.size(1), 1));
  p.head_dim = (int)out_v.size(2);
  const cascade::States &a = p.in[0], &b = p.in[1];
  const int vec = widest_vec((int)out_v.element_size(), p.head_dim,
                             {addr(out_v), reinterpret_cast<uint64_t>(a.v), reinterpret_cast<uint64_t>(b.v)},
                             {p.vo_seq, p.vo_head, a.v_seq, a.v_state, a.v_head, b.v_seq, b.v_state, b.v_head});
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t err = cudaSuccess;
  const int sms = sm_count(out_v.get_device());
  FI_DISPATCH_FLOAT(out_v.scalar_type(), T, { err = cascade::launch<T>(p, vec, sms, stream); });
  check_launch(err, op);
}

std::tuple<at::Tensor, at::Tensor> merge_state_cuda(const at::Tensor& v_a_in, const at::Tensor& s_a,
                                                    const at::Tensor& v_b_in, const at::Tensor& s_b) {
  const char* op = "merge_state";
  check_state(v_a_in, "v_a", s_a, "s_a", op);
  check_state_like(v_b_in, "v_b", s_b, "s_b", v_a_in, "v_a", op);
  const at::Tensor v_a = last_dim_unit(v_a_in), v_b = last_dim_unit(v_b_in);
  auto v = at::empty(v_a.sizes(), v_a.options());
  auto s = at::empty(s_a.sizes(), s_a.options());
  cascade::Params p{};
  p.in[0] = describe(v_a, s_a);
  p.in[1] = describe(v_b, s_b);
  launch_merge(p, v, s, op);
  return {v, s};
}

void merge_state_in_place_cuda(at::Tensor& v, at::Tensor& s, const at::Tensor& v_other_in,
                               const at::Tensor& s_other, const std::optional<at::Tensor>& mask) {
  const char* op = "merge_state_in_place";
  check_state(v, "v", s, "s", op);
  check_state_like(v_other_in, "v_other", s_other, "s_other", v, "v", op);
  check_last_dim_contiguous(v, "v", op);
  if (mask) check_state_mask(*mask, v, op);
  const at::Tensor v_other = last_dim_unit(v_other_in);
  const at::Tensor flags = mask ? mask->contiguous() : at::Tensor();
  cascade::Params p{};
  p.in[0] = describe(v, s);
  p.in[1] = describe(v_other, s_other);
  p.mask = mask ? flags.data_ptr<bool>() : nullptr;
  launch_merge(p, v, s, op);
}

std::tuple<at::Tensor, at::Tensor> merge_states_cuda(const at::Tensor& v_in, const at::Tensor& s_in) {
  const char* op = "merge_states";
  check_states(v_in, s_in, op);
  const at::Tensor v_all = last_dim_unit(v_in);
  auto v = at::empty({v_all.size(0), v_all.size(2), v_all.size(3)}, v_all.options());
  auto s = at::empty({s_in.size(0), s_in.size(2)}, s_in.options());
  check_int32_range(v_all.size(1), "num_states", op);
  cascade::Params p{};
  p.in[0] = describe(v_all, s_in);
  launch_merge(p, v, s, op);
  return {v, s};
}

}  // namespace

TORCH_LIBRARY_IMPL(flashinfer, CUDA, m) {
  m.impl("merge_state", &merge_state_cuda);
  m.impl("merge_state_in_place", &merge_state_in_place_cuda);
  m.impl("merge_states", &merge_states_cuda);
}

}  // namespace flashinfer
