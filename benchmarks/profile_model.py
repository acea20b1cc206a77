"""Where a decode step of bench_model.py's model spends its time, ours against plain PyTorch + SDPA, both compiled
and captured in a CUDA graph: GPU time of a replay alone, the host's per-step input update, kernels per step and
the per-kernel table (torch.profiler over replays).

    python benchmarks/profile_model.py --points 16x1024,64x1024
"""

import argparse
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_model as bm  # noqa: E402
import llama  # noqa: E402  (bench_model put examples/ on the path)


def replay_us(graph, n=20):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n * 1e3


def advance_us(state, n=20):
    t0 = time.perf_counter()
    for _ in range(n):
        state.rewind()
        state.advance()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", default="16x1024,64x1024")
    ap.add_argument("--rows", type=int, default=10, help="kernels listed per table")
    args = ap.parse_args()
    model = llama.Llama(bm.CFG, device="cuda")
    variants = {
        "ours": (bm.Paged, torch.compile(llama.DecodeStep(model), fullgraph=True, dynamic=True)),
        "sdpa": (bm.Contiguous, bm.plain_step(torch.compile(bm.PlainStep(model), fullgraph=True, dynamic=True))),
    }
    for point in args.points.split(","):
        batch, ctx = map(int, point.split("x"))
        for name, (make, step) in variants.items():
            state = make(batch, ctx, 64)
            graph = bm.graphed(step, state)
            state.advance()
            for _ in range(3):
                graph.replay()
            torch.cuda.synchronize()
            gpu, host = replay_us(graph), advance_us(state)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    graph.replay()
                torch.cuda.synchronize()
            kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
            busy = sum(e.device_time for e in kernels) / 5
            print(f"== {name} {batch}x{ctx}: replay {gpu:.1f} us/step, GPU busy {busy:.1f} us, "
                  f"{len(kernels) / 5:.0f} kernels/step, host input update {host:.1f} us")
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows,
                                            max_name_column_width=60))
            graph = state = None
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
