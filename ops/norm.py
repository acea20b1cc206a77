"""Normalization layers (FlashInfer 0.6 ``flashinfer.norm`` API) over ``torch.ops.flashinfer``.

Inputs are ``[..., hidden]`` with a contiguous last dim; other strides (row-sliced batches, heads sliced out
of a packed projection) are read in place. Statistics are computed in fp32. ``enable_pdl`` is accepted for
compatibility: on sm_90 and newer every kernel of the library is launched with programmatic dependent launch
(it overlaps the previous kernel's tail and waits for its results before touching memory, so the results do not
depend on it), whatever the argument says.
"""

from typing import Optional

import torch

__all__ = ["rmsnorm", "fused_add_rmsnorm", "gemma_rmsnorm", "gemma_fused_add_rmsnorm", "layernorm"]


def rmsnorm(input: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, out: Optional[torch.Tensor] = None,
            enable_pdl: Optional[bool] = None) -> torch.Tensor:
    """``out = input / sqrt(mean(input**2, -1) + eps) * weight``; written into ``out`` when given."""
    if out is None:
        return torch.ops.flashinfer.rmsnorm(input, weight, eps, False)
    torch.ops.flashinfer.rmsnorm_out(out, input, weight, eps, False)
    return out


def gemma_rmsnorm(input: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                  out: Optional[torch.Tensor] = None, enable_pdl: Optional[bool] = None) -> torch.Tensor:
    """Gemma-style RMSNorm: scales by ``weight + 1``."""
    if out is None:
        return torch.ops.flashinfer.rmsnorm(input, weight, eps, True)
    torch.ops.flashinfer.rmsnorm_out(out, input, weight, eps, True)
    return out


def fused_add_rmsnorm(input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                      enable_pdl: Optional[bool] = None) -> None:
    """In place: ``residual += input``, then ``input = rmsnorm(residual)`` (normalising the unrounded sum)."""
    torch.ops.flashinfer.fused_add_rmsnorm(input, residual, weight, eps, False)


def gemma_fused_add_rmsnorm(input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                            enable_pdl: Optional[bool] = None) -> None:
    """Gemma-style :func:`fused_add_rmsnorm` (scales by ``weight + 1``)."""
    torch.ops.flashinfer.fused_add_rmsnorm(input, residual, weight, eps, True)


def layernorm(input: torch.Tensor, gemma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm with affine parameters (``gemma`` is the scale, named as upstream); they may be the input's
    dtype or float32."""
    return torch.ops.flashinfer.layernorm(input, gemma, beta, eps)
