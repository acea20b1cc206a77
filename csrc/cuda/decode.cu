// CUDA adapter of batch decode: validate, describe the cache, choose the split count from shapes and the SM
// count (never from lengths, which live on the device), launch.
#include <torch/library.h>

#include <cmath>

#include "../kernels/decode.cuh"
#include "utils.cuh"

namespace flashinfer {
namespace {

int sm_count(int device) {
  static int counts[64] = {};
  if (device < 0 || device >= 64) return 132;
  if (counts[device] == 0) cudaDeviceGetAttribute(&counts[device], cudaDevAttrMultiProcessorCount, device);
  return counts[device] > 0 ? counts[device] : 132;
}

template <typename Q, typename KV>
cudaError_t launch_for_head_dim(const decode::Params& p, int head_dim, bool rope, cudaStream_t stream) {
  switch (head_dim) {
    case 64: return rope ? decode::launch<Q, KV, 64, true>(p, stream) : decode::launch<Q, KV, 64, false>(p, stream);
    case 128: return rope ? decode::launch<Q, KV, 128, true>(p, stream) : decode::launch<Q, KV, 128, false>(p, stream);
    case 256: return rope ? decode::launch<Q, KV, 256, true>(p, stream) : decode::launch<Q, KV, 256, false>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <typename Q>
cudaError_t launch_for_kv(const decode::Params& p, at::ScalarType kv, int head_dim, bool rope, cudaStream_t stream) {
  switch (kv) {
    case at::kFloat8_e4m3fn: return launch_for_head_dim<Q, __nv_fp8_e4m3>(p, head_dim, rope, stream);
    case at::kFloat8_e5m2: return launch_for_head_dim<Q, __nv_fp8_e5m2>(p, head_dim, rope, stream);
    default: return launch_for_head_dim<Q, Q>(p, head_dim, rope, stream);
  }
}

std::tuple<at::Tensor, at::Tensor> batch_decode_cuda(const at::Tensor& q_, const at::Tensor& k_cache,
                                                     const std::optional<at::Tensor>& v_cache,
                                                     const at::Tensor& kv_indptr, const at::Tensor& kv_indices,
                                                     const at::Tensor& kv_last_page_len, c10::string_view kv_layout,
                                                     bool rope_llama, int64_t window_left, double logits_soft_cap,
                                                     double sm_scale, double k_scale, double v_scale,
                                                     double rope_scale, double rope_theta) {
  const char* op = "batch_decode_with_paged_kv_cache";
  const PagedKV cache = paged_kv_views(k_cache, v_cache, std::string(kv_layout), op);
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
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.sm_scale = (float)sm_scale, p.logits_soft_cap = (float)logits_soft_cap;
  p.k_scale = (float)k_scale, p.v_scale = (float)v_scale;
  p.window_left = (int)window_left;
  p.rope_rcp_scale = (float)(1.0 / rope_scale), p.rope_log2_theta = (float)std::log2(rope_theta);

  // Enough blocks for two waves when batch * kv_heads alone cannot fill the GPU.
  const int64_t blocks = std::max<int64_t>(batch * hkv, 1);
  p.num_splits = (int)std::min<int64_t>(32, std::max<int64_t>(1, (2 * sm_count(q.get_device()) + blocks - 1) / blocks));
  at::Tensor tmp_o, tmp_lse;
  if (p.num_splits > 1) {
    tmp_o = at::empty({batch, p.num_splits, hq, d}, q.options().dtype(at::kFloat));
    tmp_lse = at::empty({batch, p.num_splits, hq}, q.options().dtype(at::kFloat));
    p.tmp_o = tmp_o.data_ptr<float>();
    p.tmp_lse = tmp_lse.data_ptr<float>();
  }
  // The kernel moves 8 elements of a KV row at a time.
  const uint64_t row_bytes = 8 * cache.k.element_size();
  bool aligned = addr(cache.k) % row_bytes == 0 && addr(cache.v) % row_bytes == 0;
  for (int i = 0; i < 3; ++i) aligned = aligned && cache.k.stride(i) % 8 == 0 && cache.v.stride(i) % 8 == 0;
  check_condition(aligned, op, "paged_kv_cache rows must start on 8-element boundaries (aligned views of a cache)");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t err = cudaSuccess;
  if (q.scalar_type() == at::kHalf) {
    err = launch_for_kv<__half>(p, cache.k.scalar_type(), (int)d, rope_llama, stream);
  } else {
    err = launch_for_kv<__nv_bfloat16>(p, cache.k.scalar_type(), (int)d, rope_llama, stream);
  }
  check_launch(err, op);
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(flashinfer, CUDA, m) { m.impl("batch_decode_with_paged_kv_cache", &batch_decode_cuda); }

}  // namespace flashinfer
