// The one schema block of the library: every torch.ops.flashinfer op, one comment each. Implementations
// register per backend in csrc/cpu/<family>.cpp and csrc/cuda/<family>.cu; fakes live in meta_kernels/.
// Mutated arguments are annotated (a!) and mutating ops return (); outputs of functional ops are new,
// contiguous tensors.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(flashinfer, m) {
  const std::vector<at::Tag> tags = {at::Tag::pt2_compliant_tag};

  // ---- norm: rows of [..., hidden], statistics in fp32 ----
  // RMSNorm: out = x / sqrt(mean(x^2) + eps) * w (Gemma: * (w + 1)).
  m.def("rmsnorm(Tensor input, Tensor weight, float eps, bool gemma) -> Tensor", tags);
  // RMSNorm into a caller-provided output.
  m.def("rmsnorm_out(Tensor(a!) out, Tensor input, Tensor weight, float eps, bool gemma) -> ()", tags);
  // residual += input; input = rmsnorm(residual), both in place.
  m.def("fused_add_rmsnorm(Tensor(a!) input, Tensor(b!) residual, Tensor weight, float eps, bool gemma) -> ()",
        tags);
  // LayerNorm with affine gamma/beta (input dtype or fp32).
  m.def("layernorm(Tensor input, Tensor gamma, Tensor beta, float eps) -> Tensor", tags);

  // ---- activation: [..., 2d] -> [..., d], act(gate) * up ----
  m.def("silu_and_mul(Tensor input) -> Tensor", tags);
  m.def("silu_and_mul_out(Tensor(a!) out, Tensor input) -> ()", tags);
  m.def("gelu_and_mul(Tensor input) -> Tensor", tags);  // exact (erf) GELU
  m.def("gelu_and_mul_out(Tensor(a!) out, Tensor input) -> ()", tags);
  m.def("gelu_tanh_and_mul(Tensor input) -> Tensor", tags);  // tanh-approximated GELU
  m.def("gelu_tanh_and_mul_out(Tensor(a!) out, Tensor input) -> ()", tags);

  // ---- rope: q [nnz, Hq, D], k [nnz, Hk, D]; dims [0, rotary_dim) rotated, the rest kept ----
  // Ragged batch: token t of request b sits at position offsets[b] + t - indptr[b]. llama31 selects the
  // Llama 3.1 frequency smoothing (low/high_freq_factor, old_context_len).
  m.def(
      "apply_rope(Tensor q, Tensor k, Tensor indptr, Tensor offsets, int rotary_dim, bool interleave, "
      "float rope_scale, float rope_theta, bool llama31, float low_freq_factor, float high_freq_factor, "
      "float old_context_len) -> (Tensor, Tensor)",
      tags);
  m.def(
      "apply_rope_inplace(Tensor(a!) q, Tensor(b!) k, Tensor indptr, Tensor offsets, int rotary_dim, "
      "bool interleave, float rope_scale, float rope_theta, bool llama31, float low_freq_factor, "
      "float high_freq_factor, float old_context_len) -> ()",
      tags);
  // Explicit position per token (int32 or int64).
  m.def(
      "apply_rope_pos_ids(Tensor q, Tensor k, Tensor pos_ids, int rotary_dim, bool interleave, float rope_scale, "
      "float rope_theta, bool llama31, float low_freq_factor, float high_freq_factor, float old_context_len) "
      "-> (Tensor, Tensor)",
      tags);
  m.def(
      "apply_rope_pos_ids_inplace(Tensor(a!) q, Tensor(b!) k, Tensor pos_ids, int rotary_dim, bool interleave, "
      "float rope_scale, float rope_theta, bool llama31, float low_freq_factor, float high_freq_factor, "
      "float old_context_len) -> ()",
      tags);
  // vLLM/SGLang form: query/key [nnz, H * head_size] or [nnz, H, head_size]; cos_sin_cache fp32
  // [max_pos, rotary_dim] (cos | sin); is_neox=False rotates interleaved pairs.
  m.def(
      "apply_rope_with_cos_sin_cache(Tensor positions, Tensor query, Tensor key, int head_size, "
      "Tensor cos_sin_cache, bool is_neox) -> (Tensor, Tensor)",
      tags);
  m.def(
      "apply_rope_with_cos_sin_cache_inplace(Tensor positions, Tensor(a!) query, Tensor(b!) key, int head_size, "
      "Tensor cos_sin_cache, bool is_neox) -> ()",
      tags);

  // ---- page: paged KV cache, one 5-D [P, 2, page, Hkv, D] (NHD) / [P, 2, Hkv, page, D] (HND) tensor, or K and
  // V as two 4-D tensors (then paged_v_cache is given). int32 page tables; out-of-range entries are skipped. ----
  // Writes append_key/value [nnz, Hkv, D]: token i to request batch_indices[i] at position positions[i].
  // flexible_layout: it takes any strides, and Inductor then realizes an input once for all its users instead of
  // copying it into an exact-stride buffer per call (a decode step's arange(batch) before every layer's append).
  m.def(
      "append_paged_kv_cache(Tensor append_key, Tensor append_value, Tensor batch_indices, Tensor positions, "
      "Tensor(a!) paged_k_cache, Tensor(b!)? paged_v_cache, Tensor kv_indices, Tensor kv_indptr, "
      "Tensor kv_last_page_len, str kv_layout) -> ()",
      {at::Tag::pt2_compliant_tag, at::Tag::flexible_layout});
  // (request, position) of each of nnz appended tokens; -1, -1 for tokens past append_indptr[-1].
  m.def("get_batch_indices_positions(Tensor append_indptr, Tensor seq_lens, int nnz) -> (Tensor, Tensor)", tags);
  // KV length of each request: page_size * (pages - 1) + last_page_len.
  m.def("get_seq_lens(Tensor kv_indptr, Tensor kv_last_page_len, int page_size) -> Tensor", tags);

  // ---- decode: one query token per request against its paged KV ----
  // q [B, Hq, D] -> (out [B, Hq, D], lse [B, Hq] fp32, log base 2). Softmax over sm_scale * q.k * k_scale
  // (soft-capped when logits_soft_cap > 0, only the last window_left + 1 keys when window_left >= 0; RoPE on
  // q at kv_len - 1 and on k at 0..kv_len-1 when rope_llama); values scaled by v_scale. Empty request: 0, -inf.
  // backend: "auto" (tensor cores, which take every case), "tensor_core" (the same, asked for explicitly) or
  // "cuda_core"; every backend gives the same result within rounding.
  m.def(
      "batch_decode_with_paged_kv_cache(Tensor q, Tensor paged_k_cache, Tensor? paged_v_cache, Tensor kv_indptr, "
      "Tensor kv_indices, Tensor kv_last_page_len, str kv_layout, bool rope_llama, int window_left, "
      "float logits_soft_cap, float sm_scale, float k_scale, float v_scale, float rope_scale, float rope_theta, "
      "str backend=\"auto\") -> (Tensor, Tensor)",
      tags);

  // ---- cascade: attention states v [seq, H, D] with s [seq, H] fp32, the log2-sum-exp of the scores behind v ----
  // States over disjoint KV merge into the state over their union: s = log2(sum 2^s_k), v = sum 2^(s_k - s) v_k.
  // A row whose states are all -inf (no key anywhere): 0, -inf.
  m.def("merge_state(Tensor v_a, Tensor s_a, Tensor v_b, Tensor s_b) -> (Tensor, Tensor)", tags);
  // (v, s) <- merge((v, s), (v_other, s_other)) in place, on the rows where mask (bool [seq]) is set, or all.
  m.def("merge_state_in_place(Tensor(a!) v, Tensor(b!) s, Tensor v_other, Tensor s_other, Tensor? mask=None) -> ()",
        tags);
  // v [seq, num_states, H, D], s [seq, num_states, H] -> (v [seq, H, D], s [seq, H]).
  m.def("merge_states(Tensor v, Tensor s) -> (Tensor, Tensor)", tags);

  // ---- sampling: a batch of distributions over a vocabulary, rows of [batch, vocab] ----
  // probs (fp32) = softmax(logits / temperature), temperature fp32 [batch] or the float; a row whose temperature is
  // <= 0 puts probability 1 on its first largest logit.
  m.def("softmax(Tensor logits, Tensor? temperature, float temperature_val) -> Tensor", tags);
  // One draw a row from probs (fp32, not necessarily normalised; draw b reads row indices[b] when given) under
  // the intersection of top-k (int32 [batch] or the int; <= 0 or >= vocab: off), top-p and min-p (fp32 [batch] or
  // the float; top_p >= 1, min_p <= 0: off) -> (int32 samples, bool valid: the row had a positive finite total).
  // seed and offset (int64 [1] or [batch]) key and count Philox4x32-10: the same values give the same draws.
  m.def(
      "sampling_from_probs(Tensor probs, Tensor? indices, Tensor? top_k, int top_k_val, Tensor? top_p, "
      "float top_p_val, Tensor? min_p, float min_p_val, Tensor seed, Tensor offset) -> (Tensor, Tensor)",
      tags);
  // probs with the entries outside the top-k (ties at the k-th kept) zeroed, the rest renormalised to sum 1.
  m.def("top_k_renorm_probs(Tensor probs, Tensor? top_k, int top_k_val) -> Tensor", tags);
  // probs with the entries outside the top-p set zeroed, the rest renormalised to sum 1.
  m.def("top_p_renorm_probs(Tensor probs, Tensor? top_p, float top_p_val) -> Tensor", tags);
  // logits with the entries outside the top-k set to -inf.
  m.def("top_k_mask_logits(Tensor logits, Tensor? top_k, int top_k_val) -> Tensor", tags);
  // Speculative decoding's check of a chain of n draft tokens a request (draft_probs fp32 [batch, n, vocab],
  // draft_token_ids int32 [batch, n], target_probs fp32 [batch, n + 1, vocab]): draft token i is kept when
  // u_i * draft_probs[i, t_i] < target_probs[i, t_i], u_i uniform in [0, 1); the first token not kept is replaced by
  // a draw from max(target - draft, 0) at its position, and when all n are kept a token is drawn from target row n
  // -> (int32 [batch, n + 1] tokens, -1 past the drawn one; int32 [batch] draft tokens kept, each judged alone;
  // int32 [batch] draft tokens emitted before the drawn one). seed / offset as in sampling_from_probs.
  m.def(
      "chain_speculative_sampling(Tensor draft_probs, Tensor draft_token_ids, Tensor target_probs, Tensor seed, "
      "Tensor offset) -> (Tensor, Tensor, Tensor)",
      tags);

  // ---- prefill: ragged query tokens per request against its KV ----
  // q [total_q, Hq, D], request b's tokens at rows qo_indptr[b]..qo_indptr[b+1] -> (out [total_q, Hq, D],
  // lse [total_q, Hq] fp32, log base 2). Query i of a request of qo_len tokens over kv_len keys sees key j when
  // j <= kv_len - qo_len + i (causal, bottom-right aligned), j >= kv_len - qo_len + i - window_left (window_left
  // >= 0), and bit i * kv_len + j of its packed_custom_mask segment is set (bit order little; mask_indptr[b] is
  // its first byte). Scores sm_scale * q.k * k_scale, soft-capped when logits_soft_cap > 0; values * v_scale.
  // rope_llama: RoPE (NeoX halves, rope_scale, rope_theta) on query i at kv_len - qo_len + i and on key j at j.
  // A row that sees no key: 0, -inf. The paged form reads the cache through kv_indptr / kv_indices /
  // kv_last_page_len like decode; the ragged form reads k, v [total_kv, Hkv, D] (NHD) or [Hkv, total_kv, D] (HND)
  // at rows kv_indptr[b]..kv_indptr[b+1].
  m.def(
      "batch_prefill_with_paged_kv_cache(Tensor q, Tensor qo_indptr, Tensor paged_k_cache, Tensor? paged_v_cache, "
      "Tensor kv_indptr, Tensor kv_indices, Tensor kv_last_page_len, Tensor? packed_custom_mask, "
      "Tensor? mask_indptr, str kv_layout, bool causal, int window_left, float logits_soft_cap, float sm_scale, "
      "float k_scale, float v_scale, bool rope_llama=False, float rope_scale=1., float rope_theta=1e4) "
      "-> (Tensor, Tensor)",
      tags);
  m.def(
      "batch_prefill_with_ragged_kv_cache(Tensor q, Tensor qo_indptr, Tensor k, Tensor v, Tensor kv_indptr, "
      "Tensor? packed_custom_mask, Tensor? mask_indptr, str kv_layout, bool causal, int window_left, "
      "float logits_soft_cap, float sm_scale, float k_scale, float v_scale, bool rope_llama=False, "
      "float rope_scale=1., float rope_theta=1e4) -> (Tensor, Tensor)",
      tags);
}

// `import flashinfer._C` runs the static registrations above; the module itself holds nothing.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
