"""CPU benchmark: the compiled ``rebalance_experts`` against the pure-PyTorch
reference (``eplb_ext.reference``, the published implementations' approach).

    python benchmarks/bench_cpu.py [--quick] [--json OUT] [--no-memory] [--threads T] [--busy N]

Every variant on every deployment of ``eplb_ext.demo.BENCH_DEPLOYMENTS``
(DeepSeek-V3 on 4x8 GPUs / 288 slots, 8x8 / 320, 18x8 with 2 slots per GPU,
a group-less 128-expert model, a Qwen3-235B-like model), at S = 1, 64 and
1000 steps of synthetic heavy-tailed loads. For each case, in one process and
on the same input:

* op ms / ref ms: median wall time of one call after a warm-up call, over at
  least 20 calls and 0.2 s; a call slower than 0.5 s (the reference's
  step-aware variants at S = 1000) is timed 3 times, the first included;
* speedup = ref ms / op ms, and whether both gave identical outputs;
* op MiB / ref MiB: peak resident memory during one call minus resident
  memory just before it, each in a fresh process (see
  ``eplb_ext.demo.peak_memory_mib``): scratch space plus outputs, including
  the library's own C++ buffers, which tracemalloc and torch's profiler do
  not see.

The default run takes about 5 minutes on 2 cores; ``--quick`` (DeepSeek-V3
at S = 1 and 1000, Qwen3 at S = 1) about a minute. The machine (CPU,
cores, torch, threads) and the load average are printed and stored in the
JSON, since other work on the machine skews timings: the reference runs
torch parallel regions over all cores by default, and a parallel region
waits for its slowest thread, so on a busy machine its short calls stretch
to whole scheduler ticks (4 ms); the compiled op spreads only large work
over threads and never waits for a thread that has not started. Run it on an otherwise idle machine, or pin
``--threads``. ``--busy N`` does the opposite on purpose: it starts N
CPU-bound processes that compete for the cores during the run (and stops
them after), to show the timings of a busy serving host; compare with a
quiet run.
"""

from __future__ import annotations

import argparse

import torch
from common import Run, busy

from eplb_ext.demo import BENCH_PRESETS, memory_measurable, run_bench

HEADLINE = "dsv3-4x8"  # DeepSeek-V3: 58 layers, 256 experts, 8 groups, 4 nodes, 32 GPUs, 288 slots


def print_headline(rows) -> None:
    """The numbers quoted most: DeepSeek-V3, every variant at S = 1, and
    deepseek_vec at S = 1000."""
    picked = [r for r in rows if r["deployment"] == HEADLINE and "op_ms" in r
              and (r["steps"] == 1 or (r["steps"] == 1000 and r["variant"] == "deepseek_vec"))]
    if not picked:
        return
    print(f"\nheadline ({HEADLINE}: DeepSeek-V3, 58 layers x 256 experts, 8 groups, 4 nodes, 32 GPUs, 288 slots):")
    for r in picked:
        mem = ""
        if r.get("op_mib") is not None:
            mem = f", peak {r['op_mib']:.1f} MiB vs {r['ref_mib']:.1f} MiB"
        print(f"  {r['variant']:<26} S={r['steps']:<5} {r['op_ms']:8.3f} ms vs reference {r['ref_ms']:9.2f} ms"
              f"  ({r['speedup']:.0f}x{mem})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer shapes and steps (about a minute)")
    parser.add_argument("--json", metavar="OUT", help="also write the results here")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic loads")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both implementations (default: torch's default, one per core)")
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="start N CPU-bound processes competing for the cores during the run")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    preset_name = "quick" if args.quick else "full"
    preset = BENCH_PRESETS[preset_name]
    memory = not args.no_memory and memory_measurable()
    run = Run("bench_cpu", preset=preset_name, seed=args.seed, memory=memory, threads=torch.get_num_threads(),
              busy=args.busy, deployments=",".join(preset.deployments), steps=",".join(map(str, preset.steps)))
    with busy(args.busy):
        rows = run_bench(preset, seed=args.seed, memory=memory)
    print_headline(rows)
    run.finish(rows, args.json)


if __name__ == "__main__":
    main()
