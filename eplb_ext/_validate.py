"""Argument checks of the Python API (SPEC "Bad input").

Each check raises before any work, naming the argument, its value and the
rule. Load values (negative, NaN, infinite) are checked by the compiled ops,
which scan the input once in C++.
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


def check_int(name: str, value: object, *, allow_none: bool = False, minimum: int = 1) -> Optional[int]:
    """Returns ``value`` as an int, or raises TypeError/ValueError naming ``name``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = "None or an integer" if allow_none else "an integer"
        raise TypeError(f"{name} must be {kind}, got {value!r} of type {type(value).__name__}")
    value = int(value)
    if value < minimum:
        rule = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name}={value} must be {rule}")
    return value


def check_loads(name: str, tensor: object, dims: tuple) -> Tensor:
    """Checks type, rank, layout and dtype of a load tensor; widens float8 to float32."""
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
    return tensor
