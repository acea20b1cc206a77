// CUDA adapter of batch prefill (paged and ragged KV): validate, describe q, the cache and the tables, launch.
// The grid depends only on shapes (see prefill.cuh), so nothing here reads device data.
#include <torch/library.h>

#include "prefill_launch.cuh"
#include "utils.cuh"

namespace flashinfer {
namespace {

// Fields common to both forms; the KV description is filled in by the caller.
prefill::Params common_params(const at::Tensor& q, const at::Tensor& qo_indptr, const at::Tensor& out,
                              const at::Tensor& lse, const std::optional<at::Tensor>& mask,
                              const std::optional<at::Tensor>& mask_indptr, bool causal, int64_t window_left,
                              double logits_soft_cap, double sm_scale, double k_scale, double v_scale) {
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
  return p;
}

void check_kv_aligned(const at::Tensor& k, const at::Tensor& v, int64_t dims, const char* op) {
  // The kernel copies 8 elements (16 bytes) of a KV row at a time.
  bool aligned = addr(k) % 16 == 0 && addr(v) % 16 == 0;
  for (int64_t i = 0; i < dims; ++i) aligned = aligned && k.stride(i) % 8 == 0 && v.stride(i) % 8 == 0;
  check_condition(aligned, op, "KV rows must start on 8-element boundaries (aligned views of a cache)");
}

void launch(const prefill::Params& p, const at::Tensor& q, bool ragged, const char* op) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const cudaError_t err = q.scalar_type() == at::kHalf
                              ? prefill::run<__half>(p, (int)q.size(2), ragged, stream)
                              : prefill::run<__nv_bfloat16>(p, (int)q.size(2), ragged, stream);
  check_launch(err, op);
}

std::tuple<at::Tensor, at::Tensor> batch_prefill_paged_cuda(
    const at::Tensor& q_, const at::Tensor& qo_indptr, const at::Tensor& k_cache,
    const std::optional<at::Tensor>& v_cache, const at::Tensor& kv_indptr, const at::Tensor& kv_indices,
    const at::Tensor& kv_last_page_len, const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& mask_indptr, c10::string_view kv_layout, bool causal, int64_t window_left,
    double logits_soft_cap, double sm_scale, double k_scale, double v_scale) {
  const char* op = "batch_prefill_with_paged_kv_cache";
  const PagedKV cache = paged_kv_views(k_cache, v_cache, std::string(kv_layout), op);
  check_paged_tables(cache, kv_indices, kv_indptr, kv_last_page_len, q_, "q", op);
  const int64_t batch = kv_last_page_len.size(0);
  check_prefill(q_, qo_indptr, cache.k, batch, mask, mask_indptr, op);
  check_condition(kv_indices.size(0) * cache.page_size < (int64_t(1) << 31), op,
                  "kv_indices.size(0) * page_size must stay below 2^31 tokens");
  check_kv_aligned(cache.k, cache.v, 3, op);
  const c10::cuda::CUDAGuard guard(q_.device());
  const at::Tensor q = q_.stride(2) == 1 ? q_ : q_.contiguous();
  auto out = at::empty(q.sizes(), q.options());
  auto lse = at::empty({q.size(0), q.size(1)}, q.options().dtype(at::kFloat));
  const at::Tensor ip = kv_indptr.contiguous(), ind = kv_indices.contiguous(), last = kv_last_page_len.contiguous();
  const at::Tensor qip = qo_indptr.contiguous();
  prefill::Params p = common_params(q, qip, out, lse, mask, mask_indptr, causal, window_left, logits_soft_cap,
                                    sm_scale, k_scale, v_scale);
  p.k_cache = cache.k.data_ptr(), p.v_cache = cache.v.data_ptr();
  p.k_stride_page = cache.k.stride(0), p.k_stride_entry = cache.k.stride(1), p.k_stride_head = cache.k.stride(2);
  p.v_stride_page = cache.v.stride(0), p.v_stride_entry = cache.v.stride(1), p.v_stride_head = cache.v.stride(2);
  p.kv_indptr = ip.data_ptr<int32_t>();
  p.indices = ind.data_ptr<int32_t>();
  p.last_page_len = last.data_ptr<int32_t>();
  p.num_indices = kv_indices.size(0);
  p.num_pages = cache.k.size(0);
  p.batch = (int)batch, p.hkv = (int)cache.k.size(2), p.page_size = (int)cache.page_size;
  p.page_div = FastDiv((uint32_t)cache.page_size);
  launch(p, q, false, op);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> batch_prefill_ragged_cuda(
    const at::Tensor& q_, const at::Tensor& qo_indptr, const at::Tensor& k_, const at::Tensor& v_,
    const at::Tensor& kv_indptr, const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& mask_indptr,
    c10::string_view kv_layout, bool causal, int64_t window_left, double logits_soft_cap, double sm_scale,
    double k_scale, double v_scale) {
  const char* op = "batch_prefill_with_ragged_kv_cache";
  const auto [k, v] = ragged_kv_views(k_, v_, std::string(kv_layout), op);
  check_indptr(kv_indptr, "kv_indptr", q_, op);
  const int64_t batch = kv_indptr.size(0) - 1;
  check_prefill(q_, qo_indptr, k, batch, mask, mask_indptr, op);
  check_condition(k.size(0) < (int64_t(1) << 31), op, "k must hold fewer than 2^31 tokens");
  check_kv_aligned(k, v, 2, op);
  const c10::cuda::CUDAGuard guard(q_.device());
  const at::Tensor q = q_.stride(2) == 1 ? q_ : q_.contiguous();
  auto out = at::empty(q.sizes(), q.options());
  auto lse = at::empty({q.size(0), q.size(1)}, q.options().dtype(at::kFloat));
  const at::Tensor ip = kv_indptr.contiguous(), qip = qo_indptr.contiguous();
  prefill::Params p = common_params(q, qip, out, lse, mask, mask_indptr, causal, window_left, logits_soft_cap,
                                    sm_scale, k_scale, v_scale);
  p.k_cache = k.data_ptr(), p.v_cache = v.data_ptr();
  p.k_stride_page = 0, p.k_stride_entry = k.stride(0), p.k_stride_head = k.stride(1);
  p.v_stride_page = 0, p.v_stride_entry = v.stride(0), p.v_stride_head = v.stride(1);
  p.kv_indptr = ip.data_ptr<int32_t>();
  p.num_indices = k.size(0);  // ragged: rows of k bound every request's range
  p.num_pages = 1;
  p.batch = (int)batch, p.hkv = (int)k.size(1), p.page_size = 1;
  launch(p, q, true, op);
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(flashinfer, CUDA, m) {
  m.impl("batch_prefill_with_paged_kv_cache", &batch_prefill_paged_cuda);
  m.impl("batch_prefill_with_ragged_kv_cache", &batch_prefill_ragged_cuda);
}

}  // namespace flashinfer
