// Stand-alone check and timing of the tensor-core decode kernel, or of a variant of it, without torch: the loop
// for trying a kernel change on the GPU machine in seconds instead of an extension rebuild. Built by
// benchmarks/micro/run.sh, which compiles one binary per variant header in parallel.
//
// A variant is a copy of csrc/kernels/decode_tc.cuh (kept outside the repository or git-ignored) that still
// defines flashinfer::decode::launch_tc<Q, KV, D>; the binary includes the header named by DECODE_TC_HEADER.
//
//   decode_micro BATCH KV_LEN [HQ HKV HEAD_DIM PAGE KV_DTYPE]     KV_DTYPE: bf16 (default) or e4m3
//
// Prints one line: max error against a float64 host reference (first requests only), median time of one launch
// in us (with CHAIN=n, of one of n back-to-back launches; with PRED=us, of one behind a predecessor kernel, below)
// and GB/s of KV read once; built with
// -DFLASHINFER_BLOCK_TRACE (run.sh: TRACE=1), also the phases of one traced launch (common/block_trace.cuh). The
// launch is timed inside a CUDA graph that rotates over enough caches (each with its own shuffled page table) that
// the KV comes from DRAM, not L2, as in a serving step. Built with -DMICRO_ROPE (NVCC_FLAGS in run.sh), it runs
// ROPE_LLAMA (theta 1e4), and the reference rotates q and k the same way in float64.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "micro.cuh"
#ifndef DECODE_TC_HEADER
#define DECODE_TC_HEADER "decode_tc.cuh"
#endif
#include DECODE_TC_HEADER
#include "block_trace.h"

using namespace flashinfer;
using micro::to_double;
#define CHECK MICRO_CHECK

// PRED=us in the environment: each decode launch follows a one-wave kernel that runs for that many microseconds,
// launched with programmatic dependent launch and starting with pdl_enter() as the library's other kernels do. In a
// model step decode follows append_paged_kv_cache, a short kernel, not another decode, so whatever a decode does
// before its dependency wait is hidden less there than in a chain of decodes. The time printed includes it.
__device__ __forceinline__ long long global_ns() {
  long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__global__ void predecessor_kernel(long long ns) {
  pdl_enter();
  for (const long long t0 = global_ns(); global_ns() - t0 < ns;) {
  }
}

template <typename KV, int D>
int run(int batch, int kv_len, int hq, int hkv, int page) {
  using Q = __nv_bfloat16;
  const int pages_per = (kv_len + page - 1) / page, num_pages = batch * pages_per;
  const int64_t cache_elems = (int64_t)num_pages * 2 * page * hkv * D;
  const double kv_bytes = 2.0 * batch * kv_len * hkv * D * sizeof(KV);

  const int sets = micro::sets_past_l2(kv_bytes);
  const micro::KvSets<KV> kv(sets, cache_elems, num_pages);
  std::vector<int32_t> indptr(batch + 1), last(batch, (kv_len - 1) % page + 1);
  for (int b = 0; b <= batch; ++b) indptr[b] = b * pages_per;
  int32_t *d_indptr = micro::to_device(indptr), *d_last = micro::to_device(last);
  std::vector<Q> h_q;
  Q* q = micro::random_array<Q>((int64_t)batch * hq * D, 5u, &h_q);
  Q* out;
  float *lse, *tmp_o, *tmp_lse;
  int* counters;
  CHECK(cudaMalloc(&out, (size_t)batch * hq * D * sizeof(Q)));
  CHECK(cudaMalloc(&lse, (size_t)batch * hq * 4));
  CHECK(cudaMalloc(&tmp_o, (size_t)batch * decode::kMaxSplits * hq * D * 4));
  CHECK(cudaMalloc(&tmp_lse, (size_t)batch * decode::kMaxSplits * hq * 4));
  CHECK(cudaMalloc(&counters, (size_t)batch * hq * 4));  // >= batch * hkv * head_chunks
  CHECK(cudaMemset(counters, 0, (size_t)batch * hq * 4));  // every launch leaves them zero

  decode::Params p{};
  p.q = q, p.q_stride_n = (int64_t)hq * D, p.q_stride_h = D;
  p.k_stride_page = p.v_stride_page = (int64_t)2 * page * hkv * D;
  p.k_stride_entry = p.v_stride_entry = (int64_t)hkv * D;
  p.k_stride_head = p.v_stride_head = D;
  p.indptr = d_indptr, p.last_page_len = d_last;
  p.num_indices = num_pages, p.num_pages = num_pages;
  p.batch = batch, p.hq = hq, p.hkv = hkv, p.page_size = page;
  p.page_div = FastDiv((uint32_t)page);
  p.out = out, p.lse = lse;
  p.sm_scale = 1.f / std::sqrt((float)D), p.k_scale = 1.f, p.v_scale = 1.f;
  p.logits_soft_cap = micro::soft_cap_from_env();
  p.window_left = -1;
  p.rope_rcp_scale = 1.f, p.rope_log2_theta = (float)std::log2(micro::kRopeTheta);
  int sm_count = 0, device = 0;
  CHECK(cudaGetDevice(&device));
  CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
  int splits = 1;
  auto alloc_tmp = [&](decode::Params& pp) {
    pp.tmp_o = tmp_o, pp.tmp_lse = tmp_lse, pp.counters = counters, pp.counters_zeroed = true;
    splits = pp.num_splits;
  };
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const char* pred_env = std::getenv("PRED");
  const long long pred_ns = pred_env ? (long long)(std::atof(pred_env) * 1e3) : -1;
  auto launch = [&](int s) {
    if (pred_ns >= 0) CHECK(launch_pdl(predecessor_kernel, dim3(sm_count), dim3(128), 0, stream, pred_ns));
    decode::Params ps = p;
    ps.k_cache = kv.kv[s], ps.v_cache = kv.kv[s] + (int64_t)page * hkv * D, ps.indices = kv.tables[s];
    CHECK((decode::launch_tc<Q, KV, D, micro::kRope>(ps, sm_count, alloc_tmp, stream)));
  };

  // Check set 0 against a float64 reference for the first requests.
  launch(0);
  CHECK(cudaStreamSynchronize(stream));
  const int check_b = std::min(batch, 2);
  std::vector<Q> h_out((size_t)batch * hq * D);
  CHECK(cudaMemcpy(h_out.data(), out, h_out.size() * sizeof(Q), cudaMemcpyDeviceToHost));
  double max_err = 0, max_ref = 0;
  std::vector<double> keys((int64_t)kv_len * D), row(D), qr(D);  // one (request, kv head)'s keys, rotated
  int keys_of = -1;
  for (int b = 0; b < check_b; ++b)
    for (int h = 0; h < hq; ++h) {
      const int kvh = h / (hq / hkv);
      std::vector<double> s(kv_len), o(D, 0.0);
      double mx = -INFINITY, den = 0;
      auto elem = [&](int which, int t, int e) {  // 0: K, 1: V
        const int64_t pg = kv.host_tables[0][b * pages_per + t / page];
        return to_double(kv.host_kv0[(((pg * 2 + which) * page + t % page) * hkv + kvh) * D + e]);
      };
      if (keys_of != b * hkv + kvh) {
        keys_of = b * hkv + kvh;
        for (int t = 0; t < kv_len; ++t) {
          for (int e = 0; e < D; ++e) row[e] = elem(0, t, e);
          micro::rope_rotate<D>(row, t);
          std::copy(row.begin(), row.end(), keys.begin() + (int64_t)t * D);
        }
      }
      for (int e = 0; e < D; ++e) qr[e] = to_double(h_q[((int64_t)b * hq + h) * D + e]);
      micro::rope_rotate<D>(qr, kv_len - 1);  // the query sits at the last position
      for (int t = 0; t < kv_len; ++t) {
        double dot = 0;
        for (int e = 0; e < D; ++e) dot += qr[e] * keys[(int64_t)t * D + e];
        s[t] = micro::ref_score(dot, p.sm_scale, p.logits_soft_cap), mx = std::max(mx, s[t]);
      }
      for (int t = 0; t < kv_len; ++t) {
        const double w = std::exp(s[t] - mx);
        den += w;
        for (int e = 0; e < D; ++e) o[e] += w * elem(1, t, e);
      }
      for (int e = 0; e < D; ++e) {
        const double ref = o[e] / den, got = to_double(h_out[((int64_t)b * hq + h) * D + e]);
        max_err = std::max(max_err, std::isnan(got) ? INFINITY : std::fabs(got - ref));
        max_ref = std::max(max_ref, std::fabs(ref));
      }
    }

  const double us = micro::chained_time_us(sets, stream, launch);
#ifdef FLASHINFER_BLOCK_TRACE
  micro::block_trace_launch(launch, stream, {"entry -> pdl_wait done", "-> first tile landed", "-> tile loop done",
                                             "-> output or partial stored", "-> split merge done, exit"});
#endif
  // bf16 outputs: a few ulps of the largest output is right, more is a bug.
  const bool ok = max_err <= 2e-2 * std::max(max_ref, 1.0);
  std::printf("%s batch %d kv_len %d hq %d hkv %d D %d page %d %s%s splits %d%s: max err %.3g (%s), %.2f us, %.0f "
              "GB/s\n",
              DECODE_TC_HEADER, batch, kv_len, hq, hkv, D, page, sizeof(KV) == 1 ? "e4m3" : "bf16",
              micro::kRope ? " rope" : "", splits,
              pred_ns >= 0 ? " (after a predecessor)" : "", max_err, ok ? "ok" : "WRONG", us, kv_bytes / us * 1e-3);
  return ok ? 0 : 2;
}

template <typename KV>
int run_dim(int d, int batch, int kv_len, int hq, int hkv, int page) {
  switch (d) {
    case 64: return run<KV, 64>(batch, kv_len, hq, hkv, page);
    case 128: return run<KV, 128>(batch, kv_len, hq, hkv, page);
    case 256: return run<KV, 256>(batch, kv_len, hq, hkv, page);
    default: std::fprintf(stderr, "head_dim must be 64, 128 or 256\n"); return 1;
  }
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s BATCH KV_LEN [HQ HKV HEAD_DIM PAGE bf16|e4m3]\n", argv[0]);
    return 1;
  }
  const int batch = std::atoi(argv[1]), kv_len = std::atoi(argv[2]);
  const int hq = argc > 3 ? std::atoi(argv[3]) : 32, hkv = argc > 4 ? std::atoi(argv[4]) : 8;
  const int d = argc > 5 ? std::atoi(argv[5]) : 128, page = argc > 6 ? std::atoi(argv[6]) : 16;
  const bool fp8 = argc > 7 && std::string(argv[7]) == "e4m3";
  if (batch < 1 || kv_len < 1 || hkv < 1 || hq % hkv != 0 || page < 1) {
    std::fprintf(stderr, "need batch, kv_len, page >= 1 and hq a multiple of hkv\n");
    return 1;
  }
  return fp8 ? run_dim<__nv_fp8_e4m3>(d, batch, kv_len, hq, hkv, page)
             : run_dim<__nv_bfloat16>(d, batch, kv_len, hq, hkv, page);
}
