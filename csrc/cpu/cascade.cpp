// CPU implementations of the attention-state merges, in fp32 like the CUDA kernel (kernels/cascade.cuh has the
// math): weights 2^(s - max s), a row whose states are all -inf merges to 0 and -inf.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>
#include <utility>

#include "../checks.h"

namespace flashinfer {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// States stacked on dim 1: v [seq, N, H, D], s [seq, N, H] -> (v [seq, H, D] in v's dtype, s [seq, H]).
std::pair<at::Tensor, at::Tensor> merge_stacked(const at::Tensor& v, const at::Tensor& s) {
  if (s.size(1) == 0) {
    return {at::zeros({v.size(0), v.size(2), v.size(3)}, v.options()),
            at::full({s.size(0), s.size(2)}, kNegInf, s.options())};
  }
  const at::Tensor m = std::get<0>(s.max(1));
  const at::Tensor m_safe = at::where(at::isneginf(m), at::zeros_like(m), m);  // all -inf: every weight 0
  const at::Tensor w = at::exp2(s - m_safe.unsqueeze(1));
  const at::Tensor den = w.sum(1);
  const at::Tensor some = den > 0;
  const at::Tensor acc = (w.unsqueeze(-1) * v.to(at::kFloat)).sum(1);
  const at::Tensor v_out = at::where(some.unsqueeze(-1), acc / den.unsqueeze(-1), at::zeros_like(acc));
  const at::Tensor s_out = at::where(some, m_safe + at::log2(den), at::full_like(den, kNegInf));
  return {v_out.to(v.scalar_type()), s_out};
}

std::tuple<at::Tensor, at::Tensor> merge_state_cpu(const at::Tensor& v_a, const at::Tensor& s_a,
                                                   const at::Tensor& v_b, const at::Tensor& s_b) {
  const char* op = "merge_state";
  check_state(v_a, "v_a", s_a, "s_a", op);
  check_state_like(v_b, "v_b", s_b, "s_b", v_a, "v_a", op);
  return merge_stacked(at::stack({v_a, v_b}, 1), at::stack({s_a, s_b}, 1));
}

void merge_state_in_place_cpu(at::Tensor& v, at::Tensor& s, const at::Tensor& v_other, const at::Tensor& s_other,
                              const std::optional<at::Tensor>& mask) {
  const char* op = "merge_state_in_place";
  check_state(v, "v", s, "s", op);
  check_state_like(v_other, "v_other", s_other, "s_other", v, "v", op);
  if (mask) check_state_mask(*mask, v, op);
  auto [v_new, s_new] = merge_stacked(at::stack({v, v_other}, 1), at::stack({s, s_other}, 1));
  if (mask) {
    v_new = at::where(mask->view({-1, 1, 1}), v_new, v);
    s_new = at::where(mask->view({-1, 1}), s_new, s);
  }
  v.copy_(v_new);
  s.copy_(s_new);
}

std::tuple<at::Tensor, at::Tensor> merge_states_cpu(const at::Tensor& v, const at::Tensor& s) {
  check_states(v, s, "merge_states");
  return merge_stacked(v, s);
}

}  // namespace

TORCH_LIBRARY_IMPL(flashinfer, CPU, m) {
  m.impl("merge_state", &merge_state_cpu);
  m.impl("merge_state_in_place", &merge_state_in_place_cpu);
  m.impl("merge_states", &merge_states_cpu);
}

}  // namespace flashinfer
