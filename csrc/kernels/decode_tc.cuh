// Batch decode over a paged KV cache on tensor cores (mma.sync m16n8k16, sm_80+), for 16-bit and fp8 KV.
// Torch-free.
//
// Same grid, splits, slices, split merge and memory safety as the CUDA-core kernel in decode.cuh; what differs is
// the math. The query heads of one kv head (the GQA group, up to 16) are the 16 rows of an mma A tile, so a block
// reads each K/V element from shared memory once for the whole group and does its dot products on tensor cores:
// S = Q K^T and O += P V per warp over its quarter of each tile, with the online softmax on the S fragments in
// registers (log2 domain). Rows past the group are zero and never written. Per tile of 64 tokens a warp issues
// about 200 instructions, against several thousand on CUDA cores, so the kernel runs at the speed of memory.
//
// Tiles: tc_tile tokens of K and V per stage, rows swizzled for ldmatrix; warp w owns the w-th quarter of them,
// in runs of 16 tokens (one mma k step of P V).
//
// fp8 KV: the staged bytes go through ldmatrix as they are and are converted in registers (cvt e4m3x2/e5m2x2 ->
// f16x2, exact), so there is no conversion pass through shared memory and no extra barrier; the mma run in f16.
// - K: a non-transposed ldmatrix on the bytes gives lane (g, t) dims 4t..4t+3 of token g's 16-dim chunk, which
//   fill the B fragment's k slots (2t, 2t+1, 2t+8, 2t+9). The dot product does not care about the order of k, so
//   the query tile is stored with the same permutation (q_slot_dim) and S comes out unchanged.
// - V: a transposed ldmatrix gives lane (g, t) {V[2t][2g], V[2t][2g+1], V[2t+1][2g], V[2t+1][2g+1]}; a byte permute
//   makes one B fragment of the even dims and one of the odd dims of the chunk, so the output accumulators hold
//   dims in the order fp8_out_dim gives, and only the epilogue maps them back.
// - bf16 queries become f16 with a power-of-two scale per row (largest |q| near 2^13, exact in f16's wider
//   mantissa; the scale goes back into the score scale), and P is rounded to f16, which is finer than bf16 on [0, 1].
// - Under ROPE_LLAMA, K must be rotated per position before S: each warp converts its rows into an f16 K tile,
//   rotating them in packed f16x2 arithmetic (rope_convert_chunk), and S runs as for 16-bit KV on f16 operands (the
//   query tile in natural dim order, scaled as above); V stays as above.
#pragma once
#include <type_traits>

#include "common/block_trace.cuh"
#include "common/rotary.cuh"
#include "decode.cuh"

namespace flashinfer {
namespace decode {

constexpr int kTcThreads = 128;
constexpr int kTcRows = 16;   // query heads per block (mma M)

// Tokens per stage. 16-bit KV at D = 64 takes 128 (32 per warp): a 64-token tile there is 16 KB, too little work
// between barriers (bf16 64 x 4096 on an H200: 135 against 158 us, 1 x 8192: 12.8 against 14.4). fp8 tiles at
// D = 64 stay at 64 tokens, which ran faster there (105 against 134 us).
__host__ __device__ constexpr int tc_tile(int head_dim, int kv_bytes) {
  return head_dim == 64 && kv_bytes == 2 ? 128 : 64;
}
// Stages per block; two blocks share an SM at D = 64 and 128. 16-bit D = 128 takes three 32 KB stages: 1-2% faster
// than two at batch >= 64 on an H200 (64 x 4096: 255 against 257 us; 128 x 8192: 981 against 1000), up to 3% slower
// on short requests. fp8 D = 64 keeps four 8 KB stages. D = 256 runs one block per SM with 3 stages, so two tiles
// stay in flight while it computes; except fp8 under RoPE, whose rotation pass is more work than one block's four
// warps hide: two stages and two blocks an SM (64 x 4096: 390 against 549 us, 16 x 4096: 108 against 143).
__host__ __device__ constexpr int tc_stages(int head_dim, int kv_bytes, bool rope) {
  return head_dim == 64 ? (kv_bytes == 1 ? 4 : 2) : head_dim == 256 && kv_bytes == 1 && rope ? 2 : 3;
}
__host__ __device__ constexpr int tc_blocks_per_sm(int head_dim, int kv_bytes, bool rope) {
  return head_dim == 256 && !(kv_bytes == 1 && rope) ? 1 : 2;
}
// Whether the first wave warms L2 before waiting for its predecessor (prefetch_slice_l2 in decode.cuh: what it
// costs), and how many bytes of K and V each block then prefetches beside its page-table lines. Chained decodes
// gain from the 64 KB K/V prefetch at 16-bit D = 128 (1 x 8192 15.0 against 16.0 us, 1 x 2048 9.7 against 10.2,
// H200) and from the page-table lines at the other sizes (0.2-0.5 us; K/V there cost 0.2-1 us). Behind a short
// kernel, as in a model step, only D = 256 still gains, so only there does the launcher turn it on. Elsewhere the
// code stays compiled and is skipped at run time: without it ptxas schedules the kernel 0.1-0.8 us slower.
__host__ __device__ constexpr bool tc_prefetch_before_wait(int head_dim) { return head_dim == 256; }
__host__ __device__ constexpr int tc_prefetch_bytes(int head_dim, int kv_bytes) {
  return head_dim == 128 && kv_bytes == 2 ? 64 << 10 : 0;
}
// Row stride (floats) of the warps' partial outputs in the cross-warp merge: padded by 4 so the 8 rows a warp
// stores at once fall on different banks (at head_dim floats every row starts on bank 0: 8-way conflicts).
__host__ __device__ constexpr int tc_merge_row(int head_dim) { return head_dim + 4; }
// The K/V work region: the stages, reused by the final merge (4 warps x 16 rows of partial output, (m, l) and the
// merge weight, then the split weights), whichever is larger.
__host__ __device__ constexpr size_t tc_work_region(int head_dim, int kv_bytes, bool rope) {
  const size_t stages =
      (size_t)tc_stages(head_dim, kv_bytes, rope) * 2 * tc_tile(head_dim, kv_bytes) * head_dim * kv_bytes;
  const size_t merge = (size_t)4 * kTcRows * (tc_merge_row(head_dim) + 4) * 4;
  return stages > merge ? stages : merge;
}
// Bytes of the f16 K tile that fp8 K is rotated into under RoPE (none otherwise).
__host__ __device__ constexpr size_t tc_rope_k_bytes(int head_dim, int kv_bytes, bool rope) {
  return kv_bytes == 1 && rope ? (size_t)tc_tile(head_dim, kv_bytes) * head_dim * 2 : 0;
}
// Work region, the rotated K tile (fp8 KV under RoPE), the swizzled query tile, token validity per stage, the per-row
// query scales (fp8 KV).
__host__ __device__ constexpr size_t tc_smem_bytes(int head_dim, int kv_bytes, bool rope) {
  const size_t valid = (size_t)tc_stages(head_dim, kv_bytes, rope) * tc_tile(head_dim, kv_bytes) * 4;
  return tc_work_region(head_dim, kv_bytes, rope) + tc_rope_k_bytes(head_dim, kv_bytes, rope) +
         (size_t)kTcRows * head_dim * 2 + valid + (kv_bytes == 1 ? kTcRows * 4 : 0);
}

// fp8 KV. The query dim stored in k slot `slot` of a 16-dim chunk: slots (2t, 2t + 1) hold dims (4t, 4t + 1) and
// slots (2t + 8, 2t + 9) dims (4t + 2, 4t + 3), the order in which ldmatrix hands out K's bytes.
__device__ __forceinline__ int q_slot_dim(int slot) {
  return slot < 8 ? 2 * slot - slot % 2 : 4 * ((slot - 8) / 2) + 2 + slot % 2;
}
// The dim held by column 2t + j of output n-tile n (16-dim chunk n / 2, even dims when n is even).
__device__ __forceinline__ int fp8_out_dim(int n, int t, int j) { return 16 * (n / 2) + 4 * t + 2 * j + n % 2; }

// Four fp8 values (bytes 0..3 of x) to two f16x2 registers: bytes (0, 1) and (2, 3).
template <typename KV>
__device__ __forceinline__ void fp8x4_to_f16x2(uint32_t x, uint32_t& lo, uint32_t& hi) {
  const __half2_raw a = fp8x2_to_f16x2<KV>(x), b = fp8x2_to_f16x2<KV>(x >> 16);
  lo = (uint32_t)a.x | (uint32_t)a.y << 16;
  hi = (uint32_t)b.x | (uint32_t)b.y << 16;
}

// Chunk ch (8 dims) of fp8 K row r and its partner, from a staged tile (swizzle_fp8) to the f16 tile k16, rotated by
// the angles whose cosines and sines are cs and sn, in f16x2: x' = u c - w s and y' = w c + u s as one multiply and
// one fma each, two dims at a time. fp8 -> f16 is exact; c and s are rounded to f16, and so are w s and the result:
// about 2^-10 of |k| in all, finer than the bf16 K tile it replaces and about three f16 roundings for f16 queries,
// for half the instructions of rotating in fp32 (the pass bounds this kernel). e5m2's cosines and sines come at half
// amplitude (kRopeAmp, common/rotary.cuh).
template <typename KV, int D>
__device__ __forceinline__ void rope_convert_chunk(const KV* kt, __half* k16, int r, int ch, const float (&cs)[8],
                                                   const float (&sn)[8]) {
  const int hi_ch = ch + D / 16;  // the partner chunk, D / 2 dims on; an fp8 16-byte chunk holds two 8-dim ones
  const uint2 a = *reinterpret_cast<const uint2*>(kt + swizzle_fp8<D>(r, ch / 2) + ch % 2 * 8);
  const uint2 b = *reinterpret_cast<const uint2*>(kt + swizzle_fp8<D>(r, hi_ch / 2) + hi_ch % 2 * 8);
  const uint32_t wa[2] = {a.x, a.y}, wb[2] = {b.x, b.y};
  uint32_t lo[4], hi[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __half2 u(fp8x2_to_f16x2<KV>(wa[i / 2] >> (16 * (i % 2))));
    const __half2 w(fp8x2_to_f16x2<KV>(wb[i / 2] >> (16 * (i % 2))));
    const __half2 c = __floats2half2_rn(cs[2 * i], cs[2 * i + 1]);
    const __half2 sn2 = __floats2half2_rn(sn[2 * i], sn[2 * i + 1]);
    const __half2 x = __hfma2(u, c, __hneg2(__hmul2(w, sn2)));
    const __half2 y = __hfma2(w, c, __hmul2(u, sn2));
    lo[i] = *reinterpret_cast<const uint32_t*>(&x);
    hi[i] = *reinterpret_cast<const uint32_t*>(&y);
  }
  *reinterpret_cast<uint4*>(k16 + swizzle<D>(r, ch)) = make_uint4(lo[0], lo[1], lo[2], lo[3]);
  *reinterpret_cast<uint4*>(k16 + swizzle<D>(r, hi_ch)) = make_uint4(hi[0], hi[1], hi[2], hi[3]);
}

// kRope: ROPE_LLAMA, the query tile rotated to position len - 1 once, and each warp rotating the K rows it reads (its
// quarter of the stage) before its S product: no block barrier beyond the tile's own. 16-bit K is rotated in place;
// fp8 K on its way into an f16 K tile (each warp its rows), S then runs as for 16-bit KV on f16 operands, while V
// keeps the fp8 path.
template <typename T, typename KV, int D, bool kRope>
__global__ void __launch_bounds__(kTcThreads, tc_blocks_per_sm(D, sizeof(KV), kRope)) decode_tc_kernel(Params p) {
  constexpr int kStages = tc_stages(D, sizeof(KV), kRope);
  constexpr int kTile = tc_tile(D, sizeof(KV));
  constexpr int kSubs = kTile / 64;  // runs of 16 tokens per warp
  constexpr int kNT = D / 8;  // n-tiles of the output
  constexpr bool kFp8 = sizeof(KV) == 1;
  constexpr bool kRawK = kFp8 && !kRope;  // S reads fp8 K's bytes as staged
  using QT = std::conditional_t<kFp8, __half, T>;  // S's operand type
  using PT = std::conditional_t<kFp8, __half, T>;   // P V's operand type
  constexpr size_t kWork = tc_work_region(D, sizeof(KV), kRope);
  extern __shared__ __align__(128) unsigned char smem[];
  KV* k_s = reinterpret_cast<KV*>(smem);  // [kStages][kTile][D], swizzled (swizzle_fp8 for fp8)
  KV* v_s = k_s + kStages * kTile * D;
  __half* k16_s = reinterpret_cast<__half*>(smem + kWork);  // [kTile][D], swizzled: fp8 K rotated (kRope)
  QT* q_s = reinterpret_cast<QT*>(smem + kWork + tc_rope_k_bytes(D, sizeof(KV), kRope));  // [16][D], swizzled
  int* valid_s = reinterpret_cast<int*>(q_s + kTcRows * D);                  // [kStages][kTile]
  float* qscale_s = reinterpret_cast<float*>(valid_s + kStages * kTile);  // [16]: fp8 KV, 2^e of row r

  BLOCK_TRACE_ENTRY();
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  // Blocks are dispatched in linear order (x fastest). Remapped so the kv heads of one request are neighbours: they
  // run side by side and stream the same pages (each token row of a page holds every head).
  const int lin = blockIdx.x + blockIdx.y * gridDim.x;
  const int b = lin / gridDim.y, slot = lin % gridDim.y;
  const int kvh = slot / p.head_chunks, chunk = slot % p.head_chunks;
  const int group = p.hq / p.hkv;
  const int h_base = kvh * group + chunk * kTcRows;
  const int nheads = min(group - chunk * kTcRows, kTcRows);
  prefetch_slice_l2<KV, D, kTcThreads, tc_prefetch_bytes(D, sizeof(KV))>(
      p, b, blockIdx.z, kTile, kvh, lin + (int64_t)blockIdx.z * gridDim.x * gridDim.y);
  pdl_wait();
  BLOCK_TRACE(3);

  const SplitSlice sl = request_slice(p, b, blockIdx.z, kTile);
  // Rows of 256 bytes or more share their page lookups across a warp: 1-6% faster at bf16 D 128 and D 256 (H200,
  // benchmarks/micro). Shorter rows (fp8 D 128, 16-bit D 64) measured 1-10% slower with it.
  constexpr bool kShareLookups = D * sizeof(KV) >= 256;
  TileLoader<Params, KV, D, kTile, kTcThreads, true, false, kShareLookups> loader(p, sl, kvh);
  loader.prologue<kStages>(k_s, v_s, valid_s);

  // The query tile: row r is head h_base + r, zero past the group. q rows need not be 16-byte aligned. For fp8 KV it
  // is f16 scaled by 2^-e with e per row, and for S on fp8 K's bytes the dims go in q_slot_dim order.
  for (int c = tid; c < kTcRows * (D / 8); c += kTcThreads) {
    const int r = c / (D / 8), ch = c % (D / 8);
    const T* src = static_cast<const T*>(p.q) + b * p.q_stride_n + (int64_t)(h_base + r) * p.q_stride_h + ch * 8;
    Vec<QT, 8> v;
    if constexpr (!kFp8) {
#pragma unroll
      for (int j = 0; j < 8; ++j) v.v[j] = r < nheads ? src[j] : from_float<T>(0.f);
    } else {
      if constexpr (kRawK) src -= ch % 2 * 8;  // the 16-dim chunk
      float x[8], mx = 0.f;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        x[j] = r < nheads ? to_float(src[kRawK ? q_slot_dim(ch % 2 * 8 + j) : j]) : 0.f;
        mx = fmaxf(mx, fabsf(x[j]));
      }
      // The D / 8 threads of a row are adjacent lanes; every lane runs the same number of passes.
#pragma unroll
      for (int off = 1; off < D / 8; off *= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      int e = 0;
      if (std::is_same_v<T, __nv_bfloat16> && mx > 0.f && mx <= 3.4e38f) e = min(max(ilogbf(mx) - 13, -100), 114);
      const float down = __int_as_float((127 - e) << 23);
#pragma unroll
      for (int j = 0; j < 8; ++j) v.v[j] = __float2half_rn(x[j] * down);
      if (ch == 0) qscale_s[r] = __int_as_float((127 + e) << 23);
    }
    v.store(q_s + swizzle<D>(r, ch));
  }
  if constexpr (kRope) {
    __syncthreads();  // a thread rotates a chunk and its partner, stored by two threads
    const float x = (float)(sl.len - 1);
    for (int c = tid; c < kTcRows * (D / 16); c += kTcThreads) {
      const int ch = c % (D / 16);
      float cs[8], sn[8];
#pragma unroll
      for (int j = 0; j < 8; ++j)
        __sincosf(x * rope_inv_freq(p.rope_rcp_scale, p.rope_log2_theta, ch * 8 + j, D), &sn[j], &cs[j]);
      rope_rotate_chunk<QT, D, kTcRows, false>(q_s, c / (D / 16), ch, cs, sn);
    }
  }

  // Scores in the log2 domain: sm_scale * k_scale * log2(e), under a soft cap times 2 / cap (the argument of
  // cap_tanh_core, whose affine map then gives cap * log2(e) * tanh); for fp8 KV times the row's 2^e. K rotated into
  // the f16 tile at an amplitude below 1 (kRopeAmp) is scaled back here.
  constexpr float kAmp = kRope ? kRopeAmp<__half, KV> : 1.f;
  const bool cap = p.logits_soft_cap > 0.f;
  float qk_scale[2];
  qk_scale[0] = qk_scale[1] = p.sm_scale * (p.k_scale / kAmp) * kLog2e * (cap ? 2.f / p.logits_soft_cap : 1.f);
  if constexpr (kFp8) {
    if constexpr (!kRope) __syncthreads();  // under RoPE, the query rotation's barrier published qscale_s
    qk_scale[0] *= qscale_s[lane / 4];
    qk_scale[1] *= qscale_s[lane / 4 + 8];
  }
  const float cap_scale = p.logits_soft_cap * kLog2e;
  float o[kNT][4];
#pragma unroll
  for (int n = 0; n < kNT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  // This thread's rows of the fragments: lane / 4 and lane / 4 + 8; its columns 2 * (lane % 4) + {0, 1}.
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int tok0 = warp * 16 * kSubs;
  // The rotary constants of this lane's chunk of its warp's K rows (lane % (D / 16)), kept across the tile loop where
  // registers allow (not at head_dim 256).
  std::conditional_t<(D < 256), RopeChunk<D, 32>, RopeParams> rope;
  if constexpr (D < 256) {
    if constexpr (kRope) rope.init(RopeParams{p.rope_rcp_scale, p.rope_log2_theta}, lane % (D / 16));
  } else {
    rope = RopeParams{p.rope_rcp_scale, p.rope_log2_theta};
  }

  for (int tile = 0; tile < sl.ntiles; ++tile) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    if (tile == 0) BLOCK_TRACE(4);  // the first tile has landed
    // The stage refilled here was consumed in the previous iteration, before the barrier above.
    if (tile + kStages - 1 < sl.ntiles) loader.issue(k_s, v_s, valid_s, (tile + kStages - 1) % kStages);
    cp_async_commit();
    loader.find(tile + kStages);
    const int stage = tile % kStages;
    const KV* kt = k_s + stage * kTile * D;
    const KV* vt = v_s + stage * kTile * D;
    const QT* ks;  // the K tile S reads
    if constexpr (kRawK) ks = nullptr;
    else if constexpr (kFp8) ks = k16_s;
    else ks = kt;
    if constexpr (kRope) {
      // Only this warp reads these rows; the stage (the f16 tile) is rewritten after the next loop barrier.
      const int64_t pos0 = sl.t0 + (int64_t)tile * kTile + tok0;
      const int rope_ch = lane % (D / 16), rope_r0 = lane / (D / 16);
      if constexpr (!kFp8) {
        rope_tile_consecutive<KV, D, 16 * kSubs, 32>(rope, k_s + (stage * kTile + tok0) * D, pos0, rope_ch, rope_r0);
      } else {
        rope_rows_consecutive<D, 16 * kSubs, 32>(
            rope, pos0, rope_ch, rope_r0,
            [&](int r, const float(&cs)[8], const float(&sn)[8]) {
              rope_convert_chunk<KV, D>(kt, k16_s, tok0 + r, rope_ch, cs, sn);
            },
            kAmp);
      }
      __syncwarp();
    }

    // S = Q K^T over this warp's tokens: two 16x8 fragments per run of 16.
    float s[2 * kSubs][4] = {};
    if constexpr (!kRawK) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t a[4], bk[4];
        ldmatrix_x4(a, q_s + swizzle<D>(lane % 16, kk * 2 + lane / 16));
#pragma unroll
        for (int u = 0; u < kSubs; ++u) {
          ldmatrix_x4(bk, ks + swizzle<D>(tok0 + 16 * u + (lane / 16) * 8 + lane % 8, kk * 2 + (lane / 8) % 2));
          mma_16816<QT>(s[2 * u], a, bk[0], bk[1]);
          mma_16816<QT>(s[2 * u + 1], a, bk[2], bk[3]);
        }
      }
    } else {
      // One ldmatrix: tokens 0-7 and 8-15 of a run, 16-dim chunks kk and kk + 1, 4 bytes per lane each.
#pragma unroll
      for (int kk = 0; kk < D / 16; kk += 2) {
        uint32_t a0[4], a1[4], bk[4], lo, hi;
        ldmatrix_x4(a0, q_s + swizzle<D>(lane % 16, kk * 2 + lane / 16));
        ldmatrix_x4(a1, q_s + swizzle<D>(lane % 16, kk * 2 + 2 + lane / 16));
#pragma unroll
        for (int u = 0; u < kSubs; ++u) {
          ldmatrix_x4(bk, kt + swizzle_fp8<D>(tok0 + 16 * u + (lane / 8) % 2 * 8 + lane % 8, kk + lane / 16));
#pragma unroll
          for (int m = 0; m < 4; ++m) {
            fp8x4_to_f16x2<KV>(bk[m], lo, hi);
            mma_16816<QT>(s[2 * u + m % 2], m < 2 ? a0 : a1, lo, hi);
          }
        }
      }
    }
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int nt = 0; nt < 2 * kSubs; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float x = s[nt][i] * qk_scale[i / 2];
        if (cap) x = fmaf(2.f * cap_scale, cap_tanh_core(x), cap_scale);
        const bool ok = valid_s[stage * kTile + tok0 + nt * 8 + 2 * (lane % 4) + (i % 2)];
        s[nt][i] = ok ? x : -INFINITY;
        mx[i / 2] = fmaxf(mx[i / 2], s[nt][i]);
      }
    float scale[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      scale[r] = mx[r] == -INFINITY ? 1.f : fast_exp2(m[r] - mx[r]);
      m[r] = mx[r];
      l[r] *= scale[r];
    }
#pragma unroll
    for (int nt = 0; nt < 2 * kSubs; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float mr = mx[i / 2];
        s[nt][i] = mr == -INFINITY ? 0.f : fast_exp2(s[nt][i] - mr);
        l[i / 2] += s[nt][i];  // a partial row sum: the quad adds its four at the end
      }
#pragma unroll
    for (int n = 0; n < kNT; ++n) {
      o[n][0] *= scale[0], o[n][1] *= scale[0];
      o[n][2] *= scale[1], o[n][3] *= scale[1];
    }
    // O += P V: P's C fragments of a run are the A fragment of a 16x16 (rows x tokens) tile.
#pragma unroll
    for (int u = 0; u < kSubs; ++u) {
      uint32_t pa[4];
      c_to_a<PT>(s, u, pa);
      const int tr = tok0 + 16 * u + (lane / 8) % 2 * 8 + lane % 8;  // this lane's ldmatrix row
      if constexpr (!kFp8) {
#pragma unroll
        for (int n = 0; n < kNT; n += 2) {
          uint32_t bv[4];
          ldmatrix_x4_trans(bv, vt + swizzle<D>(tr, n + lane / 16));
          mma_16816<PT>(o[n], pa, bv[0], bv[1]);
          mma_16816<PT>(o[n + 1], pa, bv[2], bv[3]);
        }
      } else {
        // One ldmatrix: tokens 0-7 and 8-15 of 16-dim chunks c and c + 1; each pair of registers gives the B fragments
        // of the chunk's even dims (bytes 0 and 2 of each) and odd dims (bytes 1 and 3).
#pragma unroll
        for (int c = 0; c < D / 16; c += 2) {
          uint32_t bv[4], lo, hi;
          ldmatrix_x4_trans(bv, vt + swizzle_fp8<D>(tr, c + lane / 16));
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            fp8x4_to_f16x2<KV>(__byte_perm(bv[2 * h], bv[2 * h + 1], 0x6420), lo, hi);
            mma_16816<PT>(o[2 * (c + h)], pa, lo, hi);
            fp8x4_to_f16x2<KV>(__byte_perm(bv[2 * h], bv[2 * h + 1], 0x7531), lo, hi);
            mma_16816<PT>(o[2 * (c + h) + 1], pa, lo, hi);
          }
        }
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the stages become the merge buffers
  BLOCK_TRACE(5);
  pdl_trigger();  // late, as in decode.cuh (see its header)

  // Merge the four warps' partial (m, l, O) per row.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
  constexpr int kRowF = tc_merge_row(D);
  float* red_o = reinterpret_cast<float*>(smem);           // [4][16][kRowF]
  float* red_ml = red_o + 4 * kTcRows * kRowF;             // [4][16][2]
  float* red_w = red_ml + 4 * kTcRows * 2;                 // [4][16]: each warp's weight in a row's output
  float* red_lse = red_w + 4 * kTcRows;                    // [16]
  const int r0 = lane / 4, t = lane % 4;
  float* row_lo = red_o + (warp * kTcRows + r0) * kRowF;
  float* row_hi = row_lo + 8 * kRowF;
  // Pairs of adjacent dims as one 8-byte store: within an n-tile for 16-bit KV; for fp8 the same column of the
  // even-dim and the odd-dim tile of a chunk. Rows past the group are zero and never read, so not stored (a GQA
  // group of 4 stores a quarter of the tile).
#pragma unroll
  for (int n = 0; n < kNT; n += 2)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      if constexpr (kFp8) {
        const int col = fp8_out_dim(n, t, j);
        if (r0 < nheads) *reinterpret_cast<float2*>(row_lo + col) = make_float2(o[n][j], o[n + 1][j]);
        if (r0 + 8 < nheads) *reinterpret_cast<float2*>(row_hi + col) = make_float2(o[n][2 + j], o[n + 1][2 + j]);
      } else {
        const int col = (n + j) * 8 + 2 * t;
        if (r0 < nheads) *reinterpret_cast<float2*>(row_lo + col) = make_float2(o[n + j][0], o[n + j][1]);
        if (r0 + 8 < nheads) *reinterpret_cast<float2*>(row_hi + col) = make_float2(o[n + j][2], o[n + j][3]);
      }
    }
  if (lane % 4 == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      red_ml[(warp * kTcRows + r0 + 8 * r) * 2] = m[r];
      red_ml[(warp * kTcRows + r0 + 8 * r) * 2 + 1] = l[r];
    }
  }
  __syncthreads();
  // Per row, once: the weight of each warp's partial (v_scale and the normaliser folded in) and the row's lse.
  if (tid < nheads) {
    float mxw = -INFINITY;
#pragma unroll
    for (int w = 0; w < 4; ++w) mxw = fmaxf(mxw, red_ml[(w * kTcRows + tid) * 2]);
    float wt[4], den = 0.f;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      wt[w] = mxw > -INFINITY ? exp2f(red_ml[(w * kTcRows + tid) * 2] - mxw) : 0.f;
      den += red_ml[(w * kTcRows + tid) * 2 + 1] * wt[w];
    }
    const float inv = den > 0.f ? p.v_scale / den : 0.f;
#pragma unroll
    for (int w = 0; w < 4; ++w) red_w[w * kTcRows + tid] = wt[w] * inv;
    red_lse[tid] = den > 0.f ? mxw + log2f(den) : -INFINITY;
  }
  __syncthreads();
  // Four consecutive dims a thread: one 16-byte read of each warp's partial, one vector store.
  for (int idx = tid; idx < nheads * (D / 4); idx += kTcThreads) {
    const int r = idx / (D / 4), e = idx % (D / 4) * 4;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const float wt = red_w[w * kTcRows + r];
      const float4 x = *reinterpret_cast<const float4*>(red_o + (w * kTcRows + r) * kRowF + e);
      acc.x = fmaf(wt, x.x, acc.x), acc.y = fmaf(wt, x.y, acc.y);
      acc.z = fmaf(wt, x.z, acc.z), acc.w = fmaf(wt, x.w, acc.w);
    }
    const int h = h_base + r;
    if (p.num_splits == 1) {
      Vec<T, 4> ov;
      ov.v[0] = from_float<T>(acc.x), ov.v[1] = from_float<T>(acc.y);
      ov.v[2] = from_float<T>(acc.z), ov.v[3] = from_float<T>(acc.w);
      ov.store(static_cast<T*>(p.out) + ((int64_t)b * p.hq + h) * D + e);
      if (e == 0) p.lse[(int64_t)b * p.hq + h] = red_lse[r];
    } else {
      const int64_t row = ((int64_t)b * p.num_splits + blockIdx.z) * p.hq + h;
      *reinterpret_cast<float4*>(p.tmp_o + row * D + e) = acc;
      if (e == 0) p.tmp_lse[row] = red_lse[r];
    }
  }
  BLOCK_TRACE(6);  // the block's output (or partial) stored
  if (p.num_splits > 1)
    merge_if_last_split<T, D>(p, b, slot, h_base, nheads, reinterpret_cast<float*>(smem), kWork / 4, sl.used);
  BLOCK_TRACE_EXIT();
}

template <typename T, typename KV, int D, bool kRope = false, typename AllocTmp>
cudaError_t launch_tc(const Params& p, int sm_count, AllocTmp&& alloc_tmp, cudaStream_t stream) {
  return launch_split(decode_tc_kernel<T, KV, D, kRope>, kTcThreads, tc_smem_bytes(D, sizeof(KV), kRope), kTcRows,
                      tc_prefetch_before_wait(D), p, sm_count, alloc_tmp, stream);
}

}  // namespace decode
}  // namespace flashinfer
