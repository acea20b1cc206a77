"""Batch decode over a paged KV cache: ours vs upstream FlashInfer (CUDA-core and tensor-core paths) vs SDPA on a
contiguous KV cache. bf16, Hq 32, Hkv 8, D 128, page 16, pages in random order (ANCHORS.md's decode table).
TB/s counts the KV bytes read once."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flashinfer  # noqa: E402
from common import main, paged_batch  # noqa: E402

HQ, HKV, D, PAGE = 32, 8, 128, 16
SIZES = [(1, 8192), (16, 4096), (64, 4096), (128, 8192), (32, 32768), (256, 2048)]
DT = torch.bfloat16


def make(size, use_tensor_cores=False, **wrapper_kw):
    b, n = size
    cache, indptr, indices, last = paged_batch(b, n, PAGE, HKV, D, DT)
    q = torch.randn(b, HQ, D, dtype=DT, device="cuda")
    ws = torch.empty(128 * 2**20, dtype=torch.uint8, device="cuda")
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=use_tensor_cores, **wrapper_kw)
    wrapper.plan(indptr, indices, last, HQ, HKV, D, PAGE, q_data_type=DT, kv_data_type=DT)
    return dict(q=q, cache=cache, wrapper=wrapper)


def make_sdpa(size):
    b, n = size
    return dict(q=torch.randn(b, HQ, 1, D, dtype=DT, device="cuda"),
                k=torch.randn(b, HKV, n, D, dtype=DT, device="cuda"),
                v=torch.randn(b, HKV, n, D, dtype=DT, device="cuda"))


def _sdpa(s):
    return torch.nn.functional.scaled_dot_product_attention(s["q"], s["k"], s["v"], enable_gqa=True)


def _bytes(size):
    b, n = size
    return b * n * HKV * D * 2 * 2


def _run(s):
    return s["wrapper"].run(s["q"], s["cache"])


CASES = {
    "decode": (SIZES, make, {
        "ours": _run,
        "ours cuda-core": (lambda size: make(size, backend="cuda_core"), _run),
        "upstream": _run,
        "upstream_tc": (lambda size: make(size, use_tensor_cores=True), _run),
        "sdpa (contiguous KV)": (make_sdpa, _sdpa),
    }, _bytes),
}

if __name__ == "__main__":
    main(os.path.abspath(__file__), CASES, ["ours", "ours cuda-core", "sdpa (contiguous KV)"])
