"""The files of the ``eplb-ext`` command line: loads in (.pt/.pth, .npy,
.json, .safetensors), placements in and out (.pt, .json), and the one error
type whose message the command line prints as ``eplb-ext: error: ...``.
Every way a file can be unreadable or not what it should be ends in a
``CliError`` naming the file, never in another exception.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from ._validate import has_integer_dtype, unreadable

INPUT_FORMATS = (".pt", ".pth", ".npy", ".json", ".safetensors")
OUTPUT_FORMATS = (".pt", ".json")
OUTPUT_KEYS = ("physical_to_logical_map", "logical_to_physical_map", "logical_count")


class CliError(Exception):
    """A mistake the user can fix: printed as one error line (plus a hint)."""

    def __init__(self, message: str, hint: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
            raise CliError(f"{path}: the loads are not a rectangular array of numbers ({first_line(exc)})") from None
    if not isinstance(obj, Tensor):
        raise CliError(f"{path}: expected a tensor of loads, found {type(obj).__name__}")
    return _dense(obj, path)


def _dense(t: Tensor, path: str) -> Tensor:
    """``t`` if it is an ordinary dense tensor with values, else a CliError:
    a sparse, quantized or meta tensor cannot be loads nor a placement."""
    odd = unreadable(t)
    if odd is not None:
        raise CliError(f"{path}: holds {odd}; save an ordinary dense tensor of numbers")
    return t


def _read_pt(path: str) -> object:
    import pickle

    try:
        # weights_only: a load file must not be able to run code.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CliError(
            f"{path}: holds objects other than tensors, numbers, lists and dicts ({first_line(exc)})",
            hint="save only the load tensor, or a dict of tensors, with torch.save",
        ) from None
    except OSError:
        raise  # reported by _read_file
    except Exception as exc:  # a damaged file fails deep inside torch.load, with many exception types
        raise CliError(f"{path}: not a readable torch file ({type(exc).__name__}: {first_line(exc)})") from None


def _read_npy(path: str) -> object:
    try:
        import numpy as np
    except ImportError:
        raise CliError("reading .npy files needs numpy, which is not installed", hint="pip install numpy") from None
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CliError(f"{path}: not a readable .npy array ({first_line(exc)})") from None
    if not isinstance(array, np.ndarray):
        raise CliError(f"{path}: holds several arrays (.npz); save one array with numpy.save")
    if array.dtype.byteorder not in ("=", "|"):
        array = array.astype(array.dtype.newbyteorder("="))  # torch reads native byte order only
    try:
        return torch.from_numpy(np.ascontiguousarray(array))
    except TypeError as exc:
        raise CliError(f"{path}: array of dtype {array.dtype} is not a load ({first_line(exc)})") from None


def _read_json(path: str) -> object:
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: not valid JSON ({first_line(exc)})") from None
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
        raise CliError(f"{path}: not a readable .safetensors file ({first_line(exc)})") from None


_READERS = {".pt": _read_pt, ".pth": _read_pt, ".npy": _read_npy, ".json": _read_json, ".safetensors": _read_safetensors}


def extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def _read_file(path: str, formats: Tuple[str, ...], what: str, hint: str) -> object:
    """What the file at ``path`` holds, read by the reader of its extension
    (one of ``formats``); every failure is a CliError naming the file."""
    reader = _READERS.get(extension(path)) if extension(path) in formats else None
    if reader is None:
        raise CliError(f"{path}: unknown {what} format {extension(path) or '(no extension)'!r}", hint=hint)
    if not os.path.exists(path):
        raise CliError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CliError(f"{path}: is a directory, not a file")
    try:
        return reader(path)
    except OSError as exc:  # e.g. no permission
        raise CliError(f"{path}: cannot read ({exc.strerror or first_line(exc)})") from None


def read_loads(path: str) -> Tensor:
    """Loads ``[S, L, E]`` or ``[L, E]`` from a .pt/.pth, .npy, .json or
    .safetensors file, on the CPU."""
    data = _read_file(path, INPUT_FORMATS, "input", "give a " + ", ".join(INPUT_FORMATS) + " file")
    tokens = _pick_tensor(data, path)
    if tokens.dim() not in (2, 3):
        raise CliError(
            f"{path}: loads must be [steps, layers, experts] or [layers, experts], got shape {tuple(tokens.shape)}"
        )
    if tokens.shape[-2] == 0 or tokens.shape[-1] == 0 or tokens.shape[0] == 0:
        raise CliError(f"{path}: no steps, layers or experts in loads of shape {tuple(tokens.shape)}")
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
    if not has_integer_dtype(previous):
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


def same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def write_placement(path: str, outputs: Sequence[Tensor]) -> None:
    """Writes the three maps to ``.pt`` (tensors) or ``.json`` (nested lists)."""
    data = dict(zip(OUTPUT_KEYS, outputs))
    try:
        if extension(path) == ".json":
            with open(path, "w") as f:
                json.dump({k: v.tolist() for k, v in data.items()}, f)
        else:
            torch.save(data, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a missing folder as RuntimeError
        raise CliError(f"{path}: cannot write ({getattr(exc, 'strerror', None) or first_line(exc)})") from None


def check_writable(path: str, what: str) -> None:
    """Fails early, before any work, when ``path`` cannot be created."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CliError(f"{path}: cannot write {what}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise CliError(f"{path}: cannot write {what}: is a directory")
