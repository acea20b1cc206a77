import pytest
import torch

import flashinfer
import reference as ref
from helpers import logical_pages, page_table, paged_cache


def _tables(lens, page_size, num_pages, device, seed=0):
    """Page tables for requests of the given KV lengths, pages drawn in random order from num_pages."""
    indptr, last = page_table(lens, page_size)
    perm = torch.randperm(num_pages, generator=torch.Generator().manual_seed(seed))[: int(indptr[-1])]
    return perm.to(torch.int32).to(device), indptr.to(device), last.to(device)


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("form", ["5d", "tuple"])
@pytest.mark.parametrize("page_size", [1, 5, 16])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_append_paged_kv_cache(device, layout, form, page_size, dtype):
    heads, dim = 4, 64
    old = [0, 7, 16, 1, 33]          # lengths before the append (crossing page boundaries)
    new = [3, 0, 17, 1, 2]           # tokens appended per request (0: request untouched)
    lens = [o + n for o, n in zip(old, new)]
    indices, indptr, last = _tables(lens, page_size, 64, device)
    cache = paged_cache(64, page_size, heads, dim, dtype, device, layout, form)
    expect_k, expect_v = (t.clone() for t in logical_pages(cache, layout))

    append_indptr = torch.tensor([0] + torch.tensor(new).cumsum(0).tolist(), dtype=torch.int32, device=device)
    nnz = sum(new)
    seq_lens = flashinfer.get_seq_lens(indptr, last, page_size)
    assert seq_lens.tolist() == lens
    batch_indices, positions = flashinfer.get_batch_indices_positions(append_indptr, seq_lens, nnz)
    assert batch_indices.tolist() == [b for b, n in enumerate(new) for _ in range(n)]
    assert positions.tolist() == [o + j for o, n in zip(old, new) for j in range(n)]

    # K/V as strided views of a packed projection output, as a model produces them.
    kv = torch.randn(nnz, 3 * heads, dim, dtype=dtype, device=device)
    key, value = kv[:, heads : 2 * heads], kv[:, 2 * heads :]
    flashinfer.append_paged_kv_cache(key, value, batch_indices, positions, cache, indices, indptr, last, layout)
    ref.append_paged_kv_cache(expect_k, expect_v, key, value, batch_indices, positions, indices, indptr, last)
    got_k, got_v = logical_pages(cache, layout)
    assert torch.equal(got_k, expect_k) and torch.equal(got_v, expect_v)


def test_append_skips_bad_metadata_and_padding(device):
    """Out-of-range requests, positions and page ids, and padding tokens, write nothing."""
    page_size, heads, dim = 4, 2, 64
    cache = torch.randn(6, 2, page_size, heads, dim, device=device)
    before = cache.clone()
    indices = torch.tensor([2, 9, -1, 1], dtype=torch.int32, device=device)  # 9 and -1 are not pages
    indptr = torch.tensor([0, 2, 4], dtype=torch.int32, device=device)
    last = torch.tensor([3, 4], dtype=torch.int32, device=device)             # lengths 7 and 8
    # Tokens: kept; past request 0's length; page id -1; kept; no request 2; padding (-1); negative position;
    # page id 9 (there are 6 pages); padding.
    batch = torch.tensor([0, 0, 1, 1, 2, -1, 0, 0, -1], dtype=torch.int32, device=device)
    pos = torch.tensor([1, 7, 0, 5, 0, 0, -3, 4, -1], dtype=torch.int32, device=device)
    key = torch.randn(9, heads, dim, device=device)
    value = torch.randn(9, heads, dim, device=device)
    flashinfer.append_paged_kv_cache(key, value, batch, pos, cache, indices, indptr, last)
    expect = before.clone()
    expect[2, 0, 1], expect[2, 1, 1] = key[0], value[0]  # request 0, position 1: page 2, entry 1
    expect[1, 0, 1], expect[1, 1, 1] = key[3], value[3]  # request 1, position 5: page 1, entry 1
    assert torch.equal(cache, expect)


def test_batch_indices_positions_padding(device):
    append_indptr = torch.tensor([0, 2, 5], dtype=torch.int32, device=device)
    seq_lens = torch.tensor([10, 3], dtype=torch.int32, device=device)
    b, p = flashinfer.get_batch_indices_positions(append_indptr, seq_lens, 7)
    assert b.tolist() == [0, 0, 1, 1, 1, -1, -1]
    assert p.tolist() == [8, 9, 0, 1, 2, -1, -1]
    b, p = flashinfer.get_batch_indices_positions(append_indptr, seq_lens, 0)
    assert b.shape == (0,) and p.shape == (0,)
    # upstream's optional output buffers: filled and returned
    bufs = [torch.full((7,), 99, dtype=torch.int32, device=device) for _ in range(2)]
    b, p = flashinfer.get_batch_indices_positions(append_indptr, seq_lens, 7, *bufs)
    assert b is bufs[0] and p is bufs[1]
    assert b.tolist() == [0, 0, 1, 1, 1, -1, -1] and p.tolist() == [8, 9, 0, 1, 2, -1, -1]


def test_get_seq_lens_empty_requests(device):
    indptr = torch.tensor([0, 0, 3, 3, 4], dtype=torch.int32, device=device)
    last = torch.tensor([0, 2, 0, 16], dtype=torch.int32, device=device)
    assert flashinfer.get_seq_lens(indptr, last, 16).tolist() == [0, 34, 0, 16]


def test_append_compiles_in_place(device):
    """Append under torch.compile(fullgraph=True): the cache is updated in place, no copy of it."""
    from torch._inductor.utils import run_and_get_code

    page_size, heads, dim = 16, 2, 64
    cache = torch.randn(8, 2, page_size, heads, dim, device=device)
    indices, indptr, last = _tables([5, 20], page_size, 8, device)
    key, value = torch.randn(3, heads, dim, device=device), torch.randn(3, heads, dim, device=device)
    b = torch.tensor([0, 1, 1], dtype=torch.int32, device=device)
    p = torch.tensor([4, 18, 19], dtype=torch.int32, device=device)

    def step(cache, key, value):
        flashinfer.append_paged_kv_cache(key, value, b, p, cache, indices, indptr, last)

    expect = cache.clone()
    step(expect, key, value)
    torch._dynamo.reset()
    _, codes = run_and_get_code(torch.compile(step, fullgraph=True), cache, key, value)
    assert torch.equal(cache, expect)
    code = "\n".join(codes)
    assert "torch.ops.flashinfer.append_paged_kv_cache.default(" in code
    for copy in ("clone", "copy_"):
        assert copy not in code, f"generated code holds a {copy} (of the cache?)"


@pytest.mark.parametrize("bad,msg", [
    (dict(indptr=[0, 3, 2]), r"kv_indptr must be non-decreasing: kv_indptr\[2\]=2 < kv_indptr\[1\]=3"),
    (dict(indptr=[0, 2, 9]), r"kv_indptr\[-1\]=9 exceeds the 4 entries of kv_indices"),
    (dict(indices=[0, 1, 7, 3]), r"kv_indices\[2\]=7 is not a page of the cache \(0\.\.5\)"),
    (dict(last=[0, 4]), r"kv_last_page_len\[0\]=0 must be in \[1, page_size=4\]"),
    (dict(positions=[0, 8]), r"appended token 1 \(batch_indices=1, positions=8\) does not land inside"),
])
def test_append_validate_names_the_problem(bad, msg):
    cache = torch.zeros(6, 2, 4, 1, 64)
    t = dict(indptr=[0, 2, 4], indices=[0, 1, 2, 3], last=[4, 4], positions=[0, 1])
    t.update(bad)
    i32 = lambda v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
    key = torch.randn(2, 1, 64)
    with pytest.raises(ValueError, match=msg):
        flashinfer.append_paged_kv_cache(key, key, i32([0, 1]), i32(t["positions"]), cache, i32(t["indices"]),
                                         i32(t["indptr"]), i32(t["last"]), validate=True)
    assert not cache.any(), "a rejected call wrote to the cache"
    # Without validation the same call is memory-safe: bad entries are skipped, good ones written.
    flashinfer.append_paged_kv_cache(key, key, i32([0, 1]), i32(t["positions"]), cache, i32(t["indices"]),
                                     i32(t["indptr"]), i32(t["last"]))
