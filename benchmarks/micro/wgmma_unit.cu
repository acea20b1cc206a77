// Unit check of the wgmma building blocks (csrc/kernels/common/wgmma.cuh) on one warpgroup, apart from any kernel:
// S = Q K^T (wgmma_ss_n64, both operands K-major in the swizzle_wg layout) and O = P V (wgmma_rs, P = S packed from
// the accumulators, V N-major) for one 64-row tile at head_dim 64, 128 and 256. Inputs are in {-1, 0, 1}, so every
// product and sum is exact and the check is equality. Prints the mismatch counts (and the first few mismatches);
// exits non-zero on any. sm_90a only:
//   nvcc -std=c++20 -O2 -gencode=arch=compute_90a,code=sm_90a -I csrc/kernels benchmarks/micro/wgmma_unit.cu \
//     -o /tmp/wgmma_unit && /tmp/wgmma_unit
#include <cuda_bf16.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "common/mma.cuh"
#include "common/vec.cuh"
#include "common/wgmma.cuh"
#include "micro.cuh"

using namespace flashinfer;
using T = __nv_bfloat16;

template <int D>
__global__ void __launch_bounds__(128, 1) unit(const T* q, const T* k, const T* v, float* s_out, float* o_out) {
  extern __shared__ __align__(1024) unsigned char smem[];
  T* q_s = reinterpret_cast<T*>(smem);
  T* k_s = q_s + 64 * D;
  T* v_s = k_s + 64 * D;
  for (int c = threadIdx.x; c < 64 * (D / 8); c += 128) {
    const int r = c / (D / 8), ch = c % (D / 8);
    const int dst = swizzle_wg<D, 64>(r, ch);
    *reinterpret_cast<uint4*>(q_s + dst) = *reinterpret_cast<const uint4*>(q + r * D + ch * 8);
    *reinterpret_cast<uint4*>(k_s + dst) = *reinterpret_cast<const uint4*>(k + r * D + ch * 8);
    *reinterpret_cast<uint4*>(v_s + dst) = *reinterpret_cast<const uint4*>(v + r * D + ch * 8);
  }
  fence_async_shared();
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float s[8][4];
  float o[D / 8][4];
  for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  const uint32_t qa = (uint32_t)__cvta_generic_to_shared(q_s), ka = (uint32_t)__cvta_generic_to_shared(k_s),
                 va = (uint32_t)__cvta_generic_to_shared(v_s);
  wg_fence();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t off = (kk / 4) * 64 * 128 + (kk % 4) * 32;
    wgmma_ss_n64<T>(s, wg_desc(qa + off, 16, 1024), wg_desc(ka + off, 16, 1024), kk > 0);
  }
  wg_commit();
  wg_wait<0>();
  wg_keep(s);
  for (int j = 0; j < 8; ++j)
    for (int i = 0; i < 4; ++i)
      s_out[(16 * warp + lane / 4 + 8 * (i / 2)) * 64 + 8 * j + 2 * (lane % 4) + i % 2] = s[j][i];
  uint32_t pa[4][4];
  for (int kt = 0; kt < 4; ++kt) c_to_a<T>(s, kt, pa[kt]);
  wg_fence();
#pragma unroll
  for (int kt = 0; kt < 4; ++kt) wgmma_rs<D, T>(o, pa[kt], wg_desc(va + kt * 16 * 128, 64 * 128, 1024));
  wg_commit();
  wg_wait<0>();
  wg_keep(o);
  for (int j = 0; j < D / 8; ++j)
    for (int i = 0; i < 4; ++i)
      o_out[(16 * warp + lane / 4 + 8 * (i / 2)) * D + 8 * j + 2 * (lane % 4) + i % 2] = o[j][i];
}

template <int D>
int check() {
  std::vector<float> hq(64 * D), hk(64 * D), hv(64 * D);
  std::vector<T> bq(64 * D), bk(64 * D), bv(64 * D);
  srand(D);
  for (int i = 0; i < 64 * D; ++i) {
    hq[i] = rand() % 3 - 1, hk[i] = rand() % 3 - 1, hv[i] = rand() % 3 - 1;
    bq[i] = __float2bfloat16(hq[i]), bk[i] = __float2bfloat16(hk[i]), bv[i] = __float2bfloat16(hv[i]);
  }
  T *dq, *dk, *dv;
  float *ds, *dout;
  MICRO_CHECK(cudaMalloc(&dq, 64 * D * 2));
  MICRO_CHECK(cudaMalloc(&dk, 64 * D * 2));
  MICRO_CHECK(cudaMalloc(&dv, 64 * D * 2));
  MICRO_CHECK(cudaMalloc(&ds, 64 * 64 * 4));
  MICRO_CHECK(cudaMalloc(&dout, 64 * D * 4));
  MICRO_CHECK(cudaMemcpy(dq, bq.data(), 64 * D * 2, cudaMemcpyHostToDevice));
  MICRO_CHECK(cudaMemcpy(dk, bk.data(), 64 * D * 2, cudaMemcpyHostToDevice));
  MICRO_CHECK(cudaMemcpy(dv, bv.data(), 64 * D * 2, cudaMemcpyHostToDevice));
  const int smem = 3 * 64 * D * 2;
  MICRO_CHECK(cudaFuncSetAttribute(unit<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  unit<D><<<1, 128, smem>>>(dq, dk, dv, ds, dout);
  MICRO_CHECK(cudaGetLastError());
  MICRO_CHECK(cudaDeviceSynchronize());
  std::vector<float> s(64 * 64), o(64 * D);
  MICRO_CHECK(cudaMemcpy(s.data(), ds, s.size() * 4, cudaMemcpyDeviceToHost));
  MICRO_CHECK(cudaMemcpy(o.data(), dout, o.size() * 4, cudaMemcpyDeviceToHost));
  for (void* ptr : {(void*)dq, (void*)dk, (void*)dv, (void*)ds, (void*)dout}) MICRO_CHECK(cudaFree(ptr));
  int bad_s = 0, bad_o = 0;
  std::vector<float> ref_s(64 * 64);
  for (int r = 0; r < 64; ++r)
    for (int c = 0; c < 64; ++c) {
      float acc = 0;
      for (int d = 0; d < D; ++d) acc += hq[r * D + d] * hk[c * D + d];
      ref_s[r * 64 + c] = acc;
      if (s[r * 64 + c] != acc && bad_s++ < 5) printf("  S[%d][%d] = %g, want %g\n", r, c, s[r * 64 + c], acc);
    }
  for (int r = 0; r < 64; ++r)
    for (int d = 0; d < D; ++d) {
      float acc = 0;
      for (int c = 0; c < 64; ++c) acc += ref_s[r * 64 + c] * hv[c * D + d];
      if (o[r * D + d] != acc && bad_o++ < 5) printf("  O[%d][%d] = %g, want %g\n", r, d, o[r * D + d], acc);
    }
  printf("D %d: S %d of %d wrong, O %d of %d wrong\n", D, bad_s, 64 * 64, bad_o, 64 * D);
  return bad_s || bad_o;
}

int main() { return check<64>() | check<128>() | check<256>(); }
