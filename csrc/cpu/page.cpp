// CPU implementations of page management, from ATen ops. Tokens whose metadata is out of range are skipped,
// as on CUDA.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"

namespace flashinfer {
namespace {

void append_paged_kv_cache_cpu(const at::Tensor& key, const at::Tensor& value, const at::Tensor& batch_indices,
                               const at::Tensor& positions, at::Tensor& k_cache,
                               const std::optional<at::Tensor>& v_cache, const at::Tensor& kv_indices,
                               const at::Tensor& kv_indptr, const at::Tensor& kv_last_page_len,
                               c10::string_view kv_layout) {
  const char* op = "append_paged_kv_cache";
  const PagedKV cache = paged_kv_views(k_cache, v_cache, std::string(kv_layout), op);
  check_append(key, value, batch_indices, positions, cache, kv_indices, kv_indptr, kv_last_page_len, op);
  const int64_t batch = kv_last_page_len.size(0), num_indices = kv_indices.size(0), num_pages = cache.k.size(0);
  const int64_t page = cache.page_size;
  if (key.size(0) == 0 || batch == 0 || num_indices == 0) return;

  auto b = batch_indices.to(at::kLong), pos = positions.to(at::kLong);
  auto valid = (b >= 0) & (b < batch) & (pos >= 0);
  auto bc = b.clamp(0, batch - 1);
  auto indptr = kv_indptr.to(at::kLong);
  auto start = indptr.index_select(0, bc), end = indptr.index_select(0, bc + 1);
  auto npages = end - start;
  auto seq_len = (npages - 1) * page + kv_last_page_len.to(at::kLong).index_select(0, bc);
  valid &= (npages > 0) & (start >= 0) & (end <= num_indices) & (pos < seq_len);
  auto slot = (start + at::div(pos, page, "floor")).clamp(0, num_indices - 1);
  auto page_id = kv_indices.to(at::kLong).index_select(0, slot);
  valid &= (page_id >= 0) & (page_id < num_pages);

  auto rows = valid.nonzero().squeeze(1);
  auto pid = page_id.index_select(0, rows), entry = at::remainder(pos, page).index_select(0, rows);
  cache.k.index_put_({pid, entry}, key.index_select(0, rows));
  cache.v.index_put_({pid, entry}, value.index_select(0, rows));
}

std::tuple<at::Tensor, at::Tensor> get_batch_indices_positions_cpu(const at::Tensor& append_indptr,
                                                                   const at::Tensor& seq_lens, int64_t nnz) {
  const char* op = "get_batch_indices_positions";
  check_page_table(append_indptr, "append_indptr", seq_lens, "seq_lens", op);
  const int64_t batch = seq_lens.size(0);
  auto opts = append_indptr.options();
  if (batch == 0 || nnz == 0) return {at::full({nnz}, -1, opts), at::full({nnz}, -1, opts)};
  auto ip = append_indptr.to(at::kLong);
  auto t = at::arange(nnz, ip.options());
  auto b = (at::searchsorted(ip, t, false, /*right=*/true) - 1).clamp(0, batch - 1);
  auto valid = (t >= ip[0]) & (t < ip[batch]);
  auto start = ip.index_select(0, b), len = ip.index_select(0, b + 1) - start;
  auto pos = seq_lens.to(at::kLong).index_select(0, b) - len + (t - start);
  return {at::where(valid, b, -1).to(at::kInt), at::where(valid, pos, -1).to(at::kInt)};
}

at::Tensor get_seq_lens_cpu(const at::Tensor& kv_indptr, const at::Tensor& kv_last_page_len, int64_t page_size) {
  check_page_table(kv_indptr, "kv_indptr", kv_last_page_len, "kv_last_page_len", "get_seq_lens");
  const int64_t batch = kv_last_page_len.size(0);
  auto n = kv_indptr.narrow(0, 1, batch) - kv_indptr.narrow(0, 0, batch);
  return at::where(n > 0, (n - 1) * page_size + kv_last_page_len, 0).to(at::kInt);
}

}  // namespace

TORCH_LIBRARY_IMPL(flashinfer, CPU, m) {
  m.impl("append_paged_kv_cache", &append_paged_kv_cache_cpu);
  m.impl("get_batch_indices_positions", &get_batch_indices_positions_cpu);
  m.impl("get_seq_lens", &get_seq_lens_cpu);
}

}  // namespace flashinfer
