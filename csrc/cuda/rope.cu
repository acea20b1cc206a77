// CUDA adapters of the RoPE family.
#include <torch/library.h>

#include "../kernels/rope.cuh"
#include "utils.cuh"

namespace flashinfer {
namespace {

struct Source {                   // where positions and angles come from
  const at::Tensor* pos_ids = nullptr;
  const at::Tensor* indptr = nullptr;
  const at::Tensor* offsets = nullptr;
  const at::Tensor* cache = nullptr;
  double rope_scale = 1, rope_theta = 1e4;
  bool llama31 = false;
  Llama31Smoothing smoothing{0, 0};
};

// q/k are read through their strides; outputs may be the inputs (in place) or new contiguous tensors.
void launch_rope(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& q_out,
                 const at::Tensor& k_out, int64_t rotary_dim, bool interleave, const Source& src) {
  const c10::cuda::CUDAGuard guard(q.device());
  check_last_dim_contiguous(q_out, "q", op);
  check_last_dim_contiguous(k_out, "k", op);
  rope::Params p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.q_out = q_out.data_ptr();
  p.k_out = k_out.data_ptr();
  p.q_stride_n = q.stride(0), p.q_stride_h = q.stride(1);
  p.k_stride_n = k.stride(0), p.k_stride_h = k.stride(1);
  p.qo_stride_n = q_out.stride(0), p.qo_stride_h = q_out.stride(1);
  p.ko_stride_n = k_out.stride(0), p.ko_stride_h = k_out.stride(1);
  p.nnz = q.size(0);
  p.hq = (int)q.size(1);
  p.hk = (int)k.size(1);
  p.head_dim = (int)q.size(2);
  p.rotary_dim = (int)rotary_dim;
  p.interleave = interleave;
  p.copy_rest = q_out.data_ptr() != q.data_ptr() && rotary_dim < q.size(2);
  p.pos_ids = src.pos_ids ? src.pos_ids->data_ptr() : nullptr;
  p.indptr = src.indptr ? src.indptr->data_ptr<int32_t>() : nullptr;
  p.offsets = src.offsets ? src.offsets->data_ptr<int32_t>() : nullptr;
  p.batch = src.offsets ? (int)src.offsets->size(0) : 0;
  p.use_cache = src.cache != nullptr;
  p.cos_sin_cache = src.cache ? src.cache->data_ptr<float>() : nullptr;
  p.cache_len = src.cache ? src.cache->size(0) : 0;
  p.cache_stride = src.cache ? src.cache->stride(0) : 0;
  p.theta = src.rope_theta;
  p.rcp_scale = 1.0 / src.rope_scale;
  p.llama31 = src.llama31;
  p.smooth_a = src.smoothing.a;
  p.smooth_b = src.smoothing.b;

  const int vec = widest_vec(q.element_size(), rotary_dim / 2, {addr(q), addr(k), addr(q_out), addr(k_out)},
                             {p.q_stride_n, p.q_stride_h, p.k_stride_n, p.k_stride_h, p.qo_stride_n, p.qo_stride_h,
                              p.ko_stride_n, p.ko_stride_h, p.copy_rest ? q.size(2) - rotary_dim : 0});
  const bool pos64 = src.pos_ids && src.pos_ids->scalar_type() == at::kLong;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t err = cudaSuccess;
  FI_DISPATCH_FLOAT(q.scalar_type(), T, {
    err = pos64 ? rope::launch<T, int64_t>(p, vec, stream) : rope::launch<T, int32_t>(p, vec, stream);
  });
  check_launch(err, op);
}

Source freq_source(double rope_scale, double rope_theta, bool llama31, double low, double high, double old_ctx,
                   const char* op) {
  check_rope_freq(rope_scale, rope_theta, op);
  Source s;
  s.rope_scale = rope_scale;
  s.rope_theta = rope_theta;
  s.llama31 = llama31;
  if (llama31) s.smoothing = llama31_smoothing(low, high, old_ctx, op);
  return s;
}

// Inputs whose last dim is strided are read from a contiguous copy (out-of-place calls only).
at::Tensor last_dim_contiguous(const at::Tensor& t) { return t.size(2) <= 1 || t.stride(2) == 1 ? t : t.contiguous(); }

std::tuple<at::Tensor, at::Tensor> rope_out_of_place(const char* op, const at::Tensor& q_, const at::Tensor& k_,
                                                     int64_t rotary_dim, bool interleave, const Source& src) {
  const at::Tensor q = last_dim_contiguous(q_), k = last_dim_contiguous(k_);
  auto q_out = at::empty(q.sizes(), q.options()), k_out = at::empty(k.sizes(), k.options());
  launch_rope(op, q, k, q_out, k_out, rotary_dim, interleave, src);
  return {q_out, k_out};
}

std::tuple<at::Tensor, at::Tensor> apply_rope_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& indptr,
                                                   const at::Tensor& offsets, int64_t rotary_dim, bool interleave,
                                                   double rope_scale, double rope_theta, bool llama31, double low,
                                                   double high, double old_ctx) {
  const char* op = "apply_rope";
  check_rope_qk(q, k, rotary_dim, op);
  check_ragged(indptr, offsets, q, op);
  Source s = freq_source(rope_scale, rope_theta, llama31, low, high, old_ctx, op);
  const at::Tensor ip = indptr.contiguous(), off = offsets.contiguous();
  s.indptr = &ip;
  s.offsets = &off;
  return rope_out_of_place(op, q, k, rotary_dim, interleave, s);
}

void apply_rope_inplace_cuda(at::Tensor& q, at::Tensor& k, const at::Tensor& indptr, const at::Tensor& offsets,
                             int64_t rotary_dim, bool interleave, double rope_scale, double rope_theta, bool llama31,
                             double low, double high, double old_ctx) {
  const char* op = "apply_rope_inplace";
  check_rope_qk(q, k, rotary_dim, op);
  check_ragged(indptr, offsets, q, op);
  Source s = freq_source(rope_scale, rope_theta, llama31, low, high, old_ctx, op);
  const at::Tensor ip = indptr.contiguous(), off = offsets.contiguous();
  s.indptr = &ip;
  s.offsets = &off;
  launch_rope(op, q, k, q, k, rotary_dim, interleave, s);
}

std::tuple<at::Tensor, at::Tensor> apply_rope_pos_ids_cuda(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& pos_ids, int64_t rotary_dim,
                                                           bool interleave, double rope_scale, double rope_theta,
                                                           bool llama31, double low, double high, double old_ctx) {
  const char* op = "apply_rope_pos_ids";
  check_rope_qk(q, k, rotary_dim, op);
  check_positions(pos_ids, "pos_ids", q, op);
  Source s = freq_source(rope_scale, rope_theta, llama31, low, high, old_ctx, op);
  const at::Tensor pos = pos_ids.contiguous();
  s.pos_ids = &pos;
  return rope_out_of_place(op, q, k, rotary_dim, interleave, s);
}

void apply_rope_pos_ids_inplace_cuda(at::Tensor& q, at::Tensor& k, const at::Tensor& pos_ids, int64_t rotary_dim,
                                     bool interleave, double rope_scale, double rope_theta, bool llama31, double low,
                                     double high, double old_ctx) {
  const char* op = "apply_rope_pos_ids_inplace";
  check_rope_qk(q, k, rotary_dim, op);
  check_positions(pos_ids, "pos_ids", q, op);
  Source s = freq_source(rope_scale, rope_theta, llama31, low, high, old_ctx, op);
  const at::Tensor pos = pos_ids.contiguous();
  s.pos_ids = &pos;
  launch_rope(op, q, k, q, k, rotary_dim, interleave, s);
}

struct CacheArgs {
  at::Tensor q, k, pos, cache;
};

CacheArgs cache_args(const at::Tensor& positions, const at::Tensor& query, const at::Tensor& key, int64_t head_size,
                     const at::Tensor& cache, const char* op) {
  CacheArgs a{heads_view(query, "query", head_size, op), heads_view(key, "key", head_size, op)};
  check_rope_qk(a.q, a.k, head_size, op);
  check_positions(positions, "positions", a.q, op);
  check_cos_sin_cache(cache, a.q, op);
  a.pos = positions.contiguous();
  a.cache = cache;
  return a;
}

std::tuple<at::Tensor, at::Tensor> apply_rope_with_cos_sin_cache_cuda(const at::Tensor& positions,
                                                                      const at::Tensor& query, const at::Tensor& key,
                                                                      int64_t head_size, const at::Tensor& cache,
                                                                      bool is_neox) {
  const char* op = "apply_rope_with_cos_sin_cache";
  CacheArgs a = cache_args(positions, query, key, head_size, cache, op);
  Source s;
  s.pos_ids = &a.pos;
  s.cache = &a.cache;
  auto [q_out, k_out] = rope_out_of_place(op, a.q, a.k, cache.size(1), !is_neox, s);
  return {q_out.view(query.sizes()), k_out.view(key.sizes())};
}

void apply_rope_with_cos_sin_cache_inplace_cuda(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                                                int64_t head_size, const at::Tensor& cache, bool is_neox) {
  const char* op = "apply_rope_with_cos_sin_cache_inplace";
  CacheArgs a = cache_args(positions, query, key, head_size, cache, op);
  Source s;
  s.pos_ids = &a.pos;
  s.cache = &a.cache;
  launch_rope(op, a.q, a.k, a.q, a.k, cache.size(1), !is_neox, s);
}

}  // namespace

TORCH_LIBRARY_IMPL(flashinfer, CUDA, m) {
  m.impl("apply_rope", &apply_rope_cuda);
  m.impl("apply_rope_inplace", &apply_rope_inplace_cuda);
  m.impl("apply_rope_pos_ids", &apply_rope_pos_ids_cuda);
  m.impl("apply_rope_pos_ids_inplace", &apply_rope_pos_ids_inplace_cuda);
  m.impl("apply_rope_with_cos_sin_cache", &apply_rope_with_cos_sin_cache_cuda);
  m.impl("apply_rope_with_cos_sin_cache_inplace", &apply_rope_with_cos_sin_cache_inplace_cuda);
}

}  // namespace flashinfer
