"""Decode beyond the ANCHORS table: fp8 e4m3 KV, HND, GQA 1, page size 1, head_dim 64 and 256, a logits soft cap of 50,
Gemma 2's, and ROPE_LLAMA applied in the kernel, over bf16 and fp8 KV (each at 1 x 8192 and 64 x 4096, bf16 queries,
pages in random order), ours vs upstream FlashInfer's CUDA-core and tensor-core paths, plus plan() + run() timed
eagerly (host work included, as a serving loop runs them). GB/s of KV read."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flashinfer  # noqa: E402
from common import main, paged_batch  # noqa: E402

SIZES = [(1, 8192), (64, 4096)]
BASE = dict(kv=torch.bfloat16, layout="NHD", hq=32, hkv=8, d=128, page=16, cap=None, rope=False)
VARIANTS = {
    "fp8 e4m3 KV": dict(kv=torch.float8_e4m3fn),
    "HND": dict(layout="HND"),
    "GQA 1 (Hq = Hkv = 32)": dict(hkv=32),
    "page size 1": dict(page=1),
    "head_dim 64": dict(d=64),
    "head_dim 256": dict(d=256),
    "logits soft cap 50": dict(cap=50.0),
    "ROPE_LLAMA": dict(rope=True),
    "ROPE_LLAMA, fp8 e4m3 KV": dict(rope=True, kv=torch.float8_e4m3fn),
}


def make(size, cfg, use_tensor_cores=False):
    b, n = size
    c = dict(BASE, **cfg)
    page, hkv, d = c["page"], c["hkv"], c["d"]
    cache, indptr, indices, last = paged_batch(b, n, page, hkv, d, c["kv"], c["layout"])
    q = torch.randn(b, c["hq"], d, dtype=torch.bfloat16, device="cuda")
    ws = torch.empty(128 * 2**20, dtype=torch.uint8, device="cuda")
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, c["layout"], use_tensor_cores=use_tensor_cores)
    plan = ((indptr, indices, last, c["hq"], hkv, d, page), dict(
        q_data_type=torch.bfloat16, kv_data_type=c["kv"], logits_soft_cap=c["cap"],
        pos_encoding_mode="ROPE_LLAMA" if c["rope"] else "NONE"))
    wrapper.plan(*plan[0], **plan[1])
    return dict(q=q, cache=cache, wrapper=wrapper, plan=plan)


def _run(s):
    return s["wrapper"].run(s["q"], s["cache"])


def _plan_run(s):
    s["wrapper"].plan(*s["plan"][0], **s["plan"][1])
    return s["wrapper"].run(s["q"], s["cache"])


def _bytes(cfg):
    c = dict(BASE, **cfg)
    elem = torch.empty(0, dtype=c["kv"]).element_size()
    return lambda size: size[0] * size[1] * c["hkv"] * c["d"] * 2 * elem


def _cases():
    cases = {}
    for name, cfg in VARIANTS.items():
        cases[name] = (SIZES, lambda size, cfg=cfg: make(size, cfg), {
            "ours": _run,
            "upstream": _run,
            "upstream_tc": (lambda size, cfg=cfg: make(size, cfg, use_tensor_cores=True), _run),
        }, _bytes(cfg))
    cases["plan()+run(), eager, ANCHORS shape"] = (SIZES, lambda size: make(size, {}), {
        "ours (eager plan+run)": _plan_run,
        "upstream (eager plan+run)": _plan_run,
        "upstream_tc (eager plan+run)": (lambda size: make(size, {}, use_tensor_cores=True), _plan_run),
    }, _bytes({}))
    return cases


if __name__ == "__main__":
    main(os.path.abspath(__file__), _cases(), ["ours", "ours (eager plan+run)"])
