"""RMSNorm / fused add + RMSNorm / LayerNorm: ours vs upstream FlashInfer vs the same math under torch.compile.
bf16, tokens x hidden. GB/s counts bytes read + written once."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flashinfer  # ours, or upstream's in the peer process  # noqa: E402
from common import main  # noqa: E402

SIZES = [(t, h) for h in (4096, 8192) for t in (1, 128, 1024, 16384)]
DT = torch.bfloat16


def _rms(x, w, eps=1e-6):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)


def _fused(x, r, w, eps=1e-6):
    s = x.float() + r.float()
    r.copy_(s.to(r.dtype))
    x.copy_(_rms(s, w, eps))


def _ln(x, g, b, eps=1e-6):
    return torch.nn.functional.layer_norm(x.float(), x.shape[-1:], g, b, eps).to(x.dtype)


_rms_c, _fused_c, _ln_c = (torch.compile(f, dynamic=False) for f in (_rms, _fused, _ln))


def make(size):
    t, h = size
    return dict(x=torch.randn(t, h, dtype=DT, device="cuda"), r=torch.randn(t, h, dtype=DT, device="cuda"),
                w=torch.randn(h, dtype=DT, device="cuda"), g=torch.randn(h, device="cuda"),
                b=torch.randn(h, device="cuda"))


CASES = {
    "rmsnorm": (SIZES, make, {
        "ours": lambda s: flashinfer.rmsnorm(s["x"], s["w"]),
        "upstream": lambda s: flashinfer.rmsnorm(s["x"], s["w"]),
        "torch.compile": lambda s: _rms_c(s["x"], s["w"]),
    }, lambda size: 2 * size[0] * size[1] * 2),
    "fused_add_rmsnorm": (SIZES, make, {
        "ours": lambda s: flashinfer.fused_add_rmsnorm(s["x"], s["r"], s["w"]),
        "upstream": lambda s: flashinfer.fused_add_rmsnorm(s["x"], s["r"], s["w"]),
        "torch.compile": lambda s: _fused_c(s["x"], s["r"], s["w"]),
    }, lambda size: 4 * size[0] * size[1] * 2),
    "layernorm": (SIZES, make, {
        "ours": lambda s: flashinfer.layernorm(s["x"], s["g"], s["b"]),
        "upstream": lambda s: flashinfer.layernorm(s["x"], s["g"], s["b"]),
        "torch.compile": lambda s: _ln_c(s["x"], s["g"], s["b"]),
    }, lambda size: 2 * size[0] * size[1] * 2),
}

if __name__ == "__main__":
    main(os.path.abspath(__file__), CASES, ["ours", "torch.compile"])
