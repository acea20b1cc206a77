"""Decode attention over a paged KV cache (FlashInfer 0.6 ``flashinfer.decode`` API).

``plan()`` only records metadata (moved to the device without blocking, or copied into the fixed buffers of a
CUDA-graph wrapper); ``run()`` is one call of ``torch.ops.flashinfer.batch_decode_with_paged_kv_cache``, so
Dynamo traces through it and a captured step replays with new lengths and page tables. How the KV of each
request is split across blocks is decided on the device from the page tables.

Two kernels compute decode on CUDA, each for every case: a tensor-core one (the query heads of a GQA group are the
rows of an mma tile; fp8 K/V go through ldmatrix as bytes and are converted in registers, except fp8 K under
ROPE_LLAMA, which is converted and rotated into an f16 tile) and a CUDA-core one. ``backend="auto"`` (the default,
also what ``use_tensor_cores=False`` means) takes tensor cores, since they are faster at every group size;
``use_tensor_cores=True`` asks for them explicitly; ``backend="cuda_core"`` forces CUDA cores. All give the same
result within rounding.
"""

from typing import Optional, Tuple, Union

import torch

from .page import _validating, split_paged_kv_cache, validate_page_table
from .wrapper import AttentionWrapper, attention_scales, check_heads, check_int32, finish, reject, reject_jit, rope_args

__all__ = ["single_decode_with_kv_cache", "BatchDecodeWithPagedKVCacheWrapper",
           "CUDAGraphBatchDecodeWithPagedKVCacheWrapper"]

def _backend(use_tensor_cores: bool, backend: str) -> str:
    # Upstream's backend names ("fa2", "trtllm-gen", ...) pick among its own kernels; here they mean "auto".
    if backend in ("tensor_core", "cuda_core"):
        return backend
    return "tensor_core" if use_tensor_cores else "auto"


def _decode(q, k_cache, v_cache, indptr, indices, last_page_len, kv_layout, rope, window_left, logits_soft_cap,
            sm_scale, q_scale, k_scale, v_scale, backend="auto"):
    """One call of the decode op; rope is rope_args()'s (rope_llama, rope_scale, rope_theta)."""
    sm, ks, vs = attention_scales(q.shape[-1], sm_scale, q_scale, k_scale, v_scale)
    rope_llama, rope_scale, rope_theta = rope
    return torch.ops.flashinfer.batch_decode_with_paged_kv_cache(
        q, k_cache, v_cache, indptr, indices, last_page_len, kv_layout, rope_llama, window_left,
        0.0 if logits_soft_cap is None else float(logits_soft_cap), sm, ks, vs, rope_scale, rope_theta, backend)


def single_decode_with_kv_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_layout: str = "NHD",
                                pos_encoding_mode: str = "NONE", use_tensor_cores: bool = False,
                                q_scale: Optional[float] = None, k_scale: Optional[float] = None,
                                v_scale: Optional[float] = None, window_left: int = -1,
                                logits_soft_cap: Optional[float] = None, sm_scale: Optional[float] = None,
                                rope_scale: Optional[float] = None, rope_theta: Optional[float] = None,
                                return_lse: bool = False) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """One query ``q [num_qo_heads, head_dim]`` against ``k``/``v`` ``[kv_len, num_kv_heads, head_dim]`` (NHD) or
    ``[num_kv_heads, kv_len, head_dim]`` (HND). Returns ``out`` (and ``lse``, log base 2) like upstream."""
    rope = rope_args(pos_encoding_mode, rope_scale, rope_theta)
    kv_len = k.shape[0] if kv_layout == "NHD" else k.shape[1]
    if kv_len == 0:  # no page of size 0: answer the empty attention directly
        out = torch.zeros_like(q)
        lse = torch.full(q.shape[:1], float("-inf"), dtype=torch.float32, device=q.device)
        return (out, lse) if return_lse else out
    # The whole sequence as one page of kv_len entries; the page table is built on the device.
    indptr = torch.arange(2, dtype=torch.int32, device=q.device)
    indices = torch.zeros(1, dtype=torch.int32, device=q.device)
    last = torch.full((1,), kv_len, dtype=torch.int32, device=q.device)
    out, lse = _decode(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), indptr, indices, last, kv_layout, rope,
                       window_left, logits_soft_cap, sm_scale, q_scale, k_scale, v_scale,
                       _backend(use_tensor_cores, "auto"))
    return (out[0], lse[0]) if return_lse else out[0]


class BatchDecodeWithPagedKVCacheWrapper(AttentionWrapper):
    """Decode for a batch of requests over a paged KV cache, with upstream's constructor, ``plan`` and ``run``.

    With ``use_cuda_graph=True`` the page tables are copied into the fixed buffers given to the constructor, so a
    decode step captured once replays after each ``plan`` with new lengths and pages."""

    _graph_buffers = ("paged_kv_indptr_buffer", "paged_kv_indices_buffer", "paged_kv_last_page_len_buffer")

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD", use_cuda_graph: bool = False,
                 use_tensor_cores: bool = False, paged_kv_indptr_buffer: Optional[torch.Tensor] = None,
                 paged_kv_indices_buffer: Optional[torch.Tensor] = None,
                 paged_kv_last_page_len_buffer: Optional[torch.Tensor] = None, backend: str = "auto",
                 jit_args=None) -> None:
        reject_jit(jit_args)
        super().__init__(float_workspace_buffer, kv_layout, use_cuda_graph,
                         dict(paged_kv_indptr_buffer=paged_kv_indptr_buffer,
                              paged_kv_indices_buffer=paged_kv_indices_buffer,
                              paged_kv_last_page_len_buffer=paged_kv_last_page_len_buffer))
        self._use_tensor_cores = use_tensor_cores
        self._backend = _backend(use_tensor_cores, backend)

    @property
    def use_tensor_cores(self) -> bool:
        return self._use_tensor_cores

    def plan(self, indptr: torch.Tensor, indices: torch.Tensor, last_page_len: torch.Tensor, num_qo_heads: int,
             num_kv_heads: int, head_dim: int, page_size: int, pos_encoding_mode: str = "NONE",
             window_left: int = -1, logits_soft_cap: Optional[float] = None,
             q_data_type: Optional[Union[str, torch.dtype]] = "float16",
             kv_data_type: Optional[Union[str, torch.dtype]] = None,
             o_data_type: Optional[Union[str, torch.dtype]] = None,
             data_type: Optional[Union[str, torch.dtype]] = None, sm_scale: Optional[float] = None,
             rope_scale: Optional[float] = None, rope_theta: Optional[float] = None, non_blocking: bool = True,
             block_tables: Optional[torch.Tensor] = None, seq_lens: Optional[torch.Tensor] = None,
             fixed_split_size: Optional[int] = None, disable_split_kv: bool = False, *,
             validate: Optional[bool] = None) -> None:
        """Records the batch's page tables and attention parameters; never waits for the device.

        ``validate=True`` (or FLASHINFER_VALIDATE=1) checks the page tables on the host first (a sync)."""
        check_heads(num_qo_heads, num_kv_heads, head_dim)
        check_int32(indptr=indptr, indices=indices, last_page_len=last_page_len)
        if _validating(validate):
            # The cache is not known until run(): page ids are only checked to be >= 0 here.
            validate_page_table(indptr, indices, last_page_len, None, page_size)
        self._indptr = self._place("paged_kv_indptr_buffer", indptr, non_blocking)
        self._indices = self._place("paged_kv_indices_buffer", indices, non_blocking, whole=True)
        self._last = self._place("paged_kv_last_page_len_buffer", last_page_len, non_blocking)
        self._num_qo_heads, self._num_kv_heads, self._head_dim = num_qo_heads, num_kv_heads, head_dim
        self._page_size = page_size
        self._rope = rope_args(pos_encoding_mode, rope_scale, rope_theta)
        self._window_left = window_left
        self._logits_soft_cap = logits_soft_cap
        self._sm_scale = sm_scale
        self._planned = True

    begin_forward = plan

    def run(self, q: torch.Tensor, paged_kv_cache: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]], *args,
            q_scale: Optional[float] = None, k_scale: Optional[float] = None, v_scale: Optional[float] = None,
            out: Optional[torch.Tensor] = None, lse: Optional[torch.Tensor] = None, return_lse: bool = False,
            enable_pdl: Optional[bool] = None, window_left: Optional[int] = None, sinks=None,
            q_len_per_req: Optional[int] = 1, skip_softmax_threshold_scale_factor=None, kv_block_scales=None):
        """Attention of ``q [batch, num_qo_heads, head_dim]`` over the planned requests. Returns ``out`` (and
        ``lse`` ``[batch, num_qo_heads]``, log base 2, when ``return_lse``). Attention is exact:
        ``skip_softmax_threshold_scale_factor`` (upstream's licence to skip blocks of small weight) skips nothing
        here."""
        self._check_planned()
        reject(sinks=sinks, kv_block_scales=kv_block_scales)
        if (q_len_per_req or 1) != 1:
            raise NotImplementedError("q_len_per_req > 1 is not supported")
        k_cache, v_cache, _, _ = split_paged_kv_cache(paged_kv_cache, self._kv_layout)
        o, s = _decode(q, k_cache, v_cache, self._indptr, self._indices, self._last, self._kv_layout, self._rope,
                       self._window_left if window_left is None else window_left, self._logits_soft_cap,
                       self._sm_scale, q_scale, k_scale, v_scale, self._backend)
        return finish(o, s, out, lse, return_lse)

    def run_return_lse(self, q, paged_kv_cache, *args, **kwargs):
        return self.run(q, paged_kv_cache, *args, return_lse=True, **kwargs)

    def forward(self, q, paged_kv_cache, pos_encoding_mode: str = "NONE", q_scale=None, k_scale=None, v_scale=None,
                window_left: int = -1, logits_soft_cap=None, sm_scale=None, rope_scale=None, rope_theta=None,
                return_lse: bool = False):
        """Legacy entry point: attention parameters given per call instead of to plan()."""
        self._rope = rope_args(pos_encoding_mode, rope_scale, rope_theta)
        self._logits_soft_cap, self._sm_scale = logits_soft_cap, sm_scale
        return self.run(q, paged_kv_cache, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale, window_left=window_left,
                        return_lse=return_lse)

    def forward_return_lse(self, q, paged_kv_cache, *args, **kwargs):
        return self.forward(q, paged_kv_cache, *args, return_lse=True, **kwargs)


class CUDAGraphBatchDecodeWithPagedKVCacheWrapper(BatchDecodeWithPagedKVCacheWrapper):
    """The CUDA-graph form: fixed page-table buffers given up front."""

    def __init__(self, workspace_buffer: torch.Tensor, indptr_buffer: torch.Tensor, indices_buffer: torch.Tensor,
                 last_page_len_buffer: torch.Tensor, kv_layout: str = "NHD", use_tensor_cores: bool = False) -> None:
        super().__init__(workspace_buffer, kv_layout, use_cuda_graph=True, use_tensor_cores=use_tensor_cores,
                         paged_kv_indptr_buffer=indptr_buffer, paged_kv_indices_buffer=indices_buffer,
                         paged_kv_last_page_len_buffer=last_page_len_buffer)
