"""Batch prefill over a paged KV cache: ours vs upstream FlashInfer (fa2 and fa3 backends) vs SDPA on dense
tensors. Causal, bf16, Hq 32, Hkv 8, D 128, page 16, qo_len = kv_len (ANCHORS.md's prefill table), plus
non-causal and head_dim 64. The figure in parentheses is TFLOP/s (causal FLOPs = 2 * b * H * L^2 * D).
The head_dim 256 table is the main one's 4 x 4096 causal at D 256. The ragged table runs the ragged wrapper
(k, v [total, Hkv, D]) on the paged table's uniform batches and on one batch of mixed lengths.
The fp8 table reads an e4m3 cache (bf16 queries); the soft-cap table caps the logits at 50 (Gemma 2's
logits_soft_cap: a tanh per score); the rope table rotates q and k inside the kernel
(pos_encoding_mode="ROPE_LLAMA"; upstream fa2 does the same, its fa3 backend has no RoPE). The append table is a
chunk of qo tokens against a cached prefix (kv_len > qo_len, causal aligned bottom-right): few query tiles over a
long KV, where KV splits decide the speed.
BENCH_TABLES (benchmarks/common.py) picks tables by name prefix, any case, e.g. BENCH_TABLES="ragged,fp8"."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flashinfer  # noqa: E402
from common import main, paged_batch  # noqa: E402

HQ, HKV, PAGE = 32, 8, 16
DT = torch.bfloat16
SIZES = [(1, 8192, 128, True), (4, 4096, 128, True), (16, 1024, 128, True), (4, 4096, 128, False),
         (4, 4096, 64, True)]

D256 = [(4, 4096, 256, True)]
# Ragged KV, causal, qo_len = kv_len per request, head_dim 128: name -> the requests' lengths.
RAGGED = {"1 x 8192": [8192], "16 x 1024": [1024] * 16,
          "mixed 4096..1 (9 requests)": [4096, 2048, 1024, 512, 256, 128, 96, 40, 1]}
# fp8 KV (e4m3, scales 1): (batch, len, head_dim, causal), qo_len = kv_len.
FP8 = [(1, 8192, 128, True), (4, 4096, 128, True)]
# logits_soft_cap=50: (batch, len, head_dim, causal), qo_len = kv_len.
SOFTCAP = [(1, 8192, 128, True), (4, 4096, 128, True)]
# pos_encoding_mode="ROPE_LLAMA": (batch, len, head_dim, causal), qo_len = kv_len.
ROPE = [(1, 8192, 128, True), (4, 4096, 128, True)]
# (batch, qo_len, kv_len, head_dim): a chunked-prefill step or a prefix-cached prompt.
APPEND = [(1, 128, 16384, 128), (1, 512, 16384, 128), (4, 256, 8192, 128), (8, 64, 4096, 128)]


def make(size, backend=None, **kw):
    """qo_len = kv_len = n; kw: _make's options (kv_dtype, pos_encoding_mode, logits_soft_cap)."""
    b, n, d, causal = size
    return _make(b, n, n, d, causal, backend, **kw)


def make_fp8(size, backend=None):
    return make(size, backend, kv_dtype=torch.float8_e4m3fn)


def make_softcap(size, backend=None):
    return make(size, backend, logits_soft_cap=50.0)


def make_rope(size, backend=None):
    return make(size, backend, pos_encoding_mode="ROPE_LLAMA")


def make_ragged(name, backend=None, d=128):
    lens = RAGGED[name]
    indptr = torch.tensor([0] + lens).cumsum(0).to(torch.int32).cuda()
    q, k, v = (torch.randn(sum(lens), h, d, dtype=DT, device="cuda") for h in (HQ, HKV, HKV))
    ws = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    kw = {} if backend is None else dict(backend=backend)
    wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(ws, "NHD", **kw)
    wrapper.plan(indptr, indptr, HQ, HKV, d, causal=True, q_data_type=DT)
    return dict(q=q, k=k, v=v, wrapper=wrapper)


def _run_ragged(s):
    return s["wrapper"].run(s["q"], s["k"], s["v"])


def _ragged_flops_k(name):
    return sum(2 * HQ * n * n * 128 for n in RAGGED[name]) / 1e3  # causal: half of 4 * H * L^2 * D per request


def make_append(size, backend=None):
    b, qo_len, kv_len, d = size
    return _make(b, qo_len, kv_len, d, True, backend)


def _make(b, qo_len, kv_len, d, causal, backend, kv_dtype=DT, pos_encoding_mode="NONE", logits_soft_cap=None):
    cache, indptr, indices, last = paged_batch(b, kv_len, PAGE, HKV, d, kv_dtype)
    qo = torch.arange(0, b * qo_len + 1, qo_len, dtype=torch.int32, device="cuda")
    q = torch.randn(b * qo_len, HQ, d, dtype=DT, device="cuda")
    ws = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    kw = {} if backend is None else dict(backend=backend)
    wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD", **kw)
    wrapper.plan(qo, indptr, indices, last, HQ, HKV, d, PAGE, causal=causal, q_data_type=DT, kv_data_type=kv_dtype,
                 pos_encoding_mode=pos_encoding_mode, logits_soft_cap=logits_soft_cap)
    return dict(q=q, cache=cache, wrapper=wrapper)


def _run(s):
    return s["wrapper"].run(s["q"], s["cache"])


def make_sdpa(size):
    b, n, d, causal = size
    q, k, v = (torch.randn(b, h, n, d, dtype=DT, device="cuda") for h in (HQ, HKV, HKV))
    return dict(q=q, k=k, v=v, causal=causal)


def _sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def fn(s):
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(s["q"], s["k"], s["v"], is_causal=s["causal"],
                                                                    enable_gqa=True)
    return fn


def _flops_k(size):
    b, n, d, causal = size
    flops = 4 * b * HQ * n * n * d * (0.5 if causal else 1.0)
    return flops / 1e3  # common.py divides by us * 1e3: the figure comes out in TFLOP/s


def _append_flops_k(size):
    b, qo_len, kv_len, d = size
    scores = qo_len * kv_len - qo_len * (qo_len - 1) // 2  # query i sees kv_len - qo_len + i + 1 keys
    return 4 * b * HQ * scores * d / 1e3


def _cases():
    from torch.nn.attention import SDPBackend
    return {"prefill (b, len, d, causal)": (SIZES, make, {
        "ours": _run,
        "upstream fa2": (lambda size: make(size, "fa2"), _run),
        "upstream fa3": (lambda size: make(size, "fa3"), _run),
        "sdpa flash (dense)": (make_sdpa, _sdpa(SDPBackend.FLASH_ATTENTION)),
        "sdpa cudnn (dense)": (make_sdpa, _sdpa(SDPBackend.CUDNN_ATTENTION)),
    }, _flops_k), "prefill head_dim 256 (b, len, d, causal)": (D256, make, {
        "ours": _run,
        "upstream fa2": (lambda size: make(size, "fa2"), _run),
        "upstream fa3": (lambda size: make(size, "fa3"), _run),
        "sdpa flash (dense)": (make_sdpa, _sdpa(SDPBackend.FLASH_ATTENTION)),
        "sdpa cudnn (dense)": (make_sdpa, _sdpa(SDPBackend.CUDNN_ATTENTION)),
    }, _flops_k), "ragged KV, causal, d 128": (list(RAGGED), make_ragged, {
        "ours": _run_ragged,
        "upstream fa2": (lambda name: make_ragged(name, "fa2"), _run_ragged),
        "upstream fa3": (lambda name: make_ragged(name, "fa3"), _run_ragged),
    }, _ragged_flops_k), "fp8 e4m3 KV (b, len, d, causal)": (FP8, make_fp8, {
        "ours": _run,
        "upstream fa2": (lambda size: make_fp8(size, "fa2"), _run),
        "upstream fa3": (lambda size: make_fp8(size, "fa3"), _run),
    }, _flops_k), "soft cap 50 (b, len, d, causal)": (SOFTCAP, make_softcap, {
        "ours": _run,
        "upstream fa2": (lambda size: make_softcap(size, "fa2"), _run),
        "upstream fa3": (lambda size: make_softcap(size, "fa3"), _run),
    }, _flops_k), "ROPE_LLAMA (b, len, d, causal)": (ROPE, make_rope, {
        "ours": _run,
        "upstream fa2": (lambda size: make_rope(size, "fa2"), _run),
    }, _flops_k), "append (b, qo_len, kv_len, d)": (APPEND, make_append, {
        "ours": _run,
        "upstream fa2": (lambda size: make_append(size, "fa2"), _run),
        "upstream fa3": (lambda size: make_append(size, "fa3"), _run),
    }, _append_flops_k)}


if __name__ == "__main__":
    main(os.path.abspath(__file__), _cases(), ["ours", "sdpa flash (dense)", "sdpa cudnn (dense)"], unit="TFLOP/s")
