"""Built-in workloads, deployments and the runners behind ``eplb-ext demo``,
``eplb-ext bench`` and ``benchmarks/``.

The loads are synthetic but shaped like real MoE serving: per layer, expert
popularity is log-normal (a few hot experts, a long cold tail), experts of
one group share a group factor (so packing groups onto nodes matters), and
every step wobbles each expert's share (so the step-aware variants have
something to exploit). Everything is drawn from a seeded ``torch.Generator``:
the same seed gives the same loads on every machine.

Timing is wall-clock (``time.perf_counter``) of one Python call on the CPU,
median over repeats after a warm-up call. Peak memory is measured in a fresh
subprocess per measurement (``peak_memory_mib``): the peak resident set size
during the call minus the resident set size just before it.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import metrics, reference
from .algorithms import EplbAlgorithm, rebalance_experts
from .build_info import __version__

VARIANTS: Tuple[str, ...] = tuple(a.name for a in EplbAlgorithm)
TRIVIAL = "trivial (p % E)"  # the placement without load balancing


@dataclass(frozen=True)
class Deployment:
    """A model shape on a cluster: L layers of E experts (C groups, or None)
    placed into P slots on G GPUs spread over N nodes."""

    name: str
    description: str
    num_layers: int
    num_experts: int
    num_groups: Optional[int]
    num_nodes: int
    num_gpus: int
    num_physical_experts: int

    @property
    def slots_per_gpu(self) -> int:
        return self.num_physical_experts // self.num_gpus

    def place(self, tokens: Tensor, variant: str) -> Tuple[Tensor, Tensor, Tensor]:
        """The compiled op on this deployment (ValueError if the variant does
        not apply, e.g. a hierarchical one without groups)."""
        return rebalance_experts(
            tokens, self.num_physical_experts, self.slots_per_gpu, self.num_groups, self.num_nodes, variant
        )

    def place_reference(self, tokens: Tensor, variant: str) -> Tuple[Tensor, Tensor, Tensor]:
        """The pure-PyTorch reference on this deployment (no argument checks:
        call ``place`` first to learn whether the variant applies)."""
        return reference.rebalance_experts(
            tokens, self.num_physical_experts, self.slots_per_gpu, self.num_groups, self.num_nodes, variant
        )


DEPLOYMENTS: Dict[str, Deployment] = {
    d.name: d
    for d in (
        Deployment("dsv3-4x8", "DeepSeek-V3, 4 nodes x 8 GPUs, 288 slots (9/GPU)", 58, 256, 8, 4, 32, 288),
        Deployment("dsv3-8x8", "DeepSeek-V3, 8 nodes x 8 GPUs, 320 slots (5/GPU)", 58, 256, 8, 8, 64, 320),
        Deployment("dsv3-18x8", "DeepSeek-V3, 18 nodes x 8 GPUs, 288 slots (2/GPU)", 58, 256, 8, 18, 144, 288),
        Deployment("moe128-4x8", "group-less 128 experts, 48 layers, 4 nodes x 8 GPUs, 160 slots", 48, 128, None, 4, 32, 160),
        Deployment("qwen3-235b", "Qwen3-235B-like, 94 layers, 128 experts, 32 GPUs, 160 slots", 94, 128, None, 4, 32, 160),
    )
}
DEMO_DEPLOYMENTS: Tuple[str, ...] = ("dsv3-4x8", "dsv3-8x8", "dsv3-18x8", "moe128-4x8")
BENCH_DEPLOYMENTS: Tuple[str, ...] = DEMO_DEPLOYMENTS + ("qwen3-235b",)


def synthetic_load(
    deployment: Deployment,
    steps: int = 16,
    seed: int = 0,
    *,
    num_layers: Optional[int] = None,
    tokens_per_step: int = 4096,
    top_k: int = 8,
) -> Tensor:
    """Heavy-tailed token counts, int64 ``[steps, L, E]`` on the CPU.

    Each step routes ``tokens_per_step`` tokens to ``top_k`` experts each, so
    a layer's counts add up to about ``tokens_per_step * top_k`` per step.
    """
    L = deployment.num_layers if num_layers is None else num_layers
    E, C = deployment.num_experts, deployment.num_groups
    gen = torch.Generator().manual_seed(seed)
    popularity = torch.exp(torch.randn(L, E, generator=gen))  # log-normal, sigma 1
    if C is not None:
        group_factor = torch.exp(0.3 * torch.randn(L, C, generator=gen))
        popularity = popularity * group_factor.repeat_interleave(E // C, dim=1)
    drift = torch.exp(0.3 * torch.randn(steps, L, E, generator=gen))  # per-step wobble
    rate = popularity * drift
    rate = rate / rate.sum(dim=-1, keepdim=True) * float(tokens_per_step * top_k)
    return torch.poisson(rate, generator=gen).to(torch.int64)


# --------------------------------------------------------------------------
# timing, memory, machine
# --------------------------------------------------------------------------


def median_ms(
    fn: Callable[[], object],
    repeats: int,
    *,
    min_seconds: float = 0.2,
    max_calls: int = 200,
    slow_s: float = 0.5,
    slow_repeats: int = 3,
) -> Tuple[float, int]:
    """Median wall time of ``fn()`` in ms, and how many calls it is over.

    The first call is a warm-up. Then ``fn`` runs ``repeats`` times, and
    more (up to ``max_calls``) until ``min_seconds`` have passed, so that a
    sub-millisecond call gets enough samples for a median that a stray
    scheduler hiccup cannot move. If the warm-up took longer than ``slow_s``
    seconds, warm-up effects are noise next to the call itself: it counts as
    a measurement and ``slow_repeats`` calls in all are used (so multi-second
    reference runs stay affordable).
    """
    def timed() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    first = timed()
    if first > slow_s:
        times = [first] + [timed() for _ in range(max(slow_repeats, 1) - 1)]
    else:
        times = []
        while len(times) < max(repeats, 1) or (sum(times) < min_seconds and len(times) < max_calls):
            times.append(timed())
    return statistics.median(times) * 1e3, len(times)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _memory_probe(spec_json: str) -> None:
    """Body of the measuring subprocess (see ``peak_memory_mib``)."""
    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    dep = DEPLOYMENTS[spec["deployment"]]
    tokens = synthetic_load(dep, spec["steps"], spec["seed"])
    call = dep.place if spec["impl"] == "op" else dep.place_reference
    call(tokens[:1, :1].clone(), spec["variant"])  # warm-up: lazy initialisation is not the call's cost
    gc.collect()
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (the peak RSS) to the current RSS
    out = call(tokens, spec["variant"])
    peak = _status_kib("VmHWM")
    del out
    print(json.dumps({"peak_extra_kib": peak - before}))


def memory_measurable() -> bool:
    """Whether ``peak_memory_mib`` can measure here (Linux /proc with a
    resettable peak RSS)."""
    return os.path.exists("/proc/self/clear_refs") and os.access("/proc/self/clear_refs", os.W_OK)


def peak_memory_mib(deployment: Deployment, steps: int, seed: int, variant: str, impl: str) -> Optional[float]:
    """Peak extra resident memory of one call, in MiB, or None where it
    cannot be measured.

    A fresh Python process builds the input, warms the call up on a one-layer
    slice, then resets the kernel's peak-RSS counter (``/proc/self/clear_refs``)
    and reports peak RSS during the call minus RSS before it: scratch space
    plus the outputs, whoever allocates them (torch or the library's own C++
    buffers, which ``tracemalloc`` and torch's profiler cannot see). glibc's
    mmap threshold is pinned (``MALLOC_MMAP_THRESHOLD_``) so that large
    buffers freed while building the input go back to the system instead of
    being silently reused by the call. Resolution is one page (4 KiB).

    Args:
        impl: ``"op"`` (the compiled ``rebalance_experts``) or ``"reference"``.
    """
    if not memory_measurable():
        return None
    spec = dict(deployment=deployment.name, steps=steps, seed=seed, variant=variant, impl=impl,
                threads=torch.get_num_threads())
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    # The child must import this very copy of the package (e.g. an in-place build).
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    code = "import sys; from eplb_ext.demo import _memory_probe; _memory_probe(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed for {spec}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_extra_kib"] / 1024.0


def machine_info() -> Dict[str, object]:
    """CPU model, cores, torch and thread count: what the numbers depend on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "eplb_ext": __version__,
        "platform": platform.platform(),
    }


def format_machine(info: Dict[str, object]) -> str:
    return (
        f"machine: {info['cpu']}, {info['usable_cores']} usable of {info['logical_cores']} logical cores; "
        f"torch {info['torch']} ({info['torch_threads']} threads); python {info['python']}; "
        f"eplb_ext {info['eplb_ext']}"
    )


# --------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------


class Table:
    """A fixed-width text table printed row by row (long runs show progress).

    ``columns`` is a list of ``(key, title, width, kind)``; ``kind`` picks the
    cell format (see ``format_cell``); text columns are left-aligned.
    """

    def __init__(self, columns: Sequence[Tuple[str, str, int, str]], out=None):
        self.columns = columns
        self.out = out if out is not None else sys.stdout

    def _line(self, cells: Iterable[str]) -> str:
        parts = []
        for (_, _, width, kind), cell in zip(self.columns, cells):
            parts.append(cell.ljust(width) if kind == "text" else cell.rjust(width))
        return "  ".join(parts).rstrip()

    def header(self) -> None:
        print(self._line(title for _, title, _, _ in self.columns), file=self.out)
        print(self._line("-" * max(w, 1) for _, _, w, _ in self.columns), file=self.out, flush=True)

    def row(self, row: Dict[str, object]) -> None:
        cells = (format_cell(row.get(key), kind) for key, _, _, kind in self.columns)
        print(self._line(cells), file=self.out, flush=True)


def format_cell(value: object, kind: str) -> str:
    """``kind``: "text", "int", "ratio" (3 decimals), "time" (3 significant
    digits), "pct" (a relative difference, 0 = "best"), "bool"."""
    if value is None:
        return "" if kind == "text" else "-"
    if kind == "ratio":
        return f"{value:.3f}"
    if kind == "time":
        return f"{value:.3g}" if value < 1000 else f"{value:.0f}"
    if kind == "pct":
        return "best" if value == 0 else f"{100 * value:+.1f}%"
    if kind == "bool":
        return "yes" if value else "NO"
    return str(value)


# --------------------------------------------------------------------------
# quality: demo and bench_quality
# --------------------------------------------------------------------------


def quality_rows(
    deployment: Deployment,
    tokens: Tensor,
    *,
    time_repeats: int = 0,
    variants: Sequence[str] = VARIANTS,
) -> List[Dict[str, object]]:
    """Balancedness of the trivial placement and of every variant on ``tokens``.

    One row per placement: ``balancedness`` (mean over layers),
    ``aggregate`` (sum of mean / sum of max GPU loads), ``worst`` (the lowest
    layer), ``worst_layer``, ``step_balancedness`` (mean over layers of
    ``metrics.step_balancedness``), ``bound`` (mean over layers of mean GPU
    load / lower bound: no placement can have a higher balancedness),
    ``vs_best`` (balancedness relative to the best variant, 0 for the best,
    negative otherwise), ``ms`` (median time of the compiled op, with
    ``time_repeats`` > 0) and ``note`` (why a variant was skipped).
    """
    d = deployment
    w = metrics.expert_load(tokens)
    trivial = metrics.trivial_placement(d.num_experts, d.num_physical_experts, w.shape[0])
    # The bound does not depend on the placement: every placement has the
    # same mean GPU load.
    bound = metrics.lower_bound(w, d.num_physical_experts, d.num_gpus)
    bound_overall = metrics.overall_balancedness(metrics.gpu_loads(w, trivial, d.num_gpus), reference_max=bound)
    placements: List[Tuple[str, Optional[Tensor], Optional[float], Optional[str]]] = [(TRIVIAL, trivial, None, None)]
    for variant in variants:
        try:
            phy2log = d.place(tokens, variant)[0]
        except ValueError as exc:  # the variant does not apply to this deployment
            placements.append((variant, None, None, f"skipped: {exc}"))
            continue
        ms = median_ms(lambda: d.place(tokens, variant), time_repeats)[0] if time_repeats > 0 else None
        placements.append((variant, phy2log, ms, None))

    rows = []
    for name, phy2log, ms, note in placements:
        row: Dict[str, object] = dict(deployment=d.name, variant=name, steps=tokens.shape[0], ms=ms, note=note)
        if phy2log is not None:
            loads = metrics.gpu_loads(w, phy2log, d.num_gpus)
            per_layer = metrics.balancedness_of_loads(loads)
            overall = metrics.overall_balancedness(loads)
            row.update(
                balancedness=overall.mean,
                aggregate=overall.aggregate,
                worst=float(per_layer.min()),
                worst_layer=int(per_layer.argmin()),
                step_balancedness=float(metrics.step_balancedness(tokens, phy2log, d.num_gpus).mean()),
                bound=bound_overall.mean,
                bound_aggregate=bound_overall.aggregate,
            )
        rows.append(row)
    placed = [r for r in rows if r["variant"] != TRIVIAL and "balancedness" in r]
    if placed:
        best = max(r["balancedness"] for r in placed)
        for r in placed:
            r["vs_best"] = r["balancedness"] / best - 1.0
    return rows


DEMO_COLUMNS = [
    ("deployment", "deployment", 11, "text"),
    ("variant", "variant", 25, "text"),
    ("ms", "ms", 6, "time"),
    ("balancedness", "balanced", 8, "ratio"),
    ("worst", "worst", 5, "ratio"),
    ("bound", "bound", 5, "ratio"),
    ("vs_best", "vs best", 7, "pct"),
    ("note", "note", 0, "text"),
]

DEMO_LEGEND = """\
ms: median time of the compiled rebalance_experts call (CPU).
balanced: mean over layers of mean GPU load / max GPU load (1.0 is perfect);
  worst: the lowest layer. trivial (p % E): slot p holds expert p % E.
bound: mean over layers of mean GPU load / lower bound on the max GPU load;
  no placement of these slots can be more balanced.
vs best: balancedness relative to the best variant of the deployment."""


def run_demo(*, seed: int = 0, num_layers: Optional[int] = None, steps: int = 16, repeats: int = 3, out=None) -> List[Dict[str, object]]:
    """Places the built-in load on each demo deployment; prints the table."""
    out = out if out is not None else sys.stdout
    table = Table(DEMO_COLUMNS, out)
    all_rows = []
    print(f"Synthetic DeepSeek-V3-like load: seed {seed}, {steps} steps, heavy-tailed expert loads.", file=out)
    for name in DEMO_DEPLOYMENTS:
        d = DEPLOYMENTS[name]
        L = d.num_layers if num_layers is None else num_layers
        print(f"\n{d.name}: {d.description}; {L} layers, {d.num_experts} experts"
              + (f", {d.num_groups} groups" if d.num_groups else ", no groups"), file=out)
        table.header()
        tokens = synthetic_load(d, steps, seed, num_layers=L)
        for row in quality_rows(d, tokens, time_repeats=repeats):
            table.row(row)
            all_rows.append(row)
    print("\n" + DEMO_LEGEND, file=out)
    return all_rows


# --------------------------------------------------------------------------
# speed: bench_cpu and `eplb-ext bench`
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchPreset:
    """Which cases a speed benchmark runs: every variant of ``deployments``
    at every S in ``steps``, plus the ``extra`` (deployment, S, variant)
    cases; ``repeats`` calls per median (fewer for slow calls)."""

    deployments: Tuple[str, ...]
    steps: Tuple[int, ...]
    repeats: int
    extra: Tuple[Tuple[str, int, str], ...] = ()

    def cases(self) -> List[Tuple[str, int, str]]:
        cases = [(d, s, v) for d in self.deployments for s in self.steps for v in VARIANTS]
        return cases + [c for c in self.extra if c not in cases]


BENCH_PRESETS: Dict[str, BenchPreset] = {
    # benchmarks/bench_cpu.py: every deployment, S in {1, 64, 1000}.
    "full": BenchPreset(BENCH_DEPLOYMENTS, (1, 64, 1000), repeats=20),
    # bench_cpu.py --quick and `eplb-ext bench`: the headline DeepSeek-V3 shape
    # (every variant at S = 1 and S = 1000) and the Qwen3 shape at S = 1.
    "quick": BenchPreset(("dsv3-4x8", "qwen3-235b"), (1,), repeats=5,
                         extra=tuple(("dsv3-4x8", 1000, v) for v in VARIANTS)),
    # `eplb-ext bench --quick`: a smoke test, seconds.
    "smoke": BenchPreset(("dsv3-4x8",), (1,), repeats=3),
}

BENCH_COLUMNS = [
    ("deployment", "deployment", 11, "text"),
    ("steps", "S", 4, "int"),
    ("variant", "variant", 25, "text"),
    ("op_ms", "op ms", 6, "time"),
    ("ref_ms", "ref ms", 6, "time"),
    ("ref_calls", "n", 2, "int"),
    ("speedup", "speedup", 7, "time"),
    ("op_mib", "op MiB", 6, "time"),
    ("ref_mib", "ref MiB", 7, "time"),
    ("identical", "same", 4, "bool"),
    ("note", "note", 0, "text"),
]

BENCH_LEGEND = """\
op ms / ref ms: median wall time of the compiled rebalance_experts and of the
  pure-PyTorch eplb_ext.reference, same input, same process, after a warm-up
  call; n: reference calls in the median (at least the preset's repeats and
  0.2 s of calls; 3 in all, the first included, when one takes over 0.5 s).
speedup: ref ms / op ms (every case is listed, also those where the
  reference is faster). same: the two gave identical outputs.
op MiB / ref MiB: peak resident memory during one call minus resident memory
  before it, in a fresh process (scratch + outputs; '-' = not measured)."""


def run_bench(preset: BenchPreset, *, seed: int = 0, memory: bool = False, out=None) -> List[Dict[str, object]]:
    """Times the compiled op against the reference on every case of
    ``preset``; prints the table row by row and returns the rows."""
    out = out if out is not None else sys.stdout
    table = Table(BENCH_COLUMNS if memory else [c for c in BENCH_COLUMNS if not c[0].endswith("_mib")], out)
    table.header()
    rows = []
    loads: Dict[Tuple[str, int], Tensor] = {}
    for name, steps, variant in preset.cases():
        d = DEPLOYMENTS[name]
        if (name, steps) not in loads:
            loads = {(name, steps): synthetic_load(d, steps, seed)}  # keep one input alive at a time
        tokens = loads[(name, steps)]
        row: Dict[str, object] = dict(deployment=name, steps=steps, variant=variant)
        try:
            ours = d.place(tokens, variant)
        except ValueError as exc:
            row["note"] = f"skipped: {exc}"
            table.row(row)
            rows.append(row)
            continue
        theirs = d.place_reference(tokens, variant)
        row["identical"] = all(torch.equal(a, b) for a, b in zip(ours, theirs))
        del ours, theirs
        row["op_ms"], row["op_calls"] = median_ms(lambda: d.place(tokens, variant), preset.repeats)
        row["ref_ms"], row["ref_calls"] = median_ms(lambda: d.place_reference(tokens, variant), preset.repeats)
        row["speedup"] = row["ref_ms"] / row["op_ms"]
        if row["speedup"] < 1.0:
            row["note"] = "reference faster"
        if memory:
            row["op_mib"] = peak_memory_mib(d, steps, seed, variant, "op")
            row["ref_mib"] = peak_memory_mib(d, steps, seed, variant, "reference")
        table.row(row)
        rows.append(row)
    print("\n" + BENCH_LEGEND, file=out)
    return rows
