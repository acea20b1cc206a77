"""What every attention wrapper (decode, prefill paged and ragged) shares: the workspace, the KV layout, the
plan-before-run rule and, under CUDA graphs, the fixed buffers that plan() copies its tables into so that a
captured run reads the new ones on replay."""

import math
from typing import Dict, Optional, Tuple

import torch

_HEAD_DIMS = (64, 128, 256)


def check_heads(num_qo_heads: int, num_kv_heads: int, head_dim: int) -> None:
    if head_dim not in _HEAD_DIMS:
        raise ValueError(f"unsupported head_dim {head_dim}: supported 64, 128, 256")
    if num_kv_heads <= 0 or num_qo_heads % num_kv_heads != 0:
        raise ValueError(f"num_qo_heads ({num_qo_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")


def check_int32(**tables: torch.Tensor) -> None:
    for name, t in tables.items():
        if t.dtype != torch.int32:
            raise ValueError(f"{name} must be int32, got {t.dtype}")


def rope_args(pos_encoding_mode: str, rope_scale: Optional[float],
              rope_theta: Optional[float]) -> Tuple[bool, float, float]:
    """The attention ops' (rope_llama, rope_scale, rope_theta): whether pos_encoding_mode asks for RoPE inside
    attention ("ROPE_LLAMA") or not ("NONE"), with upstream's defaults for the two others (1 and 1e4)."""
    if pos_encoding_mode not in ("NONE", "ROPE_LLAMA"):
        raise ValueError(f'pos_encoding_mode must be "NONE" or "ROPE_LLAMA", got "{pos_encoding_mode}"')
    return (pos_encoding_mode == "ROPE_LLAMA", 1.0 if rope_scale is None else float(rope_scale),
            1e4 if rope_theta is None else float(rope_theta))


def attention_scales(head_dim, sm_scale, q_scale, k_scale, v_scale) -> Tuple[float, float, float]:
    """(softmax scale with q_scale folded in, k_scale, v_scale) with upstream's defaults: 1/sqrt(head_dim), 1, 1."""
    scale = (1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale) * (1.0 if q_scale is None else q_scale)
    return float(scale), 1.0 if k_scale is None else float(k_scale), 1.0 if v_scale is None else float(v_scale)


def reject(**given) -> None:
    """Raises for an upstream argument this library does not implement, when the caller set it (None, the
    default, is accepted, so code that spells out upstream's defaults runs unchanged)."""
    for name, value in given.items():
        if value is not None:
            raise NotImplementedError(f"{name} is not supported (got {type(value).__name__})")


def reject_jit(jit_args, jit_kwargs=None) -> None:
    if jit_args is not None or jit_kwargs is not None:
        raise NotImplementedError("jit_args / jit_kwargs select a JIT-compiled variant; this library's kernels are "
                                  "compiled ahead of time and take no JIT module")


def as_dtype(x) -> Optional[torch.dtype]:
    """A torch.dtype from upstream's spellings of one: a dtype, its name ("float16", "bfloat16"), or None."""
    if x is None or isinstance(x, torch.dtype):
        return x
    dtype = getattr(torch, str(x), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"not a dtype: {x!r}")
    return dtype


def into(result: torch.Tensor, buffer: Optional[torch.Tensor], name: str) -> torch.Tensor:
    """Upstream's optional output buffers: `result` copied into `buffer` and the buffer returned, when given. The
    buffer must match the result exactly: copy_ would otherwise cast or broadcast without a word."""
    if buffer is None:
        return result
    if buffer.shape != result.shape or buffer.dtype != result.dtype or buffer.device != result.device:
        def describe(t):
            return f"{str(t.dtype).removeprefix('torch.')} tensor of shape {list(t.shape)} on {t.device}"
        raise ValueError(f"{name} must be a {describe(result)}, got a {describe(buffer)}")
    buffer.copy_(result)
    return buffer


def finish(o, s, out, lse, return_lse, o_dtype=None):
    """Upstream's return convention: out (cast to o_dtype, copied into `out` when given) and, with return_lse,
    the log2 LSE (copied into `lse` when given)."""
    if o_dtype is not None and o.dtype != o_dtype:
        o = o.to(o_dtype)
    o, s = into(o, out, "out"), into(s, lse, "lse")
    return (o, s) if return_lse else o


class AttentionWrapper:
    # Buffers a subclass needs under use_cuda_graph=True (int32, given to the constructor by these names).
    _graph_buffers: Tuple[str, ...] = ()

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str, use_cuda_graph: bool,
                 buffers: Dict[str, Optional[torch.Tensor]]) -> None:
        if kv_layout not in ("NHD", "HND"):
            raise ValueError(f'kv_layout must be "NHD" or "HND", got "{kv_layout}"')
        self._float_workspace_buffer = float_workspace_buffer
        self.device = float_workspace_buffer.device
        self._kv_layout = kv_layout
        self._use_cuda_graph = use_cuda_graph
        self._bufs = buffers
        if use_cuda_graph:
            for name in self._graph_buffers:
                buf = buffers.get(name)
                if buf is None or buf.dtype != torch.int32:
                    raise ValueError(f"use_cuda_graph=True needs {name} as an int32 tensor")
        self._planned = False

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return self._use_cuda_graph

    def reset_workspace_buffer(self, float_workspace_buffer: torch.Tensor, int_workspace_buffer=None) -> None:
        self._float_workspace_buffer = float_workspace_buffer

    def _place(self, name: str, t: torch.Tensor, non_blocking: bool, whole: bool = False) -> torch.Tensor:
        """t on the device: under CUDA graphs copied into the fixed buffer `name` (returning the view of its first
        rows, or the whole buffer when `whole`), else moved without blocking."""
        buf = self._bufs.get(name) if self._use_cuda_graph else None
        if buf is None:
            return t.to(self.device, non_blocking=non_blocking)
        if t.shape[0] > buf.shape[0]:
            raise ValueError(f"{name} holds {buf.shape[0]} entries; this batch needs {t.shape[0]}")
        buf[: t.shape[0]].copy_(t, non_blocking=non_blocking)
        return buf if whole else buf[: t.shape[0]]

    def _check_planned(self) -> None:
        if not self._planned:
            raise RuntimeError(f"{type(self).__name__}.run() called before plan()")

    def end_forward(self) -> None:
        pass
