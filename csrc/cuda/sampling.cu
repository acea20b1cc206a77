// CUDA adapters of the sampling family: validate, describe the rows and the per-row parameters, launch on the
// current stream.
#include <torch/library.h>

#include "../kernels/sampling_cluster.cuh"
#include "utils.cuh"

namespace flashinfer {
namespace {

// Four-element loads when every row of t starts on a boundary of four elements.
bool rows_vec4(const at::Tensor& t) {
  return t.size(1) % 4 == 0 && (t.size(0) <= 1 || t.stride(0) % 4 == 0) && addr(t) % (4 * t.element_size()) == 0;
}

// The kernels read per-row parameters as dense vectors; a strided one is copied (a few bytes a row).
template <typename V>
sampling::PerRow<V> per_row(const at::Tensor& dense, V val) {
  return {dense.defined() ? dense.data_ptr<V>() : nullptr, val};
}
at::Tensor dense(const std::optional<at::Tensor>& t) { return t ? t->contiguous() : at::Tensor(); }

// seed and offset (dense int64 [1] or [batch]) as the kernels read them.
sampling::PhiloxKeys philox_keys(const at::Tensor& seed, const at::Tensor& offset) {
  return {seed.data_ptr<int64_t>(), offset.data_ptr<int64_t>(), seed.size(0) == 1 ? 0 : 1,
          offset.size(0) == 1 ? 0 : 1};
}

std::tuple<at::Tensor, at::Tensor> sampling_from_probs_cuda(const at::Tensor& probs,
                                                            const std::optional<at::Tensor>& indices,
                                                            const std::optional<at::Tensor>& top_k, int64_t top_k_val,
                                                            const std::optional<at::Tensor>& top_p, double top_p_val,
                                                            const std::optional<at::Tensor>& min_p, double min_p_val,
                                                            const at::Tensor& seed, const at::Tensor& offset) {
  const char* op = "sampling_from_probs";
  check_sampling_rows(probs, "probs", true, op);
  if (indices) check_sample_indices(*indices, probs, op);
  const int64_t batch = indices ? indices->size(0) : probs.size(0);
  if (top_k) check_per_row(*top_k, "top_k", at::kInt, batch, probs, op);
  if (top_p) check_per_row(*top_p, "top_p", at::kFloat, batch, probs, op);
  if (min_p) check_per_row(*min_p, "min_p", at::kFloat, batch, probs, op);
  check_seed(seed, "seed", batch, probs, op);
  check_seed(offset, "offset", batch, probs, op);
  check_int32_range(batch, "batch_size", op);
  check_int32_range(probs.size(0), "probs rows", op);
  check_int32_range(top_k_val, "top_k", op);
  const c10::cuda::CUDAGuard guard(probs.device());
  auto out = at::empty({batch}, probs.options().dtype(at::kInt));
  auto valid = at::empty({batch}, probs.options().dtype(at::kBool));
  const at::Tensor idx = indices ? indices->to(at::kInt).contiguous() : at::Tensor();
  const at::Tensor k = dense(top_k), p_top = dense(top_p), p_min = dense(min_p);
  const at::Tensor s = seed.contiguous(), o = offset.contiguous();
  sampling::SampleParams p{};
  p.probs = probs.data_ptr<float>();
  p.stride = probs.stride(0);
  p.rows = (int)probs.size(0);
  p.vocab = (int)probs.size(1);
  p.indices = idx.defined() ? idx.data_ptr<int32_t>() : nullptr;
  p.top_k = per_row<int32_t>(k, (int32_t)top_k_val);
  p.top_p = per_row<float>(p_top, (float)top_p_val);
  p.min_p = per_row<float>(p_min, (float)min_p_val);
  p.keys = philox_keys(s, o);
  p.out = out.data_ptr<int32_t>();
  p.valid = valid.data_ptr<bool>();
  check_launch(sampling::launch_sample(p, (int)batch, rows_vec4(probs), c10::cuda::getCurrentCUDAStream()), op);
  return {out, valid};
}

template <sampling::Renorm kMode>
at::Tensor renorm_cuda(const at::Tensor& in, const std::optional<at::Tensor>& top_k, int64_t top_k_val,
                       const std::optional<at::Tensor>& top_p, double top_p_val, const char* name, const char* op) {
  check_sampling_rows(in, name, kMode != sampling::Renorm::kMaskLogits, op);
  if (top_k) check_per_row(*top_k, "top_k", at::kInt, in.size(0), in, op);
  if (top_p) check_per_row(*top_p, "top_p", at::kFloat, in.size(0), in, op);
  check_int32_range(in.size(0), "batch_size", op);
  check_int32_range(top_k_val, "top_k", op);
  const c10::cuda::CUDAGuard guard(in.device());
  auto out = at::empty(in.sizes(), in.options());
  const at::Tensor k = dense(top_k), p_top = dense(top_p);
  sampling::RenormParams p{};
  p.in = in.data_ptr();
  p.stride = in.stride(0);
  p.out = out.data_ptr();
  p.vocab = (int)in.size(1);
  p.top_k = per_row<int32_t>(k, (int32_t)top_k_val);
  p.top_p = per_row<float>(p_top, (float)top_p_val);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t err = cudaSuccess;
  if constexpr (kMode == sampling::Renorm::kMaskLogits) {
    FI_DISPATCH_FLOAT(in.scalar_type(), T,
                      { err = sampling::launch_renorm<kMode, T>(p, (int)in.size(0), rows_vec4(in), stream); });
  } else {  // probabilities are float32 (checked)
    err = sampling::launch_renorm<kMode, float>(p, (int)in.size(0), rows_vec4(in), stream);
  }
  check_launch(err, op);
  return out;
}

at::Tensor top_k_renorm_probs_cuda(const at::Tensor& probs, const std::optional<at::Tensor>& top_k,
                                   int64_t top_k_val) {
  return renorm_cuda<sampling::Renorm::kTopK>(probs, top_k, top_k_val, std::nullopt, 1.0, "probs",
                                              "top_k_renorm_probs");
}

at::Tensor top_p_renorm_probs_cuda(const at::Tensor& probs, const std::optional<at::Tensor>& top_p,
                                   double top_p_val) {
  return renorm_cuda<sampling::Renorm::kTopP>(probs, std::nullopt, 0, top_p, top_p_val, "probs",
                                              "top_p_renorm_probs");
}

at::Tensor top_k_mask_logits_cuda(const at::Tensor& logits, const std::optional<at::Tensor>& top_k,
                                  int64_t top_k_val) {
  return renorm_cuda<sampling::Renorm::kMaskLogits>(logits, top_k, top_k_val, std::nullopt, 1.0, "logits",
                                                    "top_k_mask_logits");
}

at::Tensor softmax_cuda(const at::Tensor& logits, const std::optional<at::Tensor>& temperature,
                        double temperature_val) {
  const char* op = "softmax";
  check_sampling_rows(logits, "logits", false, op);
  if (temperature) check_per_row(*temperature, "temperature", at::kFloat, logits.size(0), logits, op);
  check_int32_range(logits.size(0), "batch_size", op);
  const c10::cuda::CUDAGuard guard(logits.device());
  auto probs = at::empty(logits.sizes(), logits.options().dtype(at::kFloat));
  const at::Tensor t = dense(temperature);
  sampling::SoftmaxParams p{};
  p.logits = logits.data_ptr();
  p.stride = logits.stride(0);
  p.probs = probs.data_ptr<float>();
  p.vocab = (int)logits.size(1);
  p.temperature = per_row<float>(t, (float)temperature_val);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t err = cudaSuccess;
  FI_DISPATCH_FLOAT(logits.scalar_type(), T,
                    { err = sampling::launch_softmax<T>(p, (int)logits.size(0), rows_vec4(logits), stream); });
  check_launch(err, op);
  return probs;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> chain_speculative_sampling_cuda(const at::Tensor& draft_probs,
                                                                               const at::Tensor& draft_token_ids,
                                                                               const at::Tensor& target_probs,
                                                                               const at::Tensor& seed,
                                                                               const at::Tensor& offset) {
  const char* op = "chain_speculative_sampling";
  check_speculative_chain(draft_probs, draft_token_ids, target_probs, op);
  const int64_t batch = draft_probs.size(0), n = draft_probs.size(1);
  check_seed(seed, "seed", batch, draft_probs, op);
  check_seed(offset, "offset", batch, draft_probs, op);
  check_int32_range(batch, "batch_size", op);
  check_int32_range(n + 1, "num_speculate_tokens + 1", op);
  const c10::cuda::CUDAGuard guard(draft_probs.device());
  const at::Tensor draft = draft_probs.contiguous(), target = target_probs.contiguous();
  const at::Tensor ids = draft_token_ids.contiguous(), s = seed.contiguous(), o = offset.contiguous();
  auto out = at::empty({batch, n + 1}, ids.options());
  auto accepted = at::empty({batch}, ids.options());
  auto emitted = at::empty({batch}, ids.options());
  sampling::SpecParams p{};
  p.draft = draft.data_ptr<float>();
  p.draft_ids = ids.data_ptr<int32_t>();
  p.target = target.data_ptr<float>();
  p.n = (int)n;
  p.vocab = (int)draft.size(2);
  p.keys = philox_keys(s, o);
  p.out = out.data_ptr<int32_t>();
  p.accepted = accepted.data_ptr<int32_t>();
  p.emitted = emitted.data_ptr<int32_t>();
  // Four-element loads when every row of both tensors starts on a 16-byte boundary.
  const bool vec4 = p.vocab % 4 == 0 && addr(draft) % 16 == 0 && addr(target) % 16 == 0;
  check_launch(sampling::launch_chain_speculative(p, (int)batch, vec4, c10::cuda::getCurrentCUDAStream()), op);
  return {out, accepted, emitted};
}

}  // namespace

TORCH_LIBRARY_IMPL(flashinfer, CUDA, m) {
  m.impl("softmax", &softmax_cuda);
  m.impl("sampling_from_probs", &sampling_from_probs_cuda);
  m.impl("top_k_renorm_probs", &top_k_renorm_probs_cuda);
  m.impl("top_p_renorm_probs", &top_p_renorm_probs_cuda);
  m.impl("top_k_mask_logits", &top_k_mask_logits_cuda);
  m.impl("chain_speculative_sampling", &chain_speculative_sampling_cuda);
}

}  // namespace flashinfer
