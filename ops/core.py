"""The stateful layer: a paged KV cache that owns its pages, and decode / prefill objects that run over it.

``PagedKVCache`` keeps, per layer, one K/V storage tensor (NHD ``[max_num_pages, 2, page_size, Hkv, D]`` or HND)
and, on the host, which pages each sequence owns and how many of its tokens are committed. A forward pass is
``begin_forward`` (reserve room for the new tokens of a sequence; a new sequence when no index is given), one
``append`` per layer (write the new tokens' K/V), attention, then ``end_forward`` (commit). Attention sees each
active sequence's committed tokens plus the ones begun in the current pass.

The page tables live on the device in fixed-capacity buffers (``max_batch_size`` sequences, ``max_num_pages``
pages) that are rewritten in place after every change, so a decode step captured in a CUDA graph replays correctly
as sequences grow and pages are allocated. The views handed to the kernels are cached per batch size, so
``torch.compile`` sees the same tensors from step to step. Bad calls raise before anything changes.
"""

import itertools
import math
from typing import Dict, List, Optional, Sequence

import torch

from .page import append_paged_kv_cache

__all__ = ["PagedKVCache", "BatchDecodeWithPagedKVCache", "BatchPrefillWithRaggedKVCache"]


class _Seq:
    __slots__ = ("pages", "table", "committed", "pending")

    def __init__(self):
        self.pages: List[int] = []
        self.table = torch.zeros(0, dtype=torch.int32)  # the pages as a host tensor, rebuilt when a page is added
        self.committed = 0
        self.pending = 0


class PagedKVCache:
    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, page_size: int, max_num_pages: int,
                 device="cuda", data_type: torch.dtype = torch.float16, kv_layout: str = "NHD",
                 max_batch_size: int = 256) -> None:
        if kv_layout not in ("NHD", "HND"):
            raise ValueError(f'kv_layout must be "NHD" or "HND", got "{kv_layout}"')
        for name, v in (("num_layers", num_layers), ("num_kv_heads", num_kv_heads), ("head_dim", head_dim),
                        ("page_size", page_size), ("max_num_pages", max_num_pages),
                        ("max_batch_size", max_batch_size)):
            if v <= 0:
                raise ValueError(f"PagedKVCache: {name} must be positive, got {v}")
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.page_size, self.max_num_pages, self.max_batch_size = page_size, max_num_pages, max_batch_size
        self.device, self.dtype, self.kv_layout = torch.device(device), data_type, kv_layout
        shape = ((max_num_pages, 2, page_size, num_kv_heads, head_dim) if kv_layout == "NHD"
                 else (max_num_pages, 2, num_kv_heads, page_size, head_dim))
        self.layers = [torch.zeros(shape, dtype=data_type, device=self.device) for _ in range(num_layers)]
        self._free = list(range(max_num_pages - 1, -1, -1))  # pop() hands out low page ids first
        self._seqs: Dict[int, _Seq] = {}
        self._next_id = 0
        i32 = dict(dtype=torch.int32, device=self.device)
        self._indptr = torch.zeros(max_batch_size + 1, **i32)
        self._indices = torch.zeros(max_num_pages, **i32)
        self._last = torch.zeros(max_batch_size, **i32)
        self._append_batch = torch.zeros(0, **i32)
        self._append_pos = torch.zeros(0, **i32)
        self._views: Dict[int, tuple] = {}

    # ---- sequences ----

    @property
    def active(self) -> List[int]:
        """The sequences attention runs over, in batch order (oldest first)."""
        return sorted(self._seqs)

    def seq_len(self, seq_idx: int) -> int:
        """Tokens attention sees for this sequence: committed plus begun in the current pass."""
        s = self._get(seq_idx)
        return s.committed + s.pending

    @property
    def num_free_pages(self) -> int:
        return len(self._free)

    def _get(self, seq_idx: int) -> _Seq:
        if seq_idx not in self._seqs:
            raise KeyError(f"PagedKVCache: unknown or released sequence {seq_idx}")
        return self._seqs[seq_idx]

    def begin_forward(self, num_new_tokens: int, seq_idx: Optional[int] = None) -> int:
        """Reserves room for num_new_tokens more tokens of sequence seq_idx (a new sequence when None) and returns
        its index. Raises, changing nothing, when the pages run out."""
        return self._begin([num_new_tokens], [seq_idx], "begin_forward")[0]

    def begin_forward_batch(self, num_new_tokens: Sequence[int],
                            seq_idx: Optional[Sequence[Optional[int]]] = None) -> List[int]:
        """begin_forward for several sequences (None: a new one) with a single rewrite of the device tables, as a
        serving loop calls it once a step (per-sequence calls rewrite them once each). Returns the indices. Raises,
        changing nothing, if any part cannot be done."""
        seq_idx = [None] * len(num_new_tokens) if seq_idx is None else list(seq_idx)
        if len(seq_idx) != len(num_new_tokens):
            raise ValueError(f"PagedKVCache.begin_forward_batch: {len(num_new_tokens)} token counts for "
                             f"{len(seq_idx)} sequences")
        return self._begin(list(num_new_tokens), seq_idx, "begin_forward_batch")

    def _begin(self, counts: List[int], seq_idx: List[Optional[int]], who: str) -> List[int]:
        for n in counts:
            if n < 0:
                raise ValueError(f"PagedKVCache.{who}: num_new_tokens must be >= 0, got {n}")
        named = [i for i in seq_idx if i is not None]
        if len(set(named)) != len(named):
            raise ValueError(f"PagedKVCache.{who}: a sequence appears twice in {named}")
        fresh = len(seq_idx) - len(named)
        if fresh and len(self._seqs) + fresh > self.max_batch_size:
            raise RuntimeError(f"PagedKVCache: max_batch_size={self.max_batch_size} sequences already active")
        seqs = [_Seq() if i is None else self._get(i) for i in seq_idx]
        needs = [max(0, -(-(s.committed + s.pending + n) // self.page_size) - len(s.pages))
                 for s, n in zip(seqs, counts)]
        total = sum(needs)
        if total > len(self._free):
            raise RuntimeError(f"PagedKVCache: out of pages: {total} more needed, {len(self._free)} free of "
                               f"{self.max_num_pages}")
        out = []
        for i, s, n, need in zip(seq_idx, seqs, counts, needs):
            if i is None:
                i, self._next_id = self._next_id, self._next_id + 1
                self._seqs[i] = s
            if need:
                s.pages.extend(self._free.pop() for _ in range(need))
                s.table = torch.tensor(s.pages, dtype=torch.int32)
            s.pending += n
            out.append(i)
        self._sync(pages_changed=fresh > 0 or total > 0)
        return out

    def end_forward(self, seq_idx: int, num_tokens: Optional[int] = None) -> None:
        """Commits num_tokens (default: all) of the tokens begun for seq_idx."""
        self._end([seq_idx], [num_tokens], "end_forward")

    def end_forward_batch(self, seq_idx: Sequence[int], num_tokens: Optional[Sequence[int]] = None) -> None:
        """end_forward for several sequences with a single rewrite of the device tables; changes nothing if any
        part is invalid."""
        num_tokens = [None] * len(seq_idx) if num_tokens is None else list(num_tokens)
        if len(num_tokens) != len(seq_idx):
            raise ValueError(f"PagedKVCache.end_forward_batch: {len(num_tokens)} token counts for {len(seq_idx)} "
                             f"sequences")
        self._end(list(seq_idx), num_tokens, "end_forward_batch")

    def _end(self, seq_idx: List[int], counts: List[Optional[int]], who: str) -> None:
        if len(set(seq_idx)) != len(seq_idx):
            raise ValueError(f"PagedKVCache.{who}: a sequence appears twice in {seq_idx}")
        seqs = [self._get(i) for i in seq_idx]
        ns = [s.pending if c is None else c for s, c in zip(seqs, counts)]
        for i, s, n in zip(seq_idx, seqs, ns):
            if n < 0 or n > s.pending:
                raise ValueError(f"PagedKVCache.{who}: sequence {i} has {s.pending} begun tokens, cannot commit {n}")
        for s, n in zip(seqs, ns):
            s.committed += n
            s.pending -= n
        self._sync(pages_changed=False)

    def release(self, seq_idx: int) -> None:
        """Ends a sequence; its pages go back to the pool."""
        s = self._get(seq_idx)
        del self._seqs[seq_idx]
        self._free.extend(reversed(s.pages))
        self._sync()

    # ---- device tables ----

    def _sync(self, pages_changed: bool = True) -> None:
        """Rewrites the device page tables and the append metadata of the current pass in place. It runs on every
        state change, not lazily: a captured graph reads these buffers with no Python in between. The page
        indices are rebuilt (from each sequence's cached page tensor) only when a page list changed."""
        seqs = [self._seqs[i] for i in self.active]
        nb, ps = len(seqs), self.page_size
        lens = [s.committed + s.pending for s in seqs]
        used = [-(-n // ps) for n in lens]
        indptr = [0, *itertools.accumulate(used)]
        last = [n - (u - 1) * ps if u > 0 else 0 for n, u in zip(lens, used)]
        pin = self.device.type == "cuda"
        host = torch.tensor(indptr + last, dtype=torch.int32, pin_memory=pin)
        self._indptr[: nb + 1].copy_(host[: nb + 1], non_blocking=True)
        self._last[:nb].copy_(host[nb + 1 :], non_blocking=True)
        if pages_changed and indptr[-1] > 0:
            indices = torch.cat([s.table[:u] for s, u in zip(seqs, used)])
            self._indices[: indptr[-1]].copy_(indices.pin_memory() if pin else indices, non_blocking=True)
        batch = [b for b, s in enumerate(seqs) for _ in range(s.pending)]
        pos = [p for s in seqs for p in range(s.committed, s.committed + s.pending)]
        self._append_batch = torch.tensor(batch, dtype=torch.int32, pin_memory=pin).to(self.device, non_blocking=True)
        self._append_pos = torch.tensor(pos, dtype=torch.int32, pin_memory=pin).to(self.device, non_blocking=True)

    def page_tables(self):
        """(kv_indptr, kv_indices, kv_last_page_len) of the active sequences: views of the fixed buffers, the same
        tensor objects for the same batch size."""
        nb = len(self._seqs)
        if nb not in self._views:
            self._views[nb] = (self._indptr[: nb + 1], self._indices, self._last[:nb])
        return self._views[nb]

    # ---- writes ----

    def append(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Writes the K/V ``[num_new_tokens, Hkv, D]`` of the tokens begun in this pass into layer layer_idx,
        sequences in batch order, each one's new tokens in order."""
        self._check_layer(layer_idx)
        n = self._append_pos.shape[0]
        for name, t in (("key", key), ("value", value)):
            if t.dtype != self.dtype:
                raise TypeError(f"PagedKVCache.append: {name} must be {self.dtype} (the cache's dtype), got {t.dtype}")
            if tuple(t.shape) != (n, self.num_kv_heads, self.head_dim):
                raise ValueError(f"PagedKVCache.append: {name} must have shape [{n}, {self.num_kv_heads}, "
                                 f"{self.head_dim}] (begun tokens, kv heads, head_dim), got {list(t.shape)}")
        indptr, indices, last = self.page_tables()
        append_paged_kv_cache(key, value, self._append_batch, self._append_pos, self.layers[layer_idx], indices,
                              indptr, last, self.kv_layout)

    def _check_layer(self, layer_idx: int) -> None:
        if not 0 <= layer_idx < self.num_layers:
            raise IndexError(f"PagedKVCache: layer_idx must be in [0, {self.num_layers}), got {layer_idx}")

    def _check_query(self, q: torch.Tensor, num_heads: int, who: str) -> None:
        if q.dtype != self.dtype:
            raise TypeError(f"{who}: query must be {self.dtype} (the cache's dtype), got {q.dtype}")
        if q.shape[-2:] != (num_heads, self.head_dim):
            raise ValueError(f"{who}: query must end in [{num_heads}, {self.head_dim}] (heads, head_dim), got "
                             f"{list(q.shape)}")


def _scale(sm_scale, head_dim):
    return float(1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale)


class BatchDecodeWithPagedKVCache:
    """One query token per active sequence against its cached tokens."""

    def __init__(self, kv_cache: PagedKVCache, num_heads: int, kv_heads: int, head_dim: int,
                 sm_scale: Optional[float] = None, dtype: torch.dtype = torch.float16, logits_soft_cap: float = 0.0,
                 window_left: int = -1) -> None:
        if kv_heads != kv_cache.num_kv_heads or head_dim != kv_cache.head_dim or dtype != kv_cache.dtype:
            raise ValueError(f"BatchDecodeWithPagedKVCache: kv_heads={kv_heads}, head_dim={head_dim}, dtype={dtype} "
                             f"must match the cache ({kv_cache.num_kv_heads}, {kv_cache.head_dim}, {kv_cache.dtype})")
        if num_heads % kv_heads != 0:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of kv_heads ({kv_heads})")
        self.kv_cache, self.num_heads, self.head_dim = kv_cache, num_heads, head_dim
        self.sm_scale = _scale(sm_scale, head_dim)
        self.logits_soft_cap, self.window_left = float(logits_soft_cap), window_left

    def decode(self, query: torch.Tensor, layer_idx: int = 0) -> torch.Tensor:
        """query ``[batch, 1, Hq, D]`` or ``[batch, Hq, D]``, batch = the active sequences in order; returns the
        attention output in the same shape."""
        c = self.kv_cache
        c._check_layer(layer_idx)
        c._check_query(query, self.num_heads, "BatchDecodeWithPagedKVCache.decode")
        q = query.reshape(query.shape[0], self.num_heads, self.head_dim) if query.dim() == 4 else query
        if q.dim() != 3 or (query.dim() == 4 and query.shape[1] != 1):
            raise ValueError(f"BatchDecodeWithPagedKVCache.decode: query must be [batch, 1, Hq, D] or [batch, Hq, D], "
                             f"got {list(query.shape)}")
        indptr, indices, last = c.page_tables()
        if q.shape[0] != last.shape[0]:
            raise ValueError(f"BatchDecodeWithPagedKVCache.decode: query batch {q.shape[0]} != {last.shape[0]} "
                             "active sequences")
        out, _ = torch.ops.flashinfer.batch_decode_with_paged_kv_cache(
            q, c.layers[layer_idx], None, indptr, indices, last, c.kv_layout, False, self.window_left,
            self.logits_soft_cap, self.sm_scale, 1.0, 1.0, 1.0, 1e4)
        return out.view(query.shape)


class BatchPrefillWithRaggedKVCache:
    """Causal prefill over the new tokens of several sequences, ragged (no padding).

    With a ``kv_cache``, ``prefill`` first writes the new tokens' K/V into it (``append``) and then attends over
    each sequence's cached tokens, so a prompt continued in chunks sees its earlier chunks: prompt -> decode is
    two calls per layer. Without one, the tokens attend to themselves and ``qo_indptr`` gives the split."""

    def __init__(self, num_heads: int, kv_heads: int, head_dim: int, sm_scale: Optional[float] = None,
                 dtype: torch.dtype = torch.float16, kv_cache: Optional[PagedKVCache] = None, causal: bool = True,
                 logits_soft_cap: float = 0.0, window_left: int = -1) -> None:
        if num_heads % kv_heads != 0:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of kv_heads ({kv_heads})")
        if kv_cache is not None and (kv_heads != kv_cache.num_kv_heads or head_dim != kv_cache.head_dim
                                     or dtype != kv_cache.dtype):
            raise ValueError(f"BatchPrefillWithRaggedKVCache: kv_heads={kv_heads}, head_dim={head_dim}, dtype={dtype} "
                             f"must match the cache ({kv_cache.num_kv_heads}, {kv_cache.head_dim}, {kv_cache.dtype})")
        self.num_heads, self.kv_heads, self.head_dim, self.dtype = num_heads, kv_heads, head_dim, dtype
        self.sm_scale, self.kv_cache, self.causal = _scale(sm_scale, head_dim), kv_cache, causal
        self.logits_soft_cap, self.window_left = float(logits_soft_cap), window_left
        self._qo_views: Dict[tuple, torch.Tensor] = {}

    def prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: int = 0,
                qo_indptr: Optional[torch.Tensor] = None, write_kv: bool = True) -> torch.Tensor:
        """q ``[num_new_tokens, Hq, D]``, k/v ``[num_new_tokens, Hkv, D]``; returns ``[num_new_tokens, Hq, D]``."""
        c = self.kv_cache
        if c is not None and write_kv:
            c._check_query(q, self.num_heads, "BatchPrefillWithRaggedKVCache.prefill")
            c.append(layer_idx, k, v)
            indptr, indices, last = c.page_tables()
            out, _ = torch.ops.flashinfer.batch_prefill_with_paged_kv_cache(
                q, self._qo_indptr(), c.layers[layer_idx], None, indptr, indices, last, None, None, c.kv_layout,
                self.causal, self.window_left, self.logits_soft_cap, self.sm_scale, 1.0, 1.0)
            return out
        if qo_indptr is None:
            if c is None:
                raise ValueError("BatchPrefillWithRaggedKVCache.prefill: qo_indptr is needed without a kv_cache")
            qo_indptr = self._qo_indptr()
        out, _ = torch.ops.flashinfer.batch_prefill_with_ragged_kv_cache(
            q, qo_indptr, k, v, qo_indptr, None, None, "NHD", self.causal, self.window_left, self.logits_soft_cap,
            self.sm_scale, 1.0, 1.0)
        return out

    def _qo_indptr(self) -> torch.Tensor:
        """Offsets of each active sequence's begun tokens (sequences with none get an empty range)."""
        c = self.kv_cache
        counts = tuple(c._seqs[i].pending for i in c.active)
        if counts not in self._qo_views:
            t = torch.tensor((0,) + counts, dtype=torch.int64).cumsum(0).to(torch.int32)
            self._qo_views[counts] = t.to(c.device)
        return self._qo_views[counts]
