// CUDA adapter of batch prefill (paged and ragged KV): validate, describe q, the cache and the tables, launch.
// The grid depends only on shapes (see prefill.cuh), so nothing here reads device data.
#include <torch/library.h>

#include "prefill_launch.cuh"
#include "utils.cuh"

namespace flashinfer {
namespace {

// The kernel copies q 16 bytes at a time: a view whose rows do not all start on 16-byte boundaries (an offset into
// a wider buffer, an odd stride) is copied first, into a fresh allocation.
at::Tensor rows_aligned(const at::Tensor& q) {
  return q.stride(2) == 1 && rows_16b_aligned(q, 2) ? q : q.clone(at::MemoryFormat::Contiguous);
}

// Fields common to both forms; the KV description is filled in by the caller.
prefill::Params common_params(const at::Tensor& q, const at::Tensor& qo_indptr, const at::Tensor& out,
                              const at::Tensor& lse, const std::optional<at::Tensor>& mask,
                              const std::optional<at::Tensor>& mask_indptr, bool causal, int64_t window_left,
                              double logits_soft_cap, double sm_scale, double k_scale, double v_scale,
                              bool rope_llama, double rope_scale, double rope_theta) {
  prefill::Params p{};
  p.q = q.data_ptr();
  p.q_stride_n = q.stride(0), p.q_stride_h = q.stride(1);
  p.qo_indptr = qo_indptr.data_ptr<int32_t>();
  p.total_q = q.size(0);
  p.hq = (int)q.size(1);
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  if (mask) {
    p.mask = mask->numel() > 0 ? mask->data_ptr<uint8_t>() : nullptr;
    p.mask_bytes = mask->numel();
    p.mask_indptr = mask_indptr->data_ptr<int32_t>();
  }
  p.causal = causal;
  p.window_left = (int)window_left;
  p.logits_soft_cap = (float)logits_soft_cap, p.sm_scale = (float)sm_scale;
  p.k_scale = (float)k_scale, p.v_scale = (float)v_scale;
  p.rope = rope_llama;
  p.rope_rcp_scale = (float)(1.0 / rope_scale), p.rope_log2_theta = (float)std::log2(rope_theta);
  return p;
}

// The split workspace is allocated only when the launcher picks more than one KV split (the count depends on
// shapes only). It is freed on return: the caching allocator gives the memory only to work queued after this
// launch on the same stream.
void launch(const prefill::Params& p, const at::Tensor& q, at::ScalarType kv_dtype, bool ragged, const char* op) {
  at::Tensor tmp_o, tmp_lse;
  const int64_t rows = q.size(0) * q.size(1), d = q.size(2);
  const LaunchEnv<prefill::Params> env{
      sm_count(q.get_device()),
      [&](prefill::Params& pp) {
        const auto f32 = q.options().dtype(at::kFloat);
        tmp_o = at::empty({pp.num_splits, rows, d}, f32);
        tmp_lse = at::empty({pp.num_splits, rows}, f32);
        pp.tmp_o = tmp_o.data_ptr<float>(), pp.tmp_lse = tmp_lse.data_ptr<float>();
      },
      c10::cuda::getCurrentCUDAStream()};
  const cudaError_t err = dispatch_attention(q.scalar_type(), kv_dtype, [&](auto qt, auto kvt) {
    using T = typename decltype(qt)::type;
    using KV = typename decltype(kvt)::type;
    return p.rope ? prefill::run<T, KV, true>(p, (int)d, ragged, env)
                  : prefill::run<T, KV, false>(p, (int)d, ragged, env);
  });
  check_launch(err, op);
}

std::tuple<at::Tensor, at::Tensor> batch_prefill_paged_cuda(
    const at::Tensor& q_, const at::Tensor& qo_indptr, const at::Tensor& k_cache,
    const std::optional<at::Tensor>& v_cache, const at::Tensor& kv_indptr, const at::Tensor& kv_indices,
    const at::Tensor& kv_last_page_len, const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& mask_indptr, c10::string_view kv_layout, bool causal, int64_t window_left,
    double logits_soft_cap, double sm_scale, double k_scale, double v_scale, bool rope_llama, double rope_scale,
    double rope_theta) {
  const char* op = "batch_prefill_with_paged_kv_cache";
  const PagedKV cache = check_paged_prefill(q_, qo_indptr, k_cache, v_cache, kv_indptr, kv_indices, kv_last_page_len,
                                            mask, mask_indptr, std::string(kv_layout), op);
  check_kv_rows_aligned(cache.k, cache.v, 3, op);
  if (rope_llama) check_rope_freq(rope_scale, rope_theta, op);
  const c10::cuda::CUDAGuard guard(q_.device());
  const at::Tensor q = rows_aligned(q_);
  auto out = at::empty(q.sizes(), q.options());
  auto lse = at::empty({q.size(0), q.size(1)}, q.options().dtype(at::kFloat));
  const at::Tensor ip = kv_indptr.contiguous(), ind = kv_indices.contiguous(), last = kv_last_page_len.contiguous();
  const at::Tensor qip = qo_indptr.contiguous();
  prefill::Params p = common_params(q, qip, out, lse, mask, mask_indptr, causal, window_left, logits_soft_cap,
                                    sm_scale, k_scale, v_scale, rope_llama, rope_scale, rope_theta);
  set_paged_kv(p, cache, ind, last);
  p.kv_indptr = ip.data_ptr<int32_t>();
  p.batch = (int)kv_last_page_len.size(0), p.hkv = (int)cache.k.size(2);
  launch(p, q, cache.k.scalar_type(), false, op);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> batch_prefill_ragged_cuda(
    const at::Tensor& q_, const at::Tensor& qo_indptr, const at::Tensor& k_, const at::Tensor& v_,
    const at::Tensor& kv_indptr, const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& mask_indptr,
    c10::string_view kv_layout, bool causal, int64_t window_left, double logits_soft_cap, double sm_scale,
    double k_scale, double v_scale, bool rope_llama, double rope_scale, double rope_theta) {
  const char* op = "batch_prefill_with_ragged_kv_cache";
  const auto [k, v] = check_ragged_prefill(q_, qo_indptr, k_, v_, kv_indptr, mask, mask_indptr,
                                           std::string(kv_layout), op);
  const int64_t batch = kv_indptr.size(0) - 1;
  check_kv_rows_aligned(k, v, 2, op);
  if (rope_llama) check_rope_freq(rope_scale, rope_theta, op);
  const c10::cuda::CUDAGuard guard(q_.device());
  const at::Tensor q = rows_aligned(q_);
  auto out = at::empty(q.sizes(), q.options());
  auto lse = at::empty({q.size(0), q.size(1)}, q.options().dtype(at::kFloat));
  const at::Tensor ip = kv_indptr.contiguous(), qip = qo_indptr.contiguous();
  prefill::Params p = common_params(q, qip, out, lse, mask, mask_indptr, causal, window_left, logits_soft_cap,
                                    sm_scale, k_scale, v_scale, rope_llama, rope_scale, rope_theta);
  p.k_cache = k.data_ptr(), p.v_cache = v.data_ptr();
  p.k_stride_page = 0, p.k_stride_entry = k.stride(0), p.k_stride_head = k.stride(1);
  p.v_stride_page = 0, p.v_stride_entry = v.stride(0), p.v_stride_head = v.stride(1);
  p.kv_indptr = ip.data_ptr<int32_t>();
  p.num_indices = k.size(0);  // ragged: rows of k bound every request's range
  p.num_pages = 1;
  p.batch = (int)batch, p.hkv = (int)k.size(1), p.page_size = 1;
  launch(p, q, k.scalar_type(), true, op);
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(flashinfer, CUDA, m) {
  m.impl("batch_prefill_with_paged_kv_cache", &batch_prefill_paged_cuda);
  m.impl("batch_prefill_with_ragged_kv_cache", &batch_prefill_ragged_cuda);
}

}  // namespace flashinfer
