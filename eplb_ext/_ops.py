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
_TAG = re.compile(r"\[eplb_ext (ValueError|TypeError)\] ([^\n]*)")


def call(op: Callable[..., Any], *args: Any) -> Any:
    """Runs ``op(*args)``, re-raising the library's tagged errors as ValueError/TypeError."""
    try:
        return op(*args)
    except RuntimeError as exc:
        match = _TAG.search(str(exc))
        if match is None:
            raise
        cls = ValueError if match.group(1) == "ValueError" else TypeError
        raise cls(match.group(2)) from None


def _index(like: Tensor, *shape: int, dtype: torch.dtype = torch.int64) -> Tensor:
    return like.new_empty(shape, dtype=dtype)


@torch.library.register_fake("eplb_ext::balanced_packing")
def _balanced_packing_fake(weight: Tensor, num_packs: int) -> Tuple[Tensor, Tensor]:
    torch._check(weight.dim() == 2, lambda: "weight must be 2-D")
    L, n = weight.shape
    return _index(weight, L, n), _index(weight, L, n)


@torch.library.register_fake("eplb_ext::replicate_experts")
def _replicate_experts_fake(weight: Tensor, num_phy: int) -> Tuple[Tensor, Tensor, Tensor]:
    torch._check(weight.dim() == 2, lambda: "weight must be 2-D")
    L, n = weight.shape
    return _index(weight, L, num_phy), _index(weight, L, num_phy), _index(weight, L, n)


@torch.library.register_fake("eplb_ext::deepseek")
def _deepseek_fake(tokens: Tensor, P: int, k: int, C: int, N: int) -> Tuple[Tensor, Tensor, Tensor]:
    torch._check(tokens.dim() == 3, lambda: "tokens_per_expert must be 3-D")
    _, L, E = tokens.shape
    return _index(tokens, L, P), _index(tokens, L, P), _index(tokens, L, E)


@torch.library.register_fake("eplb_ext::logical_to_physical")
def _logical_to_physical_fake(phy2log: Tensor, phy_rank: Tensor, num_logical_experts: int, width: int) -> Tensor:
    torch._check(phy2log.dim() == 2, lambda: "physical_to_logical_map must be 2-D")
    return _index(phy2log, phy2log.shape[0], num_logical_experts, width)


@torch.library.register_fake("eplb_ext::deepseek_vec")
def _deepseek_vec_fake(tokens: Tensor, P: int, k: int, C: int, N: int) -> Tuple[Tensor, Tensor, Tensor]:
    torch._check(tokens.dim() == 3, lambda: "tokens_per_expert must be 3-D")
    _, L, E = tokens.shape
    i32 = torch.int32
    return _index(tokens, L, P, dtype=i32), _index(tokens, L, E, P - E + 1, dtype=i32), _index(tokens, L, E, dtype=i32)


@torch.library.register_fake("eplb_ext::migrate")
def _migrate_fake(
    tokens: Tensor, phy2log: Tensor, phy_rank: Tensor, previous: Tensor, active: Tensor,
    k: int, C: int, N: int, max_moves: int, min_improvement: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    torch._check(tokens.dim() == 3, lambda: "tokens_per_expert must be 3-D")
    _, L, E = tokens.shape
    P = phy2log.shape[1]
    return _index(tokens, L, P), _index(tokens, L, P), _index(tokens, L, E), _index(tokens, L, 3)
