// CUDA adapter of batch decode: validate, describe the cache, choose the split count from shapes and the SM
// count (never from lengths, which live on the device), launch.
#include <torch/library.h>

#include <cmath>

#include "decode_launch.cuh"
#include "utils.cuh"

namespace flashinfer {
namespace {

int sm_count(int device) {
  static int counts[64] = {};
  if (device < 0 || device >= 64) return 132;
  if (counts[device] == 0) cudaDeviceGetAttribute(&counts[device], cudaDevAttrMultiProcessorCount, device);
  return counts[device] > 0 ? counts[device] : 132;
}

std::tuple<at::Tensor, at::Tensor> batch_decode_cuda(const at::Tensor& q_, const at::Tensor& k_cache,
                                                     const std::optional<at::Tensor>& v_cache,
                                                     const at::Tensor& kv_indptr, const at::Tensor& kv_indices,
                                                     const at::Tensor& kv_last_page_len, c10::string_view kv_layout,
                                                     bool rope_llama, int64_t window_left, double logits_soft_cap,
                                                     double sm_scale, double k_scale, double v_scale,
                                                     double rope_scale, double rope_theta,
                                                     c10::string_view backend) {
  const char* op = "batch_decode_with_paged_kv_cache";
  const PagedKV cache = paged_kv_views(k_cache, v_cache, std::string(kv_layout), op);
  check_decode_backend(std::string(backend), op);
  check_decode(q_, cache, kv_indptr, kv_indices, kv_last_page_len, op);
  const c10::cuda::CUDAGuard guard(q_.device());
  const at::Tensor q = q_.stride(2) == 1 ? q_ : q_.contiguous();
  const int64_t batch = q.size(0), hq = q.size(1), d = q.size(2), hkv = cache.k.size(2);
  auto out = at::empty({batch, hq, d}, q.options());
  auto lse = at::empty({batch, hq}, q.options().dtype(at::kFloat));
  const at::Tensor ip = kv_indptr.contiguous(), ind = kv_indices.contiguous(), last = kv_last_page_len.contiguous();

  decode::Params p{};
  p.q = q.data_ptr();
  p.q_stride_n = q.stride(0), p.q_stride_h = q.stride(1);
  p.k_cache = cache.k.data_ptr();
  p.v_cache = cache.v.data_ptr();
  p.k_stride_page = cache.k.stride(0), p.k_stride_entry = cache.k.stride(1), p.k_stride_head = cache.k.stride(2);
  p.v_stride_page = cache.v.stride(0), p.v_stride_entry = cache.v.stride(1), p.v_stride_head = cache.v.stride(2);
  p.indptr = ip.data_ptr<int32_t>();
  p.indices = ind.data_ptr<int32_t>();
  p.last_page_len = last.data_ptr<int32_t>();
  p.num_indices = kv_indices.size(0);
  p.num_pages = cache.k.size(0);
  p.batch = (int)batch, p.hq = (int)hq, p.hkv = (int)hkv, p.page_size = (int)cache.page_size;
  p.page_div = FastDiv((uint32_t)cache.page_size);
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.sm_scale = (float)sm_scale, p.logits_soft_cap = (float)logits_soft_cap;
  p.k_scale = (float)k_scale, p.v_scale = (float)v_scale;
  p.window_left = (int)window_left;
  p.rope_rcp_scale = (float)(1.0 / rope_scale), p.rope_log2_theta = (float)std::log2(rope_theta);

  // Partials of the KV splits, when the launcher picks more than one (the count depends on shapes only).
  at::Tensor tmp_o, tmp_lse;
  const decode::Launch l{sm_count(q.get_device()),
                 [&](decode::Params& pp) {
                   tmp_o = at::empty({batch, pp.num_splits, hq, d}, q.options().dtype(at::kFloat));
                   tmp_lse = at::empty({batch, pp.num_splits, hq}, q.options().dtype(at::kFloat));
                   pp.tmp_o = tmp_o.data_ptr<float>();
                   pp.tmp_lse = tmp_lse.data_ptr<float>();
                 },
                 c10::cuda::getCurrentCUDAStream()};
  check_condition(kv_indices.size(0) * cache.page_size < (int64_t(1) << 31), op,
                  "kv_indices.size(0) * page_size must stay below 2^31 tokens");
  // The kernel moves 8 elements of a KV row at a time.
  const uint64_t row_bytes = 8 * cache.k.element_size();
  bool aligned = addr(cache.k) % row_bytes == 0 && addr(cache.v) % row_bytes == 0;
  for (int i = 0; i < 3; ++i) aligned = aligned && cache.k.stride(i) % 8 == 0 && cache.v.stride(i) % 8 == 0;
  check_condition(aligned, op, "paged_kv_cache rows must start on 8-element boundaries (aligned views of a cache)");
  const bool half = q.scalar_type() == at::kHalf, tc = backend != "cuda_core";
  cudaError_t err = cudaSuccess;
  switch (cache.k.scalar_type()) {
    case at::kFloat8_e4m3fn:
      err = half ? decode::run<__half, __nv_fp8_e4m3>(p, (int)d, rope_llama, tc, l)
                 : decode::run<__nv_bfloat16, __nv_fp8_e4m3>(p, (int)d, rope_llama, tc, l);
      break;
    case at::kFloat8_e5m2:
      err = half ? decode::run<__half, __nv_fp8_e5m2>(p, (int)d, rope_llama, tc, l)
                 : decode::run<__nv_bfloat16, __nv_fp8_e5m2>(p, (int)d, rope_llama, tc, l);
      break;
    default:
      err = half ? decode::run<__half, __half>(p, (int)d, rope_llama, tc, l)
                 : decode::run<__nv_bfloat16, __nv_bfloat16>(p, (int)d, rope_llama, tc, l);
  }
  check_launch(err, op);
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(flashinfer, CUDA, m) { m.impl("batch_decode_with_paged_kv_cache", &batch_decode_cuda); }

}  // namespace flashinfer
