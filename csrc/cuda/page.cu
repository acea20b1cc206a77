// CUDA adapters of page management.
#include <torch/library.h>

#include "../kernels/page.cuh"
#include "utils.cuh"

namespace flashinfer {
namespace {

void append_paged_kv_cache_cuda(const at::Tensor& key, const at::Tensor& value, const at::Tensor& batch_indices,
                                const at::Tensor& positions, at::Tensor& k_cache,
                                const std::optional<at::Tensor>& v_cache, const at::Tensor& kv_indices,
                                const at::Tensor& kv_indptr, const at::Tensor& kv_last_page_len,
                                c10::string_view kv_layout) {
  const char* op = "append_paged_kv_cache";
  const PagedKV cache = paged_kv_views(k_cache, v_cache, std::string(kv_layout), op);
  check_append(key, value, batch_indices, positions, cache, kv_indices, kv_indptr, kv_last_page_len, op);
  const c10::cuda::CUDAGuard guard(key.device());
  const at::Tensor k_in = key.stride(2) == 1 ? key : key.contiguous();
  const at::Tensor v_in = value.stride(2) == 1 ? value : value.contiguous();
  const at::Tensor bi = batch_indices.contiguous(), pos = positions.contiguous(), ind = kv_indices.contiguous(),
                   ip = kv_indptr.contiguous(), last = kv_last_page_len.contiguous();

  page::AppendParams p{};
  p.key = k_in.data_ptr();
  p.value = v_in.data_ptr();
  p.key_stride_n = k_in.stride(0), p.key_stride_h = k_in.stride(1);
  p.value_stride_n = v_in.stride(0), p.value_stride_h = v_in.stride(1);
  p.batch_indices = bi.data_ptr<int32_t>();
  p.positions = pos.data_ptr<int32_t>();
  p.k_cache = cache.k.data_ptr();
  p.v_cache = cache.v.data_ptr();
  p.k_layout = {cache.k.stride(0), cache.k.stride(1), cache.k.stride(2)};
  p.v_layout = {cache.v.stride(0), cache.v.stride(1), cache.v.stride(2)};
  p.indices = ind.data_ptr<int32_t>();
  p.indptr = ip.data_ptr<int32_t>();
  p.last_page_len = last.data_ptr<int32_t>();
  p.nnz = key.size(0);
  p.num_indices = kv_indices.size(0);
  p.num_pages = cache.k.size(0);
  p.batch = (int)kv_last_page_len.size(0);
  p.heads = (int)key.size(1);
  p.head_dim = (int)key.size(2);
  p.page_size = (int)cache.page_size;
  if (p.batch == 0 || p.num_indices == 0) return;

  const int vec = widest_vec(key.element_size(), p.head_dim, {addr(k_in), addr(v_in), addr(cache.k), addr(cache.v)},
                             {p.key_stride_n, p.key_stride_h, p.value_stride_n, p.value_stride_h,
                              p.k_layout.stride_page, p.k_layout.stride_entry, p.k_layout.stride_head,
                              p.v_layout.stride_page, p.v_layout.stride_entry, p.v_layout.stride_head});
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t err = cudaSuccess;
  FI_DISPATCH_FLOAT(key.scalar_type(), T, { err = page::launch_append<T>(p, vec, stream); });
  check_launch(err, op);
}

std::tuple<at::Tensor, at::Tensor> get_batch_indices_positions_cuda(const at::Tensor& append_indptr,
                                                                    const at::Tensor& seq_lens, int64_t nnz) {
  const char* op = "get_batch_indices_positions";
  check_page_table(append_indptr, "append_indptr", seq_lens, "seq_lens", op);
  const c10::cuda::CUDAGuard guard(append_indptr.device());
  auto batch_indices = at::empty({nnz}, append_indptr.options()), positions = at::empty({nnz}, append_indptr.options());
  const at::Tensor ip = append_indptr.contiguous(), sl = seq_lens.contiguous();
  check_launch(page::launch_batch_indices_positions(ip.data_ptr<int32_t>(), sl.data_ptr<int32_t>(),
                                                    (int)seq_lens.size(0), nnz, batch_indices.data_ptr<int32_t>(),
                                                    positions.data_ptr<int32_t>(), c10::cuda::getCurrentCUDAStream()),
               op);
  return {batch_indices, positions};
}

at::Tensor get_seq_lens_cuda(const at::Tensor& kv_indptr, const at::Tensor& kv_last_page_len, int64_t page_size) {
  const char* op = "get_seq_lens";
  check_page_table(kv_indptr, "kv_indptr", kv_last_page_len, "kv_last_page_len", op);
  const c10::cuda::CUDAGuard guard(kv_indptr.device());
  auto seq_lens = at::empty(kv_last_page_len.sizes(), kv_last_page_len.options());
  const at::Tensor ip = kv_indptr.contiguous(), last = kv_last_page_len.contiguous();
  check_launch(page::launch_seq_lens(ip.data_ptr<int32_t>(), last.data_ptr<int32_t>(), (int)last.size(0),
                                     (int)page_size, seq_lens.data_ptr<int32_t>(), c10::cuda::getCurrentCUDAStream()),
               op);
  return seq_lens;
}

}  // namespace

TORCH_LIBRARY_IMPL(flashinfer, CUDA, m) {
  m.impl("append_paged_kv_cache", &append_paged_kv_cache_cuda);
  m.impl("get_batch_indices_positions", &get_batch_indices_positions_cuda);
  m.impl("get_seq_lens", &get_seq_lens_cuda);
}

}  // namespace flashinfer
