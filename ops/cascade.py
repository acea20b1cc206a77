"""Cascade attention (FlashInfer 0.6 ``flashinfer.cascade`` API): attention over KV split into disjoint pieces,
each computed on its own and recombined from its output and log2-sum-exp.

An attention state is ``v [seq_len, num_heads, head_dim]`` with ``s [seq_len, num_heads]`` float32, the
log2-sum-exp of the scores behind each row, as every attention op here returns it (``return_lse=True``). States
over disjoint keys merge exactly into the state over their union: ``s = log2(sum_k 2^s_k)``,
``v = sum_k 2^(s_k - s) v_k``. A row whose states are all ``-inf`` (no key in any piece) merges to 0 and ``-inf``.
Each merge is one ``torch.ops.flashinfer`` op, so cascades compile, capture and export like the rest.

:class:`MultiLevelCascadeAttentionWrapper` runs a batch's levels (a prefix shared by many requests, then each
request's own KV) as prefill wrappers over one paged cache and merges their states in place.
"""

from typing import List, Optional, Tuple, Union

import torch

from .prefill import BatchPrefillWithPagedKVCacheWrapper

__all__ = ["merge_state", "merge_state_in_place", "merge_states", "MultiLevelCascadeAttentionWrapper"]


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

    def end_forward(self) -> None:
        pass
