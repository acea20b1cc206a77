// CPU implementation of batch prefill (paged and ragged KV): per request, gather its KV and attend in fp32 with
// the same masks as the CUDA kernel (causal bottom-right aligned, sliding window, packed custom mask, soft cap) and
// the same ROPE_LLAMA positions.
// Page tables, lengths and masks are read on the host; entries that point outside the cache, and mask bits past
// the end of the mask, count as masked tokens, as on CUDA.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <functional>
#include <limits>

#include "../checks.h"
#include "rope.h"

namespace flashinfer {
namespace {

struct RequestKV {
  at::Tensor k, v;    // [kv_len, Hkv, D] fp32
  at::Tensor ok;      // [kv_len] bool: token readable
};

std::tuple<at::Tensor, at::Tensor> prefill_cpu(const at::Tensor& q, const at::Tensor& qo_indptr, int64_t batch,
                                               const std::function<RequestKV(int64_t)>& request_kv,
                                               const std::optional<at::Tensor>& mask,
                                               const std::optional<at::Tensor>& mask_indptr, bool causal,
                                               int64_t window_left, double logits_soft_cap, double sm_scale,
                                               double k_scale, double v_scale, bool rope_llama, double rope_scale,
                                               double rope_theta) {
  const int64_t total_q = q.size(0), hq = q.size(1), d = q.size(2);
  const float inf = std::numeric_limits<float>::infinity();
  auto out = at::zeros({total_q, hq, d}, q.options().dtype(at::kFloat));
  auto lse = at::full({total_q, hq}, -inf, q.options().dtype(at::kFloat));
  const auto qip = qo_indptr.to(at::kLong);
  const auto qa = qip.accessor<int64_t, 1>();
  at::Tensor mip;
  if (mask) mip = mask_indptr->to(at::kLong);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t q0 = std::min(std::max<int64_t>(qa[b], 0), total_q);
    const int64_t qlen = std::min(std::max<int64_t>(qa[b + 1], 0), total_q) - q0;
    if (qlen <= 0) continue;
    const RequestKV kv = request_kv(b);
    const int64_t kvlen = kv.k.size(0);
    if (kvlen == 0) continue;
    const int64_t group = hq / kv.k.size(1);
    auto qb = q.narrow(0, q0, qlen).to(at::kFloat);                              // [qlen, Hq, D]
    at::Tensor k = kv.k;
    const int64_t j_off = kvlen - qlen;
    if (rope_llama) {
      const auto pos = qip.options().dtype(at::kDouble);
      qb = rope_neox_float(qb, at::arange(qlen, pos) + (double)j_off, rope_scale, rope_theta);
      k = rope_neox_float(k, at::arange(kvlen, pos), rope_scale, rope_theta);
    }
    auto kh = k.repeat_interleave(group, 1) * k_scale, vh = kv.v.repeat_interleave(group, 1) * v_scale;
    auto s = at::einsum("qhd,khd->hqk", {qb, kh}) * sm_scale;                    // [Hq, qlen, kvlen]
    if (logits_soft_cap > 0) s = at::tanh(s / logits_soft_cap) * logits_soft_cap;
    const auto opts = qip.options();
    auto i = at::arange(qlen, opts).unsqueeze(1), j = at::arange(kvlen, opts).unsqueeze(0);
    auto keep = kv.ok.unsqueeze(0).expand({qlen, kvlen}).clone();
    if (causal) keep = keep & (j <= i + j_off);
    if (window_left >= 0) keep = keep & (j >= i + j_off - window_left);
    if (mask) {
      const int64_t start = std::max<int64_t>(mip[b].item<int64_t>(), 0), nbits = qlen * kvlen;
      auto bit = at::arange(nbits, opts) + start * 8;
      auto byte = at::div(bit, 8, "floor").clamp_max(std::max<int64_t>(mask->size(0) - 1, 0));
      auto bits = mask->size(0) > 0 ? at::bitwise_and(at::bitwise_right_shift(
                                                          mask->to(at::kLong).index_select(0, byte), bit % 8), 1)
                                    : at::zeros({nbits}, opts);
      keep = keep & (bits == 1).logical_and(bit < mask->size(0) * 8).view({qlen, kvlen});
    }
    s = s.masked_fill(keep.logical_not().unsqueeze(0), -inf);
    auto l = at::logsumexp(s, -1, /*keepdim=*/true);                            // -inf where all masked
    auto p = at::exp(s - at::where(at::isinf(l), at::zeros_like(l), l));
    auto o = at::einsum("hqk,khd->qhd", {p, vh});
    out.narrow(0, q0, qlen).copy_(o);
    lse.narrow(0, q0, qlen).copy_((l.squeeze(-1) / std::log(2.0)).transpose(0, 1));
  }
  return {out.to(q.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor> batch_prefill_paged_cpu(
    const at::Tensor& q, const at::Tensor& qo_indptr, const at::Tensor& k_cache,
    const std::optional<at::Tensor>& v_cache, const at::Tensor& kv_indptr, const at::Tensor& kv_indices,
    const at::Tensor& kv_last_page_len, const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& mask_indptr, c10::string_view kv_layout, bool causal, int64_t window_left,
    double logits_soft_cap, double sm_scale, double k_scale, double v_scale, bool rope_llama, double rope_scale,
    double rope_theta) {
  const char* op = "batch_prefill_with_paged_kv_cache";
  const PagedKV cache = check_paged_prefill(q, qo_indptr, k_cache, v_cache, kv_indptr, kv_indices, kv_last_page_len,
                                            mask, mask_indptr, std::string(kv_layout), op);
  if (rope_llama) check_rope_freq(rope_scale, rope_theta, op);
  const int64_t batch = kv_last_page_len.size(0);
  const int64_t page = cache.page_size, num_pages = cache.k.size(0), num_indices = kv_indices.size(0);
  const auto ip = kv_indptr.to(at::kLong), last = kv_last_page_len.to(at::kLong), ind = kv_indices.to(at::kLong);
  const auto ipa = ip.accessor<int64_t, 1>();
  const auto la = last.accessor<int64_t, 1>();
  auto request_kv = [&](int64_t b) {
    // An indptr entry past the page table (or running backwards) gives an empty request, as on CUDA.
    const int64_t start = std::min(std::max<int64_t>(ipa[b], 0), num_indices);
    const int64_t n = std::max<int64_t>(std::min<int64_t>(ipa[b + 1], num_indices) - start, 0);
    const int64_t len = n > 0 ? std::min(std::max<int64_t>((n - 1) * page + la[b], 0), n * page) : 0;
    auto ids = ind.narrow(0, start, n);
    auto safe = ids.clamp(0, std::max<int64_t>(num_pages - 1, 0));
    auto ok = ((ids >= 0) & (ids < num_pages)).repeat_interleave(page).narrow(0, 0, len);
    auto k = cache.k.index_select(0, safe).flatten(0, 1).narrow(0, 0, len).to(at::kFloat);
    auto v = cache.v.index_select(0, safe).flatten(0, 1).narrow(0, 0, len).to(at::kFloat);
    return RequestKV{k, v, ok};
  };
  return prefill_cpu(q, qo_indptr, batch, request_kv, mask, mask_indptr, causal, window_left, logits_soft_cap,
                     sm_scale, k_scale, v_scale, rope_llama, rope_scale, rope_theta);
}

std::tuple<at::Tensor, at::Tensor> batch_prefill_ragged_cpu(
    const at::Tensor& q, const at::Tensor& qo_indptr, const at::Tensor& k_, const at::Tensor& v_,
    const at::Tensor& kv_indptr, const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& mask_indptr,
    c10::string_view kv_layout, bool causal, int64_t window_left, double logits_soft_cap, double sm_scale,
    double k_scale, double v_scale, bool rope_llama, double rope_scale, double rope_theta) {
  const char* op = "batch_prefill_with_ragged_kv_cache";
  const auto [k, v] = check_ragged_prefill(q, qo_indptr, k_, v_, kv_indptr, mask, mask_indptr,
                                           std::string(kv_layout), op);
  if (rope_llama) check_rope_freq(rope_scale, rope_theta, op);
  const int64_t batch = kv_indptr.size(0) - 1;
  const auto ip = kv_indptr.to(at::kLong);
  const auto ipa = ip.accessor<int64_t, 1>();
  const int64_t rows = k.size(0);
  auto request_kv = [&](int64_t b) {
    const int64_t start = std::min(std::max<int64_t>(ipa[b], 0), rows);
    const int64_t len = std::max<int64_t>(std::min(ipa[b + 1], rows) - start, 0);
    return RequestKV{k.narrow(0, start, len).to(at::kFloat), v.narrow(0, start, len).to(at::kFloat),
                     at::ones({len}, ip.options().dtype(at::kBool))};
  };
  return prefill_cpu(q, qo_indptr, batch, request_kv, mask, mask_indptr, causal, window_left, logits_soft_cap,
                     sm_scale, k_scale, v_scale, rope_llama, rope_scale, rope_theta);
}

}  // namespace

TORCH_LIBRARY_IMPL(flashinfer, CPU, m) {
  m.impl("batch_prefill_with_paged_kv_cache", &batch_prefill_paged_cpu);
  m.impl("batch_prefill_with_ragged_kv_cache", &batch_prefill_ragged_cpu);
}

}  // namespace flashinfer
