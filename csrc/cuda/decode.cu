// CUDA adapter of batch decode: validate, describe the cache, choose the split count from shapes and the SM
// count (never from lengths, which live on the device), launch.
#include <torch/library.h>

#include <cmath>

#include "decode_launch.cuh"
#include "utils.cuh"

namespace flashinfer {
namespace {

std::tuple<at::Tensor, at::Tensor> batch_decode_cuda(const at::Tensor& q_, const at::Tensor& k_cache,
                                                     const std::optional<at::Tensor>& v_cache,
                                                     const at::Tensor& kv_indptr, const at::Tensor& kv_indices,
                                                     const at::Tensor& kv_last_page_len, c10::string_view kv_layout,
                                                     bool rope_llama, int64_t window_left, double logits_soft_cap,
                                                     double sm_scale, double k_scale, double v_scale,
                                                     double rope_scale, double rope_theta,
                                                     c10::string_view backend) {
  const char* op = "batch_decode_with_paged_kv_cache";
  const PagedKV cache = check_decode(q_, k_cache, v_cache, kv_indptr, kv_indices, kv_last_page_len,
                                     std::string(kv_layout), std::string(backend), op);
  check_kv_rows_aligned(cache.k, cache.v, 3, op);
  if (rope_llama) check_rope_freq(rope_scale, rope_theta, op);
  const c10::cuda::CUDAGuard guard(q_.device());
  const at::Tensor q = q_.stride(2) == 1 ? q_ : q_.contiguous();
  const int64_t batch = q.size(0), hq = q.size(1), d = q.size(2), hkv = cache.k.size(2);
  auto out = at::empty({batch, hq, d}, q.options());
  auto lse = at::empty({batch, hq}, q.options().dtype(at::kFloat));
  const at::Tensor ip = kv_indptr.contiguous(), ind = kv_indices.contiguous(), last = kv_last_page_len.contiguous();

  decode::Params p{};
  p.q = q.data_ptr();
  p.q_stride_n = q.stride(0), p.q_stride_h = q.stride(1);
  set_paged_kv(p, cache, ind, last);
  p.indptr = ip.data_ptr<int32_t>();
  p.batch = (int)batch, p.hq = (int)hq, p.hkv = (int)hkv;
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.sm_scale = (float)sm_scale, p.logits_soft_cap = (float)logits_soft_cap;
  p.k_scale = (float)k_scale, p.v_scale = (float)v_scale;
  p.window_left = (int)window_left;
  p.rope_rcp_scale = (float)(1.0 / rope_scale), p.rope_log2_theta = (float)std::log2(rope_theta);

  // Partials of the KV splits, when the launcher picks more than one (the count depends on shapes only).
  at::Tensor tmp_o, tmp_lse, counters;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const decode::Launch l{sm_count(q.get_device()),
                 [&](decode::Params& pp) {
                   tmp_o = at::empty({batch, pp.num_splits, hq, d}, q.options().dtype(at::kFloat));
                   tmp_lse = at::empty({batch, pp.num_splits, hq}, q.options().dtype(at::kFloat));
                   pp.tmp_o = tmp_o.data_ptr<float>();
                   pp.tmp_lse = tmp_lse.data_ptr<float>();
                   const int64_t n = batch * hkv * pp.head_chunks;
                   pp.counters = zeroed_counters(q.get_device(), stream, n);
                   pp.counters_zeroed = pp.counters != nullptr;
                   if (!pp.counters_zeroed) {
                     counters = at::empty({n}, q.options().dtype(at::kInt));
                     pp.counters = counters.data_ptr<int>();
                   }
                 },
                 stream};
  const bool tc = backend != "cuda_core";
  const cudaError_t err = dispatch_attention(q.scalar_type(), cache.k.scalar_type(), [&](auto qt, auto kvt) {
    return decode::run<typename decltype(qt)::type, typename decltype(kvt)::type>(p, (int)d, rope_llama, tc, l);
  });
  check_launch(err, op);
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(flashinfer, CUDA, m) { m.impl("batch_decode_with_paged_kv_cache", &batch_decode_cuda); }

}  // namespace flashinfer
