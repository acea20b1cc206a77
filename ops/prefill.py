"""Prefill attention (FlashInfer 0.6 ``flashinfer.prefill`` API): single request, batch over a paged KV cache,
batch over ragged KV, and the mask packing helpers.

``plan()`` records metadata (moved to the device without blocking, or copied into the fixed buffers of a
CUDA-graph wrapper); ``run()`` is one call of ``torch.ops.flashinfer.batch_prefill_with_{paged,ragged}_kv_cache``,
whose kernel finds each block's (request, query tile) on the device, so a captured prefill replays with new
lengths (up to the captured total of query tokens) and Dynamo traces straight through.

Masks: ``causal`` is bottom-right aligned (query i of a request with qo_len queries and kv_len keys sees keys
j <= kv_len - qo_len + i); ``custom_mask`` is each request's [qo_len, kv_len] boolean matrix, flattened and
concatenated, packed here with bit order "little" (``packed_custom_mask`` skips the packing).
KV may be fp8 (e4m3 / e5m2) under 16-bit queries, with ``k_scale`` / ``v_scale`` (``scale_k`` / ``scale_v`` for
the single-request call): each staged fp8 tile is converted to the query dtype in shared memory.
``pos_encoding_mode="ROPE_LLAMA"`` rotates query i of a request at position kv_len - qo_len + i and key j at j
(NeoX halves, ``rope_scale``, ``rope_theta``) inside the kernel; the cache keeps the unrotated keys.
Not supported: a head_dim_vo different from head_dim_qk.
"""

from typing import Optional, Tuple, Union

import torch

from .page import _validating, split_paged_kv_cache, validate_indptr, validate_page_table
from .wrapper import (AttentionWrapper, as_dtype, attention_scales, check_heads, check_int32, finish, reject,
                      reject_jit, rope_args)

__all__ = ["packbits", "segment_packbits", "single_prefill_with_kv_cache", "single_prefill_with_kv_cache_return_lse",
           "BatchPrefillWithPagedKVCacheWrapper", "BatchPrefillWithRaggedKVCacheWrapper"]

def packbits(x: torch.Tensor, bitorder: str = "big") -> torch.Tensor:
    """Packs the elements of a boolean tensor (flattened) into uint8, 8 to a byte, like numpy.packbits."""
    if bitorder not in ("big", "little"):
        raise ValueError(f'bitorder must be "big" or "little", got "{bitorder}"')
    bits = x.reshape(-1).to(torch.uint8)
    bits = torch.nn.functional.pad(bits, (0, (-bits.numel()) % 8)).view(-1, 8)
    shifts = torch.arange(8, device=x.device, dtype=torch.uint8)
    if bitorder == "big":
        shifts = 7 - shifts
    return (bits << shifts).sum(-1, dtype=torch.uint8)


def segment_packbits(x: torch.Tensor, indptr: torch.Tensor, bitorder: str = "big") -> Tuple[torch.Tensor, torch.Tensor]:
    """Packs each segment x[indptr[i]:indptr[i+1]] on its own (each starts on a byte). Returns the packed bytes and
    the byte indptr. Reads indptr on the host."""
    bounds = indptr.tolist()
    sizes = [(b - a + 7) // 8 for a, b in zip(bounds[:-1], bounds[1:])]
    parts = [packbits(x[a:b], bitorder) for a, b in zip(bounds[:-1], bounds[1:])]
    packed = torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8, device=x.device)
    new_indptr = torch.tensor([0] + sizes, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(indptr.device)
    return packed, new_indptr


def single_prefill_with_kv_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale_q=None, scale_k=None,
                                 scale_v=None, o_dtype: Optional[torch.dtype] = None,
                                 custom_mask: Optional[torch.Tensor] = None,
                                 packed_custom_mask: Optional[torch.Tensor] = None, causal: bool = False,
                                 kv_layout: str = "NHD", pos_encoding_mode: str = "NONE",
                                 use_fp16_qk_reduction: bool = False, sm_scale: Optional[float] = None,
                                 window_left: int = -1, logits_soft_cap: Optional[float] = None,
                                 rope_scale: Optional[float] = None, rope_theta: Optional[float] = None,
                                 backend: str = "auto", return_lse: bool = False):
    """Attention of ``q [qo_len, num_qo_heads, head_dim]`` over ``k``/``v`` ``[kv_len, num_kv_heads, head_dim]``
    (NHD) or ``[num_kv_heads, kv_len, head_dim]`` (HND). Returns ``out`` (and ``lse [qo_len, num_qo_heads]``, log
    base 2, with ``return_lse``)."""
    rope = rope_args(pos_encoding_mode, rope_scale, rope_theta)
    kv_len = k.shape[0] if kv_layout == "NHD" else k.shape[1]
    dev = q.device
    qo_indptr = torch.tensor([0, q.shape[0]], dtype=torch.int32, device=dev)
    kv_indptr = torch.tensor([0, kv_len], dtype=torch.int32, device=dev)
    mask_indptr = None
    if custom_mask is not None and packed_custom_mask is None:
        packed_custom_mask = packbits(custom_mask, "little")
    if packed_custom_mask is not None:
        mask_indptr = torch.zeros(2, dtype=torch.int32, device=dev)
    sm, ks, vs = attention_scales(q.shape[-1], sm_scale, scale_q, scale_k, scale_v)
    o, s = torch.ops.flashinfer.batch_prefill_with_ragged_kv_cache(
        q, qo_indptr, k, v, kv_indptr, packed_custom_mask, mask_indptr, kv_layout, causal, window_left,
        0.0 if logits_soft_cap is None else float(logits_soft_cap), sm, ks, vs, *rope)
    return finish(o, s, None, None, return_lse, o_dtype)


def single_prefill_with_kv_cache_return_lse(q, k, v, *args, **kwargs):
    return single_prefill_with_kv_cache(q, k, v, *args, return_lse=True, **kwargs)


def _check_plan_extras(prefix_len_ptr, token_pos_in_items_ptr, token_pos_in_items_len, max_item_len_ptr) -> None:
    """Upstream's multi-item scoring arguments (a mask over items packed in one request): not implemented."""
    reject(prefix_len_ptr=prefix_len_ptr, token_pos_in_items_ptr=token_pos_in_items_ptr,
           token_pos_in_items_len=token_pos_in_items_len or None, max_item_len_ptr=max_item_len_ptr)


class _PrefillWrapper(AttentionWrapper):
    """What the paged and ragged wrappers share: plan-time parameters, mask packing, the legacy forward()."""

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str, use_cuda_graph: bool,
                 buffers: dict, backend: str) -> None:
        super().__init__(float_workspace_buffer, kv_layout, use_cuda_graph, buffers)
        self._backend = backend

    def _set_attention(self, causal, pos_encoding_mode, window_left, logits_soft_cap, sm_scale, rope_scale,
                       rope_theta) -> None:
        self._rope = rope_args(pos_encoding_mode, rope_scale, rope_theta)
        self._causal, self._window_left = causal, window_left
        self._logits_soft_cap = 0.0 if logits_soft_cap is None else float(logits_soft_cap)
        self._sm_scale = sm_scale

    def _plan_common(self, qo_indptr, kv_lens_host, num_qo_heads, num_kv_heads, head_dim_qk, head_dim_vo,
                     custom_mask, packed_custom_mask, causal, pos_encoding_mode, window_left, logits_soft_cap,
                     sm_scale, rope_scale, rope_theta, non_blocking, o_data_type=None):
        check_heads(num_qo_heads, num_kv_heads, head_dim_qk)
        if head_dim_vo is not None and head_dim_vo != head_dim_qk:
            raise NotImplementedError("head_dim_vo different from head_dim_qk is not supported")
        check_int32(qo_indptr=qo_indptr)
        self._set_attention(causal, pos_encoding_mode, window_left, logits_soft_cap, sm_scale, rope_scale, rope_theta)
        self._qo_indptr = self._place("qo_indptr_buf", qo_indptr, non_blocking)
        self._mask = self._mask_indptr = None
        if custom_mask is not None or packed_custom_mask is not None:
            # Each request's [qo_len, kv_len] bits start on a byte: the lengths are read on the host here.
            qo = qo_indptr.tolist()
            kv = kv_lens_host()
            bits = torch.tensor([0] + [(qo[i + 1] - qo[i]) * kv[i] for i in range(len(kv))]).cumsum(0)
            if packed_custom_mask is None:
                packed_custom_mask, mask_indptr = segment_packbits(custom_mask.reshape(-1), bits, "little")
            else:
                nbytes = [(int(b) - int(a) + 7) // 8 for a, b in zip(bits[:-1], bits[1:])]
                mask_indptr = torch.tensor([0] + nbytes, dtype=torch.int32).cumsum(0, dtype=torch.int32)
            self._mask = self._place("custom_mask_buf", packed_custom_mask.reshape(-1), non_blocking, whole=True)
            self._mask_indptr = self._place("mask_indptr_buf", mask_indptr.to(torch.int32), non_blocking)
        self._num_qo_heads, self._num_kv_heads, self._head_dim = num_qo_heads, num_kv_heads, head_dim_qk
        self._o_dtype = as_dtype(o_data_type)  # None: q's dtype
        self._planned = True

    def run_return_lse(self, *args, **kwargs):
        return self.run(*args, return_lse=True, **kwargs)

    def forward_return_lse(self, *args, **kwargs):
        return self.forward(*args, return_lse=True, **kwargs)


class BatchPrefillWithRaggedKVCacheWrapper(_PrefillWrapper):
    """Prefill for a batch whose KV is ragged: request b's keys are rows kv_indptr[b]..kv_indptr[b+1] of k/v."""

    _graph_buffers = ("qo_indptr_buf", "kv_indptr_buf")

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD", use_cuda_graph: bool = False,
                 qo_indptr_buf: Optional[torch.Tensor] = None, kv_indptr_buf: Optional[torch.Tensor] = None,
                 custom_mask_buf: Optional[torch.Tensor] = None, mask_indptr_buf: Optional[torch.Tensor] = None,
                 backend: str = "auto", jit_args=None, jit_kwargs=None) -> None:
        reject_jit(jit_args, jit_kwargs)
        super().__init__(float_workspace_buffer, kv_layout, use_cuda_graph,
                         dict(qo_indptr_buf=qo_indptr_buf, kv_indptr_buf=kv_indptr_buf,
                              custom_mask_buf=custom_mask_buf, mask_indptr_buf=mask_indptr_buf), backend)

    def plan(self, qo_indptr: torch.Tensor, kv_indptr: torch.Tensor, num_qo_heads: int, num_kv_heads: int,
             head_dim_qk: int, head_dim_vo: Optional[int] = None, custom_mask: Optional[torch.Tensor] = None,
             packed_custom_mask: Optional[torch.Tensor] = None, causal: bool = False,
             pos_encoding_mode: str = "NONE", use_fp16_qk_reduction: bool = False, window_left: int = -1,
             logits_soft_cap: Optional[float] = None, sm_scale: Optional[float] = None,
             rope_scale: Optional[float] = None, rope_theta: Optional[float] = None,
             q_data_type: Union[str, torch.dtype] = "float16", kv_data_type=None, o_data_type=None,
             non_blocking: bool = True, prefix_len_ptr: Optional[torch.Tensor] = None,
             token_pos_in_items_ptr: Optional[torch.Tensor] = None, token_pos_in_items_len: int = 0,
             max_item_len_ptr: Optional[torch.Tensor] = None, fixed_split_size: Optional[int] = None,
             disable_split_kv: bool = False, seq_lens: Optional[torch.Tensor] = None,
             seq_lens_q: Optional[torch.Tensor] = None, max_token_per_sequence: Optional[int] = None,
             max_sequence_kv: Optional[int] = None, v_indptr: Optional[torch.Tensor] = None,
             o_indptr: Optional[torch.Tensor] = None, *, validate: Optional[bool] = None) -> None:
        """Records the batch and the attention parameters; never waits for the device (a custom_mask that still
        needs packing reads the lengths on the host). v_indptr / o_indptr (separate value and output layouts) are
        not supported; the other trailing arguments as in BatchPrefillWithPagedKVCacheWrapper.plan.
        ``validate=True`` (or FLASHINFER_VALIDATE=1) checks qo_indptr and kv_indptr on the host first (a sync)."""
        _check_plan_extras(prefix_len_ptr, token_pos_in_items_ptr, token_pos_in_items_len, max_item_len_ptr)
        reject(v_indptr=v_indptr, o_indptr=o_indptr)
        kv_host = lambda: (kv_indptr[1:] - kv_indptr[:-1]).tolist()  # noqa: E731
        self._plan_common(qo_indptr, kv_host, num_qo_heads, num_kv_heads, head_dim_qk, head_dim_vo, custom_mask,
                          packed_custom_mask, causal, pos_encoding_mode, window_left, logits_soft_cap, sm_scale,
                          rope_scale, rope_theta, non_blocking, o_data_type)
        check_int32(kv_indptr=kv_indptr)
        if _validating(validate):
            validate_indptr("qo_indptr", qo_indptr, kv_indptr.numel() - 1)
            validate_indptr("kv_indptr", kv_indptr)
        self._kv_indptr = self._place("kv_indptr_buf", kv_indptr, non_blocking)

    begin_forward = plan

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args, q_scale: Optional[float] = None,
            k_scale: Optional[float] = None, v_scale: Optional[float] = None, o_scale: Optional[float] = None,
            out: Optional[torch.Tensor] = None, lse: Optional[torch.Tensor] = None, return_lse: bool = False,
            enable_pdl: Optional[bool] = None):
        """Attention of ``q [total_q, num_qo_heads, head_dim]`` over the planned requests."""
        self._check_planned()
        reject(o_scale=None if o_scale == 1.0 else o_scale)
        sm, ks, vs = attention_scales(q.shape[-1], self._sm_scale, q_scale, k_scale, v_scale)
        o, s = torch.ops.flashinfer.batch_prefill_with_ragged_kv_cache(
            q, self._qo_indptr, k, v, self._kv_indptr, self._mask, self._mask_indptr, self._kv_layout,
            self._causal, self._window_left, self._logits_soft_cap, sm, ks, vs, *self._rope)
        return finish(o, s, out, lse, return_lse, self._o_dtype)

    def forward(self, q, k, v, causal: bool = False, pos_encoding_mode: str = "NONE",
                use_fp16_qk_reduction: bool = False, window_left: int = -1, logits_soft_cap=None, sm_scale=None,
                rope_scale=None, rope_theta=None, return_lse: bool = False):
        """Legacy entry point: attention parameters given per call instead of to plan()."""
        self._set_attention(causal, pos_encoding_mode, window_left, logits_soft_cap, sm_scale, rope_scale, rope_theta)
        return self.run(q, k, v, return_lse=return_lse)


class BatchPrefillWithPagedKVCacheWrapper(_PrefillWrapper):
    """Prefill for a batch whose KV lives in a paged cache (the page tables of the decode wrapper)."""

    _graph_buffers = ("qo_indptr_buf", "paged_kv_indptr_buf", "paged_kv_indices_buf", "paged_kv_last_page_len_buf")

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD", use_cuda_graph: bool = False,
                 qo_indptr_buf: Optional[torch.Tensor] = None, paged_kv_indptr_buf: Optional[torch.Tensor] = None,
                 paged_kv_indices_buf: Optional[torch.Tensor] = None,
                 paged_kv_last_page_len_buf: Optional[torch.Tensor] = None,
                 custom_mask_buf: Optional[torch.Tensor] = None, mask_indptr_buf: Optional[torch.Tensor] = None,
                 backend: str = "auto", jit_args=None, jit_kwargs=None) -> None:
        reject_jit(jit_args, jit_kwargs)
        super().__init__(float_workspace_buffer, kv_layout, use_cuda_graph,
                         dict(qo_indptr_buf=qo_indptr_buf, paged_kv_indptr_buf=paged_kv_indptr_buf,
                              paged_kv_indices_buf=paged_kv_indices_buf,
                              paged_kv_last_page_len_buf=paged_kv_last_page_len_buf,
                              custom_mask_buf=custom_mask_buf, mask_indptr_buf=mask_indptr_buf), backend)

    def plan(self, qo_indptr: torch.Tensor, paged_kv_indptr: torch.Tensor, paged_kv_indices: torch.Tensor,
             paged_kv_last_page_len: torch.Tensor, num_qo_heads: int, num_kv_heads: int, head_dim_qk: int,
             page_size: int, head_dim_vo: Optional[int] = None, custom_mask: Optional[torch.Tensor] = None,
             packed_custom_mask: Optional[torch.Tensor] = None, causal: bool = False,
             pos_encoding_mode: str = "NONE", use_fp16_qk_reduction: bool = False,
             sm_scale: Optional[float] = None, window_left: int = -1, logits_soft_cap: Optional[float] = None,
             rope_scale: Optional[float] = None, rope_theta: Optional[float] = None,
             q_data_type: Union[str, torch.dtype] = "float16", kv_data_type=None, o_data_type=None,
             non_blocking: bool = True, prefix_len_ptr: Optional[torch.Tensor] = None,
             token_pos_in_items_ptr: Optional[torch.Tensor] = None, token_pos_in_items_len: int = 0,
             max_item_len_ptr: Optional[torch.Tensor] = None, seq_lens: Optional[torch.Tensor] = None,
             seq_lens_q: Optional[torch.Tensor] = None, block_tables: Optional[torch.Tensor] = None,
             max_token_per_sequence: Optional[int] = None, max_sequence_kv: Optional[int] = None,
             fixed_split_size: Optional[int] = None, disable_split_kv: bool = False, *,
             validate: Optional[bool] = None) -> None:
        """Records the batch, its page tables and the attention parameters; never waits for the device (a
        custom_mask that still needs packing reads the lengths on the host). ``validate=True`` (or
        FLASHINFER_VALIDATE=1) checks qo_indptr and the page tables on the host first (a sync); page ids are
        checked against the cache by the kernel (it masks those outside), since the cache is not known here.

        Upstream's trailing arguments: the multi-item scoring ones (prefix_len_ptr, token_pos_in_items_ptr /
        _len, max_item_len_ptr) change the mask and raise when set; seq_lens, seq_lens_q, block_tables and the
        max_* sizes describe the same batch for other backends and are not needed here; fixed_split_size and
        disable_split_kv steer upstream's scheduler, while here the KV split count follows from shapes alone
        (the result is the same attention either way)."""
        _check_plan_extras(prefix_len_ptr, token_pos_in_items_ptr, token_pos_in_items_len, max_item_len_ptr)
        def kv_host():
            pages = (paged_kv_indptr[1:] - paged_kv_indptr[:-1]).tolist()
            last = paged_kv_last_page_len.tolist()
            return [0 if n <= 0 else (n - 1) * page_size + l for n, l in zip(pages, last)]

        self._plan_common(qo_indptr, kv_host, num_qo_heads, num_kv_heads, head_dim_qk, head_dim_vo, custom_mask,
                          packed_custom_mask, causal, pos_encoding_mode, window_left, logits_soft_cap, sm_scale,
                          rope_scale, rope_theta, non_blocking, o_data_type)
        check_int32(paged_kv_indptr=paged_kv_indptr, paged_kv_indices=paged_kv_indices,
                    paged_kv_last_page_len=paged_kv_last_page_len)
        if _validating(validate):
            validate_indptr("qo_indptr", qo_indptr, paged_kv_last_page_len.numel())
            validate_page_table(paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, None, page_size)
        self._kv_indptr = self._place("paged_kv_indptr_buf", paged_kv_indptr, non_blocking)
        self._kv_indices = self._place("paged_kv_indices_buf", paged_kv_indices, non_blocking, whole=True)
        self._kv_last = self._place("paged_kv_last_page_len_buf", paged_kv_last_page_len, non_blocking)
        self._page_size = page_size

    begin_forward = plan

    def run(self, q: torch.Tensor, paged_kv_cache: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]], *args,
            q_scale: Optional[float] = None, k_scale: Optional[float] = None, v_scale: Optional[float] = None,
            out: Optional[torch.Tensor] = None, lse: Optional[torch.Tensor] = None, return_lse: bool = False,
            enable_pdl: Optional[bool] = None, window_left: Optional[int] = None, sinks=None, kv_block_scales=None,
            skip_softmax_threshold_scale_factor: Optional[float] = None):
        """Attention of ``q [total_q, num_qo_heads, head_dim]`` over the planned requests' pages. Attention is
        exact: ``skip_softmax_threshold_scale_factor`` (upstream's licence to skip blocks of small weight) skips
        nothing here."""
        self._check_planned()
        reject(sinks=sinks, kv_block_scales=kv_block_scales)
        k_cache, v_cache, _, _ = split_paged_kv_cache(paged_kv_cache, self._kv_layout)
        sm, ks, vs = attention_scales(q.shape[-1], self._sm_scale, q_scale, k_scale, v_scale)
        o, s = torch.ops.flashinfer.batch_prefill_with_paged_kv_cache(
            q, self._qo_indptr, k_cache, v_cache, self._kv_indptr, self._kv_indices, self._kv_last, self._mask,
            self._mask_indptr, self._kv_layout, self._causal,
            self._window_left if window_left is None else window_left, self._logits_soft_cap, sm, ks, vs,
            *self._rope)
        return finish(o, s, out, lse, return_lse, self._o_dtype)

    def forward(self, q, paged_kv_cache, causal: bool = False, pos_encoding_mode: str = "NONE",
                use_fp16_qk_reduction: bool = False, k_scale=None, v_scale=None, window_left: int = -1,
                logits_soft_cap=None, sm_scale=None, rope_scale=None, rope_theta=None, return_lse: bool = False):
        """Legacy entry point: attention parameters given per call instead of to plan()."""
        self._set_attention(causal, pos_encoding_mode, window_left, logits_soft_cap, sm_scale, rope_scale, rope_theta)
        return self.run(q, paged_kv_cache, k_scale=k_scale, v_scale=v_scale, return_lse=return_lse)
