"""Gated activations (FlashInfer 0.6 ``flashinfer.activation`` API): ``[..., 2d] -> [..., d]``,
``act(input[..., :d]) * input[..., d:]``, computed in fp32. ``enable_pdl`` is accepted for compatibility;
programmatic dependent launch is always on for sm_90 and newer (see ``flashinfer.norm``)."""

from typing import Optional

import torch

__all__ = ["silu_and_mul", "gelu_and_mul", "gelu_tanh_and_mul"]


def _gated(name: str, input: torch.Tensor, out: Optional[torch.Tensor]) -> torch.Tensor:
    if out is None:
        return getattr(torch.ops.flashinfer, name)(input)
    getattr(torch.ops.flashinfer, name + "_out")(out, input)
    return out


def silu_and_mul(input: torch.Tensor, out: Optional[torch.Tensor] = None,
                 enable_pdl: Optional[bool] = None) -> torch.Tensor:
    """SwiGLU: ``silu(gate) * up``."""
    return _gated("silu_and_mul", input, out)


def gelu_and_mul(input: torch.Tensor, out: Optional[torch.Tensor] = None,
                 enable_pdl: Optional[bool] = None) -> torch.Tensor:
    """GeGLU with exact (erf) GELU."""
    return _gated("gelu_and_mul", input, out)


def gelu_tanh_and_mul(input: torch.Tensor, out: Optional[torch.Tensor] = None,
                      enable_pdl: Optional[bool] = None) -> torch.Tensor:
    """GeGLU with tanh-approximated GELU."""
    return _gated("gelu_tanh_and_mul", input, out)
