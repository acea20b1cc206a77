"""Gated activations: ours vs upstream FlashInfer vs the same math under torch.compile.
bf16 [tokens, 2 * d] -> [tokens, d]. GB/s counts bytes read + written once."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flashinfer  # noqa: E402
from common import main  # noqa: E402

SIZES = [(t, 14336) for t in (1, 128, 1024, 16384)] + [(4096, 4096)]
DT = torch.bfloat16


def _silu(x):
    d = x.shape[-1] // 2
    return (torch.nn.functional.silu(x[..., :d].float()) * x[..., d:].float()).to(x.dtype)


def _gelu_tanh(x):
    d = x.shape[-1] // 2
    return (torch.nn.functional.gelu(x[..., :d].float(), approximate="tanh") * x[..., d:].float()).to(x.dtype)


_silu_c, _gelu_c = torch.compile(_silu, dynamic=False), torch.compile(_gelu_tanh, dynamic=False)


def make(size):
    t, d = size
    return dict(x=torch.randn(t, 2 * d, dtype=DT, device="cuda"))


CASES = {
    "silu_and_mul": (SIZES, make, {
        "ours": lambda s: flashinfer.silu_and_mul(s["x"]),
        "upstream": lambda s: flashinfer.silu_and_mul(s["x"]),
        "torch.compile": lambda s: _silu_c(s["x"]),
    }, lambda size: 3 * size[0] * size[1] * 2),
    "gelu_tanh_and_mul": (SIZES[-2:], make, {
        "ours": lambda s: flashinfer.gelu_tanh_and_mul(s["x"]),
        "upstream": lambda s: flashinfer.gelu_tanh_and_mul(s["x"]),
        "torch.compile": lambda s: _gelu_c(s["x"]),
    }, lambda size: 3 * size[0] * size[1] * 2),
}

if __name__ == "__main__":
    main(os.path.abspath(__file__), CASES, ["ours", "torch.compile"])
