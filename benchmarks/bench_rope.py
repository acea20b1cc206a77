"""RoPE on q [tokens, 32, 128] and k [tokens, 8, 128] (Llama-3-8B heads), bf16, in place and out of place:
ours vs upstream FlashInfer vs the same math under torch.compile. GB/s counts q and k read + written once."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flashinfer  # noqa: E402
from common import main  # noqa: E402

HQ, HK, D = 32, 8, 128
SIZES = [1, 128, 1024, 16384]
DT = torch.bfloat16


def _rope(q, k, pos, theta=1e4):
    freq = theta ** (-torch.arange(0, D, 2, device=q.device, dtype=torch.float32) / D)
    ang = pos[:, None].float() * freq
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]

    def rot(x):
        a, b = x[..., : D // 2].float(), x[..., D // 2 :].float()
        return torch.cat([a * cos - b * sin, b * cos + a * sin], -1).to(x.dtype)

    return rot(q), rot(k)


def _rope_cache(pos, q, k, cache):
    cs = cache[pos]
    cos, sin = cs[:, None, : D // 2], cs[:, None, D // 2 :]

    def rot(x):
        x = x.view(x.shape[0], -1, D)
        a, b = x[..., : D // 2].float(), x[..., D // 2 :].float()
        return torch.cat([a * cos - b * sin, b * cos + a * sin], -1).to(x.dtype).flatten(1)

    return rot(q), rot(k)


_rope_c, _rope_cache_c = torch.compile(_rope, dynamic=False), torch.compile(_rope_cache, dynamic=False)


def make(t):
    pos = torch.randint(0, 8192, (t,), device="cuda", dtype=torch.int32)
    freq = 1e4 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = torch.arange(16384, dtype=torch.float64)[:, None] * freq
    return dict(q=torch.randn(t, HQ, D, dtype=DT, device="cuda"), k=torch.randn(t, HK, D, dtype=DT, device="cuda"),
                pos=pos, pos64=pos.long(), cache=torch.cat([ang.cos(), ang.sin()], -1).float().cuda())


def _bytes(t):
    return 2 * t * (HQ + HK) * D * 2


CASES = {
    "rope_pos_ids_inplace": (SIZES, make, {
        "ours": lambda s: flashinfer.apply_rope_pos_ids_inplace(s["q"], s["k"], s["pos"]),
        "upstream": lambda s: flashinfer.apply_rope_pos_ids_inplace(s["q"], s["k"], s["pos"]),
    }, _bytes),
    "rope_pos_ids": (SIZES, make, {
        "ours": lambda s: flashinfer.apply_rope_pos_ids(s["q"], s["k"], s["pos"]),
        "upstream": lambda s: flashinfer.apply_rope_pos_ids(s["q"], s["k"], s["pos"]),
        "torch.compile": lambda s: _rope_c(s["q"], s["k"], s["pos"]),
    }, _bytes),
    "rope_cos_sin_cache_inplace": (SIZES, make, {
        "ours": lambda s: flashinfer.apply_rope_with_cos_sin_cache_inplace(
            s["pos64"], s["q"].view(s["q"].shape[0], -1), s["k"].view(s["k"].shape[0], -1), D, s["cache"]),
        "upstream": lambda s: flashinfer.apply_rope_with_cos_sin_cache_inplace(
            s["pos64"], s["q"].view(s["q"].shape[0], -1), s["k"].view(s["k"].shape[0], -1), D, s["cache"]),
        "torch.compile": lambda s: _rope_cache_c(s["pos64"], s["q"].view(s["q"].shape[0], -1),
                                                 s["k"].view(s["k"].shape[0], -1), s["cache"]),
    }, _bytes),
}

if __name__ == "__main__":
    main(os.path.abspath(__file__), CASES, ["ours", "torch.compile"])
