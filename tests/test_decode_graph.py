"""A decode step (append the new token's K/V, then attend) captured once in a CUDA graph and replayed while
every request grows across page and split boundaries: the page tables change between replays (plan() copies
them into the wrapper's fixed buffers) and each replay must equal eager."""

import pytest
import torch

import flashinfer
from helpers import page_table

B, HKV, GROUP, D, PAGE, MAX_PAGES = 4, 2, 4, 128, 16, 16


def _tables(lens, page_order):
    """Page tables giving request b the first pages of page_order[b]."""
    indptr, last = page_table(lens, PAGE)
    counts = (indptr[1:] - indptr[:-1]).tolist()
    indices = torch.cat([page_order[b, :c] for b, c in enumerate(counts)])
    return indptr, indices.to(torch.int32), last


@pytest.mark.gpu
@pytest.mark.parametrize("steps", [60])
def test_decode_graph_replay_as_requests_grow(steps):
    dev = "cuda"
    torch.manual_seed(0)
    num_pages = B * MAX_PAGES
    cache = torch.randn(num_pages, 2, PAGE, HKV, D, dtype=torch.bfloat16, device=dev)
    page_order = torch.randperm(num_pages).view(B, MAX_PAGES)  # each request's pages, scattered
    indptr_buf = torch.zeros(B + 1, dtype=torch.int32, device=dev)
    indices_buf = torch.zeros(num_pages, dtype=torch.int32, device=dev)
    last_buf = torch.zeros(B, dtype=torch.int32, device=dev)
    wrapper = flashinfer.CUDAGraphBatchDecodeWithPagedKVCacheWrapper(
        torch.empty(1, device=dev), indptr_buf, indices_buf, last_buf)
    q = torch.zeros(B, HKV * GROUP, D, dtype=torch.bfloat16, device=dev)
    k_new = torch.zeros(B, HKV, D, dtype=torch.bfloat16, device=dev)
    v_new = torch.zeros_like(k_new)
    batch_indices = torch.arange(B, dtype=torch.int32, device=dev)
    positions = torch.zeros(B, dtype=torch.int32, device=dev)

    def step():
        flashinfer.append_paged_kv_cache(k_new, v_new, batch_indices, positions, cache, indices_buf,
                                         indptr_buf, last_buf)
        return wrapper.run(q, cache)

    def prepare(lens):
        wrapper.plan(*_tables(lens, page_order), HKV * GROUP, HKV, D, PAGE)
        positions.copy_(torch.tensor([n - 1 for n in lens], dtype=torch.int32))
        q.copy_(torch.randn_like(q))
        k_new.copy_(torch.randn_like(k_new))
        v_new.copy_(torch.randn_like(v_new))

    lens = [1, 15, 16, 100]
    prepare(lens)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()

    for _ in range(steps):
        lens = [n + 1 for n in lens]  # every request grows by one token, crossing page boundaries
        prepare(lens)
        before = cache.clone()
        graph.replay()
        replayed, after = out.clone(), cache.clone()
        cache.copy_(before)
        expect = step()  # eager, same inputs
        torch.testing.assert_close(replayed, expect, rtol=0, atol=0)
        assert torch.equal(after, cache)


@pytest.mark.gpu
def test_decode_on_a_side_stream_matches_default_stream():
    dev = "cuda"
    torch.manual_seed(1)
    cache = torch.randn(48, 2, PAGE, HKV, D, dtype=torch.bfloat16, device=dev)
    indptr, indices, last = _tables([40, 7, 200], torch.randperm(48).view(3, 16))
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1, device=dev))
    wrapper.plan(indptr.to(dev), indices.to(dev), last.to(dev), HKV * GROUP, HKV, D, PAGE)
    q = torch.randn(3, HKV * GROUP, D, dtype=torch.bfloat16, device=dev)
    expect = wrapper.run(q, cache)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = wrapper.run(q, cache)
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(got, expect, rtol=0, atol=0)


@pytest.mark.gpu
def test_decode_reduce_overhead_as_requests_grow():
    """The decode step under torch.compile(mode="reduce-overhead"): cudagraph trees capture it once and replay it
    while the requests grow (new page tables planned into the same buffers); every step equals eager."""
    dev = "cuda"
    torch.manual_seed(2)
    num_pages = B * MAX_PAGES
    cache = torch.randn(num_pages, 2, PAGE, HKV, D, dtype=torch.bfloat16, device=dev)
    page_order = torch.randperm(num_pages).view(B, MAX_PAGES)
    bufs = [torch.zeros(B + 1, dtype=torch.int32, device=dev), torch.zeros(num_pages, dtype=torch.int32, device=dev),
            torch.zeros(B, dtype=torch.int32, device=dev)]
    wrapper = flashinfer.CUDAGraphBatchDecodeWithPagedKVCacheWrapper(torch.empty(1, device=dev), *bufs)
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, c: wrapper.run(q, c), mode="reduce-overhead", fullgraph=True)
    lens = [3, 15, 16, 90]
    for _ in range(30):
        lens = [n + 1 for n in lens]
        wrapper.plan(*_tables(lens, page_order), HKV * GROUP, HKV, D, PAGE)
        q = torch.randn(B, HKV * GROUP, D, dtype=torch.bfloat16, device=dev)
        got = compiled(q, cache).clone()
        torch.testing.assert_close(got, wrapper.run(q, cache), rtol=0, atol=0)


@pytest.mark.gpu
def test_decode_split_counters_on_concurrent_streams():
    """Split launches on two streams at once, and a graph captured on a third and replayed alongside them, each
    count arrivals in counters of their own, which every launch leaves zeroed: 20 interleaved rounds all equal
    the eager results bit for bit."""
    dev = "cuda"
    torch.manual_seed(1)
    lens = [4000, 1, 700]  # few requests over a long KV: the launcher splits each request's KV many ways
    indptr, last = page_table(lens, PAGE)
    num_pages = int(indptr[-1])
    cache = torch.randn(num_pages, 2, PAGE, HKV, D, dtype=torch.bfloat16, device=dev)
    indices = torch.randperm(num_pages).to(torch.int32)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1, device=dev))
    wrapper.plan(indptr.to(dev), indices.to(dev), last.to(dev), HKV * GROUP, HKV, D, PAGE)
    qs = [torch.randn(len(lens), HKV * GROUP, D, dtype=torch.bfloat16, device=dev) for _ in range(3)]
    expect = [wrapper.run(q, cache) for q in qs]
    streams = [torch.cuda.Stream() for _ in range(3)]
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=streams[2]):
        graph_out = wrapper.run(qs[2], cache)
    got = {0: [], 1: [], 2: []}
    for _ in range(20):
        for i in range(2):
            with torch.cuda.stream(streams[i]):
                got[i].append(wrapper.run(qs[i], cache))
        graph.replay()
        got[2].append(graph_out.clone())
    torch.cuda.synchronize()
    for i in range(3):
        for out in got[i]:
            torch.testing.assert_close(out, expect[i], rtol=0, atol=0)
