"""GPU benchmark on the DeepSeek-V3 shape (58 layers x 256 experts -> 288
slots, 8 groups, 4 nodes, 32 GPUs), int64 heavy-tailed loads.

Cases: deepseek, deepseek_hierarchical, deepseek_vec and
deepseek_vec_hierarchical at S = 1 step, and deepseek_vec at S = 1000. For
each, medians over the repeats after warm-up:

  kernel    CUDA events around the op call at fixed width (torch.ops.eplb_ext
            .deepseek + logical_to_physical, or deepseek_vec): GPU time of
            what the call enqueues, launch included when the GPU waits on it;
  python    wall clock of eplb_ext.rebalance_experts(..., fixed_width=True,
            check_values=False) up to a synchronize: what a serving loop pays;
  default   the same for the default call (value check and, for the deepseek
            variants, the read of the width: host synchronisations);
  graph     CUDA events around the replay of a CUDA graph that captured the
            fixed-width call: the cost once Python and launches are gone;
  via host  copy the loads to the host, run the CPU op, copy the results back
            (wall clock): the alternative to a GPU kernel;
  scratch   peak GPU memory during one fixed-width call above what was
            allocated before it (the inputs), less the outputs it returns.

Targets: graph <= 50 us and python <= 100 us at S = 1; graph and python
<= 2 ms for deepseek_vec at S = 1000; scratch <= 4*S*L*E + 64*L*P bytes
(one float32 copy of the loads plus O(L*P)); every output equal to the CPU
op's. Without a CUDA device the script says so and exits 0.

    python benchmarks/bench_gpu.py [--quick] [--json OUT] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch

from common import Run, eplb_ext

SHAPE = dict(L=58, E=256, P=288, k=9, C=8, N=4)
VARIANTS = ["deepseek", "deepseek_hierarchical", "deepseek_vec", "deepseek_vec_hierarchical"]
CASES = [(v, 1) for v in VARIANTS] + [("deepseek_vec", 1000)]

# Microseconds per call; the S = 1000 limit applies to deepseek_vec only.
GRAPH_LIMIT_US = 50.0
PYTHON_LIMIT_US = 100.0
LARGE_S = 1000
LARGE_S_LIMIT_US = 2000.0


def scratch_bound(S: int, L: int, E: int, P: int) -> int:
    """Bytes of GPU scratch a call may use: one float32 copy of the loads
    (the vec kernels keep every step's loads per layer) plus 64 bytes per
    slot and layer (per-layer buffers of size E, P and the packing state)."""
    return 4 * S * L * E + 64 * L * P


def targets(rows: List[Dict]) -> List[Dict]:
    """The targets each row is checked against: name, measured value, limit
    and whether it is met. A value missing from a row (a failed measurement)
    counts as missed."""
    out = []

    def check(row, what, value, limit, unit, ok=None):
        met = value is not None and (value <= limit if ok is None else ok)
        out.append(dict(name=f"{row['variant']} S={row['S']} {what}", value=value, limit=limit,
                        unit=unit, met=bool(met)))

    for row in rows:
        if row["S"] == 1:
            check(row, "graph", row.get("graph_us"), GRAPH_LIMIT_US, "us")
            check(row, "python", row.get("python_us"), PYTHON_LIMIT_US, "us")
        elif row["S"] == LARGE_S and row["variant"] == "deepseek_vec":
            check(row, "graph", row.get("graph_us"), LARGE_S_LIMIT_US, "us")
            check(row, "python", row.get("python_us"), LARGE_S_LIMIT_US, "us")
        check(row, "scratch", row.get("scratch_bytes"), row.get("scratch_bound_bytes", 0), "bytes")
        same = row.get("identical_to_cpu")
        check(row, "identical to CPU", same, True, "", ok=same is True)
    return out


def all_met(checks: List[Dict]) -> bool:
    return bool(checks) and all(c["met"] for c in checks)


def _us(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.1f}"


def format_table(rows: List[Dict], checks: List[Dict]) -> str:
    """Readable table of the rows, then every target as met or MISSED."""
    head = (f"{'variant':27s} {'S':>5s} {'kernel us':>10s} {'python us':>10s} {'default us':>11s} "
            f"{'graph us':>9s} {'via host us':>12s} {'scratch MiB':>12s} {'bound MiB':>10s}  same")
    lines = [head, "-" * len(head)]
    mib = 1 << 20
    for r in rows:
        scratch = r.get("scratch_bytes")
        lines.append(
            f"{r['variant']:27s} {r['S']:5d} {_us(r.get('kernel_us')):>10s} {_us(r.get('python_us')):>10s} "
            f"{_us(r.get('python_default_us')):>11s} {_us(r.get('graph_us')):>9s} {_us(r.get('via_host_us')):>12s} "
            f"{'-' if scratch is None else f'{scratch / mib:.3f}':>12s} "
            f"{r.get('scratch_bound_bytes', 0) / mib:10.3f}  {r.get('identical_to_cpu')}"
        )
    lines.append("")
    for c in checks:
        limit = c["limit"] if c["unit"] != "bytes" else f"{c['limit']} bytes"
        value = c["value"] if not isinstance(c["value"], float) else round(c["value"], 1)
        lines.append(f"{'met   ' if c['met'] else 'MISSED'} {c['name']}: {value} {c['unit']} (limit {limit})")
    lines.append(f"targets met: {all_met(checks)}")
    return "\n".join(lines)


# ------------------------------------------------------------ measurements


def event_us(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median GPU time of ``fn`` (CUDA events on the current stream), us."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def wall_us(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall time of ``fn`` up to a synchronize, us."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def allocation_bytes(t: torch.Tensor) -> int:
    # The caching allocator hands out multiples of 512 bytes.
    return (t.numel() * t.element_size() + 511) // 512 * 512


def attempt(row: Dict, what: str, fn: Callable[[], object]):
    """``fn()``, or None with the error noted in the row: one failed
    measurement must not cost the others."""
    try:
        return fn()
    except Exception as exc:  # reported in the row and the table
        row["errors"].append(f"{what}: {type(exc).__name__}: {exc}")
        print(f"  {row['variant']} S={row['S']} {what} failed: {type(exc).__name__}: {exc}", flush=True)
        return None


def measure(algo: str, S: int, repeats: int, warmup: int, gen: torch.Generator) -> Dict:
    s = SHAPE
    L, E, P, k = s["L"], s["E"], s["P"], s["k"]
    hierarchical = algo.endswith("hierarchical")
    C, N = (s["C"], s["N"]) if hierarchical else (1, 1)
    base = torch.rand(L, E, generator=gen) ** 4 * 200
    x = torch.poisson(base.expand(S, -1, -1).contiguous(), generator=gen).to(torch.int64)
    xg = x.cuda()
    call_args = (P, k, s["C"], s["N"], algo)
    ops = torch.ops.eplb_ext

    if algo.startswith("deepseek_vec"):
        def op():
            return ops.deepseek_vec(xg, P, k, C, N)
    else:
        def op():
            phy2log, rank, count = ops.deepseek(xg, P, k, C, N)
            return phy2log, ops.logical_to_physical(phy2log, rank, E, P - E + 1), count

    def fixed():
        return eplb_ext.rebalance_experts(xg, *call_args, fixed_width=True, check_values=False)

    def default():
        return eplb_ext.rebalance_experts(xg, *call_args)

    def via_host():
        return [t.cuda() for t in eplb_ext.rebalance_experts(xg.cpu(), *call_args, fixed_width=True)]

    row: Dict = dict(variant=algo, S=S, scratch_bound_bytes=scratch_bound(S, L, E, P), errors=[])
    reference = eplb_ext.rebalance_experts(x, *call_args, fixed_width=True)
    same = [attempt(row, "identical", lambda: all(torch.equal(a.cpu(), b) for a, b in zip(fixed(), reference)))]

    row["kernel_us"] = attempt(row, "kernel", lambda: event_us(op, repeats, warmup))
    row["python_us"] = attempt(row, "python", lambda: wall_us(fixed, repeats, warmup))
    row["python_default_us"] = attempt(row, "default", lambda: wall_us(default, repeats, warmup))
    row["via_host_us"] = attempt(row, "via host", lambda: wall_us(via_host, max(3, repeats // 4), 1))

    def graph_us():
        # Warm up on a side stream (as torch.cuda.graph expects), capture
        # once, then replay; each replay rewrites the captured outputs.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fixed()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = fixed()
        us = event_us(graph.replay, repeats, warmup)
        same.append(all(torch.equal(a.cpu(), b) for a, b in zip(captured, reference)))
        return us

    row["graph_us"] = attempt(row, "graph", graph_us)

    def peak_above_inputs():
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fixed()
        torch.cuda.synchronize()
        row["output_bytes"] = sum(allocation_bytes(t) for t in out)
        return torch.cuda.max_memory_allocated() - before

    row["peak_above_inputs_bytes"] = peak = attempt(row, "peak memory", peak_above_inputs)
    row["scratch_bytes"] = None if peak is None else peak - row["output_bytes"]
    row["identical_to_cpu"] = all(v is True for v in same)
    if row["graph_us"] and row["via_host_us"]:
        row["speedup_graph_vs_host"] = row["via_host_us"] / row["graph_us"]
    return row


def measure_migration(repeats: int, warmup: int, gen: torch.Generator) -> Dict:
    """``deepseek`` against a previous placement on drifted loads (S = 1),
    relabeling and incremental search with M = 29 (10% of P): the Python call
    at fixed width on the GPU and on the CPU, and whether they agree. No
    target; recorded for comparison with the fresh call."""
    s = SHAPE
    L, E, P, k = s["L"], s["E"], s["P"], s["k"]
    old = torch.poisson((torch.rand(L, E, generator=gen) ** 4 * 200).unsqueeze(0), generator=gen).to(torch.int64)
    drift = torch.exp(0.05 * torch.randn(L, E, generator=gen))
    new = torch.poisson((old[0].double() * drift).unsqueeze(0), generator=gen).to(torch.int64)
    prev = eplb_ext.rebalance_experts(old, P, k, 1, 1, "deepseek")[0]
    newg, prevg = new.cuda(), prev.cuda()
    row: Dict = dict(variant="deepseek, previous map, max_moves=29", S=1, errors=[])

    def call(tokens, previous, **kw):
        return eplb_ext.rebalance_experts(tokens, P, k, 1, 1, "deepseek", fixed_width=True,
                                          previous_physical_to_logical_map=previous, **kw)

    reference = call(new, prev, max_moves=29)

    def identical():
        return all(torch.equal(a.cpu(), b) for a, b in zip(call(newg, prevg, max_moves=29), reference))

    row["identical_to_cpu"] = attempt(row, "identical", identical)
    row["gpu_us"] = attempt(row, "gpu", lambda: wall_us(lambda: call(newg, prevg, max_moves=29, check_values=False),
                                                        repeats, warmup))
    row["gpu_relabel_us"] = attempt(row, "gpu relabel", lambda: wall_us(
        lambda: call(newg, prevg, check_values=False), repeats, warmup))
    row["cpu_us"] = attempt(row, "cpu", lambda: wall_us(lambda: call(new, prev, max_moves=29), max(3, repeats // 4), 1))
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--repeats", type=int, help="timed calls per measurement at S = 1 (default 100; quick 10)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and warm-up calls (seconds, not a minute)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        why = f"no CUDA device (torch {torch.__version__}, CUDA {torch.version.cuda}); nothing measured"
        print(f"bench_gpu.py: {why}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(benchmark="bench_gpu", skipped=why), f, indent=2)
        return 0

    repeats = args.repeats or (10 if args.quick else 100)
    warmup = 2 if args.quick else 10
    run = Run("bench_gpu", shape=SHAPE, repeats=repeats, warmup=warmup, quick=args.quick)
    run.info.update(device=torch.cuda.get_device_name(), torch_cuda=torch.version.cuda, build=eplb_ext.build_info())
    gen = torch.Generator().manual_seed(0)
    rows = []
    for algo, S in CASES:
        # The large case costs ~1000x more per call: fewer repeats keep the run short.
        n = repeats if S == 1 else max(3, repeats // 5)
        row = measure(algo, S, n, min(warmup, n), gen)
        rows.append(row)
        print(f"{algo} S={S}: graph {_us(row['graph_us'])} us, python {_us(row['python_us'])} us", flush=True)
    migration = measure_migration(max(3, repeats // 5), min(warmup, 3), gen)
    print(f"migration (deepseek, M=29): gpu {_us(migration.get('gpu_us'))} us, relabel only "
          f"{_us(migration.get('gpu_relabel_us'))} us, cpu {_us(migration.get('cpu_us'))} us, "
          f"identical {migration.get('identical_to_cpu')}", flush=True)
    checks = targets(rows)
    print()
    print(format_table(rows, checks))
    run.info.update(migration=migration, targets=checks, targets_met=all_met(checks),
                    scratch_bound="4*S*L*E + 64*L*P bytes (one float32 copy of the loads plus O(L*P))")
    run.finish(rows, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
