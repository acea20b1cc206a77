// CPU implementations of the RoPE family. Angles in double precision and rotation in fp32, as on CUDA.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "../checks.h"
#include "rope.h"

namespace flashinfer {
namespace {

struct CosSin {
  at::Tensor cos, sin;  // [nnz, rotary_dim / 2], fp32
};

// Positions of a ragged batch: pos = offsets[b] + t - indptr[b] for token t of request b. Tokens outside
// [indptr[0], indptr[batch]) are padding: `valid` is false for them.
std::pair<at::Tensor, at::Tensor> ragged_positions(const at::Tensor& indptr, const at::Tensor& offsets, int64_t nnz) {
  auto t = at::arange(nnz, indptr.options().dtype(at::kLong));
  const int64_t batch = offsets.size(0);
  if (batch == 0) return {at::zeros({nnz}, t.options().dtype(at::kDouble)), at::zeros({nnz}, t.options().dtype(at::kBool))};
  auto ip = indptr.to(at::kLong);
  auto b = (at::searchsorted(ip, t, /*out_int32=*/false, /*right=*/true) - 1).clamp(0, batch - 1);
  auto valid = (t >= ip[0]) & (t < ip[batch]);
  auto pos = offsets.to(at::kLong).index_select(0, b) + t - ip.index_select(0, b);
  return {pos.to(at::kDouble), valid};
}

CosSin computed_cos_sin(const at::Tensor& pos, const at::Tensor& valid, int64_t rotary_dim, double rope_scale,
                        double rope_theta, bool llama31, Llama31Smoothing sm) {
  auto i = at::arange(rotary_dim / 2, pos.options());
  auto freq = at::pow(rope_theta, i * (-2.0 / rotary_dim));
  if (llama31) {
    auto smooth = (freq * sm.a + sm.b).clamp(0.0, 1.0);
    freq = (1 - smooth) * freq / rope_scale + smooth * freq;
  } else {
    freq = freq / rope_scale;
  }
  auto angle = pos.unsqueeze(1) * freq.unsqueeze(0);
  auto v = valid.unsqueeze(1);
  // Padding tokens rotate by nothing.
  return {at::where(v, angle.cos(), 1.0).to(at::kFloat), at::where(v, angle.sin(), 0.0).to(at::kFloat)};
}

// Rotates dims [0, rotary_dim) of src [nnz, H, D] into dst (which may be src).
void rotate(const at::Tensor& src, const at::Tensor& dst, const CosSin& cs, bool interleave) {
  const int64_t half = cs.cos.size(1);
  auto x = src.narrow(-1, 0, 2 * half).to(at::kFloat);
  auto c = cs.cos.unsqueeze(1), s = cs.sin.unsqueeze(1);
  at::Tensor x1, x2;
  if (interleave) {
    x1 = x.slice(-1, 0, 2 * half, 2);
    x2 = x.slice(-1, 1, 2 * half, 2);
  } else {
    x1 = x.narrow(-1, 0, half);
    x2 = x.narrow(-1, half, half);
  }
  auto o1 = x1 * c - x2 * s, o2 = x2 * c + x1 * s;
  auto o = interleave ? at::stack({o1, o2}, -1).flatten(-2) : at::cat({o1, o2}, -1);
  dst.narrow(-1, 0, 2 * half).copy_(o);
}

std::tuple<at::Tensor, at::Tensor> rotate_out_of_place(const at::Tensor& q, const at::Tensor& k, const CosSin& cs,
                                                       bool interleave) {
  auto q_out = at::empty(q.sizes(), q.options()), k_out = at::empty(k.sizes(), k.options());
  q_out.copy_(q);
  k_out.copy_(k);
  rotate(q, q_out, cs, interleave);
  rotate(k, k_out, cs, interleave);
  return {q_out, k_out};
}

CosSin freq_cos_sin(const at::Tensor& pos, const at::Tensor& valid, int64_t rotary_dim, double rope_scale,
                    double rope_theta, bool llama31, double low, double high, double old_ctx, const char* op) {
  check_rope_freq(rope_scale, rope_theta, op);
  Llama31Smoothing sm{0, 0};
  if (llama31) sm = llama31_smoothing(low, high, old_ctx, op);
  return computed_cos_sin(pos, valid, rotary_dim, rope_scale, rope_theta, llama31, sm);
}

CosSin ragged_cos_sin(const at::Tensor& q, const at::Tensor& k, const at::Tensor& indptr, const at::Tensor& offsets,
                      int64_t rotary_dim, double rope_scale, double rope_theta, bool llama31, double low,
                      double high, double old_ctx, const char* op) {
  check_rope_qk(q, k, rotary_dim, op);
  check_ragged(indptr, offsets, q, op);
  auto [pos, valid] = ragged_positions(indptr, offsets, q.size(0));
  return freq_cos_sin(pos, valid, rotary_dim, rope_scale, rope_theta, llama31, low, high, old_ctx, op);
}

CosSin pos_ids_cos_sin(const at::Tensor& q, const at::Tensor& k, const at::Tensor& pos_ids, int64_t rotary_dim,
                       double rope_scale, double rope_theta, bool llama31, double low, double high, double old_ctx,
                       const char* op) {
  check_rope_qk(q, k, rotary_dim, op);
  check_positions(pos_ids, "pos_ids", q, op);
  auto valid = at::ones({q.size(0)}, pos_ids.options().dtype(at::kBool));
  return freq_cos_sin(pos_ids.to(at::kDouble), valid, rotary_dim, rope_scale, rope_theta, llama31, low, high,
                      old_ctx, op);
}

std::tuple<at::Tensor, at::Tensor> apply_rope_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& indptr,
                                                  const at::Tensor& offsets, int64_t rotary_dim, bool interleave,
                                                  double rope_scale, double rope_theta, bool llama31, double low,
                                                  double high, double old_ctx) {
  auto cs = ragged_cos_sin(q, k, indptr, offsets, rotary_dim, rope_scale, rope_theta, llama31, low, high, old_ctx,
                           "apply_rope");
  return rotate_out_of_place(q, k, cs, interleave);
}

void apply_rope_inplace_cpu(at::Tensor& q, at::Tensor& k, const at::Tensor& indptr, const at::Tensor& offsets,
                            int64_t rotary_dim, bool interleave, double rope_scale, double rope_theta, bool llama31,
                            double low, double high, double old_ctx) {
  auto cs = ragged_cos_sin(q, k, indptr, offsets, rotary_dim, rope_scale, rope_theta, llama31, low, high, old_ctx,
                           "apply_rope_inplace");
  rotate(q, q, cs, interleave);
  rotate(k, k, cs, interleave);
}

std::tuple<at::Tensor, at::Tensor> apply_rope_pos_ids_cpu(const at::Tensor& q, const at::Tensor& k,
                                                          const at::Tensor& pos_ids, int64_t rotary_dim,
                                                          bool interleave, double rope_scale, double rope_theta,
                                                          bool llama31, double low, double high, double old_ctx) {
  auto cs = pos_ids_cos_sin(q, k, pos_ids, rotary_dim, rope_scale, rope_theta, llama31, low, high, old_ctx,
                            "apply_rope_pos_ids");
  return rotate_out_of_place(q, k, cs, interleave);
}

void apply_rope_pos_ids_inplace_cpu(at::Tensor& q, at::Tensor& k, const at::Tensor& pos_ids, int64_t rotary_dim,
                                    bool interleave, double rope_scale, double rope_theta, bool llama31, double low,
                                    double high, double old_ctx) {
  auto cs = pos_ids_cos_sin(q, k, pos_ids, rotary_dim, rope_scale, rope_theta, llama31, low, high, old_ctx,
                            "apply_rope_pos_ids_inplace");
  rotate(q, q, cs, interleave);
  rotate(k, k, cs, interleave);
}

// cos/sin rows gathered from the cache; a position outside the cache yields NaN (no read past its end).
CosSin cached_cos_sin(const at::Tensor& positions, const at::Tensor& cache) {
  const int64_t len = cache.size(0), half = cache.size(1) / 2;
  auto pos = positions.to(at::kLong);
  auto inside = (pos >= 0) & (pos < len);
  if (len == 0) {
    auto nan = at::full({pos.size(0), half}, std::numeric_limits<float>::quiet_NaN(), cache.options());
    return {nan, nan};
  }
  auto rows = cache.index_select(0, pos.clamp(0, len - 1));
  auto v = inside.unsqueeze(1);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  return {at::where(v, rows.narrow(1, 0, half), nan), at::where(v, rows.narrow(1, half, half), nan)};
}

std::tuple<at::Tensor, at::Tensor, CosSin> cache_args(const at::Tensor& positions, const at::Tensor& query,
                                                      const at::Tensor& key, int64_t head_size,
                                                      const at::Tensor& cache, const char* op) {
  auto q = heads_view(query, "query", head_size, op);
  auto k = heads_view(key, "key", head_size, op);
  check_rope_qk(q, k, head_size, op);
  check_positions(positions, "positions", q, op);
  check_cos_sin_cache(cache, q, op);
  return {q, k, cached_cos_sin(positions, cache)};
}

std::tuple<at::Tensor, at::Tensor> apply_rope_with_cos_sin_cache_cpu(const at::Tensor& positions,
                                                                     const at::Tensor& query, const at::Tensor& key,
                                                                     int64_t head_size, const at::Tensor& cache,
                                                                     bool is_neox) {
  auto [q, k, cs] = cache_args(positions, query, key, head_size, cache, "apply_rope_with_cos_sin_cache");
  auto [q_out, k_out] = rotate_out_of_place(q, k, cs, !is_neox);
  return {q_out.view(query.sizes()), k_out.view(key.sizes())};
}

void apply_rope_with_cos_sin_cache_inplace_cpu(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                                               int64_t head_size, const at::Tensor& cache, bool is_neox) {
  auto [q, k, cs] = cache_args(positions, query, key, head_size, cache, "apply_rope_with_cos_sin_cache_inplace");
  rotate(q, q, cs, !is_neox);
  rotate(k, k, cs, !is_neox);
}

}  // namespace

at::Tensor rope_neox_float(const at::Tensor& x, const at::Tensor& positions, double rope_scale, double rope_theta) {
  const int64_t d = x.size(-1);
  auto pos = positions.to(at::kDouble);
  auto cs = computed_cos_sin(pos, at::ones({pos.size(0)}, pos.options().dtype(at::kBool)), d, rope_scale,
                             rope_theta, false, {0, 0});
  auto out = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  rotate(x.to(at::kFloat), out, cs, /*interleave=*/false);
  return out;
}

TORCH_LIBRARY_IMPL(flashinfer, CPU, m) {
  m.impl("apply_rope", &apply_rope_cpu);
  m.impl("apply_rope_inplace", &apply_rope_inplace_cpu);
  m.impl("apply_rope_pos_ids", &apply_rope_pos_ids_cpu);
  m.impl("apply_rope_pos_ids_inplace", &apply_rope_pos_ids_inplace_cpu);
  m.impl("apply_rope_with_cos_sin_cache", &apply_rope_with_cos_sin_cache_cpu);
  m.impl("apply_rope_with_cos_sin_cache_inplace", &apply_rope_with_cos_sin_cache_inplace_cpu);
}

}  // namespace flashinfer
