// Batch decode over a paged KV cache on tensor cores (mma.sync m16n8k16, sm_80+), for 16-bit and fp8 KV (fp8
// tiles are converted to 16-bit in shared memory, stage by stage). Torch-free.
//
// Same grid, splits, slices, split merge and memory safety as the CUDA-core kernel in decode.cuh; what differs is
// the math. The query heads of one kv head (the GQA group, up to 16) are the 16 rows of an mma A tile, so a block
// reads each K/V element from shared memory once for the whole group and does its dot products on tensor cores:
// S = Q K^T and O += P V per warp over 16 tokens of each tile, with the online softmax on the S fragments in
// registers (log2 domain). Rows past the group are zero and never written. Per tile of 64 tokens a warp issues
// about 200 instructions, against several thousand on CUDA cores, so the kernel runs at the speed of memory.
//
// Tiles: kTcTile tokens of K and V per stage, rows swizzled for ldmatrix; warp w owns tokens [16w, 16w + 16).
#pragma once
#include <type_traits>

#include "decode.cuh"

namespace flashinfer {
namespace decode {

constexpr int kTcThreads = 128;
constexpr int kTcTile = 64;   // tokens per stage: 16 per warp
constexpr int kTcRows = 16;   // query heads per block (mma M)

// Stages: enough in flight per block, few enough that 3 blocks (D = 64, 128) fit an SM; D = 256 runs one block
// per SM with 3 stages, so two tiles stay in flight while it computes.
__host__ __device__ constexpr int tc_stages(int head_dim) { return head_dim == 64 ? 4 : head_dim == 128 ? 2 : 3; }
// The K/V work region: the stages, and for fp8 KV one 16-bit tile of K and V that each stage is converted into
// before the mma reads it (ldmatrix needs 16-bit rows). Reused by the final merge (4 warps x 16 rows x
// (head_dim + 2) floats, and the split weights).
__host__ __device__ constexpr size_t tc_work_region(int head_dim, int kv_bytes) {
  return (size_t)tc_stages(head_dim) * 2 * kTcTile * head_dim * kv_bytes +
         (kv_bytes == 2 ? 0 : (size_t)2 * kTcTile * head_dim * 2);
}
// Work region, the swizzled query tile, token validity per stage.
__host__ __device__ constexpr size_t tc_smem_bytes(int head_dim, int kv_bytes) {
  return tc_work_region(head_dim, kv_bytes) + (size_t)kTcRows * head_dim * 2 +
         (size_t)tc_stages(head_dim) * kTcTile * 4;
}

template <typename T, typename KV, int D>
__global__ void __launch_bounds__(kTcThreads, D == 256 ? 1 : 2) decode_tc_kernel(Params p) {
  constexpr int kStages = tc_stages(D);
  constexpr int kNT = D / 8;  // n-tiles of the output
  constexpr bool kConvert = !std::is_same_v<T, KV>;
  constexpr size_t kWork = tc_work_region(D, sizeof(KV));
  static_assert((size_t)4 * kTcRows * (D + 2) * 4 <= kWork, "merge buffers fit in the work region");
  extern __shared__ __align__(128) unsigned char smem[];
  KV* k_s = reinterpret_cast<KV*>(smem);  // [kStages][kTcTile][D], swizzled when 16-bit
  KV* v_s = k_s + kStages * kTcTile * D;
  T* kc_s = reinterpret_cast<T*>(v_s + kStages * kTcTile * D);  // fp8 KV: the converted tile [kTcTile][D]
  T* vc_s = kc_s + kTcTile * D;
  T* q_s = reinterpret_cast<T*>(smem + kWork);                               // [16][D], swizzled
  int* valid_s = reinterpret_cast<int*>(q_s + kTcRows * D);                  // [kStages][kTcTile]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int b = blockIdx.x, kvh = blockIdx.y / p.head_chunks, chunk = blockIdx.y % p.head_chunks;
  const int group = p.hq / p.hkv;
  const int h_base = kvh * group + chunk * kTcRows;
  const int nheads = min(group - chunk * kTcRows, kTcRows);
  pdl_enter();

  const Slice sl = request_slice(p, b, blockIdx.z, kTcTile);
  TileLoader<Params, KV, D, kTcTile, kTcThreads, !kConvert> loader(p, sl, kvh);
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    loader.find(s);
    if (s < sl.ntiles) loader.issue(k_s, v_s, valid_s, s);
    cp_async_commit();
  }
  loader.find(kStages - 1);

  // The query tile: row r is head h_base + r, zero past the group. q rows need not be 16-byte aligned.
  for (int c = tid; c < kTcRows * (D / 8); c += kTcThreads) {
    const int r = c / (D / 8), ch = c % (D / 8);
    Vec<T, 8> v;
    const T* src = static_cast<const T*>(p.q) + b * p.q_stride_n + (int64_t)(h_base + r) * p.q_stride_h + ch * 8;
#pragma unroll
    for (int j = 0; j < 8; ++j) v.v[j] = r < nheads ? src[j] : from_float<T>(0.f);
    v.store(q_s + swizzle<D>(r, ch));
  }

  // Scores in the log2 domain: sm_scale * k_scale, then the soft cap, then log2(e).
  const bool cap = p.logits_soft_cap > 0.f;
  const float qk_scale = p.sm_scale * p.k_scale * (cap ? 1.f : kLog2e);
  const float cap_scale = p.logits_soft_cap * kLog2e, inv_cap = cap ? 1.f / p.logits_soft_cap : 0.f;
  float o[kNT][4];
#pragma unroll
  for (int n = 0; n < kNT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  // This thread's rows of the fragments: lane / 4 and lane / 4 + 8; its columns 2 * (lane % 4) + {0, 1}.
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int tok0 = warp * 16;

  for (int tile = 0; tile < sl.ntiles; ++tile) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    // The stage refilled here was consumed in the previous iteration, before the barrier above.
    if (tile + kStages - 1 < sl.ntiles) loader.issue(k_s, v_s, valid_s, (tile + kStages - 1) % kStages);
    cp_async_commit();
    loader.find(tile + kStages);
    const int stage = tile % kStages;
    const T* kt;
    const T* vt;
    if constexpr (kConvert) {
      // Every warp finished reading the previous converted tile before the barrier above.
      convert_tile<T, KV, D, kTcTile, kTcThreads>(k_s + stage * kTcTile * D, kc_s);
      convert_tile<T, KV, D, kTcTile, kTcThreads>(v_s + stage * kTcTile * D, vc_s);
      __syncthreads();
      kt = kc_s, vt = vc_s;
    } else {
      kt = k_s + stage * kTcTile * D, vt = v_s + stage * kTcTile * D;
    }

    // S = Q K^T over this warp's 16 tokens: two 16x8 fragments.
    float s[2][4] = {};
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4], bk[4];
      ldmatrix_x4(a, q_s + swizzle<D>(lane % 16, kk * 2 + lane / 16));
      ldmatrix_x4(bk, kt + swizzle<D>(tok0 + (lane / 16) * 8 + lane % 8, kk * 2 + (lane / 8) % 2));
      mma_16816<T>(s[0], a, bk[0], bk[1]);
      mma_16816<T>(s[1], a, bk[2], bk[3]);
    }
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float x = s[nt][i] * qk_scale;
        if (cap) x = cap_scale * tanhf(x * inv_cap);
        const bool ok = valid_s[stage * kTcTile + tok0 + nt * 8 + 2 * (lane % 4) + (i % 2)];
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
    for (int nt = 0; nt < 2; ++nt)
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
    // O += P V: P's C fragments are the A fragment of a 16x16 (rows x tokens) tile.
    const uint32_t pa[4] = {pack2<T>(s[0][0], s[0][1]), pack2<T>(s[0][2], s[0][3]), pack2<T>(s[1][0], s[1][1]),
                            pack2<T>(s[1][2], s[1][3])};
#pragma unroll
    for (int n = 0; n < kNT; n += 2) {
      uint32_t bv[4];
      ldmatrix_x4_trans(bv, vt + swizzle<D>(tok0 + ((lane / 8) % 2) * 8 + lane % 8, n + lane / 16));
      mma_16816<T>(o[n], pa, bv[0], bv[1]);
      mma_16816<T>(o[n + 1], pa, bv[2], bv[3]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the stages become the merge buffers

  // Merge the four warps' partial (m, l, O) per row.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
  float* red_o = reinterpret_cast<float*>(smem);          // [4][16][D]
  float* red_ml = red_o + 4 * kTcRows * D;                 // [4][16][2]
  const int r0 = lane / 4, c0 = 2 * (lane % 4);
#pragma unroll
  for (int n = 0; n < kNT; ++n) {
    red_o[(warp * kTcRows + r0) * D + n * 8 + c0] = o[n][0];
    red_o[(warp * kTcRows + r0) * D + n * 8 + c0 + 1] = o[n][1];
    red_o[(warp * kTcRows + r0 + 8) * D + n * 8 + c0] = o[n][2];
    red_o[(warp * kTcRows + r0 + 8) * D + n * 8 + c0 + 1] = o[n][3];
  }
  if (lane % 4 == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      red_ml[(warp * kTcRows + r0 + 8 * r) * 2] = m[r];
      red_ml[(warp * kTcRows + r0 + 8 * r) * 2 + 1] = l[r];
    }
  }
  __syncthreads();
  for (int idx = tid; idx < nheads * D; idx += kTcThreads) {
    const int r = idx / D, e = idx % D;
    float mxw = -INFINITY;
#pragma unroll
    for (int w = 0; w < 4; ++w) mxw = fmaxf(mxw, red_ml[(w * kTcRows + r) * 2]);
    float den = 0.f, acc = 0.f;
    if (mxw > -INFINITY) {
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        const float wt = exp2f(red_ml[(w * kTcRows + r) * 2] - mxw);
        den += red_ml[(w * kTcRows + r) * 2 + 1] * wt;
        acc += red_o[(w * kTcRows + r) * D + e] * wt;
      }
    }
    const float val = den > 0.f ? acc * p.v_scale / den : 0.f;
    const float lse = den > 0.f ? mxw + log2f(den) : -INFINITY;
    const int h = h_base + r;
    if (p.num_splits == 1) {
      static_cast<T*>(p.out)[((int64_t)b * p.hq + h) * D + e] = from_float<T>(val);
      if (e == 0) p.lse[(int64_t)b * p.hq + h] = lse;
    } else {
      const int64_t row = ((int64_t)b * p.num_splits + blockIdx.z) * p.hq + h;
      p.tmp_o[row * D + e] = val;
      if (e == 0) p.tmp_lse[row] = lse;
    }
  }
  if (p.num_splits > 1)
    merge_if_last_split<T, D>(p, b, h_base, nheads, reinterpret_cast<float*>(smem), kWork / 4);
}

template <typename T, typename KV, int D, typename AllocTmp>
cudaError_t launch_tc(const Params& p, int sm_count, AllocTmp&& alloc_tmp, cudaStream_t stream) {
  return launch_split(decode_tc_kernel<T, KV, D>, kTcThreads, tc_smem_bytes(D, sizeof(KV)), kTcRows, p,
                            sm_count, alloc_tmp, stream);
}

}  // namespace decode
}  // namespace flashinfer
