"""Placement quality: how balanced each variant leaves the GPUs.

    python benchmarks/bench_quality.py [--quick] [--json OUT]

Same deployments and synthetic loads as bench_cpu.py (seed 0, S = 1, 64 and
1000 steps; ``--quick``: S = 16 only). For every placement (the trivial one,
slot p holding expert p % E, and every variant that applies), per layer
GPU load = sum over the GPU's slots of w[expert] / count[expert] with w the
load summed over steps (SPEC.md "Quality measures"), and:

* balanced: mean GPU load / max GPU load, averaged over layers (1.0 perfect);
* aggr: sum over layers of mean GPU loads / sum of max GPU loads (ideal over
  actual time of a forward pass whose layers each wait for their slowest GPU);
* worst: the least balanced layer;
* per-step: the same ratio taken step by step, sum_s mean_s / sum_s max_s per
  layer, averaged over layers (what the step-aware variants aim at);
* bound: mean GPU load / a lower bound on the max GPU load of any placement
  (max(total / G, the largest per-replica load after greedy replication)),
  averaged over layers: no placement can be more balanced;
* vs best: balanced relative to the best variant of the deployment and S.

The placement is measured on the load it was computed from (in-sample).
"""

from __future__ import annotations

import argparse

from common import Run

from eplb_ext.demo import BENCH_DEPLOYMENTS, DEPLOYMENTS, Table, quality_rows, synthetic_load

COLUMNS = [
    ("deployment", "deployment", 11, "text"),
    ("steps", "S", 4, "int"),
    ("variant", "variant", 25, "text"),
    ("balancedness", "balanced", 8, "ratio"),
    ("aggregate", "aggr", 5, "ratio"),
    ("worst", "worst", 5, "ratio"),
    ("step_balancedness", "per-step", 8, "ratio"),
    ("bound", "bound", 5, "ratio"),
    ("vs_best", "vs best", 7, "pct"),
    ("note", "note", 0, "text"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="S = 16 only")
    parser.add_argument("--json", metavar="OUT", help="also write the results here")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic loads")
    args = parser.parse_args()

    steps = (16,) if args.quick else (1, 64, 1000)
    run = Run("bench_quality", seed=args.seed, steps=",".join(map(str, steps)), deployments=",".join(BENCH_DEPLOYMENTS))
    table = Table(COLUMNS)
    table.header()
    rows = []
    for name in BENCH_DEPLOYMENTS:
        for S in steps:
            for row in quality_rows(DEPLOYMENTS[name], synthetic_load(DEPLOYMENTS[name], S, args.seed)):
                table.row(row)
                rows.append(row)
    run.finish(rows, args.json)


if __name__ == "__main__":
    main()
