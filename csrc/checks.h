// Argument validation shared by the CPU and CUDA implementations, so both reject bad input with the same
// message: every message starts with the op name and names the argument and what was expected.
// Definitions are in checks.cpp (see there for why nothing here is inline).
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "kernels/common/row_layout.h"

namespace flashinfer {

// ---- generic ----
void check_float_dtype(const at::Tensor& t, const char* name, const char* op);
void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name,
                       const char* op);
void check_same_dtype(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name,
                      const char* op);
void check_dim(const at::Tensor& t, int64_t dim, const char* name, const char* op);
// A per-feature parameter vector (norm weight / bias): 1-D of length `hidden`, the input's dtype or fp32.
void check_param_vector(const at::Tensor& p, const char* name, const at::Tensor& input, const char* op);
// An output tensor supplied by the caller: the expected shape, dtype and device of `ref`.
void check_out(const at::Tensor& out, const char* name, const at::Tensor& ref, const char* ref_name,
               at::IntArrayRef expected_sizes, const char* op);
void check_int32_vector(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* op);

// ---- norm / activation ----
void check_norm_input(const at::Tensor& input, const char* op);
void check_fused_add(const at::Tensor& input, const at::Tensor& residual, const char* op);
// Gated activations read [..., 2d] and write [..., d]; returns the output shape.
std::vector<int64_t> check_gated_input(const at::Tensor& input, const char* op);

// ---- rope ----
// q [nnz, Hq, D] and k [nnz, Hk, D]; rotary_dim even in (0, D].
void check_rope_qk(const at::Tensor& q, const at::Tensor& k, int64_t rotary_dim, const char* op);
void check_positions(const at::Tensor& pos, const char* name, const at::Tensor& q, const char* op);
void check_ragged(const at::Tensor& indptr, const at::Tensor& offsets, const at::Tensor& q, const char* op);
// query/key of the cos/sin-cache form: [nnz, H * head_size] or [nnz, H, head_size]; returns the 3-D view.
at::Tensor heads_view(const at::Tensor& t, const char* name, int64_t head_size, const char* op);
void check_cos_sin_cache(const at::Tensor& cache, const at::Tensor& q, const char* op);
void check_rope_freq(double rope_scale, double rope_theta, const char* op);

// Llama 3.1 frequency smoothing as a linear ramp in the frequency: smooth = clamp(freq * a + b, 0, 1), then
// freq' = (1 - smooth) * freq / scale + smooth * freq. Equivalent to the wavelength bands of the Llama 3.1
// recipe (low-frequency band scaled, high-frequency band kept, a linear blend between).
struct Llama31Smoothing {
  double a, b;
};
Llama31Smoothing llama31_smoothing(double low_freq_factor, double high_freq_factor, double old_context_len,
                                   const char* op);

// ---- page ----
// The paged cache as K and V views in logical [num_pages, page_size, heads, head_dim] order (permuted views of
// HND storage; the two halves of a 5-D [P, 2, ...] cache). Checked against the appended key/value.
struct PagedKV {
  at::Tensor k, v;
  int64_t page_size;
};
PagedKV paged_kv_views(const at::Tensor& k_cache, const std::optional<at::Tensor>& v_cache,
                       const std::string& kv_layout, const char* op);
void check_paged_tables(const PagedKV& cache, const at::Tensor& kv_indices, const at::Tensor& kv_indptr,
                        const at::Tensor& kv_last_page_len, const at::Tensor& ref, const char* ref_name,
                        const char* op);
void check_append(const at::Tensor& key, const at::Tensor& value, const at::Tensor& batch_indices,
                  const at::Tensor& positions, const PagedKV& cache, const at::Tensor& kv_indices,
                  const at::Tensor& kv_indptr, const at::Tensor& kv_last_page_len, const char* op);
void check_page_table(const at::Tensor& indptr, const char* indptr_name, const at::Tensor& per_request,
                      const char* per_request_name, const char* op);

// ---- attention (decode, prefill) ----
// Token positions are 32-bit in the CUDA kernels; both devices accept the same inputs, so the limit is checked
// here for both: a paged cache addresses fewer than 2^31 tokens (kv_indices.size(0) * page_size), a ragged one
// holds at most 2^31 - 257 rows (the ragged loader adds a thread's row within a tile to the slice's first row).

// ---- decode ----
// A whole decode call: q [batch, num_qo_heads, head_dim] (fp16/bf16) against a paged cache of q's dtype or fp8,
// head_dim 64/128/256, num_qo_heads a multiple of num_kv_heads, consistent page tables, backend "auto",
// "tensor_core" or "cuda_core". Returns the cache's K/V views.
PagedKV check_decode(const at::Tensor& q, const at::Tensor& k_cache, const std::optional<at::Tensor>& v_cache,
                     const at::Tensor& kv_indptr, const at::Tensor& kv_indices, const at::Tensor& kv_last_page_len,
                     const std::string& kv_layout, const std::string& backend, const char* op);

// ---- prefill ----
// A whole prefill call: q [total_q, Hq, D] (fp16/bf16) against KV of q's dtype; qo_indptr int32 [batch + 1]; a
// packed custom mask (uint8) comes with mask_indptr int32 [batch + 1]. The paged form returns the cache's views,
// the ragged one K/V as [total_kv, num_kv_heads, head_dim] (transposed views of HND storage).
PagedKV check_paged_prefill(const at::Tensor& q, const at::Tensor& qo_indptr, const at::Tensor& k_cache,
                            const std::optional<at::Tensor>& v_cache, const at::Tensor& kv_indptr,
                            const at::Tensor& kv_indices, const at::Tensor& kv_last_page_len,
                            const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& mask_indptr,
                            const std::string& kv_layout, const char* op);
std::pair<at::Tensor, at::Tensor> check_ragged_prefill(const at::Tensor& q, const at::Tensor& qo_indptr,
                                                       const at::Tensor& k, const at::Tensor& v,
                                                       const at::Tensor& kv_indptr,
                                                       const std::optional<at::Tensor>& mask,
                                                       const std::optional<at::Tensor>& mask_indptr,
                                                       const std::string& kv_layout, const char* op);

// ---- cascade ----
// An attention state: v [seq, H, D] (float16 / bfloat16 / float32) and s [seq, H] float32 on v's device. With
// `like`, a second state (or an in-place merge's other state) must have the first one's shape, dtype and device.
void check_state(const at::Tensor& v, const char* v_name, const at::Tensor& s, const char* s_name, const char* op);
void check_state_like(const at::Tensor& v, const char* v_name, const at::Tensor& s, const char* s_name,
                      const at::Tensor& ref_v, const char* ref_name, const char* op);
// merge_state_in_place's optional mask: bool [seq] on v's device.
void check_state_mask(const at::Tensor& mask, const at::Tensor& v, const char* op);
// merge_states: v [seq, num_states, H, D] and s [seq, num_states, H] float32.
void check_states(const at::Tensor& v, const at::Tensor& s, const char* op);

// ---- sampling ----
// A batch of distributions: 2-D [rows, vocab], 1 <= vocab < 2^24, last dim contiguous; probs float32, logits
// float16 / bfloat16 / float32 (`probs_only`).
void check_sampling_rows(const at::Tensor& t, const char* name, bool probs_only, const char* op);
// A per-row parameter: 1-D [batch] of `dtype` on ref's device.
void check_per_row(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t batch,
                   const at::Tensor& ref, const char* op);
// Draw indices: 1-D int32 / int64 on ref's device. Seed / offset: 1-D int64 of length 1 or batch.
void check_sample_indices(const at::Tensor& indices, const at::Tensor& ref, const char* op);
void check_seed(const at::Tensor& t, const char* name, int64_t batch, const at::Tensor& ref, const char* op);
// chain_speculative_sampling's draft_probs [batch, n, vocab], draft_token_ids [batch, n] and target_probs
// [batch, n + 1, vocab].
void check_speculative_chain(const at::Tensor& draft_probs, const at::Tensor& draft_token_ids,
                             const at::Tensor& target_probs, const char* op);

// ---- layouts and failures of the CUDA adapters ----
// Leading dims of a [..., D] tensor collapsed to at most two (size, stride) levels; nullopt when the last dim
// is strided or more levels are needed.
std::optional<RowLayout> row_layout(const at::Tensor& t);
// Inputs that cannot be addressed in place are copied once (exotic layouts only).
at::Tensor rows_readable(const at::Tensor& t);
// Tensors written in place must be addressable as they are.
RowLayout rows_writable(const at::Tensor& t, const char* name, const char* op);
void check_last_dim_contiguous(const at::Tensor& t, const char* name, const char* op);
void check_int32_range(int64_t value, const char* what, const char* op);
void check_condition(bool ok, const char* op, const char* message);
[[noreturn]] void fail_launch(const char* op, const char* error);
[[noreturn]] void fail_dtype(const char* op, at::ScalarType dtype);

}  // namespace flashinfer
