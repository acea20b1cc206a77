// Stand-alone check and timing of the prefill kernel, or of a variant of it, without torch (see decode_micro.cu;
// built by benchmarks/micro/run.sh). A variant is a copy of csrc/kernels/prefill.cuh that still defines
// flashinfer::prefill::launch<T, KV, D, kRagged, kRope>; the binary includes the header named by PREFILL_HEADER.
//
//   prefill_micro BATCH QO_LEN KV_LEN [HQ HKV HEAD_DIM PAGE causal|full|mask paged|ragged bf16|e4m3]
//
// Every request has QO_LEN queries over KV_LEN keys (causal is bottom-right aligned; mask: a packed custom mask,
// little bit order, of random bits with about three in four kept, each request's bits from a byte boundary, which
// runs the kernel's kMask instantiation). Prints one line: max error of a few query rows of the first and the last
// request against a float64 host reference, median time of one launch in us (with CHAIN=n, of one of n back-to-back
// launches) and TFLOP/s (4 * head_dim flops per (query head, key) pair the mask keeps). Built with -DMICRO_ROPE
// (NVCC_FLAGS in run.sh), it runs ROPE_LLAMA (theta 1e4) and the reference rotates q and k the same way in float64.
#include <cmath>
#include <string>
#include <vector>

#include "micro.cuh"
#ifndef PREFILL_HEADER
#define PREFILL_HEADER "prefill.cuh"
#endif
#include PREFILL_HEADER
#include "block_trace.h"

using namespace flashinfer;
using micro::to_double;
#define CHECK MICRO_CHECK

struct Shape {
  int batch, qo_len, kv_len, hq, hkv, page;
  bool causal, ragged, mask;
};

template <typename KV, int D>
int run(const Shape& sh) {
  using T = __nv_bfloat16;
  const int batch = sh.batch, qo_len = sh.qo_len, kv_len = sh.kv_len, hq = sh.hq, hkv = sh.hkv, page = sh.page;
  const int pages_per = (kv_len + page - 1) / page, num_pages = batch * pages_per;
  const int64_t total_q = (int64_t)batch * qo_len, total_kv = (int64_t)batch * kv_len;
  // Paged: [num_pages, 2, page, hkv, D]; ragged: K rows then V rows, [2, total_kv, hkv, D].
  const int64_t kv_elems = sh.ragged ? 2 * total_kv * hkv * D : (int64_t)num_pages * 2 * page * hkv * D;
  const int sets = micro::sets_past_l2(kv_elems * sizeof(KV) + total_q * hq * D * 2.0);

  const micro::KvSets<KV> kv(sets, kv_elems, num_pages);
  std::vector<int32_t> qo_indptr(batch + 1), kv_indptr(batch + 1), last(batch, (kv_len - 1) % page + 1);
  for (int b = 0; b <= batch; ++b) {
    qo_indptr[b] = b * qo_len;
    kv_indptr[b] = sh.ragged ? b * kv_len : b * pages_per;
  }
  // The custom mask: request b's bits [qo_len][kv_len] from byte mask_indptr[b].
  const int64_t mask_bytes_per = ((int64_t)qo_len * kv_len + 7) / 8;
  std::vector<uint8_t> h_mask(sh.mask ? batch * mask_bytes_per : 0);
  std::vector<int32_t> mask_indptr(batch + 1);
  uint32_t bits = 12345u;
  for (auto& byte : h_mask) {
    byte = 0;
    for (int k = 0; k < 8; ++k) {
      bits = bits * 1664525u + 1013904223u;
      byte |= (uint8_t)(((bits >> 16) & 3) != 0) << k;
    }
  }
  for (int b = 0; b <= batch; ++b) mask_indptr[b] = (int32_t)(b * mask_bytes_per);
  auto kept = [&](int req, int i, int j) {
    if (sh.causal && j > kv_len - qo_len + i) return false;
    if (!sh.mask) return true;
    const int64_t bit = (int64_t)mask_indptr[req] * 8 + (int64_t)i * kv_len + j;
    return ((h_mask[bit >> 3] >> (bit & 7)) & 1) != 0;
  };
  std::vector<T> h_q;
  T* q = micro::random_array<T>(total_q * hq * D, 5u, &h_q);
  T* out;
  float* lse;
  CHECK(cudaMalloc(&out, total_q * hq * D * sizeof(T)));
  CHECK(cudaMalloc(&lse, total_q * hq * 4));

  prefill::Params p{};
  p.q = q, p.q_stride_n = (int64_t)hq * D, p.q_stride_h = D;
  if (sh.ragged) {
    p.k_stride_page = p.v_stride_page = 0;
    p.k_stride_entry = p.v_stride_entry = (int64_t)hkv * D;
    p.num_indices = total_kv, p.num_pages = 1;  // the ragged loader reads no page table
  } else {
    p.k_stride_page = p.v_stride_page = (int64_t)2 * page * hkv * D;
    p.k_stride_entry = p.v_stride_entry = (int64_t)hkv * D;
    p.num_indices = num_pages, p.num_pages = num_pages;
    p.last_page_len = micro::to_device(last);
  }
  p.k_stride_head = p.v_stride_head = D;
  p.qo_indptr = micro::to_device(qo_indptr), p.kv_indptr = micro::to_device(kv_indptr);
  p.total_q = total_q, p.batch = batch, p.hq = hq, p.hkv = hkv, p.page_size = sh.ragged ? 1 : page;
  p.page_div = FastDiv((uint32_t)p.page_size);
  p.out = out, p.lse = lse;
  p.sm_scale = 1.f / std::sqrt((float)D), p.k_scale = 1.f, p.v_scale = 1.f;
  p.logits_soft_cap = micro::soft_cap_from_env();
  p.window_left = -1, p.causal = sh.causal, p.rope = micro::kRope;
  p.rope_rcp_scale = 1.f, p.rope_log2_theta = (float)std::log2(micro::kRopeTheta);
  if (sh.mask) {
    p.mask = micro::to_device(h_mask), p.mask_indptr = micro::to_device(mask_indptr);
    p.mask_bytes = (int64_t)h_mask.size();
  }
  int sm_count = 0, device = 0;
  CHECK(cudaGetDevice(&device));
  CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  // The split workspace, allocated at the first launch (before any capture): the split count depends on shapes.
  float *tmp_o = nullptr, *tmp_lse = nullptr;
  int splits = 1;
  LaunchEnv<prefill::Params> env{sm_count, [&](prefill::Params& pp) {
    if (!tmp_o) {
      CHECK(cudaMalloc(&tmp_o, (size_t)pp.num_splits * total_q * hq * D * 4));
      CHECK(cudaMalloc(&tmp_lse, (size_t)pp.num_splits * total_q * hq * 4));
    }
    pp.tmp_o = tmp_o, pp.tmp_lse = tmp_lse, splits = pp.num_splits;
  }, stream};
  auto launch = [&](int s) {
    prefill::Params ps = p;
    const int64_t v_off = sh.ragged ? total_kv * hkv * D : (int64_t)page * hkv * D;
    ps.k_cache = kv.kv[s], ps.v_cache = kv.kv[s] + v_off, ps.indices = sh.ragged ? nullptr : kv.tables[s];
    CHECK(sh.ragged ? (prefill::launch<T, KV, D, true, micro::kRope>(ps, env))
                    : (prefill::launch<T, KV, D, false, micro::kRope>(ps, env)));
  };

  launch(0);
  CHECK(cudaStreamSynchronize(stream));
  std::vector<T> h_out(total_q * hq * D);
  CHECK(cudaMemcpy(h_out.data(), out, h_out.size() * sizeof(T), cudaMemcpyDeviceToHost));
  // Rows 0, a third, two thirds and the last of the first and the last request, every head.
  double max_err = 0, max_ref = 0;
  std::vector<int> reqs{0};
  if (batch > 1) reqs.push_back(batch - 1);
  for (int req : reqs) {
    auto elem = [&](int which, int j, int kvh, int e) {  // 0: K, 1: V; key j of request req
      if (sh.ragged)
        return to_double(kv.host_kv0[(((int64_t)which * total_kv + (int64_t)req * kv_len + j) * hkv + kvh) * D + e]);
      const int64_t pg = kv.host_tables[0][(int64_t)req * pages_per + j / page];
      return to_double(kv.host_kv0[(((pg * 2 + which) * page + j % page) * hkv + kvh) * D + e]);
    };
    // The request's keys, rotated (when kRope) once: [kv_len][hkv][D].
    std::vector<double> keys((int64_t)kv_len * hkv * D), row(D);
    for (int j = 0; j < kv_len; ++j)
      for (int kvh = 0; kvh < hkv; ++kvh) {
        for (int e = 0; e < D; ++e) row[e] = elem(0, j, kvh, e);
        micro::rope_rotate<D>(row, j);
        std::copy(row.begin(), row.end(), keys.begin() + ((int64_t)j * hkv + kvh) * D);
      }
    for (int i : {0, qo_len / 3, 2 * qo_len / 3, qo_len - 1}) {
      const int64_t qrow = (int64_t)req * qo_len + i;
      for (int h = 0; h < hq; ++h) {
        const int kvh = h / (hq / hkv);
        std::vector<double> s(kv_len, -INFINITY), o(D, 0.0), qr(D);
        for (int e = 0; e < D; ++e) qr[e] = to_double(h_q[(qrow * hq + h) * D + e]);
        micro::rope_rotate<D>(qr, kv_len - qo_len + i);
        double mx = -INFINITY, den = 0;
        for (int j = 0; j < kv_len; ++j) {
          if (!kept(req, i, j)) continue;
          double dot = 0;
          for (int e = 0; e < D; ++e) dot += qr[e] * keys[((int64_t)j * hkv + kvh) * D + e];
          s[j] = micro::ref_score(dot, p.sm_scale, p.logits_soft_cap), mx = std::max(mx, s[j]);
        }
        for (int j = 0; j < kv_len; ++j) {
          if (s[j] == -INFINITY) continue;
          const double w = std::exp(s[j] - mx);
          den += w;
          for (int e = 0; e < D; ++e) o[e] += w * elem(1, j, kvh, e);
        }
        for (int e = 0; e < D; ++e) {
          const double ref = den > 0 ? o[e] / den : 0.0, got = to_double(h_out[(qrow * hq + h) * D + e]);
          max_err = std::max(max_err, std::isnan(got) ? INFINITY : std::fabs(got - ref));
          max_ref = std::max(max_ref, std::fabs(ref));
        }
      }
    }
  }

  const double us = micro::chained_time_us(sets, stream, launch);
#ifdef FLASHINFER_BLOCK_TRACE
  micro::block_trace_launch(launch, stream, {"entry -> block scheduled", "-> first tile landed", "-> tile loop done",
                                             "-> output written, exit"});
#endif
  double pairs = 0;
  for (int i = 0; i < qo_len; ++i) {
    if (!sh.mask) {
      pairs += sh.causal ? std::clamp(kv_len - qo_len + i + 1, 0, kv_len) : kv_len;
    } else {
      for (int j = 0; j < kv_len; ++j) pairs += kept(0, i, j);  // request 0's count, for every request
    }
  }
  const double flops = 4.0 * D * hq * batch * pairs;
  const bool ok = max_err <= 2e-2 * std::max(max_ref, 1.0);
  std::printf("%s batch %d qo %d kv %d hq %d hkv %d D %d page %d %s%s %s %s splits %d: max err %.3g (%s), %.1f us, "
              "%.1f TFLOP/s\n",
              PREFILL_HEADER, batch, qo_len, kv_len, hq, hkv, D, page, micro::kRope ? "rope " : "",
              sh.mask ? "mask" : sh.causal ? "causal" : "full",
              sh.ragged ? "ragged" : "paged", sizeof(KV) == 1 ? "e4m3" : "bf16", splits, max_err, ok ? "ok" : "WRONG",
              us, flops / us * 1e-6);
  return ok ? 0 : 2;
}

template <typename KV>
int run_dim(int d, const Shape& sh) {
  switch (d) {
    case 64: return run<KV, 64>(sh);
    case 128: return run<KV, 128>(sh);
    case 256: return run<KV, 256>(sh);
    default: std::fprintf(stderr, "head_dim must be 64, 128 or 256\n"); return 1;
  }
}

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s BATCH QO_LEN KV_LEN [HQ HKV HEAD_DIM PAGE causal|full|mask paged|ragged "
                         "bf16|e4m3]\n",
                 argv[0]);
    return 1;
  }
  auto arg = [&](int i, const char* fallback) { return std::string(argc > i ? argv[i] : fallback); };
  Shape sh{std::atoi(argv[1]), std::atoi(argv[2]), std::atoi(argv[3]), std::stoi(arg(4, "32")), std::stoi(arg(5, "8")),
           std::stoi(arg(7, "16")), arg(8, "causal") == "causal", arg(9, "paged") == "ragged", arg(8, "") == "mask"};
  const int d = std::stoi(arg(6, "128"));
  if (sh.batch < 1 || sh.qo_len < 1 || sh.kv_len < 1 || sh.hkv < 1 || sh.hq % sh.hkv != 0 || sh.page < 1) {
    std::fprintf(stderr, "need batch, qo_len, kv_len, page >= 1 and hq a multiple of hkv\n");
    return 1;
  }
  return arg(10, "bf16") == "e4m3" ? run_dim<__nv_fp8_e4m3>(d, sh) : run_dim<__nv_bfloat16>(d, sh);
}
