// CPU implementations of the sampling family, written from the definitions (kernels/sampling.cuh states them):
// the filters' kept sets from the sorted row, sums in float64, one Philox draw a row walked over the kept entries
// in index order. The CUDA kernels reach the same kept sets by rejection rounds, so a draw has the same
// distribution on both devices, not the same value.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "../checks.h"
#include "../kernels/common/philox.cuh"

namespace flashinfer {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

template <typename V>
V param(const std::optional<at::Tensor>& t, V val, int64_t b) {
  return t ? t->data_ptr<V>()[b] : val;
}

// The smallest value the filters keep in a row (entries >= it are kept; -inf: all of them) and the row's first
// largest entry. NaN entries are never kept.
struct Kept {
  float floor;
  int64_t argmax;
  double total;
};

Kept kept_floor(const float* x, int64_t vocab, int64_t k, float top_p, float min_p) {
  std::vector<float> sorted;
  sorted.reserve(vocab);
  double total = 0;
  int64_t argmax = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    if (std::isnan(x[i])) continue;
    sorted.push_back(x[i]);
    total += x[i];
    if (x[i] > x[argmax] || std::isnan(x[argmax])) argmax = i;
  }
  std::sort(sorted.begin(), sorted.end(), std::greater<float>());
  float floor = -kInf;
  if (k > 0 && k < vocab && k <= (int64_t)sorted.size()) floor = std::max(floor, sorted[k - 1]);
  if (top_p < 1.f) {
    if (!(top_p > 0.f) || sorted.empty()) {
      floor = std::max(floor, sorted.empty() ? kInf : sorted[0]);
    } else {
      // Walk the distinct values from the top: a value is kept while the mass strictly above it is below the target.
      const double target = (double)top_p * total;
      double above = 0;
      float last = sorted[0];
      for (size_t i = 0; i < sorted.size();) {
        if (!(above < target)) break;
        last = sorted[i];
        size_t j = i;
        while (j < sorted.size() && sorted[j] == sorted[i]) above += sorted[j++];
        i = j;
      }
      floor = std::max(floor, last);
    }
  }
  if (min_p > 0.f && !sorted.empty()) floor = std::max(floor, min_p * sorted[0]);
  return {floor, argmax, total};
}

std::tuple<at::Tensor, at::Tensor> sampling_from_probs_cpu(const at::Tensor& probs_in,
                                                           const std::optional<at::Tensor>& indices_in,
                                                           const std::optional<at::Tensor>& top_k_in,
                                                           int64_t top_k_val,
                                                           const std::optional<at::Tensor>& top_p_in,
                                                           double top_p_val,
                                                           const std::optional<at::Tensor>& min_p_in,
                                                           double min_p_val, const at::Tensor& seed_in,
                                                           const at::Tensor& offset_in) {
  const char* op = "sampling_from_probs";
  check_sampling_rows(probs_in, "probs", true, op);
  if (indices_in) check_sample_indices(*indices_in, probs_in, op);
  const int64_t batch = indices_in ? indices_in->size(0) : probs_in.size(0);
  if (top_k_in) check_per_row(*top_k_in, "top_k", at::kInt, batch, probs_in, op);
  if (top_p_in) check_per_row(*top_p_in, "top_p", at::kFloat, batch, probs_in, op);
  if (min_p_in) check_per_row(*min_p_in, "min_p", at::kFloat, batch, probs_in, op);
  check_seed(seed_in, "seed", batch, probs_in, op);
  check_seed(offset_in, "offset", batch, probs_in, op);
  const at::Tensor probs = probs_in.contiguous();
  const auto dense = [](const std::optional<at::Tensor>& t) {
    return t ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
  };
  const auto indices = indices_in ? std::optional<at::Tensor>(indices_in->to(at::kLong).contiguous()) : std::nullopt;
  const auto top_k = dense(top_k_in), top_p = dense(top_p_in), min_p = dense(min_p_in);
  const at::Tensor seed = seed_in.contiguous(), offset = offset_in.contiguous();
  const int64_t rows = probs.size(0), vocab = probs.size(1);
  auto out = at::empty({batch}, probs.options().dtype(at::kInt));
  auto valid = at::empty({batch}, probs.options().dtype(at::kBool));
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t src = indices ? indices->data_ptr<int64_t>()[b] : b;
    if (src < 0 || src >= rows) {
      out.data_ptr<int32_t>()[b] = 0, valid.data_ptr<bool>()[b] = false;
      continue;
    }
    const float* x = probs.data_ptr<float>() + src * vocab;
    const Kept kept = kept_floor(x, vocab, param<int32_t>(top_k, (int32_t)top_k_val, b),
                                 param<float>(top_p, (float)top_p_val, b), param<float>(min_p, (float)min_p_val, b));
    const bool ok = kept.total > 0 && std::isfinite(kept.total);
    int64_t pick = kept.argmax;
    if (ok) {
      double mass = 0;
      for (int64_t i = 0; i < vocab; ++i) mass += x[i] >= kept.floor ? x[i] : 0.0;
      const uint64_t s = (uint64_t)seed.data_ptr<int64_t>()[seed.size(0) == 1 ? 0 : b];
      const uint64_t o = (uint64_t)offset.data_ptr<int64_t>()[offset.size(0) == 1 ? 0 : b];
      const double target = (double)philox_uniform(s, o, (uint32_t)b, 0) * mass;
      double acc = 0;
      for (int64_t i = 0; i < vocab; ++i) {
        if (!(x[i] >= kept.floor) || !(x[i] > 0.f)) continue;
        acc += x[i];
        pick = i;
        if (acc > target) break;
      }
    }
    out.data_ptr<int32_t>()[b] = (int32_t)pick;
    valid.data_ptr<bool>()[b] = ok;
  }
  return {out, valid};
}

// kTopK / kTopP: kept entries over their mass, the rest 0 (a row without positive finite kept mass: zeros);
// mask: kept logits, the rest -inf.
enum class Mode { kTopK, kTopP, kMask };

at::Tensor renorm_cpu(const at::Tensor& in, const std::optional<at::Tensor>& top_k_in, int64_t top_k_val,
                      const std::optional<at::Tensor>& top_p_in, double top_p_val, Mode mode, const char* name,
                      const char* op) {
  check_sampling_rows(in, name, mode != Mode::kMask, op);
  if (top_k_in) check_per_row(*top_k_in, "top_k", at::kInt, in.size(0), in, op);
  if (top_p_in) check_per_row(*top_p_in, "top_p", at::kFloat, in.size(0), in, op);
  const at::Tensor x_all = in.to(at::kFloat).contiguous();
  const auto top_k = top_k_in ? std::optional<at::Tensor>(top_k_in->contiguous()) : std::nullopt;
  const auto top_p = top_p_in ? std::optional<at::Tensor>(top_p_in->contiguous()) : std::nullopt;
  const int64_t rows = x_all.size(0), vocab = x_all.size(1);
  at::Tensor out = at::empty({rows, vocab}, x_all.options());
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = x_all.data_ptr<float>() + r * vocab;
    float* y = out.data_ptr<float>() + r * vocab;
    const int64_t k = mode == Mode::kTopP ? 0 : param<int32_t>(top_k, (int32_t)top_k_val, r);
    const float p = mode == Mode::kTopP ? param<float>(top_p, (float)top_p_val, r) : 1.f;
    const Kept kept = kept_floor(x, vocab, k, p, 0.f);
    if (mode == Mode::kMask) {
      for (int64_t i = 0; i < vocab; ++i) y[i] = x[i] >= kept.floor ? x[i] : -kInf;
      continue;
    }
    double mass = 0;
    for (int64_t i = 0; i < vocab; ++i) mass += x[i] >= kept.floor ? x[i] : 0.0;
    const bool ok = mass > 0 && std::isfinite(mass);
    for (int64_t i = 0; i < vocab; ++i) y[i] = ok && x[i] >= kept.floor ? (float)(x[i] / mass) : 0.f;
  }
  return out.to(in.scalar_type());
}

at::Tensor top_k_renorm_probs_cpu(const at::Tensor& probs, const std::optional<at::Tensor>& top_k,
                                  int64_t top_k_val) {
  return renorm_cpu(probs, top_k, top_k_val, std::nullopt, 1.0, Mode::kTopK, "probs", "top_k_renorm_probs");
}

at::Tensor top_p_renorm_probs_cpu(const at::Tensor& probs, const std::optional<at::Tensor>& top_p,
                                  double top_p_val) {
  return renorm_cpu(probs, std::nullopt, 0, top_p, top_p_val, Mode::kTopP, "probs", "top_p_renorm_probs");
}

at::Tensor top_k_mask_logits_cpu(const at::Tensor& logits, const std::optional<at::Tensor>& top_k,
                                 int64_t top_k_val) {
  return renorm_cpu(logits, top_k, top_k_val, std::nullopt, 1.0, Mode::kMask, "logits", "top_k_mask_logits");
}

at::Tensor softmax_cpu(const at::Tensor& logits, const std::optional<at::Tensor>& temperature,
                       double temperature_val) {
  const char* op = "softmax";
  check_sampling_rows(logits, "logits", false, op);
  if (temperature) check_per_row(*temperature, "temperature", at::kFloat, logits.size(0), logits, op);
  const at::Tensor x = logits.to(at::kFloat);
  const at::Tensor t = temperature ? *temperature : at::full({x.size(0)}, (float)temperature_val, x.options());
  const at::Tensor hot = t <= 0;  // greedy rows
  const at::Tensor y = x / at::where(hot, at::ones_like(t), t).unsqueeze(1);
  const at::Tensor m = std::get<0>(y.max(1, /*keepdim=*/true));
  const at::Tensor finite = at::isfinite(m);
  const at::Tensor e = at::exp(y - at::where(finite, m, at::zeros_like(m)));
  const at::Tensor soft = at::where(finite, e / e.sum(1, true), at::zeros_like(e));
  const at::Tensor one = at::zeros_like(x).scatter_(1, x.argmax(1, true), 1.f);
  return at::where(hot.unsqueeze(1), one, soft);
}

// A draw from the weights w(v) of one row (entries that are not positive weigh 0): the first v whose running sum
// passes u * total, or -1 when the row has no positive finite total.
template <typename W>
int64_t draw_weights(int64_t vocab, float u, W&& w) {
  double total = 0;
  for (int64_t v = 0; v < vocab; ++v) total += w(v);
  if (!(total > 0 && std::isfinite(total))) return -1;
  const double target = (double)u * total;
  double acc = 0;
  int64_t pick = -1;
  for (int64_t v = 0; v < vocab; ++v) {
    const double x = w(v);
    if (!(x > 0)) continue;
    acc += x;
    pick = v;
    if (acc > target) break;
  }
  return pick;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> chain_speculative_sampling_cpu(
    const at::Tensor& draft_probs_in, const at::Tensor& draft_token_ids_in, const at::Tensor& target_probs_in,
    const at::Tensor& seed_in, const at::Tensor& offset_in) {
  const char* op = "chain_speculative_sampling";
  check_speculative_chain(draft_probs_in, draft_token_ids_in, target_probs_in, op);
  const int64_t batch = draft_probs_in.size(0), n = draft_probs_in.size(1), vocab = draft_probs_in.size(2);
  check_seed(seed_in, "seed", batch, draft_probs_in, op);
  check_seed(offset_in, "offset", batch, draft_probs_in, op);
  const at::Tensor draft = draft_probs_in.contiguous(), target = target_probs_in.contiguous();
  const at::Tensor ids = draft_token_ids_in.contiguous();
  const at::Tensor seed = seed_in.contiguous(), offset = offset_in.contiguous();
  auto out = at::empty({batch, n + 1}, ids.options());
  auto accepted = at::empty({batch}, ids.options());
  auto emitted = at::empty({batch}, ids.options());
  for (int64_t b = 0; b < batch; ++b) {
    const uint64_t s = (uint64_t)seed.data_ptr<int64_t>()[seed.size(0) == 1 ? 0 : b];
    const uint64_t o = (uint64_t)offset.data_ptr<int64_t>()[offset.size(0) == 1 ? 0 : b];
    const int32_t* t = ids.data_ptr<int32_t>() + b * n;
    const float* q = draft.data_ptr<float>() + b * n * vocab;
    const float* p = target.data_ptr<float>() + b * (n + 1) * vocab;
    int64_t kept = 0, first = n;
    for (int64_t i = 0; i < n; ++i) {
      const float u = philox_uniform(s, o, (uint32_t)b, (uint32_t)i);
      // The product in float, as the CUDA kernel computes it: the same uniforms keep the same tokens on both.
      const bool keep = t[i] >= 0 && t[i] < vocab && u * q[i * vocab + t[i]] < p[i * vocab + t[i]];
      kept += keep;
      if (!keep && first == n) first = i;
    }
    const float* pj = p + first * vocab;
    const float u = philox_uniform(s, o, (uint32_t)b, (uint32_t)n);
    int64_t pick = -1;
    if (first < n) {
      const float* qj = q + first * vocab;
      pick = draw_weights(vocab, u, [&](int64_t v) {
        const float r = pj[v] - qj[v];
        return r > 0.f ? (double)r : 0.0;
      });
    }
    if (pick < 0) pick = draw_weights(vocab, u, [&](int64_t v) { return pj[v] > 0.f ? (double)pj[v] : 0.0; });
    if (pick < 0) {  // no positive finite mass: the first largest target entry (NaN never wins)
      pick = 0;
      for (int64_t v = 0; v < vocab; ++v)
        if (pj[v] > pj[pick] || (std::isnan(pj[pick]) && !std::isnan(pj[v]))) pick = v;
    }
    int32_t* row = out.data_ptr<int32_t>() + b * (n + 1);
    for (int64_t i = 0; i <= n; ++i) row[i] = i < first ? t[i] : i == first ? (int32_t)pick : -1;
    accepted.data_ptr<int32_t>()[b] = (int32_t)kept;
    emitted.data_ptr<int32_t>()[b] = (int32_t)first;
  }
  return {out, accepted, emitted};
}

}  // namespace

TORCH_LIBRARY_IMPL(flashinfer, CPU, m) {
  m.impl("softmax", &softmax_cpu);
  m.impl("sampling_from_probs", &sampling_from_probs_cpu);
  m.impl("top_k_renorm_probs", &top_k_renorm_probs_cpu);
  m.impl("top_p_renorm_probs", &top_p_renorm_probs_cpu);
  m.impl("top_k_mask_logits", &top_k_mask_logits_cpu);
  m.impl("chain_speculative_sampling", &chain_speculative_sampling_cpu);
}

}  // namespace flashinfer
