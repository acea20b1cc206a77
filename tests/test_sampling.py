"""Sampling family: softmax, filtered draws, renormalised probabilities and masked logits against the float64
definitions of tests/reference.py; draws checked for membership of the kept set, for their distribution (many
independent draws of one row), and for determinism in (seed, offset); compile, CUDA graphs and export."""

import pytest
import torch

import flashinfer
import reference

VOCABS = [1, 7, 32, 1000, 4099]


def _probs(batch, vocab, device, spread=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(batch, vocab, generator=g) * spread, -1).to(device)


# ---- softmax ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("vocab", VOCABS)
def test_softmax(device, dtype, vocab):
    logits = (torch.randn(6, vocab) * 4).to(device, dtype)
    logits[1, : vocab // 2] = float("-inf")  # masked entries
    temps = torch.tensor([1.0, 0.7, 2.0, 0.0, -1.0, 1.3], device=device)
    for t in (None, 0.5, temps):
        out = flashinfer.softmax(logits, temperature=t)
        assert out.dtype == torch.float32 and out.shape == logits.shape
        ref = reference.softmax(logits.cpu(), 1.0 if t is None else (t.cpu() if torch.is_tensor(t) else t))
        torch.testing.assert_close(out.cpu().double(), ref, atol=2e-6, rtol=2e-5)


def test_softmax_edge_rows(device):
    logits = torch.randn(3, 64, device=device)
    logits[0] = float("-inf")  # no finite logit: zeros, never NaN
    logits[2, 5] = logits[2, 9] = 1e4  # ties at the top, greedy picks the first
    out = flashinfer.softmax(logits, torch.tensor([1.0, 1.0, 0.0], device=device))
    assert torch.equal(out[0].cpu(), torch.zeros(64))
    assert out[2, 5].item() == 1.0 and out[2].sum().item() == 1.0


def test_softmax_strided_rows(device):
    wide = torch.randn(5, 300, device=device)
    logits = wide[:, 10:266]  # rows 300 apart, not 16-byte aligned
    torch.testing.assert_close(flashinfer.softmax(logits).cpu().double(), reference.softmax(logits.cpu(), 1.0),
                               atol=2e-6, rtol=2e-5)


# ---- renormalised probabilities, masked logits ----

@pytest.mark.parametrize("vocab", VOCABS)
def test_top_k_renorm_probs(device, vocab):
    probs = _probs(5, vocab, device)
    for k in (1, 3, vocab - 1, vocab, 0, torch.tensor([1, 2, 0, vocab, max(vocab - 2, 1)], dtype=torch.int32)):
        kk = k.to(device) if torch.is_tensor(k) else k
        out = flashinfer.top_k_renorm_probs(probs, kk)
        keep = reference.kept(probs.cpu(), top_k=k)
        assert torch.equal(out.cpu() > 0, keep), f"k={k}"
        torch.testing.assert_close(out.cpu().double(), reference.renorm(probs.cpu(), keep), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("vocab", VOCABS)
def test_top_p_renorm_probs(device, vocab):
    probs = _probs(5, vocab, device)
    for p in (0.0, 0.3, 0.9, 0.999, 1.0, torch.tensor([0.1, 0.5, 0.95, 1.0, 0.0])):
        pp = p.to(device) if torch.is_tensor(p) else p
        out = flashinfer.top_p_renorm_probs(probs, pp)
        keep = reference.kept(probs.cpu(), top_p=p)
        assert torch.equal(out.cpu() > 0, keep), f"p={p}"
        torch.testing.assert_close(out.cpu().double(), reference.renorm(probs.cpu(), keep), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_top_k_mask_logits(device, dtype):
    logits = (torch.randn(4, 1001) * 3).to(device, dtype)
    logits[1, 100:200] = float("-inf")
    for k in (1, 50, 1000, 1001, torch.tensor([5, 1, 0, 999], dtype=torch.int32)):
        kk = k.to(device) if torch.is_tensor(k) else k
        out = flashinfer.top_k_mask_logits(logits, kk)
        assert out.dtype == dtype
        keep = reference.kept(logits.cpu().float(), top_k=k)
        assert torch.equal(out.cpu(), torch.where(keep, logits.cpu(), float("-inf")))


def test_filters_keep_ties(device):
    probs = torch.full((2, 64), 1 / 64, device=device)  # every entry tied
    assert torch.equal(flashinfer.top_k_renorm_probs(probs, 3).cpu(), probs.cpu())
    assert torch.equal(flashinfer.top_p_renorm_probs(probs, 0.1).cpu(), probs.cpu())


# ---- draws ----

FILTERS = {
    "none": {},
    "top_k": {"top_k": 5},
    "top_p": {"top_p": 0.6},
    "min_p": {"min_p": 0.2},
    "joint": {"top_k": 8, "top_p": 0.7},
}


def _draw(probs, name, **kw):
    f = FILTERS[name]
    if name == "none":
        return flashinfer.sampling_from_probs(probs, **kw)
    if name == "top_k":
        return flashinfer.top_k_sampling_from_probs(probs, f["top_k"], **kw)
    if name == "top_p":
        return flashinfer.top_p_sampling_from_probs(probs, f["top_p"], **kw)
    if name == "min_p":
        return flashinfer.min_p_sampling_from_probs(probs, f["min_p"], **kw)
    return flashinfer.top_k_top_p_sampling_from_probs(probs, f["top_k"], f["top_p"], filter_apply_order="joint", **kw)


@pytest.mark.parametrize("name", sorted(FILTERS))
@pytest.mark.parametrize("vocab", [1, 33, 4099])
def test_draws_stay_in_the_kept_set(device, name, vocab):
    probs = _probs(64, vocab, device, spread=2.0)
    keep = reference.kept(probs.cpu(), **FILTERS[name])
    for seed in range(3):
        s = _draw(probs, name, seed=seed, offset=17)
        assert s.dtype == torch.int32 and s.shape == (64,)
        assert keep[torch.arange(64), s.cpu().long()].all()


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_draws_follow_the_kept_distribution(device, name):
    """20000 independent draws of one row (each draw its own Philox counter): the empirical distribution within a
    total variation of 0.03 of the kept entries renormalised (about twice the expected sampling noise at 24
    entries)."""
    row = _probs(1, 24, device, spread=1.0, seed=3)
    n = 20000
    s = _draw(row, name, indices=torch.zeros(n, dtype=torch.int32, device=device), seed=1234, offset=0)
    freq = torch.bincount(s.cpu().long(), minlength=24).double() / n
    target = reference.renorm(row.cpu(), reference.kept(row.cpu(), **FILTERS[name]))[0]
    assert (freq - target).abs().sum().item() / 2 < 0.03
    assert (freq[target == 0] == 0).all()


def test_top_k_first_renormalises_before_top_p(device):
    row = torch.tensor([[0.4, 0.3, 0.2, 0.1]], device=device)
    # top-2 renormalised: 4/7, 3/7; top-p 0.5 of that keeps only entry 0. Joint keeps entries 0 and 1 (mass above
    # entry 1 is 0.4 < 0.5).
    idx = torch.zeros(4000, dtype=torch.int32, device=device)
    first = flashinfer.top_k_top_p_sampling_from_probs(row, 2, 0.5, indices=idx, seed=5, offset=0)
    joint = flashinfer.top_k_top_p_sampling_from_probs(row, 2, 0.5, indices=idx, filter_apply_order="joint",
                                                       seed=5, offset=0)
    assert set(first.cpu().tolist()) == {0}
    assert set(joint.cpu().tolist()) == {0, 1}


def test_top_k_first_with_one_filter_off(device):
    """top_k_first with top-k off (0 or >= vocab) draws from the top-p set, with top-p off (>= 1) from the top-k set."""
    probs = _probs(32, 300, device)
    rows = torch.arange(32)
    by_p, by_k = reference.kept(probs.cpu(), top_p=0.6), reference.kept(probs.cpu(), top_k=4)
    for k, p, keep in ((0, 0.6, by_p), (300, 0.6, by_p), (4, 1.0, by_k)):
        for seed in range(3):
            s = flashinfer.top_k_top_p_sampling_from_probs(probs, k, p, seed=seed, offset=0)
            assert keep[rows, s.cpu().long()].all(), (k, p)


def test_top_k_first_with_indices(device):
    """A k for all draws (each row renormalised once) and a k per draw (the rows the draws read, each with its k)."""
    probs = _probs(3, 40, device)
    idx = torch.tensor([2, 0, 2, 1, 0], dtype=torch.int64, device=device)
    rows = probs.cpu()[idx.cpu()]
    for k in (3, torch.tensor([1, 3, 5, 40, 2], dtype=torch.int32)):
        keep_k = reference.kept(rows, top_k=k)
        keep = keep_k & reference.kept(reference.renorm(rows, keep_k), top_p=0.7)
        kk = k.to(device) if torch.is_tensor(k) else k
        for seed in range(3):
            s, valid = flashinfer.top_k_top_p_sampling_from_probs(probs, kk, 0.7, indices=idx, seed=seed, offset=0,
                                                                  return_valid=True)
            assert s.dtype == torch.int64 and valid.all()
            assert keep[torch.arange(5), s.cpu()].all(), k


def test_draws_repeat_with_seed_and_offset(device):
    probs = _probs(32, 500, device)
    a = flashinfer.top_p_sampling_from_probs(probs, 0.9, seed=7, offset=100)
    b = flashinfer.top_p_sampling_from_probs(probs, 0.9, seed=7, offset=100)
    c = flashinfer.top_p_sampling_from_probs(probs, 0.9, seed=7, offset=104)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Tensors of one value per row give each row its own stream; a row's draw depends on its own pair only.
    seeds = torch.full((32,), 7, dtype=torch.int64, device=device)
    offsets = torch.full((32,), 100, dtype=torch.int64, device=device)
    assert torch.equal(flashinfer.top_p_sampling_from_probs(probs, 0.9, seed=seeds, offset=offsets), a)
    offsets[3] = 5
    d = flashinfer.top_p_sampling_from_probs(probs, 0.9, seed=seeds, offset=offsets)
    assert torch.equal(d[:3], a[:3]) and torch.equal(d[4:], a[4:])


def test_per_row_parameters(device):
    probs = _probs(6, 300, device)
    k = torch.tensor([1, 2, 0, 300, 5, 1], dtype=torch.int32, device=device)
    p = torch.tensor([1.0, 0.5, 0.2, 0.9, 0.0, 0.99], device=device)
    m = torch.tensor([0.0, 0.1, 0.0, 0.5, 0.0, 0.0], device=device)
    keep = reference.kept(probs.cpu(), k.cpu(), p.cpu(), m.cpu())
    for seed in range(4):
        s = flashinfer.sampling.sampling_from_probs(probs, seed=seed, offset=0)  # no filter
        assert s.shape == (6,)
        s = torch.ops.flashinfer.sampling_from_probs(probs, None, k, 0, p, 1.0, m, 0.0,
                                                     torch.tensor([seed], device=device),
                                                     torch.tensor([0], device=device))[0]
        assert keep[torch.arange(6), s.cpu().long()].all()


def test_indices_and_valid(device):
    probs = _probs(3, 50, device)
    probs[1] = 0  # no mass: not valid, the draw is the first largest entry (index 0)
    idx = torch.tensor([2, 1, 0, 2], dtype=torch.int64, device=device)
    s, valid = flashinfer.sampling_from_probs(probs, indices=idx, seed=1, offset=2, return_valid=True)
    assert s.dtype == torch.int64 and s.shape == (4,)
    assert valid.cpu().tolist() == [True, False, True, True]
    assert s[1].item() == 0
    assert probs[2, s[0]] > 0 and probs[2, s[3]] > 0 and probs[0, s[2]] > 0  # draws read the rows indices name
    empty = flashinfer.sampling_from_probs(probs[:0], seed=1, offset=0)
    assert empty.shape == (0,)


def test_vocab_one(device):
    probs = torch.ones(4, 1, device=device)
    assert flashinfer.top_k_top_p_sampling_from_probs(probs, 1, 0.5).cpu().tolist() == [0] * 4
    assert torch.equal(flashinfer.top_k_renorm_probs(probs, 1).cpu(), torch.ones(4, 1))


def test_from_logits(device):
    logits = torch.randn(16, 777, device=device) * 3
    probs = torch.softmax(logits.cpu().double(), -1)
    keep_k = reference.kept(probs, top_k=10)
    keeps = {"joint": reference.kept(probs, top_k=10, top_p=0.8),
             "top_k_first": keep_k & reference.kept(reference.renorm(probs, keep_k), top_p=0.8)}
    rows = torch.arange(16)
    for order, keep in keeps.items():
        for seed in range(3):
            s = flashinfer.top_k_top_p_sampling_from_logits(logits, 10, 0.8, filter_apply_order=order, seed=seed,
                                                            offset=9)
            assert keep[rows, s.cpu().long()].all(), order
    s = flashinfer.sampling_from_logits(logits, seed=3, offset=9)
    assert s.shape == (16,) and s.dtype == torch.int32 and (probs[rows, s.cpu().long()] > 0).all()


def test_check_nan(device):
    probs = _probs(2, 10, device)
    probs[0, 3] = float("nan")
    with pytest.raises(ValueError, match="probs contains NaN"):
        flashinfer.sampling_from_probs(probs, check_nan=True)


def test_fresh_draws_without_a_seed(device):
    probs = torch.full((256, 1000), 1e-3, device=device)
    a = flashinfer.sampling_from_probs(probs)
    b = flashinfer.sampling_from_probs(probs)
    assert not torch.equal(a, b)  # 256 uniform draws over 1000 entries: equal by chance with probability ~0


# ---- speculative sampling ----

def _chain(batch, n, vocab, device, seed=0, spread=1.5):
    """Draft and target distributions of `batch` requests of n draft tokens, the draft tokens drawn from the draft
    rows (as a draft model would have drawn them)."""
    g = torch.Generator().manual_seed(seed)
    draft = torch.softmax(torch.randn(batch, n, vocab, generator=g) * spread, -1)
    target = torch.softmax(torch.randn(batch, n + 1, vocab, generator=g) * spread, -1)
    ids = torch.multinomial(draft.reshape(-1, vocab), 1, generator=g) if n else torch.zeros(0, 1, dtype=torch.long)
    return draft.to(device), ids.view(batch, n).to(device, torch.int32), target.to(device)


def _check_chain(draft, ids, target, out, accepted, emitted):
    """The output's structure: the kept prefix is the draft's, one drawn token of positive weight, then -1."""
    batch, n, vocab = draft.shape
    draft, ids, target, out = draft.cpu(), ids.cpu(), target.cpu(), out.cpu()
    assert out.shape == (batch, n + 1) and out.dtype == torch.int32
    assert accepted.shape == emitted.shape == (batch,) and accepted.dtype == emitted.dtype == torch.int32
    for b, (e, a) in enumerate(zip(emitted.tolist(), accepted.tolist())):
        assert 0 <= e <= n and e <= a <= n
        assert torch.equal(out[b, :e], ids[b, :e]) and (out[b, e + 1:] == -1).all()
        tok = out[b, e].item()
        weight = (target[b, e] - draft[b, e]).clamp_min(0) if e < n else target[b, e]
        assert weight[tok] > 0 or (weight.sum() == 0 and target[b, e, tok] > 0), (b, e, tok)


@pytest.mark.parametrize("n", [0, 1, 4])
@pytest.mark.parametrize("vocab", [1, 7, 1000, 4099])
def test_chain_speculative_structure(device, n, vocab):
    draft, ids, target = _chain(48, n, vocab, device)
    for seed in range(3):
        _check_chain(draft, ids, target, *flashinfer.chain_speculative_sampling(draft, ids, target, seed=seed,
                                                                                offset=5))


def test_chain_speculative_distribution(device):
    """20000 requests of one (draft, target) pair, each its own draft token: the first emitted token is distributed
    as the target (total variation within 0.03), a draft token is kept at the rate sum min(target, draft), and the
    bonus token after a kept draft token follows target row 1."""
    draft, _, target = _chain(1, 1, 12, "cpu", seed=4, spread=1.0)
    batch = 20000
    draft, target = draft.expand(batch, 1, 12).contiguous(), target.expand(batch, 2, 12).contiguous()
    ids = torch.multinomial(draft[:, 0], 1, replacement=True, generator=torch.Generator().manual_seed(1)).int()
    out, accepted, emitted = flashinfer.chain_speculative_sampling(draft.to(device), ids.to(device),
                                                                   target.to(device), seed=77, offset=0)
    out, emitted = out.cpu().long(), emitted.cpu()
    freq = torch.bincount(out[:, 0], minlength=12).double() / batch
    assert (freq - target[0, 0].double()).abs().sum().item() / 2 < 0.03
    rate = reference.speculative_keep_rate(target[0, 0], draft[0, 0]).item()
    assert abs(emitted.double().mean().item() - rate) < 0.02 and torch.equal(accepted.cpu(), emitted)
    bonus = out[emitted == 1, 1]
    freq = torch.bincount(bonus, minlength=12).double() / bonus.numel()
    assert (freq - target[0, 1].double()).abs().sum().item() / 2 < 0.04


def test_chain_speculative_edges(device):
    """Identical models keep every draft token (then the bonus token of a one-hot row); a target of 0 at the draft
    token rejects it and the residual picks the one entry where the target exceeds the draft; a token id outside the
    vocabulary is never kept; the counts are judged per position and added to given tensors in place."""
    q = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]])
    same = torch.cat([q, torch.tensor([[0.0, 0.0, 1.0, 0.0]])])
    p = torch.tensor([[0.0, 0.5, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4], [0.0, 1.0, 0.0, 0.0]])
    hot3 = torch.cat([q[:1], torch.tensor([[0.0, 0.0, 0.0, 1.0]]), q[2:], q[:1]])
    draft = torch.stack([q, q, q]).to(device)
    target = torch.stack([same, p, hot3]).to(device)
    ids = torch.tensor([[0, 3, 2], [0, 1, 2], [1, 4, -1]], dtype=torch.int32, device=device)
    acc = torch.tensor([10, 20, 30], device=device)
    for seed in range(4):
        before = acc.clone()
        out, accepted, emitted = flashinfer.chain_speculative_sampling(draft, ids, target, acc, seed=seed, offset=0)
        assert accepted is acc and torch.equal(acc.cpu(), before.cpu() + torch.tensor([3, 2, 1]))
        assert out.cpu().tolist() == [[0, 3, 2, 2], [2, -1, -1, -1], [1, 3, -1, -1]]
        assert emitted.cpu().tolist() == [3, 0, 1]


def test_chain_speculative_seeds(device):
    draft, ids, target = _chain(16, 3, 50, device, seed=2)
    a = flashinfer.chain_speculative_sampling(draft, ids, target, seed=7, offset=100)
    b = flashinfer.chain_speculative_sampling(draft, ids, target, seed=7, offset=100)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    seeds = torch.full((16,), 7, dtype=torch.int64, device=device)
    offsets = torch.full((16,), 100, dtype=torch.int64, device=device)
    offsets[5] = 3  # only request 5 draws anew
    c = flashinfer.chain_speculative_sampling(draft, ids, target, seed=seeds, offset=offsets)
    rest = torch.arange(16) != 5
    assert all(torch.equal(x.cpu()[rest], y.cpu()[rest]) for x, y in zip(a, c))


# ---- composition ----

def _step(logits, seed, offset):
    probs = flashinfer.softmax(logits, temperature=0.8)
    return flashinfer.top_k_top_p_sampling_from_probs(probs, 20, 0.9, seed=seed, offset=offset)


def test_compile_fullgraph(device):
    torch._dynamo.reset()
    logits = torch.randn(8, 512, device=device)
    seed = torch.tensor([11], device=device)
    offset = torch.tensor([0], device=device)
    compiled = torch.compile(_step, fullgraph=True)
    assert torch.equal(compiled(logits, seed, offset), _step(logits, seed, offset))

    def fresh(logits):  # the seed pair drawn on the device inside the graph
        return flashinfer.top_k_top_p_sampling_from_logits(logits, 20, 0.9)

    keep = reference.kept(torch.softmax(logits.cpu().double(), -1), top_k=20)
    s = torch.compile(fresh, fullgraph=True)(logits)
    assert keep[torch.arange(8), s.cpu().long()].all()


def test_chain_speculative_compiles(device):
    draft, ids, target = _chain(6, 3, 100, device)
    seed, offset = torch.tensor([11], device=device), torch.tensor([2], device=device)
    step = lambda *a: flashinfer.chain_speculative_sampling(*a, seed=seed, offset=offset)  # noqa: E731
    torch._dynamo.reset()
    got = torch.compile(step, fullgraph=True)(draft, ids, target)
    assert all(torch.equal(x, y) for x, y in zip(got, step(draft, ids, target)))


class _Sampler(torch.nn.Module):
    def forward(self, logits, seed, offset):
        return _step(logits, seed, offset)


def test_export(device, tmp_path):
    logits = torch.randn(4, 256, device=device)
    seed, offset = torch.tensor([5], device=device), torch.tensor([1], device=device)
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(_Sampler(), (logits, seed, offset), dynamic_shapes=({0: batch}, None, None))
    torch.export.save(ep, tmp_path / "sampler.pt2")
    loaded = torch.export.load(tmp_path / "sampler.pt2").module()
    for b in (4, 9):
        x = torch.randn(b, 256, device=device)
        assert torch.equal(loaded(x, seed, offset), _step(x, seed, offset))


def test_aoti_package(device, tmp_path):
    from test_compose import aoti_broken_here

    broken = aoti_broken_here(device, tmp_path)
    if broken:
        pytest.skip(broken)
    logits = torch.randn(4, 256, device=device)
    seed, offset = torch.tensor([5], device=device), torch.tensor([1], device=device)
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(_Sampler(), (logits, seed, offset), dynamic_shapes=({0: batch}, None, None))
    path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "sampler_aoti.pt2"),
                                                    inductor_configs=flashinfer.aot_inductor_configs())
    loaded = torch._inductor.aoti_load_package(path)
    for b in (4, 9):
        x = torch.randn(b, 256, device=device)
        assert torch.equal(loaded(x, seed, offset), _step(x, seed, offset))


@pytest.mark.gpu
def test_cuda_graph_replay():
    logits = torch.randn(16, 2048, device="cuda")
    seed = torch.tensor([3], device="cuda")
    offset = torch.tensor([0], device="cuda")
    out = _step(logits, seed, offset)  # warm-up
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = _step(logits, seed, offset)
    seen = []
    for step in range(5):
        offset.fill_(step * 4)
        logits.normal_()
        g.replay()
        assert torch.equal(out, _step(logits, seed, offset))
        seen.append(out.clone())
    assert any(not torch.equal(seen[0], s) for s in seen[1:])

    fresh_out = flashinfer.sampling_from_probs(torch.full((64, 100), 0.01, device="cuda"))
    g2 = torch.cuda.CUDAGraph()
    probs = torch.full((64, 100), 0.01, device="cuda")
    with torch.cuda.graph(g2):
        fresh_out = flashinfer.sampling_from_probs(probs)  # torch.randint inside: each replay draws anew
    g2.replay()
    first = fresh_out.clone()
    g2.replay()
    assert not torch.equal(first, fresh_out)


@pytest.mark.gpu
@pytest.mark.parametrize("vocab", [4099, 40001, 151936, 409600])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_softmax_at_vocab_scale(vocab, dtype):
    """softmax over rows split across a cluster's blocks (and rows too long for one): against the float64
    definition, for temperatures, a row of -inf but for one entry, a row with a NaN, greedy rows whose first largest
    logit and a tie of it sit in different blocks' slices, and strided rows."""
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(6, vocab, generator=g) * 4).to(dtype)
    logits[1] = float("-inf")
    logits[1, vocab - 1] = 0.0
    logits[2, vocab // 2] = float("nan")
    logits[3, 5] = logits[3, vocab - 2] = 100.0  # tied maxima far apart: greedy picks index 5
    temps = torch.tensor([1.0, 0.7, 2.0, 0.0, 1.3, 0.5])
    wide = torch.zeros(6, vocab + 1, dtype=dtype)
    wide[:, :vocab] = logits
    for rows in (logits.cuda(), wide.cuda()[:, :vocab]):
        out = flashinfer.softmax(rows, temperature=temps.cuda())
        ref = reference.softmax(logits, temps)
        assert torch.equal(out[2].cpu(), torch.zeros(vocab))  # the CPU op's rule for a NaN logit
        keep = torch.arange(6) != 2
        torch.testing.assert_close(out[keep].cpu().double(), ref[keep], atol=2e-6, rtol=2e-5)
        assert out[3, 5].item() == 1.0 and out[3].sum().item() == 1.0
        assert torch.equal(flashinfer.softmax(rows, temperature=temps.cuda()), out)


# Rows of one block (4096, 4099), clusters of 3 blocks (40001) and 8 (151936), rows longer than a cluster's slices
# hold (409600, read from memory each pass); four-element and scalar loads.
@pytest.mark.gpu
@pytest.mark.parametrize("vocab", [4096, 4099, 40001, 151936, 409600])
def test_cuda_matches_definitions_at_vocab_scale(vocab):
    """Large vocabularies on the CUDA kernels: draws in the kept sets; renormalised rows and masked logits against
    the CPU ops (which follow the definitions), also for strided rows and bf16 logits full of ties; the same bits
    on a second call."""
    probs = _probs(8, vocab, "cuda", spread=4.0)
    wide = torch.zeros(8, vocab + 3, device="cuda")
    wide[:, :vocab] = probs
    strided = wide[:, :vocab]  # rows vocab + 3 apart: scalar loads
    logits = torch.log(probs).to(torch.bfloat16)
    cpu, cpu_logits = probs.cpu(), logits.cpu()
    for k, p in ((50, 1.0), (0, 0.9), (1000, 0.95)):
        s = flashinfer.top_k_top_p_sampling_from_probs(probs, k, p, filter_apply_order="joint", seed=1, offset=0)
        ref_k, ref_p = flashinfer.top_k_renorm_probs(cpu, k), flashinfer.top_p_renorm_probs(cpu, p)
        keep_k, keep_p = ref_k > 0, ref_p > 0
        for rows in (probs, strided):
            out_k = flashinfer.top_k_renorm_probs(rows, k)
            out_p = flashinfer.top_p_renorm_probs(rows, p)
            assert torch.equal(out_k.cpu() > 0, keep_k) and torch.equal(out_p.cpu() > 0, keep_p)
            torch.testing.assert_close(out_k.cpu(), ref_k, atol=1e-6, rtol=1e-4)
            torch.testing.assert_close(out_p.cpu(), ref_p, atol=1e-6, rtol=1e-4)
            assert torch.equal(flashinfer.top_p_renorm_probs(rows, p), out_p)
        masked = flashinfer.top_k_mask_logits(logits, max(k, 1))
        assert torch.equal(masked.cpu(), flashinfer.top_k_mask_logits(cpu_logits, max(k, 1)))
        assert (keep_k & keep_p)[torch.arange(8), s.cpu().long()].all()


@pytest.mark.gpu
@pytest.mark.parametrize("vocab", [7, 4099, 151936])
def test_cuda_chain_speculative_keeps_what_the_host_op_keeps(vocab):
    """The same (seed, offset) keeps the same draft tokens on both devices (the keep tests are one float product and
    one comparison of the same uniforms); the drawn tokens have the same distribution, checked for support here.
    Also a strided view of the rows and bit-identical second calls."""
    draft, ids, target = _chain(32, 5, vocab, "cpu", seed=9, spread=0.5)
    ids[3, 1] = vocab  # outside the vocabulary: never kept
    cpu = flashinfer.chain_speculative_sampling(draft, ids, target, seed=21, offset=4)
    wide = torch.zeros(32, 6, vocab + 4)
    wide[:, :, 2:vocab + 2] = target
    args = (draft.cuda(), ids.cuda(), wide.cuda()[:, :, 2:vocab + 2])
    cuda = flashinfer.chain_speculative_sampling(*args, seed=21, offset=4)
    assert torch.equal(cuda[1].cpu(), cpu[1]) and torch.equal(cuda[2].cpu(), cpu[2])
    _check_chain(draft, ids, target, *cuda)
    again = flashinfer.chain_speculative_sampling(*args, seed=21, offset=4)
    assert all(torch.equal(x, y) for x, y in zip(cuda, again))
