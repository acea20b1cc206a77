"""Attention-state merges (merge_state, merge_state_in_place, merge_states) against the float64 specification, and
cascades built from them: attention over KV pieces merged equals attention over the whole."""

import pytest
import torch

import flashinfer
import reference as ref
from helpers import assert_matches, page_table, paged_cache, poison_allocator, strided_rows

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
NEG_INF = float("-inf")


def _lse(seq, heads, device, scale=20.0):
    """log2-sum-exps spread wide enough that 2^s overflows float32 unless the merge subtracts the maximum, with
    -inf (a piece with no key) sprinkled in."""
    s = torch.randn(seq, heads, device=device) * scale
    s[torch.rand(seq, heads, device=device) < 0.2] = NEG_INF
    return s


def _check_state(v, s, v_ref, s_ref, v_base, what):
    assert_matches(v, v_ref, v_base, f"{what} v")
    # s is float32 math on float32 data: within a few ulps of the float64 value, -inf exactly where it is -inf.
    s64, s_ref64 = s.double().cpu(), s_ref.double().cpu()
    assert torch.equal(torch.isneginf(s64), torch.isneginf(s_ref64)), f"{what}: -inf rows differ"
    finite = ~torch.isneginf(s_ref64)
    torch.testing.assert_close(s64[finite], s_ref64[finite], rtol=1e-6, atol=1e-5)


def _expect(vs, ss, dtype):
    v, s = torch.stack(vs, 1).cpu(), torch.stack(ss, 1).cpu()
    v_ref, s_ref = ref.merge_states(v, s)
    return v_ref, s_ref, ref.merge_states(v, s, dtype=dtype)[0]


@pytest.mark.parametrize("seq", [0, 1, 37])
@pytest.mark.parametrize("head_dim", [1, 7, 64, 128, 256, 512])
@pytest.mark.parametrize("dtype", DTYPES)
def test_merge_state(device, dtype, head_dim, seq):
    heads = 3
    v_a, v_b = (torch.randn(seq, heads, head_dim, device=device).to(dtype) for _ in range(2))
    s_a, s_b = _lse(seq, heads, device), _lse(seq, heads, device)
    if seq:
        s_a[0, :], s_b[0, :] = NEG_INF, NEG_INF  # no key on either side
        s_a[-1, 0], s_b[-1, 0] = 200.0, -200.0  # one side holds all the weight
    poison_allocator(device, v_a.numel() * v_a.element_size())
    v, s = flashinfer.merge_state(v_a, s_a, v_b, s_b)
    assert v.dtype == dtype and s.dtype == torch.float32 and v.device == v_a.device
    assert v.shape == v_a.shape and s.shape == s_a.shape
    _check_state(v, s, *_expect([v_a, v_b], [s_a, s_b], dtype), f"merge_state {dtype} D {head_dim}")


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_merge_state_in_place(device, dtype, use_mask):
    seq, heads, d = 29, 4, 128
    v, v_other = (torch.randn(seq, heads, d, device=device).to(dtype) for _ in range(2))
    s, s_other = _lse(seq, heads, device), _lse(seq, heads, device)
    mask = torch.rand(seq, device=device) < 0.5 if use_mask else None
    v0, s0 = v.clone(), s.clone()
    flashinfer.merge_state_in_place(v, s, v_other, s_other, mask)
    v_ref, s_ref, v_base = _expect([v0, v_other], [s0, s_other], dtype)
    rows = mask.cpu() if use_mask else torch.ones(seq, dtype=torch.bool)
    _check_state(v.cpu()[rows], s.cpu()[rows], v_ref[rows], s_ref[rows], v_base[rows], "merge_state_in_place")
    # Rows the mask leaves out are neither read nor written: bit for bit what they were.
    assert torch.equal(v.cpu()[~rows], v0.cpu()[~rows]) and torch.equal(s.cpu()[~rows], s0.cpu()[~rows])


@pytest.mark.parametrize("num_states", [0, 1, 2, 5, 33])
@pytest.mark.parametrize("head_dim", [64, 100, 128])
@pytest.mark.parametrize("dtype", DTYPES)
def test_merge_states(device, dtype, head_dim, num_states):
    seq, heads = 11, 2
    v = torch.randn(seq, num_states, heads, head_dim, device=device).to(dtype)
    s = torch.stack([_lse(seq, heads, device) for _ in range(num_states)], 1) if num_states else \
        torch.empty(seq, 0, heads, device=device)
    poison_allocator(device, seq * heads * head_dim * v.element_size())
    out, lse = flashinfer.merge_states(v, s)
    assert out.shape == (seq, heads, head_dim) and lse.shape == (seq, heads)
    v_ref, s_ref = ref.merge_states(v.cpu(), s.cpu())
    _check_state(out, lse, v_ref, s_ref, ref.merge_states(v.cpu(), s.cpu(), dtype=dtype)[0], "merge_states")
    if num_states == 0:
        assert torch.equal(out.cpu(), torch.zeros_like(out.cpu())) and torch.isneginf(lse).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_merge_states_wide_heads_many_states(device, dtype):
    """Few rows of many states and wide heads: on CUDA the states of a row are shared among several groups of
    threads (added in shared memory) and each row's head_dim is covered in more than one pass."""
    seq, num_states, heads, head_dim = 3, 64, 2, 1024
    v = torch.randn(seq, num_states, heads, head_dim, device=device).to(dtype)
    s = torch.stack([_lse(seq, heads, device) for _ in range(num_states)], 1)
    s[0] = NEG_INF
    out, lse = flashinfer.merge_states(v, s)
    v_ref, s_ref = ref.merge_states(v.cpu(), s.cpu())
    _check_state(out, lse, v_ref, s_ref, ref.merge_states(v.cpu(), s.cpu(), dtype=dtype)[0], "wide merge_states")


@pytest.mark.parametrize("layout", ["row_stride", "unaligned", "heads"])
def test_merge_state_strided(device, layout):
    """v as a slice of a wider buffer (or heads out of a packed projection, or rows off the 16-byte grid), s as a
    transposed view: read in place, same result."""
    seq, heads, d = 9, 4, 128
    v_a = strided_rows((seq, heads, d), torch.bfloat16, device, layout)
    v_b = strided_rows((seq, heads, d), torch.bfloat16, device, layout)
    s_a, s_b = (_lse(heads, seq, device).t() for _ in range(2))
    v, s = flashinfer.merge_state(v_a, s_a, v_b, s_b)
    _check_state(v, s, *_expect([v_a, v_b], [s_a, s_b], torch.bfloat16), f"merge_state {layout}")
    flashinfer.merge_state_in_place(v_a, s_a, v_b, s_b)  # writes through the strides of v_a and s_a
    assert torch.equal(v_a, v) and torch.equal(s_a, s)


def test_merge_states_state_major(device):
    """v and s stored state-major ([num_states, seq, ...], the order a loop over KV pieces produces) and passed as
    transposed views."""
    n, seq, heads, d = 6, 10, 2, 64
    v = torch.randn(n, seq, heads, d, device=device).to(torch.float16).transpose(0, 1)
    s = torch.stack([_lse(seq, heads, device) for _ in range(n)]).transpose(0, 1)
    out, lse = flashinfer.merge_states(v, s)
    v_ref, s_ref = ref.merge_states(v.cpu(), s.cpu())
    _check_state(out, lse, v_ref, s_ref, ref.merge_states(v.cpu(), s.cpu(), dtype=torch.float16)[0], "state-major")


def _attention_pieces(device, dtype, cuts, qo_len=5, hq=8, hkv=2, d=128):
    """Attention of q over K/V cut into pieces at `cuts`, each piece on its own with its LSE, and over the whole."""
    kv_len = cuts[-1]
    q = torch.randn(qo_len, hq, d, device=device).to(dtype)
    k, v = (torch.randn(kv_len, hkv, d, device=device).to(dtype) for _ in range(2))
    states = []
    for lo, hi in zip([0] + cuts[:-1], cuts):
        states.append(flashinfer.single_prefill_with_kv_cache(q, k[lo:hi], v[lo:hi], return_lse=True))
    whole = flashinfer.single_prefill_with_kv_cache(q, k, v, return_lse=True)
    return q, k, v, states, whole


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cascade_equals_attention_over_the_union(device, dtype):
    q, k, v, states, (o, lse) = _attention_pieces(device, dtype, [40, 41, 300])
    expect, expect_lse = ref.prefill_one(q.cpu(), k.cpu(), v.cpu(), q.shape[-1] ** -0.5)
    base = ref.prefill_one(q.cpu(), k.cpu(), v.cpu(), q.shape[-1] ** -0.5, dtype=dtype)[0]
    (v0, s0), (v1, s1), (v2, s2) = states
    v01, s01 = flashinfer.merge_state(v0, s0, v1, s1)
    flashinfer.merge_state_in_place(v01, s01, v2, s2)
    all_v, all_s = flashinfer.merge_states(torch.stack([v0, v1, v2], 1), torch.stack([s0, s1, s2], 1))
    for got_v, got_s, what in ((v01, s01, "pairwise"), (all_v, all_s, "merge_states")):
        # Each piece's output is rounded to dtype before the merge: twice the baseline's error covers it.
        assert_matches(got_v, expect, base, f"cascade {what}")
        torch.testing.assert_close(got_s.double().cpu(), expect_lse, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(all_s, lse, rtol=1e-4, atol=1e-4)


PAGE, HQ, HKV, HEAD_DIM = 16, 8, 2, 64


class TwoLevels:
    """A batch over one paged cache: a prefix of `shared_len` tokens on pages every request shares, then each
    request's own tokens on pages of its own (page order random), with the tables of both levels."""

    def __init__(self, device, qo_lens, unique_lens, shared_len, num_pages=64, dtype=torch.bfloat16):
        self.device, self.dtype = device, dtype
        self.cache = paged_cache(num_pages, PAGE, HKV, HEAD_DIM, dtype, device)
        self.order = torch.randperm(num_pages).to(torch.int32)
        self.q = torch.randn(sum(qo_lens), HQ, HEAD_DIM, device=device).to(dtype)
        self.resize(qo_lens, unique_lens, shared_len)

    def resize(self, qo_lens, unique_lens, shared_len):
        self.qo_lens, self.unique_lens, self.shared_len = qo_lens, unique_lens, shared_len
        shared_pages = -(-shared_len // PAGE)
        unique_pages = [-(-n // PAGE) for n in unique_lens]
        self.shared_idx, rest = self.order[:shared_pages], self.order[shared_pages:]
        self.unique_idx = list(torch.split(rest[: sum(unique_pages)], unique_pages))

    def tables(self):
        """plan()'s four per-level lists: qo_indptr, kv indptr, kv indices, last page lengths (on the device)."""
        i32 = dict(dtype=torch.int32, device=self.device)
        qo_indptr = torch.tensor([0] + torch.tensor(self.qo_lens).cumsum(0).tolist(), **i32)
        s_indptr, s_last = page_table([self.shared_len], PAGE)
        u_indptr, u_last = page_table(self.unique_lens, PAGE)
        return ([torch.tensor([0, self.q.shape[0]], **i32), qo_indptr],
                [s_indptr.to(self.device), u_indptr.to(self.device)],
                [self.shared_idx.to(self.device), torch.cat(self.unique_idx).to(self.device)],
                [s_last.to(self.device), u_last.to(self.device)])

    def check(self, out, causal, what):
        """Each request attends the prefix followed by its own tokens; causal applies to the whole (every query sits
        after the prefix, since a request's qo_len is at most its own length)."""
        k_pages, v_pages = self.cache[:, 0].cpu(), self.cache[:, 1].cpu()
        expect, base = [], []
        for b, n in enumerate(self.unique_lens):
            pages = torch.cat([self.shared_idx, self.unique_idx[b]]).long()
            idx = torch.cat([torch.arange(self.shared_len), self.shared_idx.numel() * PAGE + torch.arange(n)])
            k, v = torch.cat([k_pages[p] for p in pages])[idx], torch.cat([v_pages[p] for p in pages])[idx]
            qb = self.q.cpu()[sum(self.qo_lens[:b]) : sum(self.qo_lens[: b + 1])]
            expect.append(ref.prefill_one(qb, k, v, HEAD_DIM ** -0.5, causal=causal)[0])
            base.append(ref.prefill_one(qb, k, v, HEAD_DIM ** -0.5, causal=causal, dtype=self.dtype)[0])
        assert_matches(out, torch.cat(expect), torch.cat(base), what)


def _plan(wrapper, levels, causal):
    wrapper.plan(*levels.tables(), HQ, HKV, HEAD_DIM, PAGE, causal=causal, q_data_type=levels.dtype)


@pytest.mark.parametrize("causal", [False, True])
def test_multi_level_cascade_wrapper(device, causal):
    levels = TwoLevels(device, [1, 3, 2], [5, 40, 16], 37)
    wrapper = flashinfer.MultiLevelCascadeAttentionWrapper(2, torch.empty(16 << 20, dtype=torch.uint8, device=device))
    _plan(wrapper, levels, causal)
    levels.check(wrapper.run(levels.q, levels.cache), causal, f"two-level cascade causal={causal}")


def test_multi_level_cascade_compiles_fullgraph(device):
    levels = TwoLevels(device, [2, 2], [7, 33], 20)
    wrapper = flashinfer.MultiLevelCascadeAttentionWrapper(2, torch.empty(16 << 20, dtype=torch.uint8, device=device))
    _plan(wrapper, levels, True)
    torch._dynamo.reset()
    out = torch.compile(wrapper.run, fullgraph=True)(levels.q, levels.cache)
    levels.check(out, True, "compiled two-level cascade")


def _shared_kv(levels):
    """The prefix as contiguous K and V [shared_len, num_kv_heads, head_dim], gathered from its pages."""
    pages = levels.shared_idx.long().to(levels.cache.device)
    k = levels.cache[pages, 0].reshape(-1, HKV, HEAD_DIM)[: levels.shared_len].contiguous()
    v = levels.cache[pages, 1].reshape(-1, HKV, HEAD_DIM)[: levels.shared_len].contiguous()
    return k, v


def test_shared_prefix_decode_wrapper(device):
    levels = TwoLevels(device, [1, 1, 1, 1], [1, 16, 17, 40], 45)
    _, (_, indptr), (_, indices), (_, last) = levels.tables()
    ws = torch.empty(16 << 20, dtype=torch.uint8, device=device)
    wrapper = flashinfer.BatchDecodeWithSharedPrefixPagedKVCacheWrapper(ws, "NHD")
    wrapper.begin_forward(indptr, indices, last, HQ, HKV, HEAD_DIM, PAGE, data_type=levels.dtype)
    levels.check(wrapper.forward(levels.q, *_shared_kv(levels), levels.cache), False, "shared-prefix decode")
    wrapper.end_forward()


@pytest.mark.parametrize("causal", [False, True])
def test_shared_prefix_prefill_wrapper(device, causal):
    levels = TwoLevels(device, [3, 1, 4], [3, 30, 17], 21)
    (_, qo_indptr), (_, indptr), (_, indices), (_, last) = levels.tables()
    ws = torch.empty(16 << 20, dtype=torch.uint8, device=device)
    wrapper = flashinfer.BatchPrefillWithSharedPrefixPagedKVCacheWrapper(ws, "NHD")
    wrapper.begin_forward(qo_indptr, indptr, indices, last, HQ, HKV, HEAD_DIM, PAGE)
    out = wrapper.forward(levels.q, *_shared_kv(levels), levels.cache, causal=causal)
    levels.check(out, causal, f"shared-prefix prefill causal={causal}")


@pytest.mark.gpu
def test_multi_level_cascade_graph_replay():
    """use_cuda_graph=True: plan() copies each level's tables into fixed buffers, so one captured run replays for a
    re-planned batch (same query rows, new prefix and request lengths)."""
    levels = TwoLevels("cuda", [1, 2, 1], [3, 20, 16], 40)
    i32 = dict(dtype=torch.int32, device="cuda")
    bufs = dict(qo_indptr_buf_arr=[torch.zeros(4, **i32) for _ in range(2)],
                paged_kv_indptr_buf_arr=[torch.zeros(4, **i32) for _ in range(2)],
                paged_kv_indices_buf_arr=[torch.zeros(64, **i32) for _ in range(2)],
                paged_kv_last_page_len_buf_arr=[torch.zeros(3, **i32) for _ in range(2)])
    ws = torch.empty(16 << 20, dtype=torch.uint8, device="cuda")
    wrapper = flashinfer.MultiLevelCascadeAttentionWrapper(2, ws, "NHD", use_cuda_graph=True, **bufs)
    assert wrapper.is_cuda_graph_enabled
    _plan(wrapper, levels, True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        wrapper.run(levels.q, levels.cache)  # warm-up off the graph
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = wrapper.run(levels.q, levels.cache)
    for qo_lens, unique_lens, shared_len in (([1, 2, 1], [3, 20, 16], 40), ([2, 1, 1], [17, 2, 31], 16),
                                             ([1, 1, 2], [2, 1, 48], 95)):
        levels.resize(qo_lens, unique_lens, shared_len)
        _plan(wrapper, levels, True)
        graph.replay()
        torch.cuda.synchronize()
        levels.check(out, True, f"replay {unique_lens} over a prefix of {shared_len}")


def test_merge_compiles_fullgraph(device):
    """Two pieces of attention and their merge in one compiled graph: no break, the in-place merge functionalised
    into the graph, equal to eager."""
    q = torch.randn(5, 8, 128, device=device).to(torch.bfloat16)
    k, v = (torch.randn(160, 2, 128, device=device).to(torch.bfloat16) for _ in range(2))

    def cascade(q, k, v):
        o, s = flashinfer.single_prefill_with_kv_cache(q, k[:64], v[:64], return_lse=True)
        o2, s2 = flashinfer.single_prefill_with_kv_cache(q, k[64:], v[64:], return_lse=True)
        flashinfer.merge_state_in_place(o, s, o2, s2)
        v3, s3 = flashinfer.merge_state(o, s, o2, torch.full_like(s2, NEG_INF))
        return flashinfer.merge_states(torch.stack([v3, o2], 1), torch.stack([s3, torch.full_like(s2, NEG_INF)], 1))

    eager = cascade(q, k, v)
    torch._dynamo.reset()
    compiled = torch.compile(cascade, fullgraph=True)(q, k, v)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class _Cascade(torch.nn.Module):
    """Attention over two pieces of KV, merged in place, then merged again with a state of its own."""

    def forward(self, q, k, v):
        o, s = flashinfer.single_prefill_with_kv_cache(q, k[:64], v[:64], return_lse=True)
        o2, s2 = flashinfer.single_prefill_with_kv_cache(q, k[64:], v[64:], return_lse=True)
        flashinfer.merge_state_in_place(o, s, o2, s2)
        return flashinfer.merge_states(torch.stack([o, o2], 1), torch.stack([s, s2], 1))


def test_merge_export_save_load(device, tmp_path):
    """torch.export with a dynamic number of query rows; the saved program, loaded back, runs other row counts."""
    k, v = (torch.randn(160, 2, 128, device=device).to(torch.bfloat16) for _ in range(2))
    q = torch.randn(5, 8, 128, device=device).to(torch.bfloat16)
    rows = torch.export.Dim("rows", min=1, max=4096)
    ep = torch.export.export(_Cascade(), (q, k, v), dynamic_shapes=({0: rows}, None, None))
    assert "flashinfer.merge_state_in_place" in str(ep.graph) and "flashinfer.merge_states" in str(ep.graph)
    torch.export.save(ep, tmp_path / "cascade.pt2")
    loaded = torch.export.load(tmp_path / "cascade.pt2").module()
    for n in (1, 9):
        q = torch.randn(n, 8, 128, device=device).to(torch.bfloat16)
        for a, b in zip(loaded(q, k, v), _Cascade()(q, k, v)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.gpu
def test_merge_state_in_place_graph_replay():
    """Captured once, replayed with new states and a new mask in the same buffers."""
    seq, heads, d = 64, 8, 128
    v, v_other = (torch.randn(seq, heads, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    s, s_other = _lse(seq, heads, "cuda"), _lse(seq, heads, "cuda")
    mask = torch.ones(seq, dtype=torch.bool, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        flashinfer.merge_state_in_place(v.clone(), s.clone(), v_other, s_other, mask)  # warm-up off the graph
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        flashinfer.merge_state_in_place(v, s, v_other, s_other, mask)
    for step in range(3):
        v.normal_(), v_other.normal_()
        s.copy_(_lse(seq, heads, "cuda")), s_other.copy_(_lse(seq, heads, "cuda"))
        mask.copy_(torch.rand(seq, device="cuda") < 0.5)
        v0, s0 = v.clone(), s.clone()
        graph.replay()
        torch.cuda.synchronize()
        rows = mask.cpu()
        v_ref, s_ref, v_base = _expect([v0, v_other], [s0, s_other], torch.bfloat16)
        _check_state(v.cpu()[rows], s.cpu()[rows], v_ref[rows], s_ref[rows], v_base[rows], f"replay {step}")
        assert torch.equal(v.cpu()[~rows], v0.cpu()[~rows])


def _v(d, *shape, dtype=torch.bfloat16):
    return torch.randn(*shape, device=d).to(dtype)


def _s(d, *shape, dtype=torch.float32):
    return torch.zeros(*shape, device=d, dtype=dtype)


# Every message names the argument and what was expected; the fakes (meta) raise the same ones.
BAD = {
    "v rank": (lambda d: flashinfer.merge_state(_v(d, 4, 64), _s(d, 4), _v(d, 4, 64), _s(d, 4)),
               r"merge_state: v_a must be 3-D \[seq_len, num_heads, head_dim\], got shape \[4, 64\]"),
    "v dtype": (lambda d: flashinfer.merge_state(_v(d, 4, 2, 8, dtype=torch.float64), _s(d, 4, 2),
                                                 _v(d, 4, 2, 8), _s(d, 4, 2)),
                r"merge_state: v_a must be float16, bfloat16 or float32, got Double"),
    "v_b shape": (lambda d: flashinfer.merge_state(_v(d, 4, 2, 8), _s(d, 4, 2), _v(d, 4, 3, 8), _s(d, 4, 3)),
                  r"merge_state: v_b must have the shape of v_a \(\[4, 2, 8\]\), got \[4, 3, 8\]"),
    "v_b dtype": (lambda d: flashinfer.merge_state(_v(d, 4, 2, 8), _s(d, 4, 2),
                                                   _v(d, 4, 2, 8, dtype=torch.float16), _s(d, 4, 2)),
                  r"merge_state: v_b must have the dtype of v_a \(BFloat16\), got Half"),
    "s shape": (lambda d: flashinfer.merge_state(_v(d, 4, 2, 8), _s(d, 2, 4), _v(d, 4, 2, 8), _s(d, 4, 2)),
                r"merge_state: s_a must have shape \[4, 2\] \(that of v_a without head_dim\), got \[2, 4\]"),
    "in place s dtype": (lambda d: flashinfer.merge_state_in_place(_v(d, 4, 2, 8), _s(d, 4, 2, dtype=torch.float16),
                                                                  _v(d, 4, 2, 8), _s(d, 4, 2)),
                         r"merge_state_in_place: s must be float32 \(the log2-sum-exp of v's scores\), got Half"),
    "mask dtype": (lambda d: flashinfer.merge_state_in_place(_v(d, 4, 2, 8), _s(d, 4, 2), _v(d, 4, 2, 8),
                                                            _s(d, 4, 2), torch.ones(4, device=d)),
                   r"merge_state_in_place: mask must be bool, got Float"),
    "mask shape": (lambda d: flashinfer.merge_state_in_place(_v(d, 4, 2, 8), _s(d, 4, 2), _v(d, 4, 2, 8),
                                                            _s(d, 4, 2), torch.ones(5, device=d, dtype=torch.bool)),
                   r"merge_state_in_place: mask must have shape \[4\] \(one flag per row of v\), got \[5\]"),
    "empty head_dim": (lambda d: flashinfer.merge_states(_v(d, 4, 3, 2, 0), _s(d, 4, 3, 2)),
                       r"merge_states: v must have head_dim >= 1, got shape \[4, 3, 2, 0\]"),
    "states rank": (lambda d: flashinfer.merge_states(_v(d, 4, 2, 8), _s(d, 4, 2)),
                    r"merge_states: v must be 4-D \[seq_len, num_states, num_heads, head_dim\], got shape \[4, 2, 8\]"),
    "states s shape": (lambda d: flashinfer.merge_states(_v(d, 4, 3, 2, 8), _s(d, 4, 2, 2)),
                       r"merge_states: s must have shape \[4, 3, 2\] \(that of v without head_dim\), got \[4, 2, 2\]"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input(device, case):
    fn, msg = BAD[case]
    with pytest.raises(RuntimeError, match="flashinfer." + msg):
        fn(device)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_fake(case):
    fn, msg = BAD[case]
    with pytest.raises(RuntimeError, match=msg):
        fn("meta")


@pytest.mark.gpu
def test_bad_input_devices_and_layouts():
    v, s = _v("cuda", 4, 2, 8), _s("cuda", 4, 2)
    with pytest.raises(RuntimeError, match=r"merge_state: v_b must be on the same device as v_a \(cuda:0\), got cpu"):
        flashinfer.merge_state(v, s, _v("cpu", 4, 2, 8), _s("cpu", 4, 2))
    with pytest.raises(RuntimeError, match=r"merge_state_in_place: s must be on the same device as v \(cuda:0\)"):
        flashinfer.merge_state_in_place(v, _s("cpu", 4, 2), v.clone(), s)
    strided = _v("cuda", 4, 2, 8, 2)[..., 0]  # written in place, so its last dim must be contiguous
    with pytest.raises(RuntimeError, match=r"merge_state_in_place: v must have a contiguous last dim"):
        flashinfer.merge_state_in_place(strided, s, v, s)
