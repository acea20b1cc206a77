"""Builds upstream FlashInfer's JIT modules for the benchmarks before they run, many modules at once.

Each bench's upstream subprocess builds the modules it needs one at a time, on first use (10-80 s each), which on a
fresh GPU machine costs more than the measurements. This script runs every upstream case of the given benches once,
at its first size, each in a process of its own, WARM_JOBS (default 8) at a time, so the builds share the machine's
cores; the benches then find the modules in the same cache. Set FLASHINFER_WORKSPACE_BASE to keep that cache (and
pass it to bench_model.py as --peer-jit-cache). BENCH_TABLES limits the cases to the tables the benches will run.

    python3 benchmarks/peer_warm.py [--peer /tmp/peer] [bench_decode bench_prefill bench_model ...]

A case whose module fails to build is reported and skipped, as the bench itself will report it.
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _cases(mod):
    return mod.CASES if hasattr(mod, "CASES") else mod._cases()


def child(bench, case):
    """In the peer's process: list the bench's upstream (case, impl) pairs, or run one of them once."""
    import importlib

    import torch

    sys.path.insert(0, HERE)
    from common import table_selected  # the benches' own selection

    cases = _cases(importlib.import_module(bench))
    if case is None:
        print(json.dumps([(c, i) for c, (_, _, fns, _) in cases.items() for i in fns
                          if i.startswith("upstream") and "eager" not in i  # eager rows reuse the same modules
                          and table_selected(c)]))
        return
    name, impl = json.loads(case)
    sizes, make, fns, _ = cases[name]
    make_i, fn = fns[impl] if isinstance(fns[impl], tuple) else (make, fns[impl])
    fn(make_i(sizes[0]))
    torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("benches", nargs="*", default=["bench_decode", "bench_decode_variants", "bench_prefill"])
    ap.add_argument("--peer", default=os.environ.get("FLASHINFER_PEER", "/tmp/peer"))
    ap.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], None if args.child[1] == "-" else args.child[1])
    env = dict(os.environ, PYTHONPATH=args.peer, FLASHINFER_CUDA_ARCH_LIST="9.0a")
    me = os.path.abspath(__file__)

    def run(cmd, label):
        t = time.time()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        tail = "" if p.returncode == 0 else " " + p.stderr.strip().splitlines()[-1][:300] if p.stderr.strip() else ""
        print(f"{time.time() - t:7.1f} s  rc {p.returncode}  {label}{tail}", flush=True)
        return p

    jobs = []
    for bench in args.benches:
        if bench == "bench_model":  # one small point builds everything the model's upstream variant uses
            jobs.append(([sys.executable, os.path.join(HERE, "bench_model.py"), "--impl", "upstream", "--points",
                          "1x64", "--json", os.devnull], "bench_model 1x64"))
            continue
        p = run([sys.executable, me, "--child", bench, "-"], f"{bench}: list")
        if p.returncode == 0:
            for case in json.loads(p.stdout.strip().splitlines()[-1]):
                label = f"{bench}: {case[0]} / {case[1]}"
                jobs.append(([sys.executable, me, "--child", bench, json.dumps(case)], label))
    with concurrent.futures.ThreadPoolExecutor(int(os.environ.get("WARM_JOBS", 8))) as ex:
        failed = sum(f.result().returncode != 0 for f in [ex.submit(run, c, label) for c, label in jobs])
    print(f"{len(jobs) - failed} of {len(jobs)} upstream cases ran; their modules are in the JIT cache")


if __name__ == "__main__":
    main()
