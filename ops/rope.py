"""Rotary position embedding (FlashInfer 0.6 ``flashinfer.rope`` API) over ``torch.ops.flashinfer``.

q is ``[nnz, num_q_heads, head_dim]``, k ``[nnz, num_k_heads, head_dim]`` (strided views such as slices of a
packed qkv are read in place). Dims ``[0, rotary_dim)`` are rotated, the rest are kept. Angles are computed in
double precision per token, rotation in fp32. Positions are device tensors, so a compiled or graph-captured
step replays with new positions.

Ragged forms take ``indptr`` (int32 ``[B+1]``) and ``offsets`` (int32 ``[B]``): token ``t`` of request ``b`` is
at position ``offsets[b] + t - indptr[b]``; tokens outside ``[indptr[0], indptr[B])`` (padding) are left
unrotated. With a cos/sin cache, a position outside ``[0, max_seq_len)`` yields NaN in the rotated dims.
"""

from typing import Optional, Tuple

import torch

__all__ = [
    "apply_rope", "apply_rope_inplace", "apply_rope_pos_ids", "apply_rope_pos_ids_inplace",
    "apply_llama31_rope", "apply_llama31_rope_inplace", "apply_llama31_rope_pos_ids",
    "apply_llama31_rope_pos_ids_inplace", "apply_rope_with_cos_sin_cache", "apply_rope_with_cos_sin_cache_inplace",
]

_PLAIN = (False, 1.0, 4.0, 8192.0)  # llama31 flag and (unused) smoothing parameters of plain RoPE


def _rot(q: torch.Tensor, rotary_dim: Optional[int]) -> int:
    return q.shape[-1] if rotary_dim is None else rotary_dim


def _llama31(low_freq_factor, high_freq_factor, old_context_len):
    return (True, float(low_freq_factor), float(high_freq_factor), float(old_context_len))


def apply_rope(q, k, indptr, offsets, rotary_dim: Optional[int] = None, interleave: bool = False,
               rope_scale: float = 1, rope_theta: float = 1e4) -> Tuple[torch.Tensor, torch.Tensor]:
    """RoPE on a ragged batch; returns new ``(q_rope, k_rope)``."""
    return torch.ops.flashinfer.apply_rope(q, k, indptr, offsets, _rot(q, rotary_dim), interleave,
                                           float(rope_scale), float(rope_theta), *_PLAIN)


def apply_rope_inplace(q, k, indptr, offsets, rotary_dim: Optional[int] = None, interleave: bool = False,
                       rope_scale: float = 1, rope_theta: float = 1e4) -> None:
    """RoPE on a ragged batch, in place."""
    torch.ops.flashinfer.apply_rope_inplace(q, k, indptr, offsets, _rot(q, rotary_dim), interleave,
                                            float(rope_scale), float(rope_theta), *_PLAIN)


def apply_rope_pos_ids(q, k, pos_ids, rotary_dim: Optional[int] = None, interleave: bool = False,
                       rope_scale: float = 1, rope_theta: float = 1e4) -> Tuple[torch.Tensor, torch.Tensor]:
    """RoPE with an explicit position per token; returns new ``(q_rope, k_rope)``."""
    return torch.ops.flashinfer.apply_rope_pos_ids(q, k, pos_ids, _rot(q, rotary_dim), interleave,
                                                   float(rope_scale), float(rope_theta), *_PLAIN)


def apply_rope_pos_ids_inplace(q, k, pos_ids, rotary_dim: Optional[int] = None, interleave: bool = False,
                               rope_scale: float = 1, rope_theta: float = 1e4) -> None:
    """RoPE with an explicit position per token, in place."""
    torch.ops.flashinfer.apply_rope_pos_ids_inplace(q, k, pos_ids, _rot(q, rotary_dim), interleave,
                                                    float(rope_scale), float(rope_theta), *_PLAIN)


def apply_llama31_rope(q, k, indptr, offsets, rotary_dim: Optional[int] = None, interleave: bool = False,
                       rope_scale: float = 8, rope_theta: float = 5e5, low_freq_factor: float = 1,
                       high_freq_factor: float = 4, old_context_len: int = 8192):
    """Llama 3.1 RoPE on a ragged batch; returns new ``(q_rope, k_rope)``."""
    return torch.ops.flashinfer.apply_rope(q, k, indptr, offsets, _rot(q, rotary_dim), interleave,
                                           float(rope_scale), float(rope_theta),
                                           *_llama31(low_freq_factor, high_freq_factor, old_context_len))


def apply_llama31_rope_inplace(q, k, indptr, offsets, rotary_dim: Optional[int] = None, interleave: bool = False,
                               rope_scale: float = 8, rope_theta: float = 5e5, low_freq_factor: float = 1,
                               high_freq_factor: float = 4, old_context_len: int = 8192) -> None:
    """Llama 3.1 RoPE on a ragged batch, in place."""
    torch.ops.flashinfer.apply_rope_inplace(q, k, indptr, offsets, _rot(q, rotary_dim), interleave,
                                            float(rope_scale), float(rope_theta),
                                            *_llama31(low_freq_factor, high_freq_factor, old_context_len))


def apply_llama31_rope_pos_ids(q, k, pos_ids, rotary_dim: Optional[int] = None, interleave: bool = False,
                               rope_scale: float = 8, rope_theta: float = 5e5, low_freq_factor: float = 1,
                               high_freq_factor: float = 4, old_context_len: int = 8192):
    """Llama 3.1 RoPE with explicit positions; returns new ``(q_rope, k_rope)``."""
    return torch.ops.flashinfer.apply_rope_pos_ids(q, k, pos_ids, _rot(q, rotary_dim), interleave,
                                                   float(rope_scale), float(rope_theta),
                                                   *_llama31(low_freq_factor, high_freq_factor, old_context_len))


def apply_llama31_rope_pos_ids_inplace(q, k, pos_ids, rotary_dim: Optional[int] = None, interleave: bool = False,
                                       rope_scale: float = 8, rope_theta: float = 5e5, low_freq_factor: float = 1,
                                       high_freq_factor: float = 4, old_context_len: int = 8192) -> None:
    """Llama 3.1 RoPE with explicit positions, in place."""
    torch.ops.flashinfer.apply_rope_pos_ids_inplace(q, k, pos_ids, _rot(q, rotary_dim), interleave,
                                                    float(rope_scale), float(rope_theta),
                                                    *_llama31(low_freq_factor, high_freq_factor, old_context_len))


def apply_rope_with_cos_sin_cache(positions, query, key, head_size: int, cos_sin_cache,
                                  is_neox: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """vLLM/SGLang-style RoPE from a float32 ``[max_seq_len, rotary_dim]`` cache (cos half, then sin half).

    ``query``/``key`` are ``[nnz, heads * head_size]`` or ``[nnz, heads, head_size]``; ``is_neox=False``
    rotates interleaved pairs. Returns new ``(query, key)`` of the input shapes."""
    return torch.ops.flashinfer.apply_rope_with_cos_sin_cache(positions, query, key, head_size, cos_sin_cache,
                                                              is_neox)


def apply_rope_with_cos_sin_cache_inplace(positions, query, key, head_size: int, cos_sin_cache,
                                          is_neox: bool = True) -> None:
    """In-place :func:`apply_rope_with_cos_sin_cache`."""
    torch.ops.flashinfer.apply_rope_with_cos_sin_cache_inplace(positions, query, key, head_size, cos_sin_cache,
                                                               is_neox)
