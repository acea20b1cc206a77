"""Decode tokens/s of a Llama-style model (examples/llama.py: hidden 4096, Hq 32, Hkv 8, D 128, SwiGLU 14336,
4 layers, bf16, random weights) at batch 1/16/64 and context 1k/8k, as a serving loop runs it: each step the host
updates the page tables, runs the step, samples greedily and reads the tokens back (one synchronisation a step).

Variants: our ops eager, compiled (fullgraph, dynamic; each point's warm-up compiles again where its shapes need it:
batch 1 is specialised, and each point has its own pool), compiled + CUDA graph; the same model in plain PyTorch
over a contiguous static cache with SDPA (eager, compiled, compiled + CUDA graph); and (in a subprocess, --impl
upstream) the same model on upstream FlashInfer's ops and decode wrapper in its CUDA-graph mode, plan() on the host
every step. Also the time from a fresh process to its first decode step.

    python benchmarks/bench_model.py --json out.json     # table on stderr; plot with plot_model.py
"""

import argparse
import json
import os
import subprocess
import sys
import time

T_START = time.perf_counter()

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))
import llama  # noqa: E402  (imports flashinfer: ours, or upstream's in the --impl upstream process)

CFG = llama.LlamaConfig(vocab_size=32000, hidden=4096, layers=4, heads=32, kv_heads=8, head_dim=128,
                        intermediate=14336, page_size=16)
POINTS = [(1, 1024), (16, 1024), (64, 1024), (1, 8192), (16, 8192), (64, 8192)]
WARMUP, STEPS = 4, 32


class Paged:
    """One point's paged cache: every request holds `ctx` tokens of random K/V on scattered pages and grows by
    one token a step. Page tables for each page count are built once on the device; a step copies the current
    ones into fixed buffers (the inputs a captured graph reads)."""

    def __init__(self, batch, ctx, max_steps):
        ps = CFG.page_size
        self.batch, self.n = batch, ctx  # every request holds n tokens
        self.want_host = False  # whether advance() also returns host tables (upstream's plan() reads them)
        self.max_pages = -(-(ctx + max_steps) // ps)
        pages = llama.Pages(CFG, batch * self.max_pages, torch.bfloat16, "cuda")
        for c in pages.caches:
            c.normal_()
        self.caches = pages.caches
        self.table = torch.tensor(pages.free[: batch * self.max_pages], dtype=torch.int32, device="cuda")
        self.table = self.table.view(batch, self.max_pages)
        self.tokens = torch.zeros(batch, dtype=torch.long, device="cuda")
        # The per-step values (positions, last-page lengths) share one device buffer, filled from a pinned host copy
        # in one transfer: a serving engine's one host-to-device copy of a step's metadata. Two fill_ calls took
        # 27 us of host time a step on the GPU machine, against 10 us for SDPA's one fill_ of its positions.
        self.step_dev = torch.zeros(2, batch, dtype=torch.int32, device="cuda")
        self.step_host = torch.zeros(2, batch, dtype=torch.int32, pin_memory=True)
        self.step_np = self.step_host.numpy()
        self.step_copied = torch.cuda.Event()  # the host buffer is rewritten only once its last copy is done
        self.bufs = dict(positions=self.step_dev[0],
                         indptr=torch.zeros(batch + 1, dtype=torch.int32, device="cuda"),
                         indices=torch.zeros(batch * self.max_pages, dtype=torch.int32, device="cuda"),
                         last=self.step_dev[1])
        self._by_count = {}
        self._count = None

    def rewind(self):
        self.n -= 1

    def advance(self):
        """The next step's (positions, kv_indptr, kv_indices, kv_last_page_len), written into the fixed buffers;
        with want_host, also (indptr on the host, indices, last_page_len on the host) for upstream's plan()."""
        ps, n = CFG.page_size, self.n
        count = n // ps + 1  # pages once the new token is in
        if count not in self._by_count:
            indptr = torch.arange(self.batch + 1, dtype=torch.int32) * count
            self._by_count[count] = (indptr, indptr.cuda(), self.table[:, :count].reshape(-1).contiguous())
        indptr_h, indptr_d, indices = self._by_count[count]
        b = self.bufs
        self.step_copied.synchronize()
        self.step_np[0], self.step_np[1] = n, n % ps + 1
        self.step_dev.copy_(self.step_host, non_blocking=True)
        self.step_copied.record()
        if count != self._count:  # the page count grows every page_size steps
            b["indptr"].copy_(indptr_d)
            b["indices"][: indices.numel()].copy_(indices)
            self._count = count
        self.n += 1
        host = None
        if self.want_host:
            host = (indptr_h, indices, torch.full((self.batch,), n % ps + 1, dtype=torch.int32))
        return (b["positions"], b["indptr"], b["indices"], b["last"]), host


def time_loop(step, state, prepare=None):
    """Median seconds of one decode step: the host updates the inputs in place, the step runs, argmax writes the
    next tokens into their input buffer, the host reads them back (a serving loop's one synchronisation)."""
    tokens = state.tokens
    tokens.random_(0, CFG.vocab_size)
    times = []
    for s in range(WARMUP + STEPS):
        t0 = time.perf_counter()
        tables, host = state.advance()
        if prepare is not None:
            prepare(host)
        logits = step(tokens, *tables, state.caches)
        torch.argmax(logits, -1, out=tokens)
        tokens.cpu()
        if s >= WARMUP:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


# ---- plain PyTorch: the same weights over a contiguous static cache, SDPA ----

class PlainStep(torch.nn.Module):
    """The model's decode step in plain PyTorch: K/V in [batch, Hkv, max_len, D] per layer, the new token written
    at its position, SDPA over the whole cache with a length mask (a static cache, as graph capture needs).
    The GQA group is folded into the query rows so SDPA reads each K/V head once."""

    def __init__(self, model):
        super().__init__()
        self.m = model
        d = CFG.head_dim
        inv = CFG.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float32, device="cuda") / d)
        self.register_buffer("inv_freq", inv)

    def rms(self, x, w):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + CFG.eps)).to(x.dtype) * w

    def rope(self, x, pos):
        ang = pos.float()[:, None, None] * self.inv_freq
        c, s = ang.cos(), ang.sin()
        x1, x2 = x[..., : x.shape[-1] // 2].float(), x[..., x.shape[-1] // 2 :].float()
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1).to(x.dtype)

    def forward(self, tokens, positions, k_caches, v_caches):
        m, b = self.m, tokens.shape[0]
        hq, hk, d = CFG.heads, CFG.kv_heads, CFG.head_dim
        rows = torch.arange(b, device=tokens.device)
        mask = (torch.arange(k_caches[0].shape[2], device=tokens.device) <= positions[:, None])[:, None, None]
        x = m.embed[tokens]
        for i, layer in enumerate(m.layers_):
            qkv = self.rms(x, layer.attn_norm) @ layer.qkv
            q = self.rope(qkv[:, : hq * d].view(b, hq, d), positions)
            k = self.rope(qkv[:, hq * d : (hq + hk) * d].view(b, hk, d), positions)
            v = qkv[:, (hq + hk) * d :].view(b, hk, d)
            k_caches[i][rows, :, positions.long()] = k
            v_caches[i][rows, :, positions.long()] = v
            o = torch.nn.functional.scaled_dot_product_attention(
                q.view(b, hk, hq // hk, d), k_caches[i], v_caches[i], attn_mask=mask, scale=d ** -0.5)
            x = x + o.reshape(b, hq * d) @ layer.o
            h = self.rms(x, layer.mlp_norm) @ layer.gate_up
            x = x + (torch.nn.functional.silu(h[:, : CFG.intermediate]) * h[:, CFG.intermediate :]) @ layer.down
        return self.rms(x, m.norm) @ m.lm_head


class Contiguous:
    """One point's static contiguous cache for PlainStep: [batch, Hkv, max_len, D] K and V per layer of random
    values, every request at `ctx` tokens and growing by one a step."""

    def __init__(self, batch, ctx, max_steps):
        self.batch, self.pos = batch, ctx
        max_len = -(-(ctx + max_steps) // 64) * 64
        shape = (batch, CFG.kv_heads, max_len, CFG.head_dim)
        self.k = [torch.randn(shape, dtype=torch.bfloat16, device="cuda") for _ in range(CFG.layers)]
        self.v = [torch.randn(shape, dtype=torch.bfloat16, device="cuda") for _ in range(CFG.layers)]
        self.positions = torch.zeros(batch, dtype=torch.int64, device="cuda")
        self.tokens = torch.zeros(batch, dtype=torch.long, device="cuda")
        self.caches = [self.k, self.v]

    def rewind(self):
        self.pos -= 1

    def advance(self):
        self.positions.fill_(self.pos)
        self.pos += 1
        return (self.positions,), None


def plain_step(fn):
    return lambda tokens, positions, caches: fn(tokens, positions, *caches)


# ---- the variants ----

def graphed(step, state):
    """The step captured in a CUDA graph for this point, reading the point's input buffers in place (its warm-up
    runs on the next step's tables, which are then handed out again)."""
    tables, _ = state.advance()
    state.rewind()
    return llama.GraphedDecode(step, (state.tokens, *tables), state.caches, own_inputs=False)


def local_rows(points):
    model = llama.Llama(CFG, device="cuda")
    ours = llama.DecodeStep(model)
    ours_c = torch.compile(ours, fullgraph=True, dynamic=True)
    plain = PlainStep(model)
    plain_c = torch.compile(plain, fullgraph=True, dynamic=True)
    rows = []
    for batch, ctx in points:
        n = WARMUP + STEPS + 4
        variants = {
            "ours eager": (Paged, lambda s: ours),
            "ours compiled": (Paged, lambda s: ours_c),
            "ours compiled + graph": (Paged, lambda s: graphed(ours_c, s)),
            "sdpa eager": (Contiguous, lambda s: plain_step(plain)),
            "sdpa compiled": (Contiguous, lambda s: plain_step(plain_c)),
            "sdpa compiled + graph": (Contiguous, lambda s: graphed(plain_step(plain_c), s)),
        }
        for name, (make, step_of) in variants.items():
            rows.append(measure(name, batch, ctx, lambda: make(batch, ctx, n), step_of))
    return rows


def measure(name, batch, ctx, make, step_of, prepare_of=None):
    try:
        state = make()
        step = step_of(state)
        sec = time_loop(step, state, prepare_of(state) if prepare_of else None)
        row = dict(impl=name, batch=batch, ctx=ctx, ms=sec * 1e3, tok_s=batch / sec)
    except Exception as e:  # a variant that cannot run a point is reported, not fatal
        row = dict(impl=name, batch=batch, ctx=ctx, error=f"{type(e).__name__}: {e}"[:300])
    finally:
        state = step = None
        torch.cuda.empty_cache()
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def upstream_rows(points):
    """Run in the process where `flashinfer` is upstream's: the same model, its attention through upstream's decode
    wrapper (tensor-core path, its fastest for GQA 4), plan() on the host before every step."""
    import flashinfer

    model = llama.Llama(CFG, device="cuda")
    step = llama.DecodeStep(model)
    rows = []
    for batch, ctx in points:
        n = WARMUP + STEPS + 4
        for name, use_graph in (("upstream eager (plan + run)", False), ("upstream graph (plan on host)", True)):
            box = {}

            def step_of(state, use_graph=use_graph, box=box):
                state.want_host = True
                ws = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
                kw = {}
                if use_graph:
                    kw = dict(paged_kv_indptr_buffer=torch.empty_like(state.bufs["indptr"]),
                              paged_kv_indices_buffer=torch.empty_like(state.bufs["indices"]),
                              paged_kv_last_page_len_buffer=torch.empty_like(state.bufs["last"]))
                w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_cuda_graph=use_graph,
                                                                  use_tensor_cores=True, **kw)
                box["plan"] = lambda host: w.plan(host[0], host[1], host[2], CFG.heads, CFG.kv_heads, CFG.head_dim,
                                                  CFG.page_size, q_data_type=torch.bfloat16,
                                                  kv_data_type=torch.bfloat16)
                model.attend = lambda i, q, cache, *tables: w.run(q, cache)
                if not use_graph:
                    return step
                _, host = state.advance()
                box["plan"](host)
                return graphed(step, state)

            rows.append(measure(name, batch, ctx, lambda: Paged(batch, ctx, n), step_of,
                                lambda state, box=box: box["plan"]))
    return rows


def first_step():
    """--first-step: from this process's start, import, build a small model, prefill three prompts and run one
    decode step; prints the seconds to that point."""
    import flashinfer  # noqa: F401

    # Small, with the benchmark's head_dim, so upstream's JIT modules built here serve the benchmark too.
    model = llama.Llama(llama.LlamaConfig(hidden=256, heads=4, kv_heads=1, head_dim=128), device="cuda")
    if not hasattr(torch.ops.flashinfer, "batch_decode_with_paged_kv_cache"):  # upstream: its wrappers
        ws = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
        pre = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD")
        dec = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=True)
        cfg = model.cfg

        def attend(i, q, cache, qo_indptr, kv_indptr, kv_indices, last, decode):
            w = dec if decode else pre
            if i == 0:
                args = (kv_indptr, kv_indices, last, cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.page_size)
                if decode:
                    w.plan(*args, q_data_type=torch.bfloat16)
                else:
                    w.plan(qo_indptr, *args, causal=True, q_data_type=torch.bfloat16)
            return w.run(q, cache)

        model.attend = attend
    tokens, _ = llama.generate(model, [[1, 2, 3], [4] * 20, [5] * 40], 1, device="cuda")
    torch.cuda.synchronize()
    print(json.dumps(dict(seconds=time.perf_counter() - T_START)))


def first_step_row(impl, env):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--first-step"], env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return dict(impl=impl, first_step="error", error=proc.stderr[-1500:])
    inner = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
    return dict(impl=impl, first_step=True, seconds=inner, process_wall_s=wall)


def print_table(rows):
    steps = [r for r in rows if "batch" in r]
    impls = list(dict.fromkeys(r["impl"] for r in steps))
    key = "ours compiled + graph"
    print("| batch | context | " + " | ".join(impls) + f" | {key} / best other |", file=sys.stderr)
    print("|---" * (len(impls) + 3) + "|", file=sys.stderr)
    for batch, ctx in dict.fromkeys((r["batch"], r["ctx"]) for r in steps):
        d = {r["impl"]: r for r in steps if (r["batch"], r["ctx"]) == (batch, ctx)}
        cells = [("error" if "error" in d[i] else f"{d[i]['tok_s']:.0f} ({d[i]['ms']:.2f} ms)") if i in d else "-"
                 for i in impls]
        others = [r["tok_s"] for i, r in d.items() if i != key and "tok_s" in r]
        ratio = f"{d[key]['tok_s'] / max(others):.2f}x" if others and "tok_s" in d.get(key, {}) else "-"
        print(f"| {batch} | {ctx} | " + " | ".join(cells) + f" | {ratio} |", file=sys.stderr)
    for r in rows:
        if "first_step" in r:
            print(f"first decode step from a fresh process, {r['impl']}: " +
                  (f"{r['seconds']:.1f} s ({r['process_wall_s']:.1f} s process wall)" if "seconds" in r else "error"),
                  file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", default="local", help="'local' (ours and plain PyTorch) or 'upstream'")
    ap.add_argument("--peer", default=os.environ.get("FLASHINFER_PEER", "/tmp/peer"))
    ap.add_argument("--json", default=None, help="write rows as JSON to this path ('-': stdout)")
    ap.add_argument("--first-step", action="store_true")
    ap.add_argument("--points", default=None, help="e.g. '1x1024,64x8192' (default: all)")
    ap.add_argument("--only", choices=["local", "peer"], default=None,
                    help="run only our and plain-PyTorch variants, or only the upstream ones (default: both)")
    ap.add_argument("--peer-jit-cache", default=None,
                    help="upstream's JIT cache directory (FLASHINFER_WORKSPACE_BASE) to use and keep, so modules "
                         "built by an earlier run are reused (default: a fresh one, timed cold then warm)")
    args = ap.parse_args()
    if args.first_step:
        return first_step()
    points = POINTS if args.points is None else [tuple(map(int, p.split("x"))) for p in args.points.split(",")]
    if args.impl == "upstream":
        rows = upstream_rows(points)
    else:
        rows = []
        if args.only != "peer":
            rows.append(first_step_row("ours", dict(os.environ)))
            rows += local_rows(points)
        if args.only != "local" and os.path.isdir(args.peer):
            # A fresh JIT cache: upstream's first step from a fresh process includes its JIT compilation. A given
            # cache is timed once and labelled as given: upstream rebuilds what it does not recognise there (a cache
            # holding only the .so files, without upstream's generated sources, is rebuilt in full).
            cache = args.peer_jit_cache or os.path.join("/tmp", f"flashinfer_jit_{os.getpid()}")
            env = dict(os.environ, PYTHONPATH=args.peer, FLASHINFER_CUDA_ARCH_LIST="9.0a",
                       FLASHINFER_WORKSPACE_BASE=os.path.abspath(cache))
            if not args.peer_jit_cache:
                rows.append(first_step_row("upstream (cold JIT cache)", env))
            rows.append(first_step_row("upstream (JIT cache as given)" if args.peer_jit_cache
                                       else "upstream (warm JIT cache)", env))
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--impl", "upstream", "--json", "-",
                                   "--points", ",".join(f"{b}x{c}" for b, c in points)],
                                  env=env, capture_output=True, text=True)
            sys.stderr.write(proc.stderr[-3000:])
            if proc.returncode == 0:
                rows += json.loads(proc.stdout.strip().splitlines()[-1])
            else:
                rows.append(dict(impl="upstream", batch=0, ctx=0, error=proc.stderr[-1500:]))
    if args.json == "-":
        print(json.dumps(rows))
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f)
    print_table(rows)


if __name__ == "__main__":
    main()
