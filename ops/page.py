"""Paged KV-cache management (FlashInfer 0.6 ``flashinfer.page`` API) over ``torch.ops.flashinfer``.

The cache is one 5-D tensor (NHD ``[num_pages, 2, page_size, num_kv_heads, head_dim]`` or HND
``[num_pages, 2, num_kv_heads, page_size, head_dim]``) or a ``(k_cache, v_cache)`` tuple of 4-D tensors. Request
``b`` owns pages ``kv_indices[kv_indptr[b]:kv_indptr[b+1]]`` and holds
``page_size * (pages - 1) + kv_last_page_len[b]`` tokens. Page tables are int32 device tensors.

Every index read from the page tables is checked on the device: a token whose request, position or page is out
of range (or past its request's length) is skipped, so no metadata can make a write land outside the cache or
in another request's pages. Nothing here synchronises with the host.
"""

from typing import Tuple, Union

import torch

__all__ = ["append_paged_kv_cache", "get_batch_indices_positions", "get_seq_lens"]


def append_paged_kv_cache(append_key: torch.Tensor, append_value: torch.Tensor, batch_indices: torch.Tensor,
                          positions: torch.Tensor,
                          paged_kv_cache: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]],
                          kv_indices: torch.Tensor, kv_indptr: torch.Tensor, kv_last_page_len: torch.Tensor,
                          kv_layout: str = "NHD") -> None:
    """Writes ``append_key``/``append_value`` ``[nnz, num_kv_heads, head_dim]`` into the cache in place: token
    ``i`` goes to request ``batch_indices[i]`` at position ``positions[i]`` of its KV sequence (see
    :func:`get_batch_indices_positions`). The page tables must already include the new tokens."""
    if isinstance(paged_kv_cache, (tuple, list)):
        k_cache, v_cache = paged_kv_cache
    else:
        k_cache, v_cache = paged_kv_cache, None
    torch.ops.flashinfer.append_paged_kv_cache(append_key, append_value, batch_indices, positions, k_cache, v_cache,
                                               kv_indices, kv_indptr, kv_last_page_len, kv_layout)


def get_batch_indices_positions(append_indptr: torch.Tensor, seq_lens: torch.Tensor,
                                nnz: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """For ``nnz`` appended tokens laid out by ``append_indptr`` (int32 ``[B+1]``) into requests whose lengths
    after the append are ``seq_lens`` (int32 ``[B]``): each token's request and its position in that request.
    Tokens past ``append_indptr[-1]`` (padding) get ``-1`` for both, and appending skips them."""
    return torch.ops.flashinfer.get_batch_indices_positions(append_indptr, seq_lens, nnz)


def get_seq_lens(kv_indptr: torch.Tensor, kv_last_page_len: torch.Tensor, page_size: int) -> torch.Tensor:
    """KV length of each request: ``page_size * (pages - 1) + kv_last_page_len`` (0 for a request with no
    pages), int32 ``[B]``."""
    return torch.ops.flashinfer.get_seq_lens(kv_indptr, kv_last_page_len, page_size)
