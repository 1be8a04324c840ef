"""Placements around failed GPUs: the ``elasticity_aware`` variants (SPEC
"elasticity_aware, elasticity_aware_hierarchical").

With some GPU inactive, the global DeepSeek policy places the experts into
the k * A live slots as if only the A active GPUs existed; its A blocks of k
slots are then laid onto the active GPUs in ascending order by index ops on
the input's device, so CPU and CUDA share the compiled core and agree to the
bit. Inactive slots hold the filler expert 0 and carry replica rank -1, which
``logical_to_physical`` skips: they are in no map entry and no count.
"""

from __future__ import annotations

import numbers
from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor

from . import _ops
from ._validate import unreadable

ActiveRanks = Union[None, Tensor, Sequence[Union[bool, int]]]

_RULE = "a 1-D bool or 0/1 integer tensor, or a sequence of bools or 0/1 ints"


def _flags(active_ranks: object, num_gpus: int) -> List[int]:
    """``active_ranks`` as G host ints (0 or 1). A tensor is copied to the
    host once: for a GPU tensor that is the call's one extra synchronisation."""
    if not isinstance(active_ranks, Tensor) and hasattr(active_ranks, "__array__") and hasattr(active_ranks, "dtype"):
        active_ranks = torch.as_tensor(active_ranks)  # a numpy array
    if isinstance(active_ranks, Tensor):
        if active_ranks.dtype.is_floating_point or active_ranks.is_complex():
            raise TypeError(f"active_ranks has dtype {active_ranks.dtype}; it must be {_RULE}")
        odd = unreadable(active_ranks)
        if odd is not None:
            raise ValueError(f"active_ranks must be a dense tensor with values, got {odd}")
        if active_ranks.dim() != 1:
            raise ValueError(f"active_ranks must be 1-D, got shape {tuple(active_ranks.shape)}")
        values = active_ranks.detach().to("cpu", torch.int64).tolist()
    elif isinstance(active_ranks, (str, bytes)) or not isinstance(active_ranks, Sequence):
        raise TypeError(f"active_ranks must be None or {_RULE}, got {type(active_ranks).__name__}")
    else:
        values = []
        for i, v in enumerate(active_ranks):
            if not isinstance(v, (bool, numbers.Integral)) and type(v).__name__ != "bool_":
                raise TypeError(f"active_ranks[{i}] = {v!r} of type {type(v).__name__}; it must be {_RULE}")
            values.append(int(v))
    if len(values) != num_gpus:
        raise ValueError(
            f"active_ranks has {len(values)} entries; it needs one per GPU: {num_gpus} "
            "(num_physical_experts / num_local_physical_experts)"
        )
    bad = [i for i, v in enumerate(values) if v not in (0, 1)]
    if bad:
        raise ValueError(f"active_ranks[{bad[0]}] = {values[bad[0]]}; entries must be 0 (inactive) or 1 (active)")
    return values


def active_flags(active_ranks: object, num_gpus: int) -> List[bool]:
    """``active_ranks`` (not None) checked and read as G bools; at least one
    GPU must be active."""
    flags = [bool(f) for f in _flags(active_ranks, num_gpus)]
    if not any(flags):
        raise ValueError(f"active_ranks marks all {num_gpus} GPUs inactive; at least one must be active")
    return flags


def active_gpus(active_ranks: object, num_gpus: int, k: int, num_experts: int, algorithm) -> Optional[List[int]]:
    """The ascending indices of the active GPUs when some GPU is inactive;
    None when ``active_ranks`` is None or marks every GPU active.

    Raises ValueError/TypeError naming ``active_ranks`` (SPEC "Bad input").
    """
    if active_ranks is None:
        return None
    flags = _flags(active_ranks, num_gpus)
    active = [g for g, f in enumerate(flags) if f]
    if len(active) == num_gpus:
        return None
    inactive = [g for g, f in enumerate(flags) if not f]
    if not algorithm.elastic:
        raise ValueError(
            f"active_ranks marks GPU(s) {inactive} inactive, but algorithm {algorithm.name} places on every GPU; "
            "use elasticity_aware or elasticity_aware_hierarchical, or pass active_ranks=None"
        )
    if not active:
        raise ValueError(f"active_ranks marks all {num_gpus} GPUs inactive; at least one must be active")
    if k * len(active) < num_experts:
        raise ValueError(
            f"active_ranks leaves {len(active)} active GPU(s) x {k} slots = {k * len(active)} slots for "
            f"{num_experts} experts; every expert needs a live slot"
        )
    return active


def place(tokens: Tensor, num_physical_experts: int, k: int, active: List[int], fixed_width: bool):
    """The placement of ``tokens [S, L, E]`` or ``[L, E]`` (checked) on the GPUs ``active``
    (ascending, fewer than G). Returns int64 ``(phy2log [L, P],
    log2phy [L, E, X], count [L, E])`` on the tokens' device."""
    P = num_physical_experts
    L, E = tokens.shape[-2], tokens.shape[-1]
    device = tokens.device
    phy2log_live, rank_live, count = _ops.call(_ops.ops.deepseek, tokens, k * len(active), k, 1, 1)
    gpus = torch.tensor(active, dtype=torch.int64).unsqueeze(1)
    slots = (gpus * k + torch.arange(k, dtype=torch.int64)).reshape(-1).to(device)
    phy2log = torch.zeros(L, P, dtype=torch.int64, device=device).index_copy_(1, slots, phy2log_live)
    rank = torch.full((L, P), -1, dtype=torch.int64, device=device).index_copy_(1, slots, rank_live)
    if fixed_width:
        log2phy = _ops.call(_ops.ops.logical_to_physical, phy2log, rank, E, P - E + 1)
    else:
        # One host read, as for deepseek: the largest replica count.
        log2phy = _ops.logical_to_physical_counted(phy2log, rank, count, E)
    return phy2log, log2phy, count
