"""Whatever the page tables say, the kernels stay inside the cache.

Each case embeds the cache (or the ragged K/V) in a larger buffer whose pages before and after are NaN, then
hands the kernels random metadata: indptr entries that run backwards or past the page table, page ids below zero
and past the last page, last-page lengths of zero or past the page size, requests and positions that do not
exist. With the default `validate=False` nothing is checked on the host, so this is the kernels' own guarding.
A read outside the cache would bring a NaN into the output; a write outside it would change the NaN pages; a
crash or an illegal address fails the test outright. Attention only reads the cache, so it must come back
unchanged, canaries and all.
"""

import pytest
import torch

import flashinfer
from helpers import page_table

SEEDS = range(6)
GUARD = 2  # NaN pages on each side of the cache


def _guarded(shape, dtype, device, generator):
    """A random tensor of `shape` that is a view into a buffer with GUARD NaN slices before and after it along
    dim 0. Returns (view, whole buffer)."""
    whole = torch.full((shape[0] + 2 * GUARD, *shape[1:]), float("nan"))
    whole[GUARD:GUARD + shape[0]] = torch.randn(shape, generator=generator)
    whole = whole.to(dtype).to(device)
    return whole[GUARD:GUARD + shape[0]], whole


def _assert_canaries(whole, n):
    nan = lambda t: torch.isnan(t.float()).all().item()  # noqa: E731
    assert nan(whole[:GUARD]) and nan(whole[GUARD + n:]), "a kernel wrote outside the cache"


def _garbage_table(g, batch, num_pages, page_size, device):
    """indptr [batch + 1] that may run backwards and past the page table; page ids in [-3, num_pages + 3);
    last-page lengths in [-1, page_size + 2]."""
    num_indices = int(torch.randint(0, 3 * batch + 1, (1,), generator=g))
    indptr = torch.randint(-2, num_indices + 3, (batch + 1,), generator=g, dtype=torch.int32)
    indices = torch.randint(-3, num_pages + 3, (num_indices,), generator=g, dtype=torch.int32)
    last = torch.randint(-1, page_size + 3, (batch,), generator=g, dtype=torch.int32)
    return indptr.to(device), indices.to(device), last.to(device)


def _assert_unchanged(whole, before):
    assert torch.equal(whole.isnan(), before.isnan()) and torch.equal(whole.nan_to_num(), before.nan_to_num()), \
        "attention changed the cache"


def _assert_same_as_cpu(run, args, out, lse):
    """On CUDA, the kernels read the garbage the way the CPU implementation does (the masked and empty requests
    are the same ones): outputs agree to two ulps of the 16-bit output, LSEs are -inf in the same places."""
    if out.device.type == "cpu":
        return
    cpu_out, cpu_lse = run(*(a.cpu() for a in args))
    torch.testing.assert_close(out.cpu().float(), cpu_out.float(), rtol=2e-2, atol=2e-2)
    assert torch.equal(torch.isinf(lse.cpu()), torch.isinf(cpu_lse)), "empty rows differ between CUDA and CPU"
    finite = torch.isfinite(cpu_lse)
    torch.testing.assert_close(lse.cpu()[finite], cpu_lse[finite], rtol=1e-3, atol=1e-3)


def _assert_finite(out, lse):
    assert not torch.isnan(out.float()).any(), "NaN in the output: a kernel read outside the cache"
    assert not torch.isnan(lse).any() and not (lse == float("inf")).any(), "lse must be finite or -inf"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("backend", ["tensor_core", "cuda_core"])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_decode_garbage_metadata(device, seed, backend, layout):
    g = torch.Generator().manual_seed(seed)
    batch, num_pages, page, hkv, group, d = 5, 6, 16 if seed % 2 else 3, 2, 4, 64
    shape = (num_pages, 2, page, hkv, d) if layout == "NHD" else (num_pages, 2, hkv, page, d)
    cache, whole = _guarded(shape, torch.bfloat16, device, g)
    before = whole.clone()
    table = _garbage_table(g, batch, num_pages, page, device)
    q = torch.randn(batch, hkv * group, d, generator=g).to(torch.bfloat16).to(device)

    def run(q, cache, indptr, indices, last):
        wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1, device=q.device), kv_layout=layout,
                                                                backend=backend)
        wrapper.plan(indptr, indices, last, hkv * group, hkv, d, page, q_data_type=torch.bfloat16)
        return wrapper.run(q, cache, return_lse=True)

    out, lse = run(q, cache, *table)
    _assert_finite(out, lse)
    _assert_unchanged(whole, before)
    _assert_same_as_cpu(run, (q, cache, *table), out, lse)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("causal", [False, True])
def test_prefill_paged_garbage_kv_metadata(device, seed, causal):
    """A sound query layout over a garbage page table: every query row is written, from cache rows only."""
    g = torch.Generator().manual_seed(seed)
    batch, num_pages, page, hkv, group, d = 4, 6, 16 if seed % 2 else 5, 2, 2, 64
    cache, whole = _guarded((num_pages, 2, page, hkv, d), torch.float16, device, g)
    before = whole.clone()
    table = _garbage_table(g, batch, num_pages, page, device)
    qo_indptr, _ = page_table([3, 0, 70, 1], 1)  # query lengths 3, 0, 70, 1 (indptr of 1-token "pages")
    q = torch.randn(int(qo_indptr[-1]), hkv * group, d, generator=g).to(torch.float16).to(device)

    def run(q, qo_indptr, cache, kv_indptr, indices, last):
        wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(torch.empty(1, device=q.device))
        wrapper.plan(qo_indptr, kv_indptr, indices, last, hkv * group, hkv, d, page, causal=causal,
                     q_data_type=torch.float16)
        return wrapper.run(q, cache, return_lse=True)

    args = (q, qo_indptr.to(device), cache, *table)
    out, lse = run(*args)
    _assert_finite(out, lse)
    _assert_unchanged(whole, before)
    _assert_same_as_cpu(run, args, out, lse)


@pytest.mark.parametrize("seed", SEEDS)
def test_prefill_ragged_garbage_kv_indptr(device, seed):
    g = torch.Generator().manual_seed(seed)
    batch, nnz_kv, hkv, group, d = 4, 50, 2, 2, 64
    k, k_whole = _guarded((nnz_kv, hkv, d), torch.bfloat16, device, g)
    v, v_whole = _guarded((nnz_kv, hkv, d), torch.bfloat16, device, g)
    kv_indptr = torch.randint(-5, nnz_kv + 6, (batch + 1,), generator=g, dtype=torch.int32).to(device)
    qo_indptr, _ = page_table([2, 17, 0, 40], 1)
    q = torch.randn(int(qo_indptr[-1]), hkv * group, d, generator=g).to(torch.bfloat16).to(device)

    def run(q, qo_indptr, k, v, kv_indptr):
        wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(1, device=q.device))
        wrapper.plan(qo_indptr, kv_indptr, hkv * group, hkv, d, causal=bool(seed % 2), q_data_type=torch.bfloat16)
        return wrapper.run(q, k, v, return_lse=True)

    args = (q, qo_indptr.to(device), k, v, kv_indptr)
    out, lse = run(*args)
    _assert_finite(out, lse)
    _assert_canaries(k_whole, nnz_kv)
    _assert_canaries(v_whole, nnz_kv)
    _assert_same_as_cpu(run, args, out, lse)


@pytest.mark.parametrize("seed", SEEDS)
def test_prefill_garbage_query_layout(device, seed):
    """qo_indptr that runs backwards or past q: the launch completes and the cache is untouched. Which output
    rows get written is not specified for such a table, so the output is not checked."""
    g = torch.Generator().manual_seed(seed)
    batch, num_pages, page, hkv, d = 3, 4, 8, 1, 64
    cache, whole = _guarded((num_pages, 2, page, hkv, d), torch.float16, device, g)
    before = whole.clone()
    kv_indptr, indices, last = _garbage_table(g, batch, num_pages, page, device)
    nnz = 20
    qo_indptr = torch.randint(-4, nnz + 8, (batch + 1,), generator=g, dtype=torch.int32).to(device)
    q = torch.randn(nnz, hkv, d, generator=g).to(torch.float16).to(device)
    wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(torch.empty(1, device=device))
    wrapper.plan(qo_indptr, kv_indptr, indices, last, hkv, hkv, d, page, causal=True, q_data_type=torch.float16)
    wrapper.run(q, cache)
    if device == "cuda":
        torch.cuda.synchronize()
    _assert_unchanged(whole, before)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_append_garbage_metadata(device, seed, layout):
    g = torch.Generator().manual_seed(seed)
    batch, num_pages, page, hkv, d, nnz = 4, 6, 4, 2, 64, 24
    shape = (num_pages, 2, page, hkv, d) if layout == "NHD" else (num_pages, 2, hkv, page, d)
    cache, whole = _guarded(shape, torch.float16, device, g)
    kv_indptr, indices, last = _garbage_table(g, batch, num_pages, page, device)
    batch_indices = torch.randint(-2, batch + 2, (nnz,), generator=g, dtype=torch.int32).to(device)
    positions = torch.randint(-3, 3 * page * 2, (nnz,), generator=g, dtype=torch.int32).to(device)
    key = torch.randn(nnz, hkv, d, generator=g).to(torch.float16).to(device)
    value = torch.randn(nnz, hkv, d, generator=g).to(torch.float16).to(device)
    flashinfer.append_paged_kv_cache(key, value, batch_indices, positions, cache, indices, kv_indptr, last,
                                     kv_layout=layout)
    _assert_canaries(whole, num_pages)
    assert not torch.isnan(cache.float()).any(), "the cache itself holds no NaN, before or after"
