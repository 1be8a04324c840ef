"""The compiled operators: loading, error translation and fake kernels.

The library registers its ops under ``torch.ops.eplb_ext``. Fake kernels let
the ops trace under ``torch.compile``; every output shape follows from the
input shapes and the integer arguments alone (the ``deepseek`` op returns
each slot's replica rank, and ``logical_to_physical`` builds the map from
experts to slots at a width the caller chooses).
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any, Callable, Tuple

import torch
from torch import Tensor


def _load_library() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    found = sorted(glob.glob(os.path.join(here, "_C*.so")) + glob.glob(os.path.join(here, "_C*.pyd")))
    if not found:
        raise ImportError(
            "eplb_ext's compiled library (_C) is missing from " + here + "; build it with "
            "'pip install --no-build-isolation .' (or 'python setup.py build_ext --inplace')"
        )
    torch.ops.load_library(found[0])


_load_library()
ops = torch.ops.eplb_ext

# The stable ABI carries C++ errors as RuntimeError; the library tags its own
# argument errors with the Python class they stand for.
_TAG = re.compile(r"\[eplb_ext (ValueError|TypeError|MemoryError)\] ([^\n]*)")
_CLASSES = {"ValueError": ValueError, "TypeError": TypeError, "MemoryError": MemoryError}


def call(op: Callable[..., Any], *args: Any) -> Any:
    """Runs ``op(*args)``, re-raising the library's tagged errors as
    ValueError / TypeError / MemoryError."""
    try:
        return op(*args)
    except RuntimeError as exc:
        match = _TAG.search(str(exc))
        if match is None:
            raise
        raise _CLASSES[match.group(1)](match.group(2)) from None


def _reject(kind: str, message: str) -> None:
    # Fake kernels fail like the compiled ones: a tagged RuntimeError.
    raise RuntimeError(f"[eplb_ext {kind}] {message}")


# The load dtypes the compiled ops take (dispatch_loads, csrc/ops/tensor_utils.h).
_LOAD_DTYPES = {torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16,
                torch.float32, torch.float64} | {getattr(torch, n) for n in ("uint16", "uint32", "uint64")
                                                 if hasattr(torch, n)}


def _check_load_dtype(t: Tensor, name: str) -> None:
    if t.dtype not in _LOAD_DTYPES:
        _reject("TypeError", f"{name} has dtype {t.dtype}; the ops take integer, float16, bfloat16, float32 or "
                "float64 loads (not bool, complex or float8: rebalance_experts widens float8 to float32)")


def _check_placement(tokens: Tensor, P: int, k: int, C: int, N: int) -> Tuple[int, int]:
    """The shape rules the compiled ops check (csrc/ops/check.h), for the
    fake kernels: returns (L, E)."""
    if tokens.dim() not in (2, 3):
        _reject("ValueError", f"tokens_per_expert must be [S, L, E] or [L, E], got {tokens.dim()} dimensions")
    _check_load_dtype(tokens, "tokens_per_expert")
    L, E = tokens.shape[-2], tokens.shape[-1]
    from ._validate import placement_rule

    broken = placement_rule(tokens.shape[0] if tokens.dim() == 3 else 1, L, E, P, k, C, N)
    if broken is not None:
        _reject(broken[0].__name__, broken[1])
    return L, E


def _index(like: Tensor, *shape: int, dtype: torch.dtype = torch.int64) -> Tensor:
    return like.new_empty(shape, dtype=dtype)


@torch.library.register_fake("eplb_ext::balanced_packing")
def _balanced_packing_fake(weight: Tensor, num_packs: int) -> Tuple[Tensor, Tensor]:
    torch._check(weight.dim() == 2, lambda: "weight must be 2-D")
    _check_load_dtype(weight, "weight")
    L, n = weight.shape
    if num_packs < 1 or num_packs > max(n, 1) or n % num_packs != 0:
        _reject("ValueError", f"num_packs={num_packs} must divide the number of items {n} and not exceed it")
    return _index(weight, L, n), _index(weight, L, n)


@torch.library.register_fake("eplb_ext::replicate_experts")
def _replicate_experts_fake(weight: Tensor, num_phy: int) -> Tuple[Tensor, Tensor, Tensor]:
    torch._check(weight.dim() == 2, lambda: "weight must be 2-D")
    _check_load_dtype(weight, "weight")
    L, n = weight.shape
    if n < 1 or num_phy < n or num_phy > 1 << 30:
        _reject("ValueError", f"num_phy={num_phy} must be at least the number of experts {n} (>= 1) and at most 2**30")
    return _index(weight, L, num_phy), _index(weight, L, num_phy), _index(weight, L, n)


@torch.library.register_fake("eplb_ext::deepseek")
def _deepseek_fake(tokens: Tensor, P: int, k: int, C: int, N: int) -> Tuple[Tensor, Tensor, Tensor]:
    L, E = _check_placement(tokens, P, k, C, N)
    return _index(tokens, L, P), _index(tokens, L, P), _index(tokens, L, E)


@torch.library.register_fake("eplb_ext::deepseek_mapped")
def _deepseek_mapped_fake(tokens: Tensor, P: int, k: int, C: int, N: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    L, E = _check_placement(tokens, P, k, C, N)
    return _index(tokens, L, P), _index(tokens, L, E, P - E + 1), _index(tokens, L, E), _index(tokens, L, P)


@torch.library.register_fake("eplb_ext::logical_to_physical")
def _logical_to_physical_fake(phy2log: Tensor, phy_rank: Tensor, num_logical_experts: int, width: int) -> Tensor:
    torch._check(phy2log.dim() == 2, lambda: "physical_to_logical_map must be 2-D")
    if phy2log.dtype != torch.int64 or phy_rank.dtype != torch.int64 or phy2log.shape != phy_rank.shape:
        _reject("TypeError", "physical_to_logical_map and physical_rank must be int64 tensors of one shape")
    if num_logical_experts < 1 or width < 0:
        _reject("ValueError", f"num_logical_experts={num_logical_experts} must be >= 1 and width={width} >= 0")
    return _index(phy2log, phy2log.shape[0], num_logical_experts, width)


@torch.library.register_fake("eplb_ext::deepseek_vec")
def _deepseek_vec_fake(tokens: Tensor, P: int, k: int, C: int, N: int) -> Tuple[Tensor, Tensor, Tensor]:
    L, E = _check_placement(tokens, P, k, C, N)
    i32 = torch.int32
    return _index(tokens, L, P, dtype=i32), _index(tokens, L, E, P - E + 1, dtype=i32), _index(tokens, L, E, dtype=i32)


def _logical_to_physical_counted(phy2log: Tensor, phy_rank: Tensor, logcnt: Tensor, num_logical_experts: int) -> Tensor:
    width = int(logcnt.max()) if logcnt.numel() > 0 else 0
    return call(ops.logical_to_physical, phy2log, phy_rank, num_logical_experts, width)


# The same function as an op, for tracing: its output width is data
# dependent, which a fake kernel expresses as an unbacked size, so that
# torch.compile(fullgraph=True) traces the default width without a break.
_logical_to_physical_counted_op = torch.library.custom_op(
    "eplb_ext::logical_to_physical_counted", mutates_args=()
)(_logical_to_physical_counted)


def logical_to_physical_counted(phy2log: Tensor, phy_rank: Tensor, logcnt: Tensor, num_logical_experts: int) -> Tensor:
    """``logical_to_physical_map`` at the width of the largest replica count
    of the batch (0 for an empty batch): one read of the counts on the host
    (traced as an op of data-dependent width under torch.compile)."""
    if torch.compiler.is_compiling():
        return _logical_to_physical_counted_op(phy2log, phy_rank, logcnt, num_logical_experts)
    return _logical_to_physical_counted(phy2log, phy_rank, logcnt, num_logical_experts)


@_logical_to_physical_counted_op.register_fake
def _logical_to_physical_counted_fake(
    phy2log: Tensor, phy_rank: Tensor, logcnt: Tensor, num_logical_experts: int
) -> Tensor:
    width = torch.library.get_ctx().new_dynamic_size()
    return _index(phy2log, phy2log.shape[0], num_logical_experts, width)


@torch.library.register_fake("eplb_ext::migrate")
def _migrate_fake(
    tokens: Tensor, phy2log: Tensor, phy_rank: Tensor, previous: Tensor, active: Tensor,
    k: int, C: int, N: int, max_moves: int, min_improvement: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    torch._check(phy2log.dim() == 2, lambda: "physical_to_logical_map must be 2-D")
    P = phy2log.shape[1]
    L, E = _check_placement(tokens, P, k, C, N)
    return _index(tokens, L, P), _index(tokens, L, P), _index(tokens, L, E), _index(tokens, L, 3)
