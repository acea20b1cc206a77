"""Cascade attention (FlashInfer 0.6 ``flashinfer.cascade`` API): attention over KV split into disjoint pieces,
each computed on its own and recombined from its output and log2-sum-exp.

An attention state is ``v [seq_len, num_heads, head_dim]`` with ``s [seq_len, num_heads]`` float32, the
log2-sum-exp of the scores behind each row, as every attention op here returns it (``return_lse=True``). States
over disjoint keys merge exactly into the state over their union: ``s = log2(sum_k 2^s_k)``,
``v = sum_k 2^(s_k - s) v_k``. A row whose states are all ``-inf`` (no key in any piece) merges to 0 and ``-inf``.
Each merge is one ``torch.ops.flashinfer`` op, so cascades compile, capture and export like the rest.

:class:`MultiLevelCascadeAttentionWrapper` runs a batch's levels (a prefix shared by many requests, then each
request's own KV) as prefill wrappers over one paged cache and merges their states in place. The two older
shared-prefix wrappers (upstream marks them for deprecation in favour of it) take the prefix as contiguous K/V
tensors and each request's own tokens from a paged cache.
"""

from typing import List, Optional, Tuple, Union

import torch

from .decode import BatchDecodeWithPagedKVCacheWrapper
from .prefill import BatchPrefillWithPagedKVCacheWrapper, single_prefill_with_kv_cache

__all__ = ["merge_state", "merge_state_in_place", "merge_states", "MultiLevelCascadeAttentionWrapper",
           "BatchDecodeWithSharedPrefixPagedKVCacheWrapper", "BatchPrefillWithSharedPrefixPagedKVCacheWrapper"]


def merge_state(v_a: torch.Tensor, s_a: torch.Tensor, v_b: torch.Tensor,
                s_b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The state over KV ``[A: B]`` from the states over ``A`` and ``B``: ``(v [seq_len, num_heads, head_dim],
    s [seq_len, num_heads])``. ``s_a`` / ``s_b`` are taken to float32 first, as upstream does."""
    return torch.ops.flashinfer.merge_state(v_a, s_a.to(torch.float32), v_b, s_b.to(torch.float32))


def merge_state_in_place(v: torch.Tensor, s: torch.Tensor, v_other: torch.Tensor, s_other: torch.Tensor,
                         mask: Optional[torch.Tensor] = None) -> None:
    """``(v, s) <- merge((v, s), (v_other, s_other))`` in place, on the rows where ``mask`` (bool ``[seq_len]``,
    a device tensor, so a captured graph can change it) is set, or on every row. ``s`` is written in place, so it
    must already be float32 (upstream would merge into a float32 copy and drop it)."""
    torch.ops.flashinfer.merge_state_in_place(v, s, v_other, s_other.to(torch.float32), mask)


def merge_states(v: torch.Tensor, s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Merges ``num_states`` states a row: ``v [seq_len, num_states, num_heads, head_dim]`` and
    ``s [seq_len, num_states, num_heads]`` into ``(v [seq_len, num_heads, head_dim], s [seq_len, num_heads])``."""
    return torch.ops.flashinfer.merge_states(v, s.to(torch.float32))


class MultiLevelCascadeAttentionWrapper:
    """Attention of a batch whose KV is organised in levels over one paged cache: level 0 typically one prefix
    shared by every request (its ``qo_indptr`` ``[0, batch_size]``: all queries attend it as one request), the last
    level each request's own tokens. Each level is a :class:`BatchPrefillWithPagedKVCacheWrapper`; ``causal``
    applies to the last level only (the earlier levels precede every query). ``run`` computes the last level, then
    merges each other level's state into it in place."""

    def __init__(self, num_levels: int, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD",
                 use_cuda_graph: bool = False, qo_indptr_buf_arr: Optional[List[torch.Tensor]] = None,
                 paged_kv_indptr_buf_arr: Optional[List[torch.Tensor]] = None,
                 paged_kv_indices_buf_arr: Optional[List[torch.Tensor]] = None,
                 paged_kv_last_page_len_buf_arr: Optional[List[torch.Tensor]] = None) -> None:
        if num_levels < 1:
            raise ValueError(f"num_levels must be at least 1, got {num_levels}")
        if use_cuda_graph:
            arrays = dict(qo_indptr_buf_arr=qo_indptr_buf_arr, paged_kv_indptr_buf_arr=paged_kv_indptr_buf_arr,
                          paged_kv_indices_buf_arr=paged_kv_indices_buf_arr,
                          paged_kv_last_page_len_buf_arr=paged_kv_last_page_len_buf_arr)
            for name, arr in arrays.items():
                if arr is None or len(arr) != num_levels:
                    raise ValueError(f"use_cuda_graph=True needs {name} with one buffer per level ({num_levels})")
            self._batch_prefill_wrappers = [
                BatchPrefillWithPagedKVCacheWrapper(float_workspace_buffer, kv_layout, use_cuda_graph=True,
                                                    qo_indptr_buf=qo, paged_kv_indptr_buf=indptr,
                                                    paged_kv_indices_buf=indices, paged_kv_last_page_len_buf=last)
                for qo, indptr, indices, last in zip(qo_indptr_buf_arr, paged_kv_indptr_buf_arr,
                                                     paged_kv_indices_buf_arr, paged_kv_last_page_len_buf_arr)]
        else:
            self._batch_prefill_wrappers = [BatchPrefillWithPagedKVCacheWrapper(float_workspace_buffer, kv_layout)
                                            for _ in range(num_levels)]
        self._num_levels = num_levels
        self._kv_layout = kv_layout
        self._use_cuda_graph = use_cuda_graph

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return self._use_cuda_graph

    def reset_workspace_buffer(self, float_workspace_buffer: torch.Tensor,
                               int_workspace_buffers: List[torch.Tensor]) -> None:
        for wrapper, int_workspace_buffer in zip(self._batch_prefill_wrappers, int_workspace_buffers, strict=True):
            wrapper.reset_workspace_buffer(float_workspace_buffer, int_workspace_buffer)

    def plan(self, qo_indptr_arr: List[torch.Tensor], paged_kv_indptr_arr: List[torch.Tensor],
             paged_kv_indices_arr: List[torch.Tensor], paged_kv_last_page_len: List[torch.Tensor],
             num_qo_heads: int, num_kv_heads: int, head_dim: int, page_size: int, causal: bool = False,
             pos_encoding_mode: str = "NONE", use_fp16_qk_reduction: bool = False,
             sm_scale: Optional[float] = None, window_left: int = -1, logits_soft_cap: Optional[float] = None,
             rope_scale: Optional[float] = None, rope_theta: Optional[float] = None,
             q_data_type: Union[str, torch.dtype] = "float16",
             kv_data_type: Optional[Union[str, torch.dtype]] = None) -> None:
        """Plans every level (one list entry per level for each table); never waits for the device."""
        tables = (qo_indptr_arr, paged_kv_indptr_arr, paged_kv_indices_arr, paged_kv_last_page_len)
        names = ("qo_indptr_arr", "paged_kv_indptr_arr", "paged_kv_indices_arr", "paged_kv_last_page_len")
        for name, arr in zip(names, tables):
            if len(arr) != self._num_levels:
                raise ValueError(f"{name} must hold one tensor per level ({self._num_levels}), got {len(arr)}")
        for i, (wrapper, qo, indptr, indices, last) in enumerate(zip(self._batch_prefill_wrappers, *tables)):
            wrapper.plan(qo, indptr, indices, last, num_qo_heads, num_kv_heads, head_dim, page_size,
                         causal=causal and i == self._num_levels - 1, pos_encoding_mode=pos_encoding_mode,
                         use_fp16_qk_reduction=use_fp16_qk_reduction, sm_scale=sm_scale, window_left=window_left,
                         logits_soft_cap=logits_soft_cap, rope_scale=rope_scale, rope_theta=rope_theta,
                         q_data_type=q_data_type, kv_data_type=kv_data_type)

    begin_forward = plan

    def run(self, q: torch.Tensor, paged_kv_cache: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]
            ) -> torch.Tensor:
        """Attention of ``q [total_q, num_qo_heads, head_dim]`` over every level's KV."""
        out, lse = self._batch_prefill_wrappers[-1].run(q, paged_kv_cache, return_lse=True)
        for wrapper in self._batch_prefill_wrappers[:-1]:
            out_i, lse_i = wrapper.run(q, paged_kv_cache, return_lse=True)
            merge_state_in_place(out, lse, out_i, lse_i)
        return out

    forward = run


class BatchDecodeWithSharedPrefixPagedKVCacheWrapper:
    """Decode for a batch whose requests share a prefix: the prefix as contiguous ``k_shared`` / ``v_shared``
    (``[prefix_len, num_kv_heads, head_dim]``, NHD, or ``[num_kv_heads, prefix_len, head_dim]``, HND), each request's
    own tokens in a paged cache. ``forward`` attends the batch's queries to the prefix as one request, decodes each
    over its own pages, and merges the two states. Prefer :class:`MultiLevelCascadeAttentionWrapper`."""

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD") -> None:
        self._batch_decode_wrapper = BatchDecodeWithPagedKVCacheWrapper(float_workspace_buffer, kv_layout)
        self._kv_layout = kv_layout

    def reset_workspace_buffer(self, float_workspace_buffer: torch.Tensor, int_workspace_buffer) -> None:
        self._batch_decode_wrapper.reset_workspace_buffer(float_workspace_buffer, int_workspace_buffer)

    def begin_forward(self, unique_kv_indptr: torch.Tensor, unique_kv_indices: torch.Tensor,
                      unique_kv_last_page_len: torch.Tensor, num_qo_heads: int, num_kv_heads: int, head_dim: int,
                      page_size: int, data_type: Union[str, torch.dtype] = "float16") -> None:
        """Plans the requests' own pages (the prefix needs no plan)."""
        self._batch_decode_wrapper.begin_forward(unique_kv_indptr, unique_kv_indices, unique_kv_last_page_len,
                                                 num_qo_heads, num_kv_heads, head_dim, page_size,
                                                 pos_encoding_mode="NONE", data_type=data_type)

    def forward(self, q: torch.Tensor, k_shared: torch.Tensor, v_shared: torch.Tensor,
                unique_kv_cache: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Attention of ``q [batch_size, num_qo_heads, head_dim]`` over the prefix, then each request's pages."""
        v, s = single_prefill_with_kv_cache(q, k_shared, v_shared, causal=False, kv_layout=self._kv_layout,
                                            return_lse=True)
        v_unique, s_unique = self._batch_decode_wrapper.forward_return_lse(q, unique_kv_cache)
        merge_state_in_place(v, s, v_unique, s_unique)
        return v

    def end_forward(self) -> None:
        pass


class BatchPrefillWithSharedPrefixPagedKVCacheWrapper:
    """Prefill / append for a batch whose requests share a prefix: the prefix as contiguous ``k_shared`` /
    ``v_shared`` (as :class:`BatchDecodeWithSharedPrefixPagedKVCacheWrapper`), each request's own tokens in a paged
    cache. ``causal`` applies to the requests' own tokens (every query comes after the prefix). Prefer
    :class:`MultiLevelCascadeAttentionWrapper`."""

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD") -> None:
        self._batch_prefill_wrapper = BatchPrefillWithPagedKVCacheWrapper(float_workspace_buffer, kv_layout)
        self._kv_layout = kv_layout

    def reset_workspace_buffer(self, float_workspace_buffer: torch.Tensor, int_workspace_buffer) -> None:
        self._batch_prefill_wrapper.reset_workspace_buffer(float_workspace_buffer, int_workspace_buffer)

    def begin_forward(self, qo_indptr: torch.Tensor, paged_kv_indptr: torch.Tensor, paged_kv_indices: torch.Tensor,
                      paged_kv_last_page_len: torch.Tensor, num_qo_heads: int, num_kv_heads: int, head_dim: int,
                      page_size: int) -> None:
        """Plans the requests' queries over their own pages (the prefix needs no plan)."""
        self._batch_prefill_wrapper.begin_forward(qo_indptr, paged_kv_indptr, paged_kv_indices,
                                                  paged_kv_last_page_len, num_qo_heads, num_kv_heads, head_dim,
                                                  page_size)

    def forward(self, q: torch.Tensor, k_shared: torch.Tensor, v_shared: torch.Tensor,
                unique_kv_cache: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]], causal: bool = False,
                use_fp16_qk_reduction: bool = False, sm_scale: Optional[float] = None,
                rope_scale: Optional[float] = None, rope_theta: Optional[float] = None) -> torch.Tensor:
        """Attention of ``q [qo_indptr[-1], num_qo_heads, head_dim]`` over the prefix, then each request's pages."""
        v, s = single_prefill_with_kv_cache(q, k_shared, v_shared, causal=False, kv_layout=self._kv_layout,
                                            use_fp16_qk_reduction=use_fp16_qk_reduction, sm_scale=sm_scale,
                                            rope_scale=rope_scale, rope_theta=rope_theta, return_lse=True)
        v_unique, s_unique = self._batch_prefill_wrapper.forward_return_lse(
            q, unique_kv_cache, causal=causal, use_fp16_qk_reduction=use_fp16_qk_reduction, sm_scale=sm_scale,
            rope_scale=rope_scale, rope_theta=rope_theta)
        merge_state_in_place(v, s, v_unique, s_unique)
        return v

    def end_forward(self) -> None:
        pass
