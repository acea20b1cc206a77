// Paged KV-cache management: appending new tokens' K/V into their pages, and the per-token
// (request, position) and per-request length helpers. Torch-free.
//
// A request b owns pages indices[indptr[b] .. indptr[b+1]) and holds
// seq_len_b = page_size * (n_b - 1) + last_page_len[b] tokens. Every index read from device metadata is
// checked before use: a token whose request, position or page is out of range is skipped, so no metadata can
// make a kernel write outside the cache.
#pragma once
#include <cuda_runtime.h>

#include "common/dispatch.h"
#include "common/pdl.cuh"
#include "common/vec.cuh"

namespace flashinfer {
namespace page {

struct CacheLayout {
  int64_t stride_page, stride_entry, stride_head;  // elements; the head_dim stride is 1
};

struct AppendParams {
  const void* key;            // [nnz, heads, head_dim] with strides key_stride_n / key_stride_h
  const void* value;          // [nnz, heads, head_dim]
  int64_t key_stride_n, key_stride_h, value_stride_n, value_stride_h;
  const int32_t* batch_indices;    // [nnz]
  const int32_t* positions;        // [nnz]: position inside the request's KV sequence
  void* k_cache;              // pages through k_layout
  void* v_cache;
  CacheLayout k_layout, v_layout;
  const int32_t* indices;     // [num_indices] page ids
  const int32_t* indptr;      // [batch + 1]
  const int32_t* last_page_len;    // [batch]
  int64_t nnz, num_indices, num_pages;
  int batch, heads, head_dim, page_size;
};

// Page and entry of token i, or false when its request, position or page is out of range.
__device__ __forceinline__ bool token_slot(const AppendParams& p, int64_t i, int64_t& page, int64_t& entry) {
  const int b = p.batch_indices[i], pos = p.positions[i];
  if (b < 0 || b >= p.batch || pos < 0) return false;
  const int64_t start = p.indptr[b], end = p.indptr[b + 1];
  const int64_t npages = end - start;
  if (npages <= 0 || start < 0 || end > p.num_indices) return false;
  const int64_t seq_len = (npages - 1) * p.page_size + p.last_page_len[b];
  if (pos >= seq_len) return false;
  page = p.indices[start + pos / p.page_size];
  entry = pos % p.page_size;
  return page >= 0 && page < p.num_pages;
}

// grid.x: tokens; each thread moves one VEC-vector of K and of V per (head, chunk) it owns.
template <typename T, int VEC>
__global__ void append_kernel(AppendParams p) {
  using TV = Vec<T, VEC>;
  const int64_t i = blockIdx.x;
  pdl_enter();
  int64_t page, entry;
  if (!token_slot(p, i, page, entry)) return;
  T* k_row = static_cast<T*>(p.k_cache) + page * p.k_layout.stride_page + entry * p.k_layout.stride_entry;
  T* v_row = static_cast<T*>(p.v_cache) + page * p.v_layout.stride_page + entry * p.v_layout.stride_entry;
  const int chunks = p.head_dim / VEC;
  for (int it = threadIdx.x; it < p.heads * chunks; it += blockDim.x) {
    const int h = it / chunks, e = (it % chunks) * VEC;
    TV::load(static_cast<const T*>(p.key) + i * p.key_stride_n + h * p.key_stride_h + e)
        .store(k_row + h * p.k_layout.stride_head + e);
    TV::load(static_cast<const T*>(p.value) + i * p.value_stride_n + h * p.value_stride_h + e)
        .store(v_row + h * p.v_layout.stride_head + e);
  }
}

template <typename T>
cudaError_t launch_append(const AppendParams& p, int vec, cudaStream_t stream) {
  if (p.nnz == 0 || p.heads == 0 || p.head_dim == 0) return cudaSuccess;
  cudaError_t err = cudaSuccess;
  FI_DISPATCH_VEC(vec, VEC, {
    int threads = p.heads * (p.head_dim / VEC);
    threads = threads < 32 ? 32 : (threads > 256 ? 256 : (threads + 31) / 32 * 32);
    err = launch_pdl(append_kernel<T, VEC>, dim3((unsigned)p.nnz), dim3(threads), 0, stream, p);
  });
  return err;
}

// Token t of the append batch: its request (largest b with append_indptr[b] <= t) and its position
// seq_lens[b] - (append_indptr[b+1] - append_indptr[b]) + (t - append_indptr[b]); -1 and -1 for tokens outside
// [append_indptr[0], append_indptr[batch]) (padding), which append_paged_kv_cache then skips.
__global__ void batch_indices_positions_kernel(const int32_t* append_indptr, const int32_t* seq_lens, int batch,
                                               int64_t nnz, int32_t* batch_indices, int32_t* positions) {
  const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= nnz) return;
  pdl_enter();
  int32_t b = -1, pos = -1;
  if (batch > 0 && t >= append_indptr[0] && t < append_indptr[batch]) {
    int lo = 0, hi = batch - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (append_indptr[mid] <= t) lo = mid; else hi = mid - 1;
    }
    b = lo;
    pos = seq_lens[b] - (append_indptr[b + 1] - append_indptr[b]) + (int32_t)(t - append_indptr[b]);
  }
  batch_indices[t] = b;
  positions[t] = pos;
}

inline cudaError_t launch_batch_indices_positions(const int32_t* append_indptr, const int32_t* seq_lens, int batch,
                                                  int64_t nnz, int32_t* batch_indices, int32_t* positions,
                                                  cudaStream_t stream) {
  if (nnz == 0) return cudaSuccess;
  return launch_pdl(batch_indices_positions_kernel, dim3((unsigned)((nnz + 255) / 256)), dim3(256), 0, stream,
                    append_indptr, seq_lens, batch, nnz, batch_indices, positions);
}

// seq_lens[b] = page_size * (n_b - 1) + last_page_len[b], 0 for a request with no pages.
__global__ void seq_lens_kernel(const int32_t* indptr, const int32_t* last_page_len, int batch, int page_size,
                                int32_t* seq_lens) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  pdl_enter();
  const int32_t n = indptr[b + 1] - indptr[b];
  seq_lens[b] = n > 0 ? (n - 1) * page_size + last_page_len[b] : 0;
}

inline cudaError_t launch_seq_lens(const int32_t* indptr, const int32_t* last_page_len, int batch, int page_size,
                                   int32_t* seq_lens, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  return launch_pdl(seq_lens_kernel, dim3((unsigned)((batch + 255) / 256)), dim3(256), 0, stream, indptr,
                    last_page_len, batch, page_size, seq_lens);
}

}  // namespace page
}  // namespace flashinfer
