"""Paged KV-cache management (FlashInfer 0.6 ``flashinfer.page`` API) over ``torch.ops.flashinfer``.

The cache is one 5-D tensor (NHD ``[num_pages, 2, page_size, num_kv_heads, head_dim]`` or HND
``[num_pages, 2, num_kv_heads, page_size, head_dim]``) or a ``(k_cache, v_cache)`` tuple of 4-D tensors. Request
``b`` owns pages ``kv_indices[kv_indptr[b]:kv_indptr[b+1]]`` and holds
``page_size * (pages - 1) + kv_last_page_len[b]`` tokens. Page tables are int32 device tensors.

Every index read from the page tables is checked on the device: a token whose request, position or page is out
of range (or past its request's length) is skipped, so no metadata can make a write land outside the cache or
in another request's pages. Nothing here synchronises with the host.
"""

import os
from typing import Optional, Tuple, Union

import torch

from .wrapper import into

__all__ = ["append_paged_kv_cache", "get_batch_indices_positions", "get_seq_lens", "split_paged_kv_cache",
           "validate_indptr", "validate_page_table"]

# FLASHINFER_VALIDATE=1 turns on validate=True for every call that takes it.
_VALIDATE_ENV = os.environ.get("FLASHINFER_VALIDATE", "0") == "1"


def _validating(validate: Optional[bool]) -> bool:
    # Host checks read device tensors (a synchronisation), so they never run while compiling or capturing.
    on = _VALIDATE_ENV if validate is None else validate
    return on and not torch.compiler.is_compiling() and not (
        torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def split_paged_kv_cache(paged_kv_cache, kv_layout: str = "NHD"):
    """(k_cache, v_cache or None, num_pages, page_size) of a 5-D cache or a (k_cache, v_cache) tuple; the ops take
    the 5-D form as k_cache with v_cache None."""
    if isinstance(paged_kv_cache, (tuple, list)):
        k_cache, v_cache = paged_kv_cache
        k = k_cache
    else:
        k_cache, v_cache = paged_kv_cache, None
        k = paged_kv_cache.select(1, 0)
    return k_cache, v_cache, k.shape[0], k.shape[2] if kv_layout == "HND" else k.shape[1]


def validate_indptr(name: str, indptr: torch.Tensor, batch: Optional[int] = None,
                    bound: Optional[Tuple[int, str]] = None) -> None:
    """Checks an indptr on the host and raises ValueError naming it: batch + 1 entries (when batch is given), a
    first entry >= 0, non-decreasing, and a last entry within bound = (size, what it counts) when given. A sync,
    like validate_page_table."""
    indptr = indptr.detach().to("cpu", torch.int64)
    if batch is not None and indptr.numel() != batch + 1:
        raise ValueError(f"{name} must have batch_size + 1 = {batch + 1} entries, got {indptr.numel()}")
    if indptr.numel() and indptr[0] < 0:
        raise ValueError(f"{name}[0] must be >= 0, got {int(indptr[0])}")
    steps = indptr[1:] - indptr[:-1]
    if (steps < 0).any():
        b = int((steps < 0).nonzero()[0])
        raise ValueError(f"{name} must be non-decreasing: {name}[{b + 1}]={int(indptr[b + 1])} < "
                         f"{name}[{b}]={int(indptr[b])}")
    if bound is not None and indptr.numel() and indptr[-1] > bound[0]:
        raise ValueError(f"{name}[-1]={int(indptr[-1])} exceeds the {bound[0]} {bound[1]}")


def validate_page_table(kv_indptr: torch.Tensor, kv_indices: torch.Tensor, kv_last_page_len: torch.Tensor,
                        num_pages: Optional[int], page_size: int) -> None:
    """Checks page-table metadata on the host and raises ValueError naming the first problem found. Page ids
    are checked against num_pages when it is known (None: only that they are >= 0).

    The kernels never read or write outside the cache whatever the metadata says (bad entries are skipped); this
    is for finding the bug that produced them. Cost: one device-to-host copy of the three tables (a sync), so
    it is meant for eager debugging, not for the serving loop."""
    indptr, indices, last = (t.detach().to("cpu", torch.int64) for t in (kv_indptr, kv_indices, kv_last_page_len))
    validate_indptr("kv_indptr", indptr, last.numel(), (indices.numel(), "entries of kv_indices"))
    steps = indptr[1:] - indptr[:-1]
    used = indices[int(indptr[0]):int(indptr[-1])] if indptr.numel() else indices[:0]
    bad = (used < 0) | (used >= (num_pages if num_pages is not None else torch.iinfo(torch.int64).max))
    if bad.any():
        i = int(bad.nonzero()[0]) + (int(indptr[0]) if indptr.numel() else 0)
        pages = f"0..{num_pages - 1}" if num_pages is not None else ">= 0"
        raise ValueError(f"kv_indices[{i}]={int(indices[i])} is not a page of the cache ({pages})")
    has_pages = steps > 0
    bad = has_pages & ((last < 1) | (last > page_size))
    if bad.any():
        b = int(bad.nonzero()[0])
        raise ValueError(f"kv_last_page_len[{b}]={int(last[b])} must be in [1, page_size={page_size}] for a request "
                         "with pages")


def append_paged_kv_cache(append_key: torch.Tensor, append_value: torch.Tensor, batch_indices: torch.Tensor,
                          positions: torch.Tensor,
                          paged_kv_cache: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]],
                          kv_indices: torch.Tensor, kv_indptr: torch.Tensor, kv_last_page_len: torch.Tensor,
                          kv_layout: str = "NHD", *, validate: Optional[bool] = None) -> None:
    """Writes ``append_key``/``append_value`` ``[nnz, num_kv_heads, head_dim]`` into the cache in place: token
    ``i`` goes to request ``batch_indices[i]`` at position ``positions[i]`` of its KV sequence (see
    :func:`get_batch_indices_positions`). The page tables must already include the new tokens.

    ``validate=True`` (or FLASHINFER_VALIDATE=1) first checks the page tables on the host
    (:func:`validate_page_table`) and that every appended token lands inside its request; eager only."""
    k_cache, v_cache, num_pages, page_size = split_paged_kv_cache(paged_kv_cache, kv_layout)
    if _validating(validate):
        validate_page_table(kv_indptr, kv_indices, kv_last_page_len, num_pages, page_size)
        lens = get_seq_lens(kv_indptr, kv_last_page_len, page_size).cpu().long()
        b, p = batch_indices.cpu().long(), positions.cpu().long()
        inside = (b >= 0) & (b < lens.numel())  # -1 marks padding, which append skips
        length = torch.zeros_like(p)
        length[inside] = lens[b[inside]]
        bad = (b < -1) | (b >= lens.numel()) | (inside & ((p < 0) | (p >= length)))
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"appended token {i} (batch_indices={int(b[i])}, positions={int(p[i])}) does not land "
                             "inside its request's pages")
    torch.ops.flashinfer.append_paged_kv_cache(append_key, append_value, batch_indices, positions, k_cache, v_cache,
                                               kv_indices, kv_indptr, kv_last_page_len, kv_layout)


def get_batch_indices_positions(append_indptr: torch.Tensor, seq_lens: torch.Tensor, nnz: int,
                                batch_indices: Optional[torch.Tensor] = None,
                                positions: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """For ``nnz`` appended tokens laid out by ``append_indptr`` (int32 ``[B+1]``) into requests whose lengths
    after the append are ``seq_lens`` (int32 ``[B]``): each token's request and its position in that request.
    Tokens past ``append_indptr[-1]`` (padding) get ``-1`` for both, and appending skips them. Given
    ``batch_indices`` / ``positions`` (int32 ``[nnz]``), the results are written into them and they are returned."""
    b, p = torch.ops.flashinfer.get_batch_indices_positions(append_indptr, seq_lens, nnz)
    return into(b, batch_indices, "batch_indices"), into(p, positions, "positions")


def get_seq_lens(kv_indptr: torch.Tensor, kv_last_page_len: torch.Tensor, page_size: int) -> torch.Tensor:
    """KV length of each request: ``page_size * (pages - 1) + kv_last_page_len`` (0 for a request with no
    pages), int32 ``[B]``."""
    return torch.ops.flashinfer.get_seq_lens(kv_indptr, kv_last_page_len, page_size)
