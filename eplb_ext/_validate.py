"""Argument checks of the Python API (SPEC "Bad input").

Each check raises before any work, naming the argument, its value and the
rule. The public API runs every argument and value check here, before any
op: an error raised in Python never has to cross from the compiled library
as a C++ exception (which some builds of torch cannot unwind; the ops keep
their own checks for direct calls). ``check_load_values`` scans CPU loads
with the ``first_bad_load`` op, which reports instead of raising, and loads
on a GPU with torch ops and one small read on the host.
"""

from __future__ import annotations

import numbers
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _ops

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


def unreadable(tensor: Tensor) -> Optional[str]:
    """What keeps ``tensor``'s values from being read as numbers ("a meta
    tensor", "a quantized tensor", "a torch.sparse_coo tensor", ...), or None
    for an ordinary dense tensor."""
    if tensor.is_meta:
        return "a meta tensor"
    if tensor.is_quantized:
        return "a quantized tensor"
    if tensor.layout != torch.strided:
        return f"a {tensor.layout} tensor"
    return None


def has_integer_dtype(tensor: Tensor) -> bool:
    """Whether ``tensor`` can hold ids: an integer dtype (not bool, floating
    or complex)."""
    return not (tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex())


def check_loads(name: str, tensor: object, dims: tuple) -> Tensor:
    """Checks type, rank, layout and dtype of a load tensor; widens float8 to
    float32. The values are checked apart (``check_load_values``), once the
    other arguments are known to be good."""
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


_UNSIGNED = {getattr(torch, n) for n in ("uint8", "uint16", "uint32", "uint64") if hasattr(torch, n)}

# The size limits of the compiled code (csrc/ops/check.h): indices are int32
# inside the core; step counts too.
MAX_INDEX = 1 << 30
MAX_STEPS = (1 << 31) - 1


def placement_rule(S: int, L: int, E: int, P: int, k: int, C: int, N: int) -> Optional[Tuple[type, str]]:
    """The first rule of ``check_placement`` (csrc/ops/check.h) that the
    shape and integer arguments break, as (exception class, message), or
    None. Shared by the public API, which raises it, and the fake kernels.

    Each rule is tested only once the ones before it hold (a later one may
    divide by an earlier one's value), and a message is written only for
    the rule that fails: formatting a symbolic size while tracing would fix
    it to its example value."""
    rules = (
        (lambda: E >= 1, lambda: f"tokens_per_expert has {E} logical experts (last dimension); at least 1 is "
                                 "required"),
        (lambda: P >= E, lambda: f"num_physical_experts={P} is smaller than the number of logical experts {E}; "
                                 "every expert needs at least one slot"),
        (lambda: P <= MAX_INDEX, lambda: f"num_physical_experts={P} exceeds {MAX_INDEX}, the largest number of "
                                         "slots supported (int32 indices)"),
        (lambda: k >= 1 and P % k == 0, lambda: f"num_local_physical_experts={k} must divide "
                                                f"num_physical_experts={P}"),
        (lambda: C >= 1 and E % C == 0, lambda: f"num_groups={C} must divide the number of logical experts {E}"),
        (lambda: N >= 1 and C % N == 0, lambda: f"num_nodes={N} must divide num_groups={C}"),
        (lambda: (P // k) % N == 0, lambda: f"num_nodes={N} must divide the number of GPUs {P // k} "
                                            "(num_physical_experts / num_local_physical_experts)"),
        (lambda: S <= MAX_STEPS, lambda: f"tokens_per_expert has {S} steps (first dimension); at most {MAX_STEPS} "
                                         "are supported"),
        # Every output must be addressable with int64 element offsets.
        (lambda: L == 0 or E * (P - E + 1) * L <= _INT64_MAX,
         lambda: f"logical_to_physical_map of shape [{L}, {E}, {P - E + 1}] is too large to allocate"),
    )
    for holds, message in rules:
        if not holds():
            return ValueError, message()
    return None


def check_placement(tokens: Tensor, P: int, k: int, C: int, N: int) -> None:
    """Raises the first broken placement rule for ``tokens`` ([S, L, E] or
    [L, E]) and the integer arguments."""
    S = tokens.shape[0] if tokens.dim() == 3 else 1
    broken = placement_rule(S, tokens.shape[-2], tokens.shape[-1], P, k, C, N)
    if broken is not None:
        raise broken[0](broken[1])


def _unravel(flat: int, shape) -> Tuple[int, ...]:
    index = []
    for size in reversed(shape):
        index.append(flat % size)
        flat //= size
    return tuple(reversed(index))


def _first_bad(tensor: Tensor) -> Optional[Tuple[int, ...]]:
    """Index of the first bad load in index order, or None."""
    if tensor.device.type == "cpu" and tensor.dim() in (2, 3):
        # Along a dimension of stride 0 every element repeats the first, so
        # the first bad load has index 0 there: scan only the distinct
        # values (an expanded view may stand for far more loads than memory
        # holds), whose indices are the tensor's, in one pass in C++ that
        # reports instead of raising.
        distinct = tensor[tuple(slice(0, 1) if st == 0 else slice(None) for st in tensor.stride())]
        flat = int(_ops.ops.first_bad_load(distinct))
        return None if flat < 0 else _unravel(flat, distinct.shape)
    if tensor.dtype.is_floating_point:
        # A finite float64 beyond float32's range is infinite once converted.
        bad = ~torch.isfinite(tensor.float()) | (tensor < 0)
    else:
        bad = tensor < 0
    if not bool(bad.any()):
        return None
    return _unravel(int(bad.reshape(-1).nonzero()[0, 0]), tensor.shape)


def check_load_values(name: str, tensor: Tensor) -> None:
    """Raises ValueError for the first negative, NaN or (in float32) infinite
    load, in the tensor's index order, with the same message as the CPU ops.

    Reads one boolean on the host (a synchronisation on a GPU).
    """
    if tensor.dtype in _UNSIGNED or tensor.numel() == 0:
        return
    index = _first_bad(tensor)
    if index is not None:
        raise_bad_load(name, tensor, index)


def summed_checked_loads(name: str, tensor: Tensor) -> Tensor:
    """The float32 ``[L, E]`` sums over the steps of CPU loads ``[S, L, E]``,
    which the ``deepseek`` variants place exactly as they place the steps,
    checked in the same pass; raises ValueError for a bad load as
    ``check_load_values`` does."""
    sums, flat = _ops.ops.sum_steps(tensor)
    if flat >= 0:
        raise_bad_load(name, tensor, _unravel(flat, tensor.shape))
    return sums


def raise_bad_load(name: str, tensor: Tensor, index: Tuple[int, ...]) -> None:
    """Raises the ValueError for the bad load at ``index`` of ``tensor``."""
    value = tensor[index].item()
    as_f32 = torch.tensor(value, dtype=torch.float32).item() if isinstance(value, float) else value
    if value != value:
        what = "NaN"
    elif isinstance(value, float) and abs(as_f32) == float("inf"):
        what = "infinite in float32"
    else:
        what = "negative"
    where = ", ".join(str(i) for i in index)
    raise ValueError(f"{name}[{where}] = {value:g} is {what}; loads must be finite and >= 0")
