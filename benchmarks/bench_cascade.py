"""Attention-state merges: ours vs upstream FlashInfer vs the same math under torch.compile.
v bf16 [seq, 32 heads, 128], s float32 [seq, 32]. GB/s counts bytes read + written once."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flashinfer  # ours, or upstream's in the peer process  # noqa: E402
from common import main  # noqa: E402

H, D, DT = 32, 128, torch.bfloat16
PAIR_SIZES = [1, 128, 2048, 16384]  # seq
MANY_SIZES = [(64, 16), (64, 128), (256, 16), (2048, 8), (8192, 4)]  # (seq, num_states): decode splits, prefill pieces


def _merge(v, s):
    """States stacked on dim 1, merged in float32 (what the kernels compute)."""
    m = s.amax(1, keepdim=True)
    w = torch.exp2(s - m)
    den = w.sum(1)
    out = (w.unsqueeze(-1) * v.float()).sum(1) / den.unsqueeze(-1)
    return out.to(v.dtype), m.squeeze(1) + torch.log2(den)


def _pair(va, sa, vb, sb):
    return _merge(torch.stack([va, vb], 1), torch.stack([sa, sb], 1))


def _pair_in_place(v, s, vo, so):
    out, lse = _pair(v, s, vo, so)
    v.copy_(out)
    s.copy_(lse)


_pair_c, _in_place_c, _merge_c = (torch.compile(f, dynamic=False) for f in (_pair, _pair_in_place, _merge))


def make_pair(seq):
    return dict(va=torch.randn(seq, H, D, dtype=DT, device="cuda"), vb=torch.randn(seq, H, D, dtype=DT, device="cuda"),
                sa=torch.randn(seq, H, device="cuda") * 4, sb=torch.randn(seq, H, device="cuda") * 4)


def make_many(size):
    seq, n = size
    return dict(v=torch.randn(seq, n, H, D, dtype=DT, device="cuda"), s=torch.randn(seq, n, H, device="cuda") * 4)


def pair_bytes(seq):
    return 3 * seq * H * (D * 2 + 4)


CASES = {
    "merge_state": (PAIR_SIZES, make_pair, {
        "ours": lambda s: flashinfer.merge_state(s["va"], s["sa"], s["vb"], s["sb"]),
        "upstream": lambda s: flashinfer.merge_state(s["va"], s["sa"], s["vb"], s["sb"]),
        "torch.compile": lambda s: _pair_c(s["va"], s["sa"], s["vb"], s["sb"]),
    }, pair_bytes),
    "merge_state_in_place": (PAIR_SIZES, make_pair, {
        "ours": lambda s: flashinfer.merge_state_in_place(s["va"], s["sa"], s["vb"], s["sb"]),
        "upstream": lambda s: flashinfer.merge_state_in_place(s["va"], s["sa"], s["vb"], s["sb"]),
        "torch.compile": lambda s: _in_place_c(s["va"], s["sa"], s["vb"], s["sb"]),
    }, pair_bytes),
    "merge_states": (MANY_SIZES, make_many, {
        "ours": lambda s: flashinfer.merge_states(s["v"], s["s"]),
        "upstream": lambda s: flashinfer.merge_states(s["v"], s["s"]),
        "torch.compile": lambda s: _merge_c(s["v"], s["s"]),
    }, lambda size: (size[1] + 1) * size[0] * H * (D * 2 + 4)),
}

if __name__ == "__main__":
    main(os.path.abspath(__file__), CASES, ["ours", "torch.compile"])
