"""Fakes of page management."""

import torch

from . import checks


def _page_table(indptr, indptr_name, per_request, per_request_name, op):
    for t, name in ((indptr, indptr_name), (per_request, per_request_name)):
        checks.check(t.dtype == torch.int32, op, f"{name} must be int32, got {checks.dtype_name(t.dtype)}")
        checks.check(t.dim() == 1, op, f"{name} must be 1-D, got shape {list(t.shape)}")
    checks.same_device(per_request, per_request_name, indptr, indptr_name, op)
    checks.check(indptr.shape[0] == per_request.shape[0] + 1, op,
                 f"{indptr_name} must have batch_size + 1 = {per_request.shape[0] + 1} entries ({per_request_name} "
                 f"has {per_request.shape[0]}), got {indptr.shape[0]}")


def paged_cache_heads_dim(paged_k_cache, paged_v_cache, kv_layout, op):
    """(num_kv_heads, head_dim) of a 5-D cache (paged_v_cache None) or of K/V 4-D caches, after checking the form."""
    checks.check(kv_layout in ("NHD", "HND"), op, f'kv_layout must be "NHD" or "HND", got "{kv_layout}"')
    k = paged_k_cache if paged_v_cache is not None else paged_k_cache.select(1, 0)
    checks.check(k.dim() == 4, op, "the paged KV cache must be 5-D or a tuple of 4-D tensors, got shape "
                 f"{list(paged_k_cache.shape)}")
    return (k.shape[1] if kv_layout == "HND" else k.shape[2]), k.shape[3]


@torch.library.register_fake("flashinfer::append_paged_kv_cache")
def append_paged_kv_cache(append_key, append_value, batch_indices, positions, paged_k_cache, paged_v_cache,
                          kv_indices, kv_indptr, kv_last_page_len, kv_layout):
    op = "append_paged_kv_cache"
    heads, dim = paged_cache_heads_dim(paged_k_cache, paged_v_cache, kv_layout, op)
    checks.float_dtype(append_key, "append_key", op)
    checks.check(append_key.dim() == 3, op, f"append_key must be 3-D, got shape {list(append_key.shape)}")
    checks.check(append_value.shape == append_key.shape, op,
                 f"append_value must have the shape of append_key ({list(append_key.shape)}), got "
                 f"{list(append_value.shape)}")
    checks.same_dtype(paged_k_cache, "paged_kv_cache", append_key, "append_key", op)
    checks.check(heads == append_key.shape[1] and dim == append_key.shape[2], op,
                 f"paged_kv_cache must hold num_kv_heads={append_key.shape[1]} and head_dim={append_key.shape[2]} "
                 f"(those of append_key), got {heads} heads of dim {dim}")
    for t, name in ((batch_indices, "batch_indices"), (positions, "positions")):
        checks.check(t.dtype == torch.int32, op, f"{name} must be int32, got {checks.dtype_name(t.dtype)}")
        checks.check(t.dim() == 1 and t.shape[0] == append_key.shape[0], op,
                     f"{name} must have shape [nnz={append_key.shape[0]}], got {list(t.shape)}")
    _page_table(kv_indptr, "kv_indptr", kv_last_page_len, "kv_last_page_len", op)


@torch.library.register_fake("flashinfer::get_batch_indices_positions")
def get_batch_indices_positions(append_indptr, seq_lens, nnz):
    _page_table(append_indptr, "append_indptr", seq_lens, "seq_lens", "get_batch_indices_positions")
    return append_indptr.new_empty(nnz), append_indptr.new_empty(nnz)


@torch.library.register_fake("flashinfer::get_seq_lens")
def get_seq_lens(kv_indptr, kv_last_page_len, page_size):
    _page_table(kv_indptr, "kv_indptr", kv_last_page_len, "kv_last_page_len", "get_seq_lens")
    return kv_last_page_len.new_empty(kv_last_page_len.shape)
