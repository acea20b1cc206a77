// Argument validation shared by the CPU and CUDA implementations (declared in checks.h).
//
// Every message is built here, and built without std::ostream: on the H100 machine, streaming an integer
// from inside the extension (c10::str / TORCH_CHECK with int or IntArrayRef arguments) crashed in a copy of
// std::ostream::_M_insert<long> local to _C.so (SIGSEGV), from g++- and nvcc-compiled code alike. Numbers
// are formatted with std::to_string / snprintf and the finished string is handed to TORCH_CHECK.
#include "checks.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <string>
#include <type_traits>

namespace flashinfer {
namespace {

std::string piece(const char* s) { return s; }
std::string piece(const std::string& s) { return s; }
std::string piece(at::ScalarType t) { return c10::toString(t); }
std::string piece(const c10::Device& d) { return d.str(); }
std::string piece(at::IntArrayRef a) {
  std::string s = "[";
  for (size_t i = 0; i < a.size(); ++i) s += (i ? ", " : "") + std::to_string(a[i]);
  return s + "]";
}
template <typename T, std::enable_if_t<std::is_arithmetic_v<T>, int> = 0>
std::string piece(T v) {
  if constexpr (std::is_floating_point_v<T>) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%g", (double)v);
    return buf;
  } else {
    return std::to_string(v);
  }
}

template <typename... Args>
[[noreturn]] void fail(const char* op, const Args&... args) {
  std::string msg = std::string("flashinfer.") + op + ": ";
  (msg.append(piece(args)), ...);
  TORCH_CHECK(false, msg);
}

}  // namespace
}  // namespace flashinfer

#define FI_CHECK(cond, op, ...)                              \
  do {                                                       \
    if (!(cond)) ::flashinfer::fail(op, __VA_ARGS__);        \
  } while (0)

namespace flashinfer {

void check_float_dtype(const at::Tensor& t, const char* name, const char* op) {
  const auto d = t.scalar_type();
  FI_CHECK(d == at::kHalf || d == at::kBFloat16 || d == at::kFloat, op, name,
           " must be float16, bfloat16 or float32, got ", d);
}

void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref,
                              const char* ref_name, const char* op) {
  FI_CHECK(t.device() == ref.device(), op, name, " must be on the same device as ", ref_name, " (",
           ref.device(), "), got ", t.device());
}

void check_same_dtype(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name,
                             const char* op) {
  FI_CHECK(t.scalar_type() == ref.scalar_type(), op, name, " must have the dtype of ", ref_name, " (",
           ref.scalar_type(), "), got ", t.scalar_type());
}

void check_dim(const at::Tensor& t, int64_t dim, const char* name, const char* op) {
  FI_CHECK(t.dim() == dim, op, name, " must be ", dim, "-D, got shape ", t.sizes());
}

// A per-feature parameter vector (norm weight / bias): 1-D of length `hidden`, the input's dtype or fp32.
void check_param_vector(const at::Tensor& p, const char* name, const at::Tensor& input, const char* op) {
  check_same_device(p, name, input, "input", op);
  FI_CHECK(p.dim() == 1 && p.size(0) == input.size(-1), op, name, " must have shape [", input.size(-1),
           "] (the last dim of input), got ", p.sizes());
  FI_CHECK(p.scalar_type() == input.scalar_type() || p.scalar_type() == at::kFloat, op, name,
           " must have the dtype of input (", input.scalar_type(), ") or float32, got ", p.scalar_type());
}

// An output tensor supplied by the caller: same shape, dtype and device as `ref`.
void check_out(const at::Tensor& out, const char* name, const at::Tensor& ref, const char* ref_name,
                      at::IntArrayRef expected_sizes, const char* op) {
  check_same_device(out, name, ref, ref_name, op);
  check_same_dtype(out, name, ref, ref_name, op);
  FI_CHECK(out.sizes() == expected_sizes, op, name, " must have shape ", expected_sizes, ", got ", out.sizes());
}

void check_int32_vector(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* op) {
  check_same_device(t, name, ref, "q", op);
  FI_CHECK(t.scalar_type() == at::kInt, op, name, " must be int32, got ", t.scalar_type());
  FI_CHECK(t.dim() == 1, op, name, " must be 1-D, got shape ", t.sizes());
}


// ---- per-family argument checks ----

void check_norm_input(const at::Tensor& input, const char* op) {
  check_float_dtype(input, "input", op);
  FI_CHECK(input.dim() >= 1, op, "input must have at least 1 dim ([..., hidden]), got a scalar");
}

void check_fused_add(const at::Tensor& input, const at::Tensor& residual, const char* op) {
  check_same_device(residual, "residual", input, "input", op);
  check_same_dtype(residual, "residual", input, "input", op);
  FI_CHECK(residual.sizes() == input.sizes(), op, "residual must have the shape of input (", input.sizes(),
           "), got ", residual.sizes());
}

// Gated activations read [..., 2d] and write [..., d].
std::vector<int64_t> check_gated_input(const at::Tensor& input, const char* op) {
  check_float_dtype(input, "input", op);
  FI_CHECK(input.dim() >= 1 && input.size(-1) % 2 == 0, op,
           "input must be [..., 2 * d] (gate then up halves), got shape ", input.sizes());
  std::vector<int64_t> out_sizes(input.sizes().begin(), input.sizes().end());
  out_sizes.back() /= 2;
  return out_sizes;
}

// q [nnz, Hq, D] and k [nnz, Hk, D]; rotary_dim even in (0, D].
void check_rope_qk(const at::Tensor& q, const at::Tensor& k, int64_t rotary_dim, const char* op) {
  check_float_dtype(q, "q", op);
  check_dim(q, 3, "q", op);
  check_dim(k, 3, "k", op);
  check_same_device(k, "k", q, "q", op);
  check_same_dtype(k, "k", q, "q", op);
  FI_CHECK(k.size(0) == q.size(0), op, "k must have as many tokens as q (", q.size(0), "), got ", k.size(0));
  FI_CHECK(k.size(2) == q.size(2), op, "k must have the head_dim of q (", q.size(2), "), got ", k.size(2));
  FI_CHECK(rotary_dim > 0 && rotary_dim % 2 == 0 && rotary_dim <= q.size(2), op,
           "rotary_dim must be even and in (0, head_dim=", q.size(2), "], got ", rotary_dim);
}

void check_positions(const at::Tensor& pos, const char* name, const at::Tensor& q, const char* op) {
  check_same_device(pos, name, q, "q", op);
  FI_CHECK(pos.scalar_type() == at::kInt || pos.scalar_type() == at::kLong, op, name,
           " must be int32 or int64, got ", pos.scalar_type());
  FI_CHECK(pos.dim() == 1 && pos.size(0) == q.size(0), op, name, " must have shape [nnz=", q.size(0), "], got ",
           pos.sizes());
}

void check_ragged(const at::Tensor& indptr, const at::Tensor& offsets, const at::Tensor& q, const char* op) {
  check_int32_vector(indptr, "indptr", q, op);
  check_int32_vector(offsets, "offsets", q, op);
  FI_CHECK(indptr.size(0) == offsets.size(0) + 1, op, "indptr must have batch_size + 1 = ", offsets.size(0) + 1,
           " entries (offsets has ", offsets.size(0), "), got ", indptr.size(0));
}

// query/key of the cos/sin-cache form: [nnz, H * head_size] or [nnz, H, head_size]; returns the 3-D view.
at::Tensor heads_view(const at::Tensor& t, const char* name, int64_t head_size, const char* op) {
  FI_CHECK(head_size > 0, op, "head_size must be positive, got ", head_size);
  FI_CHECK((t.dim() == 2 && t.size(1) % head_size == 0) || (t.dim() == 3 && t.size(2) == head_size), op, name,
           " must be [nnz, num_heads * head_size] or [nnz, num_heads, head_size] with head_size=", head_size,
           ", got shape ", t.sizes());
  if (t.dim() == 3) return t;
  FI_CHECK(t.size(1) <= 1 || t.stride(1) == 1, op, name, " must have a contiguous last dim, got strides ",
           t.strides());
  return t.as_strided({t.size(0), t.size(1) / head_size, head_size}, {t.stride(0), head_size, 1});
}

void check_cos_sin_cache(const at::Tensor& cache, const at::Tensor& q, const char* op) {
  check_same_device(cache, "cos_sin_cache", q, "query", op);
  FI_CHECK(cache.scalar_type() == at::kFloat, op, "cos_sin_cache must be float32, got ", cache.scalar_type());
  FI_CHECK(cache.dim() == 2 && cache.size(1) % 2 == 0 && cache.size(1) > 0 && cache.size(1) <= q.size(2), op,
           "cos_sin_cache must be [max_seq_len, rotary_dim] with rotary_dim even and <= head_size=", q.size(2),
           ", got shape ", cache.sizes());
  FI_CHECK(cache.stride(1) == 1, op, "cos_sin_cache must have a contiguous last dim");
}


Llama31Smoothing llama31_smoothing(double low_freq_factor, double high_freq_factor, double old_context_len,
                                          const char* op) {
  FI_CHECK(high_freq_factor > low_freq_factor && low_freq_factor > 0, op,
           "Llama 3.1 RoPE needs 0 < low_freq_factor < high_freq_factor, got low_freq_factor=", low_freq_factor,
           ", high_freq_factor=", high_freq_factor);
  FI_CHECK(old_context_len > 0, op, "old_context_len must be positive, got ", old_context_len);
  constexpr double kTwoPi = 6.283185307179586;
  return {old_context_len / (kTwoPi * (high_freq_factor - low_freq_factor)),
          -low_freq_factor / (high_freq_factor - low_freq_factor)};
}

void check_rope_freq(double rope_scale, double rope_theta, const char* op) {
  FI_CHECK(rope_scale > 0, op, "rope_scale must be positive, got ", rope_scale);
  FI_CHECK(rope_theta > 0, op, "rope_theta must be positive, got ", rope_theta);
}

}  // namespace flashinfer

namespace flashinfer {

// ---- page ----

PagedKV paged_kv_views(const at::Tensor& k_cache, const std::optional<at::Tensor>& v_cache,
                       const std::string& kv_layout, const char* op) {
  FI_CHECK(kv_layout == "NHD" || kv_layout == "HND", op, "kv_layout must be \"NHD\" or \"HND\", got \"", kv_layout,
           "\"");
  const bool hnd = kv_layout == "HND";
  at::Tensor k, v;
  if (!v_cache.has_value()) {
    FI_CHECK(k_cache.dim() == 5 && k_cache.size(1) == 2, op, "paged_kv_cache must be 5-D [num_pages, 2, ",
             hnd ? "num_kv_heads, page_size" : "page_size, num_kv_heads", ", head_dim] or a (k_cache, v_cache) "
             "tuple of 4-D tensors, got shape ", k_cache.sizes());
    k = k_cache.select(1, 0);
    v = k_cache.select(1, 1);
  } else {
    FI_CHECK(k_cache.dim() == 4, op, "k_cache must be 4-D [num_pages, ",
             hnd ? "num_kv_heads, page_size" : "page_size, num_kv_heads", ", head_dim], got shape ", k_cache.sizes());
    FI_CHECK(v_cache->sizes() == k_cache.sizes(), op, "v_cache must have the shape of k_cache (",
             k_cache.sizes(), "), got ", v_cache->sizes());
    check_same_device(*v_cache, "v_cache", k_cache, "k_cache", op);
    check_same_dtype(*v_cache, "v_cache", k_cache, "k_cache", op);
    k = k_cache;
    v = *v_cache;
  }
  if (hnd) {
    k = k.permute({0, 2, 1, 3});
    v = v.permute({0, 2, 1, 3});
  }
  for (const auto& t : {k, v}) {
    FI_CHECK(t.size(3) <= 1 || t.stride(3) == 1, op, "the paged KV cache must have a contiguous head_dim, got strides ",
             k_cache.strides());
  }
  return {k, v, k.size(1)};
}

void check_page_table(const at::Tensor& indptr, const char* indptr_name, const at::Tensor& per_request,
                      const char* per_request_name, const char* op) {
  for (auto [t, name] : {std::pair{&indptr, indptr_name}, std::pair{&per_request, per_request_name}}) {
    FI_CHECK(t->scalar_type() == at::kInt, op, name, " must be int32, got ", t->scalar_type());
    FI_CHECK(t->dim() == 1, op, name, " must be 1-D, got shape ", t->sizes());
  }
  check_same_device(per_request, per_request_name, indptr, indptr_name, op);
  FI_CHECK(indptr.size(0) == per_request.size(0) + 1, op, indptr_name, " must have batch_size + 1 = ",
           per_request.size(0) + 1, " entries (", per_request_name, " has ", per_request.size(0), "), got ",
           indptr.size(0));
}

// The cache and its page tables: on `ref`'s device, int32 tables of consistent sizes, pages of at least one entry.
void check_paged_tables(const PagedKV& cache, const at::Tensor& kv_indices, const at::Tensor& kv_indptr,
                        const at::Tensor& kv_last_page_len, const at::Tensor& ref, const char* ref_name,
                        const char* op) {
  for (auto [t, name] : {std::pair{&cache.k, "paged_kv_cache"}, std::pair{&kv_indices, "kv_indices"},
                         std::pair{&kv_indptr, "kv_indptr"}}) {
    check_same_device(*t, name, ref, ref_name, op);
  }
  FI_CHECK(kv_indices.scalar_type() == at::kInt && kv_indices.dim() == 1, op,
           "kv_indices must be 1-D int32, got ", kv_indices.scalar_type(), " of shape ", kv_indices.sizes());
  check_page_table(kv_indptr, "kv_indptr", kv_last_page_len, "kv_last_page_len", op);
  FI_CHECK(cache.page_size > 0, op, "the paged KV cache must have page_size > 0");
}

void check_append(const at::Tensor& key, const at::Tensor& value, const at::Tensor& batch_indices,
                  const at::Tensor& positions, const PagedKV& cache, const at::Tensor& kv_indices,
                  const at::Tensor& kv_indptr, const at::Tensor& kv_last_page_len, const char* op) {
  check_float_dtype(key, "append_key", op);
  check_dim(key, 3, "append_key", op);
  FI_CHECK(value.sizes() == key.sizes(), op, "append_value must have the shape of append_key (", key.sizes(),
           "), got ", value.sizes());
  check_same_dtype(value, "append_value", key, "append_key", op);
  for (auto [t, name] : {std::pair{&value, "append_value"}, std::pair{&batch_indices, "batch_indices"},
                         std::pair{&positions, "positions"}}) {
    check_same_device(*t, name, key, "append_key", op);
  }
  check_same_dtype(cache.k, "paged_kv_cache", key, "append_key", op);
  FI_CHECK(cache.k.size(2) == key.size(1) && cache.k.size(3) == key.size(2), op,
           "paged_kv_cache must hold num_kv_heads=", key.size(1), " and head_dim=", key.size(2),
           " (those of append_key), got ", cache.k.size(2), " heads of dim ", cache.k.size(3));
  for (auto [t, name] : {std::pair{&batch_indices, "batch_indices"}, std::pair{&positions, "positions"}}) {
    FI_CHECK(t->scalar_type() == at::kInt, op, name, " must be int32, got ", t->scalar_type());
    FI_CHECK(t->dim() == 1 && t->size(0) == key.size(0), op, name, " must have shape [nnz=", key.size(0), "], got ",
             t->sizes());
  }
  check_paged_tables(cache, kv_indices, kv_indptr, kv_last_page_len, key, "append_key", op);
}

// ---- attention (decode, prefill) ----

namespace {

// q [tokens, Hq, D] (fp16/bf16) against K/V views [..., Hkv, D] called kv_name.
void check_attention_q(const at::Tensor& q, const at::Tensor& kv, const char* kv_name, const char* op) {
  FI_CHECK(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16, op,
           "q must be float16 or bfloat16, got ", q.scalar_type());
  check_dim(q, 3, "q", op);
  const int64_t d = q.size(2), hq = q.size(1), hkv = kv.size(-2);
  FI_CHECK(d == 64 || d == 128 || d == 256, op, "unsupported head_dim ", d, ": supported 64, 128, 256");
  FI_CHECK(kv.size(-1) == d, op, kv_name, " must have head_dim ", d, " (that of q), got ", kv.size(-1));
  FI_CHECK(hkv > 0 && hq % hkv == 0, op, "num_qo_heads (", hq, ") must be a multiple of num_kv_heads (", hkv, ")");
}

void check_paged_token_range(const PagedKV& cache, const at::Tensor& kv_indices, const char* op) {
  FI_CHECK(kv_indices.size(0) * cache.page_size < (int64_t(1) << 31), op,
           "kv_indices.size(0) * page_size must stay below 2^31 tokens");
}

void check_indptr(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* op) {
  FI_CHECK(t.scalar_type() == at::kInt && t.dim() == 1 && t.size(0) >= 1, op, name,
           " must be 1-D int32 with batch_size + 1 entries, got ", t.scalar_type(), " of shape ", t.sizes());
  check_same_device(t, name, ref, "q", op);
}

// What both prefill forms check once the KV views (k: [..., Hkv, D]) and the batch size are known.
void check_prefill(const at::Tensor& q, const at::Tensor& qo_indptr, const at::Tensor& k, int64_t batch,
                   const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& mask_indptr,
                   const char* op) {
  check_attention_q(q, k, "the KV cache", op);
  // The kernel splits packed (token, head) rows with a 31-bit division, plus up to a tile of padding rows.
  FI_CHECK(q.size(0) * q.size(1) <= INT32_MAX - 256, op, "q must hold at most 2^31 - 257 (token, head) rows, got ",
           q.size(0), " x ", q.size(1));
  const auto kd = k.scalar_type();
  FI_CHECK(kd == q.scalar_type() || kd == at::kFloat8_e4m3fn || kd == at::kFloat8_e5m2, op,
           "the KV cache must have the dtype of q (", q.scalar_type(), ") or be float8_e4m3fn / float8_e5m2, got ",
           kd);
  check_same_device(k, "the KV cache", q, "q", op);
  check_same_device(qo_indptr, "qo_indptr", q, "q", op);
  FI_CHECK(qo_indptr.scalar_type() == at::kInt && qo_indptr.dim() == 1, op, "qo_indptr must be 1-D int32, got ",
           qo_indptr.scalar_type(), " of shape ", qo_indptr.sizes());
  FI_CHECK(qo_indptr.size(0) == batch + 1, op, "qo_indptr must have batch_size + 1 = ", batch + 1,
           " entries, got ", qo_indptr.size(0));
  FI_CHECK(mask.has_value() == mask_indptr.has_value(), op,
           "packed_custom_mask and mask_indptr must be given together");
  if (mask) {
    FI_CHECK(mask->scalar_type() == at::kByte && mask->dim() == 1, op, "packed_custom_mask must be 1-D uint8, got ",
             mask->scalar_type(), " of shape ", mask->sizes());
    FI_CHECK(mask_indptr->scalar_type() == at::kInt && mask_indptr->dim() == 1 &&
                 mask_indptr->size(0) == batch + 1,
             op, "mask_indptr must be 1-D int32 with batch_size + 1 = ", batch + 1, " entries, got ",
             mask_indptr->scalar_type(), " of shape ", mask_indptr->sizes());
    check_same_device(*mask, "packed_custom_mask", q, "q", op);
    check_same_device(*mask_indptr, "mask_indptr", q, "q", op);
  }
}

}  // namespace

// ---- decode ----

PagedKV check_decode(const at::Tensor& q, const at::Tensor& k_cache, const std::optional<at::Tensor>& v_cache,
                     const at::Tensor& kv_indptr, const at::Tensor& kv_indices, const at::Tensor& kv_last_page_len,
                     const std::string& kv_layout, const std::string& backend, const char* op) {
  const PagedKV cache = paged_kv_views(k_cache, v_cache, kv_layout, op);
  FI_CHECK(backend == "auto" || backend == "tensor_core" || backend == "cuda_core", op,
           "backend must be \"auto\", \"tensor_core\" or \"cuda_core\", got \"", backend, "\"");
  check_attention_q(q, cache.k, "paged_kv_cache", op);
  const auto kd = cache.k.scalar_type();
  FI_CHECK(kd == q.scalar_type() || kd == at::kFloat8_e4m3fn || kd == at::kFloat8_e5m2, op,
           "paged_kv_cache must have the dtype of q (", q.scalar_type(), ") or be float8_e4m3fn / float8_e5m2, got ",
           kd);
  check_paged_tables(cache, kv_indices, kv_indptr, kv_last_page_len, q, "q", op);
  FI_CHECK(kv_last_page_len.size(0) == q.size(0), op, "kv_last_page_len must have batch_size=", q.size(0),
           " entries (q's first dim), got ", kv_last_page_len.size(0));
  check_paged_token_range(cache, kv_indices, op);
  return cache;
}

// ---- prefill ----

PagedKV check_paged_prefill(const at::Tensor& q, const at::Tensor& qo_indptr, const at::Tensor& k_cache,
                            const std::optional<at::Tensor>& v_cache, const at::Tensor& kv_indptr,
                            const at::Tensor& kv_indices, const at::Tensor& kv_last_page_len,
                            const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& mask_indptr,
                            const std::string& kv_layout, const char* op) {
  const PagedKV cache = paged_kv_views(k_cache, v_cache, kv_layout, op);
  check_paged_tables(cache, kv_indices, kv_indptr, kv_last_page_len, q, "q", op);
  check_prefill(q, qo_indptr, cache.k, kv_last_page_len.size(0), mask, mask_indptr, op);
  check_paged_token_range(cache, kv_indices, op);
  return cache;
}

std::pair<at::Tensor, at::Tensor> check_ragged_prefill(const at::Tensor& q, const at::Tensor& qo_indptr,
                                                       const at::Tensor& k, const at::Tensor& v,
                                                       const at::Tensor& kv_indptr,
                                                       const std::optional<at::Tensor>& mask,
                                                       const std::optional<at::Tensor>& mask_indptr,
                                                       const std::string& kv_layout, const char* op) {
  FI_CHECK(kv_layout == "NHD" || kv_layout == "HND", op, "kv_layout must be \"NHD\" or \"HND\", got \"", kv_layout,
           "\"");
  check_dim(k, 3, "k", op);
  FI_CHECK(v.sizes() == k.sizes(), op, "v must have the shape of k (", k.sizes(), "), got ", v.sizes());
  check_same_dtype(v, "v", k, "k", op);
  check_same_device(v, "v", k, "k", op);
  const at::Tensor kk = kv_layout == "NHD" ? k : k.transpose(0, 1), vv = kv_layout == "NHD" ? v : v.transpose(0, 1);
  check_indptr(kv_indptr, "kv_indptr", q, op);
  check_prefill(q, qo_indptr, kk, kv_indptr.size(0) - 1, mask, mask_indptr, op);
  FI_CHECK(kk.size(0) <= INT32_MAX - 256, op, "k must hold at most 2^31 - 257 tokens, got ", kk.size(0));
  return {kk, vv};
}

// ---- cascade ----

namespace {
void check_lse_of(const at::Tensor& s, const char* s_name, const at::Tensor& v, const char* v_name, const char* op) {
  check_same_device(s, s_name, v, v_name, op);
  FI_CHECK(s.scalar_type() == at::kFloat, op, s_name, " must be float32 (the log2-sum-exp of ", v_name,
           "'s scores), got ", s.scalar_type());
  const auto expected = v.sizes().slice(0, v.dim() - 1);
  FI_CHECK(s.sizes() == expected, op, s_name, " must have shape ", expected, " (that of ", v_name,
           " without head_dim), got ", s.sizes());
}
}  // namespace

void check_state(const at::Tensor& v, const char* v_name, const at::Tensor& s, const char* s_name, const char* op) {
  check_float_dtype(v, v_name, op);
  FI_CHECK(v.dim() == 3, op, v_name, " must be 3-D [seq_len, num_heads, head_dim], got shape ", v.sizes());
  FI_CHECK(v.size(2) > 0, op, v_name, " must have head_dim >= 1, got shape ", v.sizes());
  check_lse_of(s, s_name, v, v_name, op);
}

void check_state_like(const at::Tensor& v, const char* v_name, const at::Tensor& s, const char* s_name,
                      const at::Tensor& ref_v, const char* ref_name, const char* op) {
  check_state(v, v_name, s, s_name, op);
  check_same_device(v, v_name, ref_v, ref_name, op);
  check_same_dtype(v, v_name, ref_v, ref_name, op);
  FI_CHECK(v.sizes() == ref_v.sizes(), op, v_name, " must have the shape of ", ref_name, " (", ref_v.sizes(),
           "), got ", v.sizes());
}

void check_state_mask(const at::Tensor& mask, const at::Tensor& v, const char* op) {
  check_same_device(mask, "mask", v, "v", op);
  FI_CHECK(mask.scalar_type() == at::kBool, op, "mask must be bool, got ", mask.scalar_type());
  FI_CHECK(mask.dim() == 1 && mask.size(0) == v.size(0), op, "mask must have shape [", v.size(0),
           "] (one flag per row of v), got ", mask.sizes());
}

void check_states(const at::Tensor& v, const at::Tensor& s, const char* op) {
  check_float_dtype(v, "v", op);
  FI_CHECK(v.dim() == 4, op, "v must be 4-D [seq_len, num_states, num_heads, head_dim], got shape ", v.sizes());
  FI_CHECK(v.size(3) > 0, op, "v must have head_dim >= 1, got shape ", v.sizes());
  check_lse_of(s, "s", v, "v", op);
}

// ---- sampling ----

void check_sampling_rows(const at::Tensor& t, const char* name, bool probs_only, const char* op) {
  if (probs_only) {
    FI_CHECK(t.scalar_type() == at::kFloat, op, name, " must be float32, got ", t.scalar_type());
  } else {
    check_float_dtype(t, name, op);
  }
  FI_CHECK(t.dim() == 2, op, name, " must be 2-D [batch_size, vocab_size], got shape ", t.sizes());
  FI_CHECK(t.size(1) >= 1 && t.size(1) < (int64_t(1) << 24), op, name,
           " must have 1 <= vocab_size < 16777216, got shape ", t.sizes());
  FI_CHECK(t.size(1) == 1 || t.stride(1) == 1, op, name, " must have a contiguous last dim, got strides ",
           t.strides());
}

void check_per_row(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t batch,
                   const at::Tensor& ref, const char* op) {
  FI_CHECK(t.device() == ref.device(), op, name, " must be on ", ref.device(), ", got ", t.device());
  FI_CHECK(t.scalar_type() == dtype, op, name, " must be ", dtype, ", got ", t.scalar_type());
  FI_CHECK(t.dim() == 1 && t.size(0) == batch, op, name, " must have shape [", batch, "] (one value per row), got ",
           t.sizes());
}

void check_sample_indices(const at::Tensor& indices, const at::Tensor& ref, const char* op) {
  FI_CHECK(indices.device() == ref.device(), op, "indices must be on ", ref.device(), ", got ", indices.device());
  FI_CHECK(indices.scalar_type() == at::kInt || indices.scalar_type() == at::kLong, op,
           "indices must be int32 or int64, got ", indices.scalar_type());
  FI_CHECK(indices.dim() == 1, op, "indices must be 1-D [batch_size], got shape ", indices.sizes());
}

void check_seed(const at::Tensor& t, const char* name, int64_t batch, const at::Tensor& ref, const char* op) {
  FI_CHECK(t.device() == ref.device(), op, name, " must be on ", ref.device(), ", got ", t.device());
  FI_CHECK(t.scalar_type() == at::kLong, op, name, " must be int64, got ", t.scalar_type());
  FI_CHECK(t.dim() == 1 && (t.size(0) == 1 || t.size(0) == batch), op, name, " must have shape [1] or [", batch,
           "], got ", t.sizes());
}

void check_speculative_chain(const at::Tensor& draft_probs, const at::Tensor& draft_token_ids,
                             const at::Tensor& target_probs, const char* op) {
  FI_CHECK(draft_probs.scalar_type() == at::kFloat, op, "draft_probs must be float32, got ",
           draft_probs.scalar_type());
  FI_CHECK(target_probs.scalar_type() == at::kFloat, op, "target_probs must be float32, got ",
           target_probs.scalar_type());
  FI_CHECK(draft_token_ids.scalar_type() == at::kInt, op, "draft_token_ids must be int32, got ",
           draft_token_ids.scalar_type());
  FI_CHECK(draft_probs.dim() == 3, op,
           "draft_probs must be 3-D [batch_size, num_speculate_tokens, vocab_size], got shape ", draft_probs.sizes());
  const int64_t batch = draft_probs.size(0), n = draft_probs.size(1), vocab = draft_probs.size(2);
  FI_CHECK(vocab >= 1 && vocab < (int64_t(1) << 24), op,
           "draft_probs must have 1 <= vocab_size < 16777216, got shape ", draft_probs.sizes());
  FI_CHECK(target_probs.dim() == 3 && target_probs.size(0) == batch && target_probs.size(1) == n + 1 &&
               target_probs.size(2) == vocab,
           op, "target_probs must have shape [", batch, ", ", n + 1, ", ", vocab,
           "] (one more row a request than draft_probs), got ", target_probs.sizes());
  FI_CHECK(draft_token_ids.dim() == 2 && draft_token_ids.size(0) == batch && draft_token_ids.size(1) == n, op,
           "draft_token_ids must have shape [", batch, ", ", n, "], got ", draft_token_ids.sizes());
  FI_CHECK(target_probs.device() == draft_probs.device(), op, "target_probs must be on ", draft_probs.device(),
           ", got ", target_probs.device());
  FI_CHECK(draft_token_ids.device() == draft_probs.device(), op, "draft_token_ids must be on ",
           draft_probs.device(), ", got ", draft_token_ids.device());
}

// ---- layouts and failures of the CUDA adapters ----

std::optional<RowLayout> row_layout(const at::Tensor& t) {
  const int64_t n = t.dim();
  if (n == 0) return std::nullopt;
  if (t.size(-1) > 1 && t.stride(-1) != 1) return std::nullopt;
  std::vector<std::pair<int64_t, int64_t>> levels;  // outermost first, size-1 dims dropped, merged
  for (int64_t i = 0; i < n - 1; ++i) {
    if (t.size(i) == 1) continue;
    if (!levels.empty() && levels.back().second == t.stride(i) * t.size(i)) {
      levels.back() = {levels.back().first * t.size(i), t.stride(i)};
    } else {
      levels.push_back({t.size(i), t.stride(i)});
    }
  }
  if (levels.empty()) return RowLayout{1, 0, 0};
  if (levels.size() == 1) return RowLayout{1, levels[0].second, 0};
  if (levels.size() == 2) return RowLayout{levels[1].first, levels[0].second, levels[1].second};
  return std::nullopt;
}

at::Tensor rows_readable(const at::Tensor& t) { return row_layout(t) ? t : t.contiguous(); }

RowLayout rows_writable(const at::Tensor& t, const char* name, const char* op) {
  auto l = row_layout(t);
  FI_CHECK(l.has_value(), op, name, " must have a contiguous last dim and leading dims that collapse to at most "
           "two strides, got strides ", t.strides());
  return *l;
}

void check_last_dim_contiguous(const at::Tensor& t, const char* name, const char* op) {
  FI_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, op, name, " must have a contiguous last dim, got strides ",
           t.strides());
}

void check_int32_range(int64_t value, const char* what, const char* op) {
  FI_CHECK(value <= INT32_MAX, op, what, " ", value, " is too large (at most ", (int64_t)INT32_MAX, ")");
}

void check_condition(bool ok, const char* op, const char* message) { FI_CHECK(ok, op, message); }

void fail_launch(const char* op, const char* error) { fail(op, "CUDA launch failed: ", error); }

void fail_dtype(const char* op, at::ScalarType dtype) { fail(op, "unsupported dtype ", dtype); }

}  // namespace flashinfer
