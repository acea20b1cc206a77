// CPU implementation of batch decode over a paged KV cache: per request, gather its pages and attend in fp32.
// Reads the page tables on the host (they are CPU tensors here). Entries that point outside the cache are
// treated as masked tokens, as on CUDA.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "../checks.h"
#include "rope.h"

namespace flashinfer {
namespace {

std::tuple<at::Tensor, at::Tensor> batch_decode_cpu(const at::Tensor& q, const at::Tensor& k_cache,
                                                    const std::optional<at::Tensor>& v_cache,
                                                    const at::Tensor& kv_indptr, const at::Tensor& kv_indices,
                                                    const at::Tensor& kv_last_page_len, c10::string_view kv_layout,
                                                    bool rope_llama, int64_t window_left, double logits_soft_cap,
                                                    double sm_scale, double k_scale, double v_scale,
                                                    double rope_scale, double rope_theta,
                                                    c10::string_view backend) {
  const char* op = "batch_decode_with_paged_kv_cache";
  const PagedKV cache = check_decode(q, k_cache, v_cache, kv_indptr, kv_indices, kv_last_page_len,
                                     std::string(kv_layout), std::string(backend), op);
  if (rope_llama) check_rope_freq(rope_scale, rope_theta, op);
  const int64_t batch = q.size(0), hq = q.size(1), d = q.size(2), hkv = cache.k.size(2);
  const int64_t page = cache.page_size, num_pages = cache.k.size(0), num_indices = kv_indices.size(0);
  auto out = at::zeros({batch, hq, d}, q.options().dtype(at::kFloat));
  auto lse = at::full({batch, hq}, -std::numeric_limits<float>::infinity(), q.options().dtype(at::kFloat));
  auto ip = kv_indptr.to(at::kLong), last = kv_last_page_len.to(at::kLong), ind = kv_indices.to(at::kLong);
  const auto ipa = ip.accessor<int64_t, 1>();
  const auto lasta = last.accessor<int64_t, 1>();

  for (int64_t b = 0; b < batch; ++b) {
    const int64_t start = std::max<int64_t>(ipa[b], 0), end = std::min<int64_t>(ipa[b + 1], num_indices);
    const int64_t n = end - start;
    if (n <= 0) continue;
    const int64_t len = std::min(std::max<int64_t>((n - 1) * page + lasta[b], 0), n * page);
    if (len == 0) continue;
    auto ids = ind.narrow(0, start, n);
    auto page_ok = (ids >= 0) & (ids < num_pages);
    auto safe = ids.clamp(0, num_pages - 1);
    auto k = cache.k.index_select(0, safe).flatten(0, 1).narrow(0, 0, len).to(at::kFloat) * k_scale;  // [L, Hkv, D]
    auto v = cache.v.index_select(0, safe).flatten(0, 1).narrow(0, 0, len).to(at::kFloat) * v_scale;
    auto token_ok = page_ok.repeat_interleave(page).narrow(0, 0, len);
    auto qb = q[b].to(at::kFloat);  // [Hq, D]
    if (rope_llama) {
      qb = rope_neox_float(qb.unsqueeze(0), at::full({1}, (double)(len - 1), ip.options().dtype(at::kDouble)),
                           rope_scale, rope_theta)[0];
      k = rope_neox_float(k, at::arange(len, ip.options().dtype(at::kDouble)), rope_scale, rope_theta);
    }
    auto kh = k.repeat_interleave(hq / hkv, 1), vh = v.repeat_interleave(hq / hkv, 1);  // [L, Hq, D]
    auto s = at::einsum("hd,lhd->hl", {qb, kh}) * sm_scale;
    if (logits_soft_cap > 0) s = at::tanh(s / logits_soft_cap) * logits_soft_cap;
    auto keep = token_ok;
    if (window_left >= 0) keep = keep & (at::arange(len, ip.options()) >= len - 1 - window_left);
    s = s.masked_fill(keep.logical_not().unsqueeze(0), -std::numeric_limits<float>::infinity());
    auto l = at::logsumexp(s, -1, /*keepdim=*/true);  // -inf where every token is masked
    auto p = at::where(at::isinf(l), at::zeros_like(s), at::exp(s - l));
    out[b] = at::einsum("hl,lhd->hd", {p, vh});
    lse[b] = l.squeeze(-1) / std::log(2.0);
  }
  return {out.to(q.scalar_type()), lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(flashinfer, CPU, m) { m.impl("batch_decode_with_paged_kv_cache", &batch_decode_cpu); }

}  // namespace flashinfer
