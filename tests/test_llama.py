"""The Llama-style example model (examples/llama.py), tiny on the CPU and of a real width on CUDA: eager
against a plain-PyTorch version of the same model (contiguous K/V, SDPA); prefill and the decode step compiled
whole (one graph for every batch and step, caches written in place); the decode loop in a CUDA graph and under
reduce-overhead; the decode step exported and run through AOTInductor in a fresh process."""

import ast
import math
import os
import subprocess
import sys

import pytest
import torch

import flashinfer
from helpers import assert_matches

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
import llama  # noqa: E402

PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], [20] * 30]
GPU = pytest.mark.gpu


def make_model(device):
    """Tiny on the CPU (CI); on CUDA a real model's width: the layer of Llama 3 8B (hidden 4096, 32 query and 8 KV
    heads of 128, SwiGLU 14336), two of them, and a 32000-token vocabulary."""
    if device == "cpu":
        return llama.Llama(llama.LlamaConfig(), device=device)
    cfg = llama.LlamaConfig(vocab_size=32000, hidden=4096, layers=2, heads=32, kv_heads=8, head_dim=128,
                            intermediate=14336)
    return llama.Llama(cfg, device=device)


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope(x, pos, theta):
    d = x.shape[-1]
    freq = theta ** (-torch.arange(0, d // 2, dtype=torch.float64, device=pos.device) * 2 / d)
    ang = pos.double()[:, None] * freq[None]
    c, s = ang.cos()[:, None].to(x.dtype), ang.sin()[:, None].to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1)


def plain_logits(model, tokens, dtype):
    """Logits of the last token of `tokens` from the same weights in plain PyTorch at `dtype` (SDPA, full K/V), on
    the model's device (float64 at a real width is slow on the host)."""
    cfg = model.cfg
    cached = model.__dict__.setdefault("_plain_params", {})
    if dtype not in cached:
        cached[dtype] = {n: t.detach().to(dtype) for n, t in model.named_parameters()}
    p = cached[dtype]
    dev = p["embed"].device
    tok = torch.tensor(tokens, device=dev)
    n = tok.shape[0]
    h = p["embed"][tok]
    pos = torch.arange(n, device=dev)
    hq, hk, d = cfg.heads, cfg.kv_heads, cfg.head_dim
    for i in range(cfg.layers):
        a = _rms(h, p[f"layers_.{i}.attn_norm"], cfg.eps)
        qkv = a @ p[f"layers_.{i}.qkv"]
        q = _rope(qkv[:, : hq * d].view(n, hq, d), pos, cfg.rope_theta)
        k = _rope(qkv[:, hq * d : (hq + hk) * d].view(n, hk, d), pos, cfg.rope_theta)
        v = qkv[:, (hq + hk) * d :].view(n, hk, d)
        o = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                                             is_causal=True, enable_gqa=True, scale=d ** -0.5)
        h = h + o.transpose(0, 1).reshape(n, hq * d) @ p[f"layers_.{i}.o"]
        m = _rms(h, p[f"layers_.{i}.mlp_norm"], cfg.eps) @ p[f"layers_.{i}.gate_up"]
        inter = cfg.intermediate
        h = h + (torch.nn.functional.silu(m[:, :inter]) * m[:, inter:]) @ p[f"layers_.{i}.down"]
    return (_rms(h, p["norm"], cfg.eps) @ p["lm_head"])[-1]


def _assert_caches_written_in_place(codes, op, layers):
    """The generated code calls `op` once per layer and holds no clone or copy_ (of a cache or anything else)."""
    code = "\n".join(codes)
    assert code.count(f"torch.ops.flashinfer.{op}.default(") == layers
    for copy in ("clone", "copy_"):
        assert copy not in code, f"generated code holds a {copy} (of a cache?)"


def _call_args(code, op):
    """The argument expressions (keywords as name=expr) of every call of torch.ops.flashinfer.<op> in generated
    code, read from its syntax tree."""
    target = f"torch.ops.flashinfer.{op}.default"
    return [[ast.unparse(a) for a in node.args] + [f"{k.arg}={ast.unparse(k.value)}" for k in node.keywords]
            for node in ast.walk(ast.parse(code))
            if isinstance(node, ast.Call) and ast.unparse(node.func) == target]


def test_eager_matches_plain_pytorch(device):
    model = make_model(device)
    steps = 20  # the third prompt crosses pages 2 and 3
    tokens, logits = llama.generate(model, PROMPTS, steps, device=device)
    for s in (0, 1, 9, 19):
        for b, prompt in enumerate(PROMPTS):
            seq = prompt + tokens[b, : s + 1].tolist()
            ref = plain_logits(model, seq, torch.float64)
            base = plain_logits(model, seq, torch.bfloat16)
            assert_matches(logits[s][b], ref, base, f"step {s} request {b}")


def test_decode_step_compiles_once_for_every_batch_and_step(device):
    """fullgraph + dynamic: one graph serves batch sizes 2, 3 and 5 and every decode step (error_on_recompile after
    the warm-up); the generated code writes the caches in place (no clone or copy of them)."""
    from torch._inductor.utils import run_and_get_code

    model = make_model(device)
    torch._dynamo.reset()
    compiled = torch.compile(llama.DecodeStep(model), fullgraph=True, dynamic=True)
    batches = [PROMPTS[:2], PROMPTS, PROMPTS + [[7, 7], [9] * 5]]
    # The warm-up batch of 2 equals the caches' K/V dim: the static pool keeps Dynamo from tying the two together.
    llama.generate(model, batches[0], 2, device=device, step_fn=compiled, static_pool=True)  # the one compile
    with torch._dynamo.config.patch(error_on_recompile=True):
        for prompts in batches:
            got, _ = llama.generate(model, prompts, 6, device=device, step_fn=compiled, static_pool=True)
            expect, _ = llama.generate(model, prompts, 6, device=device)
            assert torch.equal(got, expect)
    pages = llama.Pages(model.cfg, 8, torch.bfloat16, device)
    llama.prefill(model, pages, PROMPTS[:2])
    args = (torch.tensor([3, 4], device=device), torch.tensor([3, 14], dtype=torch.int32, device=device),
            *pages.tables([4, 15]), pages.caches)
    # Compiled afresh: Inductor's on-disk caches key on the graph, not on the ops' tags this checks.
    with torch._inductor.config.patch(force_disable_caches=True):
        _, codes = run_and_get_code(compiled, *args)
    _assert_caches_written_in_place(codes, "append_paged_kv_cache", model.cfg.layers)
    # The step's arange(batch) is one buffer that every layer's append reads, not a copy per layer.
    batch_indices = {call[2] for call in _call_args("\n".join(codes), "append_paged_kv_cache")}
    assert len(batch_indices) == 1, batch_indices


def test_prefill_compiles_once_for_every_batch(device):
    """Prefill of the whole model under fullgraph + dynamic: one graph for batches of 2, 3 and 5 prompts of
    different lengths (error_on_recompile after the warm-up), logits equal to eager, caches written in place."""
    from torch._inductor.utils import run_and_get_code

    model = make_model(device)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    batches = [PROMPTS[1:], PROMPTS, PROMPTS + [[7, 7], [9] * 5], PROMPTS[:2]]

    def run(prompts, fn):
        pages = llama.Pages(model.cfg, 16, torch.bfloat16, device)
        if fn is not None:
            pages.mark_static()
        return llama.prefill(model, pages, prompts, fn), pages.caches

    run(batches[0], compiled)  # warm-up: the one compile
    with torch._dynamo.config.patch(error_on_recompile=True):
        for prompts in batches:
            got, got_caches = run(prompts, compiled)
            expect, expect_caches = run(prompts, None)
            torch.testing.assert_close(got, expect)
            assert torch.equal(got.argmax(-1), expect.argmax(-1))
            for g, e in zip(got_caches, expect_caches):
                torch.testing.assert_close(g, e)
        pages = llama.Pages(model.cfg, 16, torch.bfloat16, device).mark_static()
        _, codes = run_and_get_code(lambda: llama.prefill(model, pages, PROMPTS, compiled))
    _assert_caches_written_in_place(codes, "batch_prefill_with_paged_kv_cache", model.cfg.layers)


@GPU
def test_decode_graph_replayed_120_steps_as_pages_are_allocated():
    """The decode step captured once in a CUDA graph and replayed for 120 steps; every request grows across page
    boundaries and gets new (scattered) pages between replays. Each replay's logits and cache writes equal an
    eager step on the same inputs, and the greedy tokens follow from them."""
    dev = "cuda"
    model = make_model(dev)
    step = llama.DecodeStep(model)
    prompts = [[5] * 9, [1, 2, 3], list(range(100, 130)), [7] * 16]
    pages = llama.Pages(model.cfg, 64, torch.bfloat16, dev)
    logits = llama.prefill(model, pages, prompts)
    lens = [len(p) for p in prompts]
    graphed = None
    allocations = 0
    for s in range(120):
        free_before = len(pages.free)
        args = (logits.argmax(-1), torch.tensor(lens, dtype=torch.int32, device=dev))
        lens = [n + 1 for n in lens]
        args += pages.tables(lens)
        allocations += free_before - len(pages.free)
        if graphed is None:
            graphed = llama.GraphedDecode(step, args, pages.caches)
        before = [c.clone() for c in pages.caches]
        got = graphed(*args, pages.caches).clone()
        after = [c.clone() for c in pages.caches]
        for c, b in zip(pages.caches, before):
            c.copy_(b)
        expect = step(*args, pages.caches)
        torch.testing.assert_close(got, expect, rtol=0, atol=0, msg=lambda m: f"step {s}: {m}")
        for a, c in zip(after, pages.caches):
            assert torch.equal(a, c), f"step {s}: the replay wrote the cache differently from eager"
        logits = got
    assert allocations >= 4 * 7, f"only {allocations} pages were allocated between replays"
    # The same through generate(graph=True), the example's own loop.
    got, _ = llama.generate(model, PROMPTS, 30, device=dev, graph=True)
    expect, _ = llama.generate(model, PROMPTS, 30, device=dev)
    assert torch.equal(got, expect)


@GPU
def test_decode_loop_reduce_overhead_no_skipped_graphs():
    """generate() with the decode step under torch.compile(mode="reduce-overhead"): cudagraph trees record the step
    once and replay it for every step (no skipped graph: the caches are static addresses, the page tables have
    one shape); tokens equal eager's, logits within the tolerance of eager."""
    from torch._dynamo.utils import counters

    dev = "cuda"
    model = make_model(dev)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(llama.DecodeStep(model), mode="reduce-overhead", fullgraph=True)

    def step(*args):
        for c in args[-1]:
            torch._dynamo.mark_static_address(c)
        return compiled(*args)

    got, got_logits = llama.generate(model, PROMPTS, 40, device=dev, step_fn=step)
    expect, expect_logits = llama.generate(model, PROMPTS, 40, device=dev)
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    assert torch.equal(got, expect)
    for g, e in zip(got_logits, expect_logits):
        torch.testing.assert_close(g, e)


def test_generate_samples_through_flashinfer_sampling(device):
    """generate() with a Sampler (temperature 0.8, top-k 5, top-p 0.9 through flashinfer.sampling): every token after
    the first is among the 5 largest logits it was drawn from (ties included); the same global seed draws the same
    tokens, another seed others; temperature 0 is greedy."""
    model = make_model(device)
    sampler = llama.Sampler(0.8, top_k=5, top_p=0.9)
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        runs.append(llama.generate(model, PROMPTS, 12, device=device, sampler=sampler))
    tokens, logits = runs[0]
    for s in range(1, 12):  # top-k keeps every entry tied with the k-th largest
        fifth = logits[s - 1].topk(5, -1).values[:, -1:]
        assert (logits[s - 1].gather(-1, tokens[:, s : s + 1]) >= fifth).all(), f"step {s}: a token outside the top 5"
    assert torch.equal(runs[1][0], tokens) and not torch.equal(runs[2][0], tokens)
    greedy, _ = llama.generate(model, PROMPTS, 4, device=device)
    assert torch.equal(llama.generate(model, PROMPTS, 4, device=device, sampler=llama.Sampler(0.0))[0], greedy)


def test_page_pool_errors_and_reuse():
    """The example's pool: pages handed out as requests grow, a clear error when it runs out (nothing handed
    out by the failing call), generate() refusing prompts its pool cannot hold."""
    cfg = llama.LlamaConfig()
    pages = llama.Pages(cfg, 4, torch.bfloat16, "cpu")
    indptr, indices, last = pages.tables([16, 17])  # one page, then two
    assert indptr.tolist() == [0, 1, 3] and last.tolist() == [16, 1] and indices.shape == (4,)
    assert len(set(indices[:3].tolist())) == 3 and len(pages.free) == 1
    pages.tables([16, 18])  # same pages: nothing new
    assert len(pages.free) == 1
    with pytest.raises(RuntimeError, match="out of pages: 2 more needed, 1 free"):
        pages.tables([40, 18])
    assert len(pages.free) == 1 and [len(p) for p in pages.owned] == [1, 2]
    model = llama.Llama(cfg)
    with pytest.raises(ValueError, match="exceed the pool"):
        llama.generate(model, PROMPTS, 200)


def _step_inputs(model, device, batch=3):
    pages = llama.Pages(model.cfg, batch * 3, torch.bfloat16, device)
    logits = llama.prefill(model, pages, PROMPTS[:batch])
    lens = [len(p) for p in PROMPTS[:batch]]
    args = (logits.argmax(-1), torch.tensor(lens, dtype=torch.int32, device=device),
            *pages.tables([n + 1 for n in lens]))
    return args, pages.caches


def _run_fresh(kind, path, args, caches, tmp_path):
    """Loads the program in a new Python process, runs one step, returns (logits, caches after)."""
    inp, out = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save((args, caches), inp)
    load = "torch.export.load(p).module()" if kind == "export" else "torch._inductor.aoti_load_package(p)"
    code = (f"import torch, flashinfer; p = {str(path)!r}; m = {load}; args, caches = torch.load({str(inp)!r}); "
            f"y = m(*args, caches); torch.save((y, caches), {str(out)!r})")
    subprocess.run([sys.executable, "-c", code], check=True)
    return torch.load(out)


@pytest.mark.parametrize("kind", ["export", "aoti"])
def test_decode_step_exported_dynamic_batch_fresh_process(device, kind, tmp_path):
    """torch.export with a dynamic batch, the caches as inputs; saved (or packaged with AOTInductor), loaded in a
    new process and run: the logits equal eager and the caches are written in place."""
    if kind == "aoti":
        import test_compose

        broken = test_compose.aoti_broken_here(device, tmp_path)
        if broken:
            pytest.skip(broken)
    model = make_model(device)
    args, caches = _step_inputs(model, device)
    b, n = torch.export.Dim("batch", min=2, max=256), torch.export.Dim("pages", min=1, max=4096)
    dyn = ({0: b}, {0: b}, {0: b + 1}, {0: n}, {0: b}, [None] * model.cfg.layers)
    ep = torch.export.export(llama.DecodeStep(model), (*args, [c.clone() for c in caches]), dynamic_shapes=dyn)
    path = tmp_path / f"decode_step_{kind}.pt2"
    if kind == "export":
        torch.export.save(ep, str(path))
    else:
        path = torch._inductor.aoti_compile_and_package(ep, package_path=str(path),
                                                        inductor_configs=flashinfer.aot_inductor_configs())
    expect_caches = [c.clone() for c in caches]
    expect = llama.DecodeStep(model)(*args, expect_caches)
    got, got_caches = _run_fresh(kind, path, args, caches, tmp_path)
    torch.testing.assert_close(got.to(expect.device), expect)
    for g, e in zip(got_caches, expect_caches):
        assert torch.equal(g.to(e.device), e), f"the {kind} step must write the caches in place"
