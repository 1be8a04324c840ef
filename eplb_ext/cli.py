"""The ``eplb-ext`` command line (also ``python -m eplb_ext``).

Commands: ``demo`` (a built-in load, no input needed), ``rebalance`` (place a
recorded load and write the placement), ``bench`` (compiled op vs the
pure-PyTorch reference), ``info`` (how this copy was built).

Mistakes a person can fix (a missing file, an unknown format, a shape that
does not fit the arguments, an impossible configuration) end with one line
``eplb-ext: error: ...`` on stderr, often a ``eplb-ext: hint: ...`` line
after it, and exit code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from . import metrics
from ._cli_files import (
    INPUT_FORMATS,
    OUTPUT_FORMATS,
    OUTPUT_KEYS,
    CliError,
    check_previous,
    check_writable,
    drop_zero_steps,
    extension,
    first_line,
    read_loads,
    read_placement,
    same_file,
    write_placement,
)
from .algorithms import EplbAlgorithm, compute_algorithm, rebalance_experts
from .build_info import __version__

PROG = "eplb-ext"
EXIT_USAGE = 2  # what argparse uses for its own usage errors


def _auto_reason(E: int, G: int, C: Optional[int], N: int, algo: EplbAlgorithm) -> str:
    """Why ``--algorithm auto`` chose ``algo`` (SPEC "Choosing a variant")."""
    if algo is EplbAlgorithm.deepseek_hierarchical:
        return f"auto: {C} expert groups over {N} node(s), which divide the groups and the {G} GPUs"
    if C is None:
        return "auto: no expert groups (--num-groups not given)"
    if C % N != 0:
        return f"auto: {N} nodes do not divide the {C} expert groups"
    if E % C != 0:
        return f"auto: {C} groups do not divide the {E} experts"
    return f"auto: {N} nodes do not divide the {G} GPUs"


# --------------------------------------------------------------------------
# configuration hints
# --------------------------------------------------------------------------


def _valid_slot_counts(num_experts: int, num_physical_experts: int, num_gpus: int) -> List[int]:
    """The slot counts >= E divisible by G nearest to P (one or two)."""
    smallest = math.ceil(num_experts / num_gpus) * num_gpus
    below = num_physical_experts // num_gpus * num_gpus
    above = math.ceil(num_physical_experts / num_gpus) * num_gpus
    candidates = sorted({max(below, smallest), max(above, smallest)})
    return candidates


def _divisors(n: int) -> List[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _config_hint(E: int, P: int, G: int, C: Optional[int], N: int, algo: EplbAlgorithm) -> Optional[str]:
    """A fix for the first rule the configuration breaks, or None."""
    if P < E or P % G != 0:
        counts = " or ".join(str(c) for c in _valid_slot_counts(E, P, G))
        return f"try --num-physical-experts {counts} (>= {E} experts and divisible by {G} GPUs)"
    if algo.hierarchical:
        flat = "deepseek_vec" if algo.step_aware else "elasticity_aware" if algo.elastic else "deepseek"
        if C is None:
            return f"pass --num-groups, or use --algorithm {flat} for a model without expert groups"
        if E % C != 0:
            return f"--num-groups must divide the {E} experts: one of {_divisors(E)}"
        if C % N != 0 or G % N != 0:
            nodes = _divisors(math.gcd(C, G))
            return (
                f"--num-nodes must divide both --num-groups {C} and the {G} GPUs: one of {nodes}; "
                f"or use --algorithm {flat}"
            )
    return None


# --------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(seed=args.seed, num_layers=args.layers, steps=args.steps, repeats=args.repeats)
    return 0


def _import_pyplot():
    """matplotlib's pyplot on a file-only backend, or a CliError."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise CliError("--plot needs matplotlib, which is not installed: pip install matplotlib") from None
    return plt


def _plot(plt, path: str, w: Tensor, before: Tensor, after: Tensor, num_gpus: int, best_possible: Tensor,
          algo: str, worst: List[int]) -> None:
    """Per-layer balancedness (before, after, and the best possible,
    ``metrics.bound_balancedness``) on top; below it the per-GPU loads of the
    worst layers, before and after."""
    before_loads = metrics.gpu_loads(w, before, num_gpus)
    after_loads = metrics.gpu_loads(w, after, num_gpus)
    mean = w.sum(dim=-1) / num_gpus
    fig, axes = plt.subplots(1 + len(worst), 1, figsize=(11, 3.2 * (1 + len(worst))), squeeze=False)
    ax = axes[0][0]
    layers = range(w.shape[0])
    ax.plot(layers, metrics.balancedness_of_loads(before_loads).tolist(), label="before (slot p holds expert p % E)")
    ax.plot(layers, metrics.balancedness_of_loads(after_loads).tolist(), label=f"after ({algo})")
    ax.plot(layers, best_possible.tolist(), "--", label="bound")
    ax.set_xlabel("layer")
    ax.set_ylabel("balancedness (mean / max GPU load)")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="best")
    gpus = torch.arange(num_gpus).tolist()
    for row, layer in enumerate(worst, start=1):
        ax = axes[row][0]
        ax.bar([g - 0.2 for g in gpus], before_loads[layer].tolist(), width=0.4, label="before")
        ax.bar([g + 0.2 for g in gpus], after_loads[layer].tolist(), width=0.4, label=f"after ({algo})")
        ax.axhline(float(mean[layer]), color="black", linewidth=0.8, linestyle=":", label="mean")
        ax.set_title(f"layer {layer}: load per GPU")
        ax.set_xlabel("GPU")
        ax.set_ylabel("load")
        ax.legend(loc="upper right")
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        raise CliError(f"{path}: cannot write ({exc.strerror or first_line(exc)})") from None
    finally:
        plt.close(fig)


def _cmd_rebalance(args: argparse.Namespace) -> int:
    from .demo import TRIVIAL, Deployment, quality_rows

    # Everything that can be checked without computing is checked first.
    if extension(args.output) not in OUTPUT_FORMATS:
        raise CliError(f"{args.output}: unknown output format {extension(args.output)!r}", hint="write a .pt or .json file")
    check_writable(args.output, "the placement")
    if not args.force and same_file(args.output, args.input):
        raise CliError(f"{args.output}: is the input file; writing the placement would replace the loads",
                       hint="choose another -o file, or pass --force to overwrite the input")
    plt = None
    if args.plot:
        check_writable(args.plot, "the plot")
        plt = _import_pyplot()
        kinds = plt.figure().canvas.get_supported_filetypes()
        plt.close("all")
        if extension(args.plot).lstrip(".") not in kinds:
            raise CliError(f"{args.plot}: matplotlib cannot write {extension(args.plot)!r} images", hint="use a .png, .svg or .pdf file")
    previous = read_placement(args.previous) if args.previous else None
    tokens, zero_note = drop_zero_steps(read_loads(args.input), args.drop_zero_steps)
    S, L, E = (1, *tokens.shape) if tokens.dim() == 2 else tuple(tokens.shape)
    P, G, C, N = args.num_physical_experts, args.num_gpus, args.num_groups, args.num_nodes
    try:
        algo = compute_algorithm(args.algorithm, C, N, num_logical_experts=E, num_gpus=G)
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    if P % G != 0:
        raise CliError(
            f"--num-physical-experts {P} is not divisible by --num-gpus {G}",
            hint=_config_hint(E, P, G, C, N, algo),
        )
    if previous is not None:
        previous = check_previous(args.previous, previous, L, P, E)
    if previous is None and (args.max_moves is not None or args.min_improvement):
        raise CliError("--max-moves and --min-improvement need --previous", hint="give the placement being served")
    keep = dict(previous_physical_to_logical_map=previous, max_moves=args.max_moves,
                min_improvement=args.min_improvement) if previous is not None else {}
    try:
        outputs = rebalance_experts(tokens, P, P // G, C, N, algo, **keep)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        if message.startswith("tokens_per_expert"):  # a bad value in the file, e.g. a negative load
            message = f"{args.input}: loads{message[len('tokens_per_expert'):]}"
        raise CliError(message, hint=_config_hint(E, P, G, C, N, algo)) from None
    write_placement(args.output, outputs)

    deployment = Deployment("input", args.input, L, E, C, N, G, P)
    w = metrics.expert_load(tokens)
    print(f"input: {args.input}: {S} steps x {L} layers x {E} experts ({tokens.dtype}), total load {float(w.sum()):.6g}")
    if zero_note:
        print(zero_note)
    print(f"placement: {P} slots on {G} GPUs ({P // G} per GPU), {N} node(s), "
          f"{C if C is not None else 'no'} expert groups; algorithm {algo.name}"
          + (f" ({_auto_reason(E, G, C, N, algo)})" if args.algorithm == "auto" else ""))
    print(f"wrote {args.output}: " + ", ".join(f"{k} {list(v.shape)} {str(v.dtype).replace('torch.', '')}" for k, v in zip(OUTPUT_KEYS, outputs)))

    # Every variant on the same load, for comparison; the chosen one is marked.
    print("\nbalancedness = mean GPU load / max GPU load (1.0 is perfect): mean over layers, aggregate "
          "(sum of means / sum of maxima), worst layer")
    rows = quality_rows(deployment, tokens)
    header = f"{'placement':<34} {'mean':>6} {'aggr':>6} {'worst':>6} {'layer':>5}"
    if previous is not None:
        header += f" {'moved':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        name = row["variant"] + (" (before)" if row["variant"] == TRIVIAL else "")
        name += "  <- written" if row["variant"] == algo.name else ""
        if "balancedness" not in row:
            print(f"{name:<34} {row['note']}")
            continue
        line = f"{name:<34} {row['balancedness']:6.3f} {row['aggregate']:6.3f} {row['worst']:6.3f} {row['worst_layer']:5d}"
        if previous is not None:
            placement = (metrics.trivial_placement(E, P, L) if row["variant"] == TRIVIAL
                         else deployment.place(tokens, row["variant"])[0])
            line += f" {metrics.moves(previous, placement, P // G).total:7d}"
        print(line)
    bound_row = rows[0]
    print(f"{'bound (no placement does better)':<34} {bound_row['bound']:6.3f} {bound_row['bound_aggregate']:6.3f}")
    if previous is not None:
        print(f"moved: (GPU, expert) pairs a GPU must newly load, going from {args.previous}, summed over layers")
        _report_previous(args, tokens, previous, outputs, algo, P, G, C, N)

    before = metrics.trivial_placement(E, P, L)
    after = outputs[0]
    per_layer_before = metrics.balancedness(w, before, G)
    per_layer_after = metrics.balancedness(w, after, G)
    per_layer_bound = metrics.bound_balancedness(w, P, G)
    worst = per_layer_after.argsort(stable=True)[: args.worst].tolist()
    print(f"\nworst layers of {algo.name}:")
    print(f"{'layer':>5} {'before':>7} {'after':>7} {'bound':>7}")
    for layer in worst:
        print(f"{layer:5d} {float(per_layer_before[layer]):7.3f} {float(per_layer_after[layer]):7.3f} {float(per_layer_bound[layer]):7.3f}")

    if plt is not None:
        _plot(plt, args.plot, w, before, after, G, per_layer_bound, algo.name, worst[:3])
        print(f"\nwrote {args.plot}")
    return 0


def _report_previous(args, tokens, previous, outputs, algo, P, G, C, N) -> None:
    """Moves and balancedness against the previous placement: the fresh
    placement, relabeled, incremental (with --max-moves), and what was
    written, with its kept layers (with --min-improvement)."""
    k = P // G
    L, E = tokens.shape[-2], tokens.shape[-1]
    w = metrics.expert_load(tokens)
    rows = [("previous", previous)]
    rows.append((f"fresh ({algo.name})", rebalance_experts(tokens, P, k, C, N, algo)[0]))
    prev = previous.long()
    rows.append(("relabeled", rebalance_experts(tokens, P, k, C, N, algo, previous_physical_to_logical_map=prev)[0]))
    if args.max_moves is not None:
        searched = rebalance_experts(tokens, P, k, C, N, algo, previous_physical_to_logical_map=prev,
                                     max_moves=args.max_moves)[0]
        rows.append((f"incremental (max {args.max_moves} moves/layer)", searched))
    written = outputs[0]
    unkept = rows[-1][1]
    kept = sum(1 for i in range(L) if torch.equal(written[i].long(), prev[i]) and not torch.equal(unkept[i].long(), prev[i]))
    rows.append((f"written ({kept} of {L} layers kept)" if args.min_improvement else "written", written))
    print(f"\nagainst {args.previous}: moves per layer (mean over layers, total) and balancedness (mean over layers)")
    header = f"{'placement':<40} {'moves':>7} {'total':>7} {'bal':>6}"
    print(header)
    print("-" * len(header))
    for name, placement in rows:
        moved = metrics.moves(previous, placement, k)
        usable = bool(((placement >= 0) & (placement < E)).all()) and bool(
            (metrics.replica_counts(placement.long().clamp(0, E - 1), E) > 0).all())
        bal = f"{float(metrics.balancedness(w, placement, G).mean()):6.3f}" if usable else f"{'n/a':>6}"
        print(f"{name:<40} {moved.total / max(L, 1):7.1f} {moved.total:7d} {bal}")


def _cmd_bench(args: argparse.Namespace) -> int:
    from .demo import BENCH_PRESETS, format_machine, machine_info, memory_measurable, run_bench

    preset_name = "smoke" if args.quick else "full" if args.full else "quick"
    if args.memory and not memory_measurable():
        raise CliError("--memory needs Linux's /proc/self/clear_refs, which is not available here")
    info = machine_info()
    print(format_machine(info))
    print(f"preset {preset_name}, seed {args.seed}\n")
    rows = run_bench(BENCH_PRESETS[preset_name], seed=args.seed, memory=args.memory)
    if args.json:
        try:
            with open(args.json, "w") as f:
                json.dump(dict(machine=info, preset=preset_name, seed=args.seed, rows=rows), f, indent=2)
        except OSError as exc:
            raise CliError(f"{args.json}: cannot write ({exc.strerror or first_line(exc)})") from None
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import eplb_ext

    from .demo import machine_info

    info: Dict[str, object] = {}
    build_info = getattr(eplb_ext, "build_info", None)
    if callable(build_info):
        info.update(build_info())
    else:
        info["version"] = __version__
    machine = machine_info()
    info.update(cpu=machine["cpu"], cores=machine["usable_cores"], torch_threads=machine["torch_threads"],
                cuda_available=torch.cuda.is_available())
    width = max(map(len, info))
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return 0


# --------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------


def _parse_int(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        rule = "is not a positive integer" if minimum == 1 else "is negative"
        raise argparse.ArgumentTypeError(f"{value} {rule}")
    return value


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def _positive_int(text: str) -> int:
    return _parse_int(text, 1)


def _seed(text: str) -> int:
    value = _parse_int(text, 0)
    if value >= 1 << 63:
        raise argparse.ArgumentTypeError(f"{value} is beyond 2**63 - 1, the largest seed")
    return value


MAX_REPEATS = 1000


def _repeats(text: str) -> int:
    value = _parse_int(text, 1)
    if value > MAX_REPEATS:
        raise argparse.ArgumentTypeError(f"{value} is more than {MAX_REPEATS} timed calls")
    return value


def _non_negative_int(text: str) -> int:
    return _parse_int(text, 0)


MAIN_EPILOG = """\
examples:
  eplb-ext demo                      # built-in DeepSeek-V3-like load, balance table
  eplb-ext rebalance loads.pt --num-physical-experts 288 --num-gpus 32 \\
      --num-nodes 4 --num-groups 8 -o placement.pt --plot balance.png
  eplb-ext bench                     # compiled op vs pure-PyTorch reference
  eplb-ext info                      # build and machine details

'eplb-ext COMMAND --help' explains each command."""

DEMO_EPILOG = """\
Places a built-in synthetic load (heavy-tailed per-expert loads, fixed seed)
with every variant that applies, on four deployments: DeepSeek-V3 (58 layers,
256 experts, 8 groups) on 4x8 GPUs with 288 slots, 8x8 GPUs with 320 slots,
18x8 GPUs with 2 slots each, and a group-less 128-expert model (48 layers,
160 slots, 32 GPUs). Hierarchical variants are skipped, with the reason,
where the deployment does not allow them.

examples:
  eplb-ext demo
  eplb-ext demo --seed 3 --layers 8"""

REBALANCE_EPILOG = """\
INPUT holds token counts per expert, [steps, layers, experts] or [layers,
experts], of any integer or floating dtype:
  .pt / .pth     a tensor, or a dict with 'logical_count' (as SGLang's
                 expert-distribution recorder saves it)
  .npy           an array saved with numpy.save
  .json          nested lists, or {"logical_count": nested lists}
  .safetensors   a 'logical_count' tensor, or a single tensor (needs the
                 safetensors package)

A .pt file saved on a GPU is read onto the CPU. Steps whose loads are all
zero (rows of a recorder buffer never filled) count as steps unless
--drop-zero-steps leaves them out; the report says how many there are. A
placement file is not a load: give it with --previous.

OUTPUT (.pt: tensors; .json: nested lists) holds physical_to_logical_map
[layers, slots], logical_to_physical_map [layers, experts, X] (-1 padded)
and logical_count [layers, experts]. Slot p is on GPU p // (P / G).

The report compares the placement without balancing (slot p holds expert
p % E) with every variant, and lists the worst layers.

examples:
  # DeepSeek-V3 on 4 nodes x 8 GPUs, 288 slots
  eplb-ext rebalance expert_distribution.pt --num-physical-experts 288 \\
      --num-gpus 32 --num-nodes 4 --num-groups 8 -o placement.pt
  # a model without expert groups, JSON in and out, with a plot
  eplb-ext rebalance loads.json --num-physical-experts 160 --num-gpus 32 \\
      --algorithm deepseek_vec -o placement.json --plot balance.png
  # relabel against the placement now in use, for the fewest expert moves
  eplb-ext rebalance loads.npy -P 288 -G 32 --num-nodes 4 --num-groups 8 \\
      --previous placement.pt -o new_placement.pt
  # change the served placement by at most 29 moves per layer, and keep the
  # layers that would gain less than 0.002 balancedness
  eplb-ext rebalance loads.npy -P 288 -G 32 --previous placement.pt \\
      --max-moves 29 --min-improvement 0.002 -o new_placement.pt"""

BENCH_EPILOG = """\
Times the compiled rebalance_experts against the pure-PyTorch reference
(eplb_ext.reference) on built-in synthetic loads and checks that both give
the same outputs. The default covers DeepSeek-V3 (4x8 GPUs, 288 slots) at
S = 1 and 1000 steps and a Qwen3-235B-like model at S = 1 (well under a
minute); --quick is DeepSeek-V3 at S = 1 only (seconds); --full is the whole
suite of benchmarks/bench_cpu.py (several minutes). Timings are wall clock
on the CPU; other work on the machine slows them.

examples:
  eplb-ext bench
  eplb-ext bench --quick
  eplb-ext bench --memory --json bench.json"""

INFO_EPILOG = """\
example:
  eplb-ext info"""


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Expert Parallelism Load Balancing (EPLB): place MoE experts on GPUs.",
        epilog=MAIN_EPILOG,
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help="place a built-in DeepSeek-V3-like load and print a balance table",
                       description="Place a built-in synthetic load and print a balance table.",
                       epilog=DEMO_EPILOG, formatter_class=fmt)
    p.add_argument("--seed", type=_seed, default=0, help="seed of the synthetic load (default 0)")
    p.add_argument("--layers", type=_positive_int, default=None, help="layers per model (default: the model's own)")
    p.add_argument("--steps", type=_positive_int, default=16, help="load snapshots per layer (default 16)")
    p.add_argument("--repeats", type=_repeats, default=3, help="timed calls per variant (default 3)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("rebalance", help="place a recorded load and write the placement",
                       description="Place the experts for a recorded load and write the placement.",
                       epilog=REBALANCE_EPILOG, formatter_class=fmt)
    p.add_argument("input", metavar="INPUT", help="loads: " + ", ".join(INPUT_FORMATS))
    p.add_argument("-P", "--num-physical-experts", type=_positive_int, required=True, metavar="P",
                   help="slots in all GPUs together (>= experts, divisible by G)")
    p.add_argument("-G", "--num-gpus", type=_positive_int, required=True, metavar="G", help="GPUs")
    p.add_argument("--num-nodes", type=_positive_int, default=1, metavar="N", help="nodes (default 1)")
    p.add_argument("--num-groups", type=_positive_int, default=None, metavar="C",
                   help="expert groups (DeepSeek-V3: 8); omit for a model without groups")
    p.add_argument("--algorithm", default="auto", choices=["auto"] + [a.name for a in EplbAlgorithm],
                   help="variant (default auto: deepseek_hierarchical where groups and nodes allow it, else deepseek)")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="placement file to write: .pt or .json")
    p.add_argument("--plot", metavar="FILE.png", help="also draw per-GPU loads and per-layer balancedness (needs matplotlib)")
    p.add_argument("--previous", metavar="PLACEMENT",
                   help="the placement being served (written earlier): relabel the new one for the fewest "
                        "expert moves and report moves")
    p.add_argument("--max-moves", type=_non_negative_int, default=None, metavar="M",
                   help="with --previous: change the previous placement by at most M moves per layer instead")
    p.add_argument("--min-improvement", type=_unit_interval, default=0.0, metavar="X",
                   help="with --previous: keep a layer's previous placement unless balancedness gains >= X")
    p.add_argument("--worst", type=_positive_int, default=3, metavar="K", help="worst layers to list (default 3)")
    p.add_argument("--drop-zero-steps", action="store_true",
                   help="leave out steps whose loads are all zero (rows of a recorder buffer never filled)")
    p.add_argument("--force", action="store_true", help="allow -o to overwrite the input file")
    p.set_defaults(func=_cmd_rebalance)

    p = sub.add_parser("bench", help="time the compiled op against the pure-PyTorch reference",
                       description="Time the compiled op against the pure-PyTorch reference.",
                       epilog=BENCH_EPILOG, formatter_class=fmt)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="one shape at S = 1 only (seconds)")
    size.add_argument("--full", action="store_true", help="every shape at S = 1, 64, 1000 (minutes)")
    p.add_argument("--memory", action="store_true", help="also measure peak memory (a fresh process per call; slower)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the synthetic loads (default 0)")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("info", help="print how this copy was built", description="Print how this copy was built.",
                       epilog=INFO_EPILOG, formatter_class=fmt)
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the command line; returns the exit code (0, or 2 for a mistake
    the user can fix)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.func(args)
    except CliError as exc:
        print(f"{PROG}: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"{PROG}: hint: {exc.hint}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError as exc:  # e.g. a placement of 2**30 slots
        print(f"{PROG}: error: out of memory ({first_line(exc)})", file=sys.stderr)
        print(f"{PROG}: hint: place fewer layers or slots at a time", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly
        # Point stdout at /dev/null so the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
