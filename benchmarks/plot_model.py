"""Plots bench_model.py's rows (JSON files, merged) as decode tokens/s by batch size, one panel per context.

    python benchmarks/plot_model.py benchmarks/model_h100.json -o benchmarks/model_h100.png
"""

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("json", nargs="+")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--title", default="Llama-style decoder decode throughput (hidden 4096, 4 layers, bf16)")
    args = ap.parse_args()
    rows = [r for path in args.json for r in json.load(open(path)) if "tok_s" in r]
    ctxs = sorted({r["ctx"] for r in rows})
    fig, axes = plt.subplots(1, len(ctxs), figsize=(6 * len(ctxs), 4.5), squeeze=False)
    for ax, ctx in zip(axes[0], ctxs):
        for impl in dict.fromkeys(r["impl"] for r in rows):
            pts = sorted((r["batch"], r["tok_s"]) for r in rows if r["impl"] == impl and r["ctx"] == ctx)
            style = "-" if impl.startswith("ours") else "--"
            ax.plot([b for b, _ in pts], [t for _, t in pts], style, marker="o", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("decode tokens/s")
        ax.set_title(f"context {ctx}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
