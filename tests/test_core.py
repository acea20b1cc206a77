"""The stateful layer: PagedKVCache with BatchDecodeWithPagedKVCache / BatchPrefillWithRaggedKVCache."""

import math

import pytest
import torch

import flashinfer as fi
import reference as ref
from helpers import assert_matches


def test_quickstart(device):
    """The documented quickstart, unchanged except for the device."""
    dtype = torch.float16
    num_layers, num_heads, kv_heads, head_dim, page_size, max_total_seq_len = 1, 32, 32, 128, 16, 2048
    kv_cache = fi.core.PagedKVCache(num_layers=num_layers, num_kv_heads=kv_heads, head_dim=head_dim,
                                    page_size=page_size, max_num_pages=max_total_seq_len // page_size, device=device,
                                    data_type=dtype)
    decode_wrapper = fi.BatchDecodeWithPagedKVCache(kv_cache=kv_cache, num_heads=num_heads, kv_heads=kv_heads,
                                                    head_dim=head_dim, sm_scale=1.0 / (head_dim**0.5), dtype=dtype)
    prefill_len = 50
    seq_idx_in_batch = kv_cache.begin_forward(prefill_len)
    kv_cache.end_forward(seq_idx_in_batch, prefill_len)
    query_decode = torch.randn(1, 1, num_heads, head_dim, dtype=dtype, device=device)
    output = decode_wrapper.decode(query_decode)
    assert output.shape == (1, 1, num_heads, head_dim)
    assert torch.equal(output, torch.zeros_like(output))  # nothing was written: V is zero
    from flashinfer import BatchDecodeWithPagedKVCache, BatchPrefillWithRaggedKVCache  # noqa: F401
    from flashinfer.core import PagedKVCache  # noqa: F401


LAYERS, HKV, GROUP, D, PAGE = 2, 2, 2, 64, 16
DT = torch.bfloat16


def _setup(device, max_pages=64):
    cache = fi.core.PagedKVCache(LAYERS, HKV, D, PAGE, max_pages, device=device, data_type=DT, max_batch_size=8)
    dec = fi.BatchDecodeWithPagedKVCache(cache, HKV * GROUP, HKV, D, dtype=DT)
    pre = fi.BatchPrefillWithRaggedKVCache(HKV * GROUP, HKV, D, dtype=DT, kv_cache=cache)
    return cache, dec, pre


def _check_rows(out, q_rows, keys, values, what, causal_offsets=None):
    """out[i] against the float64 reference of query row i over keys[i]/values[i] (one sequence's cache)."""
    exp, base = [], []
    for i, (q, k, v) in enumerate(zip(q_rows, keys, values)):
        e, _ = ref.decode_one(q.cpu(), k.cpu(), v.cpu(), 1 / math.sqrt(D))
        b, _ = ref.decode_one(q.cpu(), k.cpu(), v.cpu(), 1 / math.sqrt(D), dtype=DT)
        exp.append(e), base.append(b)
    assert_matches(out, torch.stack(exp), torch.stack(base), what)


def test_prefill_then_decode_steps(device):
    """Three prompts prefilled in one call, then 100 decode steps in which every sequence grows across pages; one
    sequence is released midway and a new one takes its pages. Every output against tests/reference.py."""
    torch.manual_seed(0)
    cache, dec, pre = _setup(device)
    lens = [7, 30, 50]
    seqs = [cache.begin_forward(n) for n in lens]
    k_hist = {s: [[] for _ in range(LAYERS)] for s in seqs}
    v_hist = {s: [[] for _ in range(LAYERS)] for s in seqs}
    total = sum(lens)
    for layer in range(LAYERS):
        q = torch.randn(total, HKV * GROUP, D, dtype=DT, device=device)
        k = torch.randn(total, HKV, D, dtype=DT, device=device)
        v = torch.randn(total, HKV, D, dtype=DT, device=device)
        out = pre.prefill(q, k, v, layer_idx=layer)
        o = 0
        for s, n in zip(seqs, lens):
            k_hist[s][layer].append(k[o : o + n]), v_hist[s][layer].append(v[o : o + n])
            e, _ = ref.prefill_one(q[o : o + n].cpu(), k[o : o + n].cpu(), v[o : o + n].cpu(), 1 / math.sqrt(D),
                                   causal=True)
            b, _ = ref.prefill_one(q[o : o + n].cpu(), k[o : o + n].cpu(), v[o : o + n].cpu(), 1 / math.sqrt(D),
                                   causal=True, dtype=DT)
            assert_matches(out[o : o + n], e, b, f"prefill seq {s} layer {layer}")
            o += n
    for s in seqs:
        cache.end_forward(s)
    for step in range(100):
        if step == 40:  # release the middle sequence; a new one reuses its pages
            free_before = cache.num_free_pages
            cache.release(seqs[1])
            assert cache.num_free_pages == free_before + math.ceil(cache_len_1 / PAGE)
            new = cache.begin_forward(5)
            for layer in range(LAYERS):
                k = torch.randn(5, HKV, D, dtype=DT, device=device)
                v = torch.randn(5, HKV, D, dtype=DT, device=device)
                pre.prefill(torch.randn(5, HKV * GROUP, D, dtype=DT, device=device), k, v, layer_idx=layer)
                k_hist.setdefault(new, [[] for _ in range(LAYERS)])[layer].append(k)
                v_hist.setdefault(new, [[] for _ in range(LAYERS)])[layer].append(v)
            cache.end_forward(new)
            seqs = [seqs[0], seqs[2], new]
        cache_len_1 = cache.seq_len(seqs[1]) if step < 40 else None
        for s in seqs:
            cache.begin_forward(1, s)
        assert cache.active == sorted(seqs)
        order = cache.active
        for layer in range(LAYERS):
            k = torch.randn(len(order), HKV, D, dtype=DT, device=device)
            v = torch.randn(len(order), HKV, D, dtype=DT, device=device)
            cache.append(layer, k, v)
            q = torch.randn(len(order), 1, HKV * GROUP, D, dtype=DT, device=device)
            out = dec.decode(q, layer_idx=layer)
            keys, values = [], []
            for i, s in enumerate(order):
                k_hist[s][layer].append(k[i : i + 1]), v_hist[s][layer].append(v[i : i + 1])
                keys.append(torch.cat(k_hist[s][layer])), values.append(torch.cat(v_hist[s][layer]))
            if step % 9 == 0 or step == 99:  # the reference is slow on the CPU; every step runs the kernels
                _check_rows(out[:, 0], q[:, 0], keys, values, f"decode step {step} layer {layer}")
        for s in seqs:
            cache.end_forward(s, 1)
    assert [cache.seq_len(s) for s in cache.active] == [7 + 100, 50 + 100, 5 + 60]


def test_errors_leave_the_cache_unchanged(device):
    cache, dec, pre = _setup(device, max_pages=4)
    a = cache.begin_forward(20)  # 2 pages
    cache.end_forward(a)
    state = (cache.num_free_pages, cache.seq_len(a), cache.active)
    with pytest.raises(RuntimeError, match=r"out of pages: 3 more needed, 2 free of 4"):
        cache.begin_forward(40)
    assert (cache.num_free_pages, cache.seq_len(a), cache.active) == state
    cache.begin_forward(13, a)  # 33 tokens: a third page
    with pytest.raises(RuntimeError, match=r"out of pages: 2 more needed, 1 free of 4"):
        cache.begin_forward(40, a)
    assert (cache.num_free_pages, cache.seq_len(a)) == (1, 33)
    cache.end_forward(a)
    state = (cache.num_free_pages, cache.seq_len(a), cache.active)
    with pytest.raises(KeyError, match=r"unknown or released sequence 9"):
        cache.begin_forward(1, 9)
    b = cache.begin_forward(1)
    cache.release(b)
    with pytest.raises(KeyError, match=rf"unknown or released sequence {b}"):
        cache.end_forward(b)
    with pytest.raises(ValueError, match=rf"sequence {a} has 0 begun tokens, cannot commit 3"):
        cache.end_forward(a, 3)
    cache.begin_forward(1, a)
    with pytest.raises(TypeError, match=r"key must be torch.bfloat16 \(the cache's dtype\), got torch.float16"):
        cache.append(0, torch.zeros(1, HKV, D, dtype=torch.float16, device=device),
                     torch.zeros(1, HKV, D, dtype=torch.float16, device=device))
    with pytest.raises(ValueError, match=r"key must have shape \[1, 2, 64\]"):
        cache.append(0, torch.zeros(1, 3, D, dtype=DT, device=device), torch.zeros(1, 3, D, dtype=DT, device=device))
    with pytest.raises(IndexError, match=r"layer_idx must be in \[0, 2\), got 5"):
        dec.decode(torch.zeros(1, 1, HKV * GROUP, D, dtype=DT, device=device), layer_idx=5)
    with pytest.raises(ValueError, match=r"query must end in \[4, 64\]"):
        dec.decode(torch.zeros(1, 1, 3, D, dtype=DT, device=device))
    with pytest.raises(ValueError, match=r"kv_heads=4, head_dim=64, dtype=torch.bfloat16 must match the cache"):
        fi.BatchDecodeWithPagedKVCache(cache, 8, 4, D, dtype=DT)
    cache.end_forward(a)
    assert (cache.num_free_pages, cache.seq_len(a) - 1, cache.active) == state


def _tables(cache):
    return [t.cpu().clone() for t in (*cache.page_tables(), cache._append_batch, cache._append_pos)]


def test_batch_calls_equal_per_sequence_calls(device):
    """begin_forward_batch / end_forward_batch leave exactly the tables the per-sequence calls leave (one rewrite
    instead of one per sequence), across page boundaries, new sequences and a release."""
    one, _, _ = _setup(device)
    many, _, _ = _setup(device)
    a = [one.begin_forward(n) for n in (7, 16, 30)]
    b = many.begin_forward_batch([7, 16, 30])
    assert a == b
    for c in (one, many):
        c.end_forward(a[0])
    many.end_forward_batch(a[1:])
    for s in a[1:]:
        one.end_forward(s)
    for step in range(40):
        if step == 10:
            one.release(a[1]), many.release(a[1])
        if step == 20:  # a new sequence joins mid-flight, next to growing ones
            new = many.begin_forward_batch([5, *[1] * len(many.active)], [None, *many.active])[0]
            olds = list(one.active)
            assert one.begin_forward(5) == new
            for s in olds:
                one.begin_forward(1, s)
        else:
            many.begin_forward_batch([1] * len(many.active), many.active)
            for s in one.active:
                one.begin_forward(1, s)
        for x, y in zip(_tables(one), _tables(many)):
            assert torch.equal(x, y), f"step {step}"
        many.end_forward_batch(many.active)
        for s in one.active:
            one.end_forward(s)
        assert [one.seq_len(s) for s in one.active] == [many.seq_len(s) for s in many.active]
    for x, y in zip(_tables(one), _tables(many)):
        assert torch.equal(x, y)


def test_batch_call_errors_change_nothing(device):
    cache, _, _ = _setup(device, max_pages=6)
    a, b = cache.begin_forward_batch([20, 20])  # 2 pages each
    cache.end_forward_batch([a, b])
    state = (cache.num_free_pages, cache.seq_len(a), cache.seq_len(b), cache.active, _tables(cache))

    def unchanged():
        now = (cache.num_free_pages, cache.seq_len(a), cache.seq_len(b), cache.active, _tables(cache))
        assert now[:4] == state[:4] and all(torch.equal(x, y) for x, y in zip(now[4], state[4]))

    with pytest.raises(RuntimeError, match=r"out of pages: 3 more needed, 2 free of 6"):
        cache.begin_forward_batch([13, 13, 1], [a, b, None])  # 2 + 0 pages fit, the new sequence's third does not
    unchanged()
    with pytest.raises(ValueError, match=r"a sequence appears twice in \[0, 0\]"):
        cache.begin_forward_batch([1, 1], [a, a])
    with pytest.raises(ValueError, match=r"2 token counts for 1 sequences"):
        cache.begin_forward_batch([1, 1], [a])
    with pytest.raises(ValueError, match=r"num_new_tokens must be >= 0, got -1"):
        cache.begin_forward_batch([1, -1], [a, b])
    with pytest.raises(KeyError, match=r"unknown or released sequence 7"):
        cache.begin_forward_batch([1, 1], [a, 7])
    unchanged()
    cache.begin_forward_batch([1, 1], [a, b])
    with pytest.raises(ValueError, match=rf"sequence {b} has 1 begun tokens, cannot commit 2"):
        cache.end_forward_batch([a, b], [1, 2])
    assert cache.seq_len(a) == 21 and cache._seqs[a].committed == 20  # a was not committed either
    cache.end_forward_batch([a, b])
    assert cache._seqs[a].committed == cache._seqs[b].committed == 21


def _decode_flow(device, steps, decode_fn, cache, dec):
    """Runs `steps` decode steps of 3 growing sequences with decode_fn(q) -> out; checks each against eager."""
    outs = []
    for _ in range(steps):
        for s in cache.active:
            cache.begin_forward(1, s)
        n = len(cache.active)
        cache.append(0, torch.randn(n, HKV, D, dtype=DT, device=device), torch.randn(n, HKV, D, dtype=DT, device=device))
        q = torch.randn(n, HKV * GROUP, D, dtype=DT, device=device)
        got = decode_fn(q)
        torch.testing.assert_close(got, dec.decode(q))
        outs.append(got)
        for s in cache.active:
            cache.end_forward(s)
    return outs


def test_decode_compiles_fullgraph_as_sequences_grow(device):
    cache, dec, _ = _setup(device)
    for n in (3, 15, 17):
        cache.end_forward(cache.begin_forward(n))
    torch._dynamo.reset()
    compiled = torch.compile(lambda q: dec.decode(q), fullgraph=True)
    _decode_flow(device, 2, compiled, cache, dec)  # warm-up
    with torch._dynamo.config.patch(error_on_recompile=True):
        _decode_flow(device, 20, compiled, cache, dec)


@pytest.mark.gpu
def test_decode_graph_replay_as_sequences_grow():
    device = "cuda"
    cache, dec, _ = _setup(device)
    for n in (3, 15, 17):
        cache.end_forward(cache.begin_forward(n))
    q_buf = torch.zeros(3, HKV * GROUP, D, dtype=DT, device=device)
    for s in cache.active:
        cache.begin_forward(1, s)
    cache.append(0, torch.randn(3, HKV, D, dtype=DT, device=device), torch.randn(3, HKV, D, dtype=DT, device=device))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        dec.decode(q_buf)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_buf = dec.decode(q_buf)
    for s in cache.active:
        cache.end_forward(s)

    def replay(q):
        q_buf.copy_(q)
        graph.replay()
        return out_buf.clone()

    _decode_flow(device, 60, replay, cache, dec)  # crosses page boundaries at 16, 32, 48, 64


def test_hnd_cache_matches_nhd(device):
    """The same prefill and decode steps on an HND cache and an NHD cache give the same outputs."""
    torch.manual_seed(3)
    runs = []
    for layout in ("NHD", "HND"):
        torch.manual_seed(3)
        cache = fi.core.PagedKVCache(1, HKV, D, PAGE, 32, device=device, data_type=DT, kv_layout=layout)
        dec = fi.BatchDecodeWithPagedKVCache(cache, HKV * GROUP, HKV, D, dtype=DT)
        pre = fi.BatchPrefillWithRaggedKVCache(HKV * GROUP, HKV, D, dtype=DT, kv_cache=cache)
        seqs = [cache.begin_forward(n) for n in (9, 20)]
        outs = [pre.prefill(torch.randn(29, HKV * GROUP, D, dtype=DT, device=device),
                            torch.randn(29, HKV, D, dtype=DT, device=device),
                            torch.randn(29, HKV, D, dtype=DT, device=device))]
        for s in seqs:
            cache.end_forward(s)
        outs += _decode_flow(device, 20, lambda q: dec.decode(q), cache, dec)
        runs.append(outs)
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b)
