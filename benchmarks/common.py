"""Shared benchmark machinery: CUDA-graph timing over rotating input sets, bandwidth, and the upstream
FlashInfer peer run in a subprocess (it also imports as `flashinfer`).

Each bench_<family>.py defines CASES: name -> (sizes, make(size) -> state, {impl: fn(state) or (make, fn)},
bytes(size)).
The same file runs in the peer's process with --impl upstream, where `import flashinfer` is upstream's.
"""

import argparse
import json
import os
import subprocess
import sys

import torch

L2_BYTES = 50 * 2**20

# The torch.compile peers compile once per shape (dynamic=False); keep all of them compiled.
for _name in ("cache_size_limit", "recompile_limit"):
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, 256)


def paged_batch(batch, kv_len, page, hkv, d, dtype=torch.bfloat16, layout="NHD", device="cuda"):
    """A 5-D paged cache holding `batch` requests of kv_len tokens on pages in random order, and its page tables
    (kv_indptr, kv_indices, kv_last_page_len), as a serving engine's cache looks after some churn."""
    pages_per = (kv_len + page - 1) // page
    num_pages = batch * pages_per
    shape = (num_pages, 2, page, hkv, d) if layout == "NHD" else (num_pages, 2, hkv, page, d)
    cache = torch.randn(shape, dtype=torch.bfloat16, device=device).to(dtype)
    indices = torch.randperm(num_pages, device=device).to(torch.int32)
    indptr = torch.arange(0, num_pages + 1, pages_per, dtype=torch.int32, device=device)
    last = torch.full((batch,), (kv_len - 1) % page + 1, dtype=torch.int32, device=device)
    return cache, indptr, indices, last


def time_us(fn, make, nbytes):
    """Median time of one call, in us. Calls run inside a CUDA graph (no launch gaps) and rotate over enough
    input sets that the working set exceeds L2 twice, so small shapes are timed from memory, not cache."""
    import triton.testing

    sets = int(max(1, min(64, (2 * L2_BYTES) // max(nbytes, 1) + 1)))
    states = [make() for _ in range(sets)]

    def run_all():
        for s in states:
            fn(s)

    run_all()  # warm-up: upstream's JIT compile, Inductor's autotuning
    torch.cuda.synchronize()
    ms = triton.testing.do_bench_cudagraph(run_all, rep=100, return_mode="median")
    return ms * 1e3 / sets


def eager_us(fn, make, nbytes=None):
    """Median wall time of one eager call including its host work and a device synchronisation, in us (for
    plan() + run() as a serving loop calls them outside CUDA graphs)."""
    import time

    state = make()
    for _ in range(3):  # warm-up: JIT, allocator
        fn(state)
    torch.cuda.synchronize()
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        fn(state)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e6


def table_selected(case):
    """BENCH_TABLES="fp8,append" selects the tables whose name starts with one of the given prefixes, in any case
    ("rope" selects "ROPE_LLAMA ..."); unset or empty selects every table."""
    only = [t.lstrip().lower() for t in os.environ.get("BENCH_TABLES", "").split(",") if t.strip()]
    return not only or any(case.lower().startswith(t) for t in only)


def run_impls(cases, impls):
    rows = []
    for case, (sizes, make, fns, nbytes) in cases.items():
        if not table_selected(case):
            continue
        for size in sizes:
            for impl in impls:
                if impl not in fns:
                    continue
                # An impl is fn(state), or (make, fn) when it needs inputs of its own (e.g. a contiguous cache).
                make_i, fn = fns[impl] if isinstance(fns[impl], tuple) else (make, fns[impl])
                try:
                    timer = eager_us if "eager" in impl else time_us  # "... (eager ...)" impls time host work too
                    us = timer(fn, lambda: make_i(size), nbytes(size))
                    rows.append(dict(case=case, size=str(size), impl=impl, us=us, gbps=nbytes(size) / us / 1e3))
                except Exception as e:  # a peer that cannot run a shape is reported, not fatal
                    rows.append(dict(case=case, size=str(size), impl=impl, error=f"{type(e).__name__}: {e}"[:200]))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def upstream_rows(script, peer_path, cases=None):
    """Runs `script --impl upstream` (over the same `--cases`) with the peer first on the path; returns its rows
    (or one error row)."""
    env = dict(os.environ, PYTHONPATH=peer_path, FLASHINFER_CUDA_ARCH_LIST="9.0a")
    argv = [sys.executable, script, "--impl", "upstream", "--json", "-"] + (["--cases", cases] if cases else [])
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return [dict(case="*", size="*", impl="upstream", error=proc.stderr[-2000:])]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(script, cases, local_impls, unit="GB/s"):
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", default="local", help="'local' (ours and torch peers) or 'upstream'")
    ap.add_argument("--peer", default=os.environ.get("FLASHINFER_PEER", "/tmp/peer"))
    ap.add_argument("--json", default=None, help="write rows as JSON to this path ('-': stdout)")
    ap.add_argument("--cases", default=os.environ.get("BENCH_CASES"),
                    help="run only the cases whose name contains this string (also env BENCH_CASES)")
    args = ap.parse_args()
    if args.cases:
        cases = {name: case for name, case in cases.items() if args.cases in name}
    if args.impl == "upstream":
        rows = run_impls(cases, sorted({i for c in cases.values() for i in c[2] if i.startswith("upstream")}))
    else:
        rows = run_impls(cases, local_impls)
        if os.path.isdir(args.peer):
            rows += upstream_rows(script, args.peer, args.cases)
    if args.json == "-":
        print(json.dumps(rows))
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f)
    print_table(rows, unit)


def print_table(rows, unit="GB/s"):
    """One line per (case, size): us and GB/s of each impl, ratio of ours to the best peer."""
    by_key = {}
    for r in rows:
        by_key.setdefault((r["case"], r["size"]), {})[r["impl"]] = r
    impls = sorted({r["impl"] for r in rows}, key=lambda i: (i != "ours", i))
    print("| case | size | " + " | ".join(f"{i} us ({unit})" for i in impls) + " | ours / best peer |", file=sys.stderr)
    print("|---" * (len(impls) + 3) + "|", file=sys.stderr)
    for (case, size), d in by_key.items():
        cells = []
        for i in impls:
            r = d.get(i)
            cells.append("-" if r is None else ("error" if "error" in r else f"{r['us']:.1f} ({r['gbps']:.0f})"))
        peers = [r["us"] for i, r in d.items() if not i.startswith("ours") and "us" in r]
        ratio = f"{min(peers) / d['ours']['us']:.2f}x" if peers and "us" in d.get("ours", {}) else "-"
        print(f"| {case} | {size} | " + " | ".join(cells) + f" | {ratio} |", file=sys.stderr)
