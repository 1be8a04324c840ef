"""Moves against balancedness when the loads drift: what a previous placement
buys (SPEC.md "Keeping experts where they are").

    python benchmarks/bench_migration.py [--quick] [--json OUT] [--plot PNG]

Two shapes: DeepSeek-V3 (58 layers, 256 experts, 288 slots, 8 groups, 4
nodes, 32 GPUs) and a Qwen3-235B-like model (94 layers, 128 experts, 160
slots, no groups, 32 GPUs). Base loads are Exp(1)^2 x 1000 per (layer,
expert); each of the R windows multiplies the previous window's loads by a
log-normal factor exp(sigma N(0, 1)) per (layer, expert), sigma = 0.05 and
0.2, and records S = 4 steps, each the window's loads times exp(0.1 N(0, 1))
(per-step noise), rounded to integers. Every method starts from the variant's
placement of the base loads and then serves its own output: at each window
it places the recorded loads against the placement it served so far.

Methods, per variant:
* fresh: the variant's placement, no previous map;
* vllm: fresh, with vLLM's rule re-stated: a slot keeps its expert when the
  new placement puts that expert on the same GPU (slots reordered inside each
  GPU). Moves count (GPU, expert) pairs, so the rule moves no fewer weights
  than fresh: it saves slot copies on a GPU, not transfers between GPUs;
* relabel: ``previous_physical_to_logical_map`` only (exact relabeling);
* M=x%: ``max_moves`` = x% of P per layer (incremental rebalancing).

Reported per method: mean moves per layer and rebalance, mean balancedness
(over layers and windows, on the window's loads summed over steps), and the
median time of one call (ms) and its ratio to the fresh call. ``--quick``
runs the deepseek variant only, 5 windows.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import Run

from eplb_ext import metrics, rebalance_experts

SHAPES = {  # name: (L, E, P, G, C, N)
    "dsv3": (58, 256, 288, 32, 8, 4),
    "qwen3": (94, 128, 160, 32, None, 1),
}
BUDGETS = (0.02, 0.05, 0.10, 0.20)
STEPS = 4


def windows(L, E, sigma, count, seed):
    """``count`` recorded windows [S, L, E] (int64) of drifting loads, and the base loads."""
    g = torch.Generator().manual_seed(seed)
    base = torch.empty(L, E, dtype=torch.float64).exponential_(generator=g) ** 2 * 1000
    loads, out = base, []
    for _ in range(count):
        loads = loads * torch.exp(sigma * torch.randn(L, E, generator=g, dtype=torch.float64))
        noise = torch.exp(0.1 * torch.randn(STEPS, L, E, generator=g, dtype=torch.float64))
        out.append((loads * noise).round().to(torch.int64))
    return base.round().to(torch.int64), out


def vllm_rule(prev, new, k):
    """``new`` with each GPU's slots reordered so that an expert the GPU held
    in ``prev`` keeps its old slot (as vLLM's rearrangement does)."""
    out = new.clone()
    L, P = new.shape
    for layer in range(L):
        for g in range(P // k):
            old = prev[layer, g * k:(g + 1) * k].tolist()
            items = new[layer, g * k:(g + 1) * k].tolist()
            slot = [None] * k
            for j, e in enumerate(old):
                if e in items:
                    items.remove(e)
                    slot[j] = e
            rest = iter(items)
            out[layer, g * k:(g + 1) * k] = torch.tensor([x if x is not None else next(rest) for x in slot])
    return out


def run_case(shape, variant, sigma, count, seed):
    L, E, P, G, C, N = SHAPES[shape]
    k = P // G
    base, recorded = windows(L, E, sigma, count, seed)
    start = rebalance_experts(base, P, k, C, N, variant)[0]
    methods = ["fresh", "vllm", "relabel"] + [f"M={int(b * 100)}%" for b in BUDGETS]
    served = {m: start for m in methods}
    stats = {m: dict(moves=0.0, bal=0.0, times=[]) for m in methods}
    for tokens in recorded:
        for m in methods:
            prev = served[m]
            kwargs = {}
            if m not in ("fresh", "vllm"):
                kwargs["previous_physical_to_logical_map"] = prev
            if m.startswith("M="):
                kwargs["max_moves"] = int(round(float(m[2:-1]) / 100 * P))
            t0 = time.perf_counter()
            new = rebalance_experts(tokens, P, k, C, N, variant, **kwargs)[0]
            stats[m]["times"].append(time.perf_counter() - t0)
            if m == "vllm":
                new = vllm_rule(prev, new, k)
            stats[m]["moves"] += metrics.moves(prev, new, k).total / L / count
            stats[m]["bal"] += float(metrics.balancedness(tokens, new, G).mean()) / count
            served[m] = new
    fresh_ms = sorted(stats["fresh"]["times"])[count // 2] * 1e3
    rows = []
    for m in methods:
        ms = sorted(stats[m]["times"])[count // 2] * 1e3
        rows.append(dict(shape=shape, variant=variant, sigma=sigma, method=m, P=P,
                         moves=round(stats[m]["moves"], 2), balancedness=round(stats[m]["bal"], 5),
                         ms=round(ms, 2), time_ratio=round(ms / fresh_ms, 1)))
    return rows


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({(r["shape"], r["sigma"]) for r in rows if r["variant"] == "deepseek"})
    fig, axes = plt.subplots(1, len(cases), figsize=(3.2 * len(cases), 3.0), squeeze=False)
    for ax, (shape, sigma) in zip(axes[0], cases):
        sel = [r for r in rows if r["variant"] == "deepseek" and r["shape"] == shape and r["sigma"] == sigma]
        budget = [r for r in sel if r["method"].startswith("M=")]
        ax.plot([r["moves"] for r in budget], [r["balancedness"] for r in budget], "o-", label="incremental")
        for name, marker in (("fresh", "s"), ("vllm", "x"), ("relabel", "^")):
            r = next(r for r in sel if r["method"] == name)
            ax.plot([r["moves"]], [r["balancedness"]], marker, label=name)
        ax.set_xscale("log")
        ax.set_title(f"{shape} deepseek, sigma={sigma}", fontsize=8)
        ax.set_xlabel("moves per layer", fontsize=8)
        ax.set_ylabel("balancedness", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="deepseek variant only, 5 windows")
    parser.add_argument("--windows", type=int, default=None, help="rebalances in a row (default 20, quick 5)")
    parser.add_argument("--json", metavar="OUT", help="also write the results here")
    parser.add_argument("--plot", metavar="PNG", help="draw balancedness against moves (needs matplotlib)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    count = args.windows or (5 if args.quick else 20)
    variants = ["deepseek"] if args.quick else ["deepseek", "deepseek_hierarchical", "deepseek_vec",
                                                  "deepseek_vec_hierarchical"]
    run = Run("bench_migration", windows=count, steps=STEPS, variants=",".join(variants), seed=args.seed,
              threads=torch.get_num_threads())
    rows = []
    print(f"{'shape':<6} {'variant':<26} {'sigma':>5} {'method':<8} {'moves':>7} {'bal':>7} {'ms':>8} {'x fresh':>7}")
    for shape in SHAPES:
        for variant in variants:
            if SHAPES[shape][4] is None and "hierarchical" in variant:
                continue
            for sigma in (0.05, 0.2):
                for r in run_case(shape, variant, sigma, count, args.seed):
                    rows.append(r)
                    print(f"{shape:<6} {variant:<26} {sigma:5.2f} {r['method']:<8} {r['moves']:7.1f} "
                          f"{r['balancedness']:7.4f} {r['ms']:8.2f} {r['time_ratio']:7.1f}", flush=True)
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    run.finish(rows, args.json)


if __name__ == "__main__":
    main()
