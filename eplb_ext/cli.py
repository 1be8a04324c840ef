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
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import metrics
from .algorithms import EplbAlgorithm, compute_algorithm, rebalance_experts
from .build_info import __version__

PROG = "eplb-ext"
EXIT_USAGE = 2  # what argparse uses for its own usage errors
INPUT_FORMATS = (".pt", ".pth", ".npy", ".json", ".safetensors")
OUTPUT_FORMATS = (".pt", ".json")
OUTPUT_KEYS = ("physical_to_logical_map", "logical_to_physical_map", "logical_count")


class CliError(Exception):
    """A mistake the user can fix: printed as one error line (plus a hint)."""

    def __init__(self, message: str, hint: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------
# reading loads
# --------------------------------------------------------------------------


def _pick_tensor(obj: object, path: str) -> Tensor:
    """The load tensor in what a file held: a tensor (or nested lists), or a
    dict with a ``logical_count`` entry (SGLang's expert-distribution
    recorder), or a dict with a single tensor. A placement written by
    ``rebalance`` (it has a ``logical_count`` too) is not a load."""
    if isinstance(obj, dict):
        if "physical_to_logical_map" in obj:
            raise CliError(
                f"{path}: holds a placement (physical_to_logical_map), not loads",
                hint="give the token counts per expert (e.g. SGLang's expert-distribution dump); "
                "a placement written by 'eplb-ext rebalance' goes to --previous",
            )
        if "logical_count" in obj:
            obj = obj["logical_count"]
        else:
            tensors = [k for k, v in obj.items() if isinstance(v, (Tensor, list))]
            if len(tensors) != 1:
                raise CliError(
                    f"{path}: found no 'logical_count' entry among the keys {sorted(map(str, obj))}",
                    hint="save the loads as a tensor, or as a dict with the key 'logical_count'",
                )
            obj = obj[tensors[0]]
    if isinstance(obj, list):
        try:
            obj = torch.tensor(obj)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise CliError(f"{path}: the loads are not a rectangular array of numbers ({_first_line(exc)})") from None
    if not isinstance(obj, Tensor):
        raise CliError(f"{path}: expected a tensor of loads, found {type(obj).__name__}")
    return _dense(obj, path)


def _dense(t: Tensor, path: str) -> Tensor:
    """``t`` if it is an ordinary dense tensor with values, else a CliError:
    a sparse, quantized or meta tensor cannot be loads nor a placement."""
    if t.layout != torch.strided or t.is_quantized or t.is_meta:
        kind = "a meta" if t.is_meta else "a quantized" if t.is_quantized else f"a {t.layout}"
        raise CliError(f"{path}: holds {kind} tensor; save an ordinary dense tensor of numbers")
    return t


def _read_pt(path: str) -> object:
    import pickle

    try:
        # weights_only: a load file must not be able to run code.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CliError(
            f"{path}: holds objects other than tensors, numbers, lists and dicts ({_first_line(exc)})",
            hint="save only the load tensor, or a dict of tensors, with torch.save",
        ) from None
    except OSError:
        raise  # reported by _read_file
    except Exception as exc:  # a damaged file fails deep inside torch.load, with many exception types
        raise CliError(f"{path}: not a readable torch file ({type(exc).__name__}: {_first_line(exc)})") from None


def _read_npy(path: str) -> object:
    try:
        import numpy as np
    except ImportError:
        raise CliError("reading .npy files needs numpy, which is not installed", hint="pip install numpy") from None
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CliError(f"{path}: not a readable .npy array ({_first_line(exc)})") from None
    if not isinstance(array, np.ndarray):
        raise CliError(f"{path}: holds several arrays (.npz); save one array with numpy.save")
    if array.dtype.byteorder not in ("=", "|"):
        array = array.astype(array.dtype.newbyteorder("="))  # torch reads native byte order only
    try:
        return torch.from_numpy(np.ascontiguousarray(array))
    except TypeError as exc:
        raise CliError(f"{path}: array of dtype {array.dtype} is not a load ({_first_line(exc)})") from None


def _read_json(path: str) -> object:
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: not valid JSON ({_first_line(exc)})") from None
    except RecursionError:
        raise CliError(f"{path}: JSON nested too deeply to read") from None


def _read_safetensors(path: str) -> object:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CliError(
            "reading .safetensors files needs the safetensors package, which is not installed",
            hint="pip install safetensors (or save the loads as .pt, .npy or .json)",
        ) from None
    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise CliError(f"{path}: not a readable .safetensors file ({_first_line(exc)})") from None


_READERS = {".pt": _read_pt, ".pth": _read_pt, ".npy": _read_npy, ".json": _read_json, ".safetensors": _read_safetensors}


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def _read_file(path: str, formats: Tuple[str, ...], what: str, hint: str) -> object:
    """What the file at ``path`` holds, read by the reader of its extension
    (one of ``formats``); every failure is a CliError naming the file."""
    reader = _READERS.get(_extension(path)) if _extension(path) in formats else None
    if reader is None:
        raise CliError(f"{path}: unknown {what} format {_extension(path) or '(no extension)'!r}", hint=hint)
    if not os.path.exists(path):
        raise CliError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CliError(f"{path}: is a directory, not a file")
    try:
        return reader(path)
    except OSError as exc:  # e.g. no permission
        raise CliError(f"{path}: cannot read ({exc.strerror or _first_line(exc)})") from None


def read_loads(path: str) -> Tensor:
    """Loads ``[S, L, E]`` or ``[L, E]`` from a .pt/.pth, .npy, .json or
    .safetensors file, on the CPU."""
    data = _read_file(path, INPUT_FORMATS, "input", "give a " + ", ".join(INPUT_FORMATS) + " file")
    tokens = _pick_tensor(data, path)
    if tokens.dim() not in (2, 3):
        raise CliError(
            f"{path}: loads must be [steps, layers, experts] or [layers, experts], got shape {tuple(tokens.shape)}"
        )
    if tokens.shape[-2] == 0 or tokens.shape[-1] == 0:
        raise CliError(f"{path}: no layers or no experts in loads of shape {tuple(tokens.shape)}")
    return tokens


def read_placement(path: str) -> Tensor:
    """``physical_to_logical_map`` from a file written by ``rebalance``."""
    hint = "give a .pt or .json file written by 'eplb-ext rebalance'"
    data = _read_file(path, OUTPUT_FORMATS, "placement", hint)
    if not isinstance(data, dict) or "physical_to_logical_map" not in data:
        raise CliError(f"{path}: has no 'physical_to_logical_map'", hint=hint)
    previous = data["physical_to_logical_map"]
    return _dense(previous, path) if isinstance(previous, Tensor) else _pick_tensor(previous, path)


def check_previous(path: str, previous: Tensor, num_layers: int, num_slots: int, num_experts: int) -> Tensor:
    """``previous`` as an int64 ``[L, P]`` placement of E experts (-1: an
    empty slot), or a CliError naming the first thing that does not fit the
    loads."""
    if previous.dtype == torch.bool or previous.is_floating_point() or previous.is_complex():
        raise CliError(f"{path}: placement has dtype {previous.dtype}; expert ids must be integers")
    if tuple(previous.shape) != (num_layers, num_slots):
        raise CliError(f"{path}: placement of shape {tuple(previous.shape)} does not fit "
                       f"{num_layers} layers x {num_slots} slots",
                       hint="give the placement written for this model and --num-physical-experts")
    # Unsigned ids beyond int64 wrap to negative ones here, so they fail the
    # range check too (torch compares no uint64 tensors on the CPU).
    wide = previous.to(torch.int64)
    bad = ((wide < -1) | (wide >= num_experts)).nonzero()
    if len(bad) > 0:
        layer, slot = bad[0].tolist()
        raise CliError(
            f"{path}: placement holds expert {previous[layer, slot].item()} (layer {layer}, slot {slot}), "
            f"but the loads have {num_experts} experts (ids 0..{num_experts - 1}, or -1 for an empty slot)",
            hint="give the placement written for this model's loads, or leave out --previous",
        )
    return wide


def drop_zero_steps(tokens: Tensor, drop: bool) -> Tuple[Tensor, Optional[str]]:
    """``tokens`` without its all-zero steps (rows of a recorder's buffer that
    were never filled) when ``drop``, and a note for the report, or None. All
    steps zero: kept, there is nothing else to place."""
    if tokens.dim() != 3:
        return tokens, None
    zero = (tokens == 0).flatten(1).all(dim=1)
    count = int(zero.sum())
    if count == 0 or count == tokens.shape[0]:
        return tokens, None
    if not drop:
        return tokens, (f"note: {count} of {tokens.shape[0]} steps are all zero (unfilled recorder rows?); "
                        "--drop-zero-steps leaves them out")
    return tokens[~zero], f"note: dropped {count} all-zero steps of {tokens.shape[0]} (--drop-zero-steps)"


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


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


def write_placement(path: str, outputs: Sequence[Tensor]) -> None:
    """Writes the three maps to ``.pt`` (tensors) or ``.json`` (nested lists)."""
    data = dict(zip(OUTPUT_KEYS, outputs))
    try:
        if _extension(path) == ".json":
            with open(path, "w") as f:
                json.dump({k: v.tolist() for k, v in data.items()}, f)
        else:
            torch.save(data, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a missing folder as RuntimeError
        raise CliError(f"{path}: cannot write ({getattr(exc, 'strerror', None) or _first_line(exc)})") from None


def _check_writable(path: str, what: str) -> None:
    """Fails early, before any work, when ``path`` cannot be created."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CliError(f"{path}: cannot write {what}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise CliError(f"{path}: cannot write {what}: is a directory")


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
        raise CliError(f"{path}: cannot write ({exc.strerror or _first_line(exc)})") from None
    finally:
        plt.close(fig)


def _cmd_rebalance(args: argparse.Namespace) -> int:
    from .demo import TRIVIAL, Deployment, quality_rows

    # Everything that can be checked without computing is checked first.
    if _extension(args.output) not in OUTPUT_FORMATS:
        raise CliError(f"{args.output}: unknown output format {_extension(args.output)!r}", hint="write a .pt or .json file")
    _check_writable(args.output, "the placement")
    if not args.force and _same_file(args.output, args.input):
        raise CliError(f"{args.output}: is the input file; writing the placement would replace the loads",
                       hint="choose another -o file, or pass --force to overwrite the input")
    plt = None
    if args.plot:
        _check_writable(args.plot, "the plot")
        plt = _import_pyplot()
        kinds = plt.figure().canvas.get_supported_filetypes()
        plt.close("all")
        if _extension(args.plot).lstrip(".") not in kinds:
            raise CliError(f"{args.plot}: matplotlib cannot write {_extension(args.plot)!r} images", hint="use a .png, .svg or .pdf file")
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
            raise CliError(f"{args.json}: cannot write ({exc.strerror or _first_line(exc)})") from None
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
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the synthetic load (default 0)")
    p.add_argument("--layers", type=_positive_int, default=None, help="layers per model (default: the model's own)")
    p.add_argument("--steps", type=_positive_int, default=16, help="load snapshots per layer (default 16)")
    p.add_argument("--repeats", type=_positive_int, default=3, help="timed calls per variant (default 3)")
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
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the synthetic loads (default 0)")
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
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly
        # Point stdout at /dev/null so the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
