"""Argument checks of the Python API (SPEC "Bad input").

Each check raises before any work, naming the argument, its value and the
rule. Load values (negative, NaN, infinite) of CPU tensors are checked by the
compiled ops, which scan the input once in C++; for tensors on a GPU,
``check_load_values`` does it here with one small read on the host.
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch
from torch import Tensor

# Floating formats the kernels do not read directly; converting them to
# float32 is exact.
_WIDEN_TO_FLOAT32 = {
    getattr(torch, name)
    for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu")
    if hasattr(torch, name)
}


_INT64_MAX = 2**63 - 1


def check_int(name: str, value: object, *, allow_none: bool = False, minimum: int = 1) -> Optional[int]:
    """Returns ``value`` as an int, or raises TypeError/ValueError naming ``name``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = "None or an integer" if allow_none else "an integer"
        raise TypeError(f"{name} must be {kind}, got {value!r} of type {type(value).__name__}")
    value = int(value)
    if value > _INT64_MAX:
        # torch's argument parser would reject it with an untagged error.
        raise ValueError(f"{name}={value} exceeds 2**63 - 1, the largest integer an op argument can hold")
    if value < minimum:
        rule = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name}={value} must be {rule}")
    return value


def check_loads(
    name: str, tensor: object, dims: tuple, *, values_on_device: bool = False, values: bool = False
) -> Tensor:
    """Checks type, rank, layout and dtype of a load tensor; widens float8 to
    float32. Also checks the values (``check_load_values``) with ``values``,
    or with ``values_on_device`` for a tensor that is not on the CPU (the CPU
    ops check values themselves)."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{name} must be {want}, got shape {tuple(tensor.shape)}")
    if tensor.layout != torch.strided:
        raise ValueError(f"{name} must be a dense tensor, got layout {tensor.layout}")
    if tensor.dtype == torch.bool or tensor.is_complex() or tensor.is_quantized:
        raise TypeError(f"{name} has dtype {tensor.dtype}; loads must be an integer or floating dtype")
    if tensor.dtype in _WIDEN_TO_FLOAT32:
        tensor = tensor.float()
    if values or (values_on_device and tensor.device.type != "cpu"):
        check_load_values(name, tensor)
    return tensor


_UNSIGNED = {getattr(torch, n) for n in ("uint8", "uint16", "uint32", "uint64") if hasattr(torch, n)}


def check_load_values(name: str, tensor: Tensor) -> None:
    """Raises ValueError for the first negative, NaN or (in float32) infinite
    load, in the tensor's index order, with the same message as the CPU ops.

    Reads one boolean on the host (a synchronisation on a GPU).
    """
    if tensor.dtype in _UNSIGNED or tensor.numel() == 0:
        return
    if tensor.dtype.is_floating_point:
        # A finite float64 beyond float32's range is infinite once converted.
        bad = ~torch.isfinite(tensor.float()) | (tensor < 0)
    else:
        bad = tensor < 0
    if not bool(bad.any()):
        return
    flat = int(bad.reshape(-1).nonzero()[0, 0])
    index = []
    for size in reversed(tensor.shape):
        index.append(flat % size)
        flat //= size
    index.reverse()
    value = tensor[tuple(index)].item()
    as_f32 = torch.tensor(value, dtype=torch.float32).item() if isinstance(value, float) else value
    if value != value:
        what = "NaN"
    elif isinstance(value, float) and abs(as_f32) == float("inf"):
        what = "infinite in float32"
    else:
        what = "negative"
    where = ", ".join(str(i) for i in index)
    raise ValueError(f"{name}[{where}] = {value:g} is {what}; loads must be finite and >= 0")
