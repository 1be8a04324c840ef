"""Placing experts against the previous placement (SPEC.md "Keeping experts
where they are"): the ``previous_physical_to_logical_map``, ``max_moves`` and
``min_improvement`` options of ``rebalance_experts``.

``check_options`` validates them before any work and returns a ``Plan`` (or
``None`` without a previous map); ``apply_previous`` takes a variant's fresh
outputs and returns the outputs to serve, same dtypes, widths and device,
computed by the ``migrate`` op (relabeling, incremental search, kept layers;
the exact steps are documented in ``csrc/core/migrate.h`` and
``csrc/core/incremental.h``). ``migrate`` does both and also returns the
per-layer outcome, for reports.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from . import _ops

PREVIOUS = "previous_physical_to_logical_map"

# Per-layer outcome codes of the op's info [L, 3] (column 0).
RELABELED, SEARCHED, KEPT = 0, 1, 2


class Plan(NamedTuple):
    """Validated options of one call."""

    previous: Tensor  # int64 [L, P] on the loads' device
    max_moves: int  # -1: relabel only
    min_improvement: float


def check_options(
    previous: object,
    max_moves: object,
    min_improvement: object,
    *,
    num_layers: int,
    num_experts: int,
    num_physical_experts: int,
    device: torch.device,
    check_values: bool = True,
) -> Optional[Plan]:
    """Raises TypeError/ValueError naming the argument, its value and the rule.

    ``previous``: int32/int64 ``[L, P]`` on the loads' device, ids in
    ``[0, E)`` or -1 (empty slot). ``max_moves``: None or an integer >= 0
    (any size: budgets above P act as P).
    ``min_improvement``: a real number in [0, 1]. Without ``previous``,
    ``max_moves`` must be None and ``min_improvement`` 0. Values of a tensor
    on a GPU are read on the host only with ``check_values``.
    """
    if isinstance(max_moves, bool) or not (max_moves is None or isinstance(max_moves, numbers.Integral)):
        raise TypeError(f"max_moves must be None or an integer, got {max_moves!r} of type {type(max_moves).__name__}")
    if max_moves is not None and int(max_moves) < 0:
        raise ValueError(f"max_moves={max_moves} must be an integer >= 0 (moves per layer)")
    if isinstance(min_improvement, bool) or not isinstance(min_improvement, numbers.Real):
        raise TypeError(
            f"min_improvement must be a real number in [0, 1], got {min_improvement!r} of type "
            f"{type(min_improvement).__name__}"
        )
    gain = float(min_improvement)
    if gain != gain or not 0.0 <= gain <= 1.0:  # NaN; no math.isnan: traceable with a symbolic float
        raise ValueError(f"min_improvement={min_improvement!r} must be a real number in [0, 1]")
    if previous is None:
        if max_moves is not None:
            raise ValueError(f"max_moves={max_moves} needs {PREVIOUS}, got None")
        if gain != 0.0:
            raise ValueError(f"min_improvement={min_improvement!r} needs {PREVIOUS}, got None")
        return None
    if not isinstance(previous, Tensor):
        raise TypeError(f"{PREVIOUS} must be a torch.Tensor or None, got {type(previous).__name__}")
    if previous.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{PREVIOUS} has dtype {previous.dtype}; it must be torch.int32 or torch.int64")
    L, E, P = num_layers, num_experts, num_physical_experts
    if tuple(previous.shape) != (L, P):
        raise ValueError(
            f"{PREVIOUS} has shape {tuple(previous.shape)}; it must be [L, P] = [{L}, {P}], "
            "the layers and slots of the placement (the same GPUs)"
        )
    if previous.device != device:
        raise ValueError(f"{PREVIOUS} is on {previous.device}; it must be on the loads' device {device}")
    if previous.layout != torch.strided:
        raise ValueError(f"{PREVIOUS} must be a dense tensor, got layout {previous.layout}")
    # While tracing (torch.compile) no value can be read: the op checks them.
    if (device.type == "cpu" or check_values) and not torch.compiler.is_compiling():
        bad = (previous < -1) | (previous >= E)
        if previous.numel() > 0 and bool(bad.any()):
            layer, slot = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"{PREVIOUS}[{layer}, {slot}] = {int(previous[layer, slot])} is not an expert id in "
                f"[0, {E}) nor -1 (empty slot)"
            )
    # A layer has at most P moves, so a larger budget is P: the op's argument
    # then always fits its int64, whatever integer was given.
    budget = -1 if max_moves is None else min(int(max_moves), P)
    return Plan(previous.to(torch.int64).contiguous(), budget, gain)


def replica_ranks(log2phy: Tensor, num_physical_experts: int, count: Optional[Tensor] = None) -> Tensor:
    """Replica rank of every slot from ``logical_to_physical_map [L, E, X]``:
    int64 ``[L, P]``, -1 for a slot in no entry (inactive GPUs).

    ``count`` (``[L, E]``, the variant's replica counts) lets a CPU call read
    only the columns below the largest count: the rest are -1 padding, and a
    fixed-width map (X = P - E + 1) is mostly padding. On other devices that
    would cost a host read, so all X columns are scattered there.
    """
    if count is not None and log2phy.device.type == "cpu" and count.numel() > 0 and not torch.compiler.is_compiling():
        log2phy = log2phy[:, :, : max(1, min(int(count.max()), log2phy.shape[2]))]
    L, E, X = log2phy.shape
    P = num_physical_experts
    l2p = log2phy.to(torch.int64).reshape(L, E * X)
    ranks = torch.arange(X, device=log2phy.device).repeat(E).expand(L, E * X)
    out = torch.full((L, P + 1), -1, dtype=torch.int64, device=log2phy.device)
    # Padding (-1) lands in the extra column P, dropped below.
    out.scatter_(1, torch.where(l2p >= 0, l2p, P), ranks)
    return out[:, :P].contiguous()


def _active_tensor(active: Optional[Tensor], num_gpus: int, device: torch.device) -> Tensor:
    if active is None:
        return torch.empty(0, dtype=torch.uint8, device=device)
    active = torch.as_tensor(active, device=device)
    if active.dim() != 1 or active.numel() != num_gpus:
        raise ValueError(f"active must be 1-D with {num_gpus} entries, got shape {tuple(active.shape)}")
    return active.to(torch.uint8).contiguous()


def migrate(
    outputs: Tuple[Tensor, Tensor, Tensor],
    tokens: Tensor,
    plan: Plan,
    num_local_physical_experts: int,
    num_groups: int,
    num_nodes: int,
    *,
    largest_count_width: bool,
    active: Optional[Tensor] = None,
    ranks: Optional[Tensor] = None,
) -> Tuple[Tuple[Tensor, Tensor, Tensor], Tensor]:
    """Places a variant's fresh ``outputs`` against ``plan.previous``.

    Args:
        outputs: the variant's (phy2log [L, P], log2phy [L, E, X], count [L, E]);
            log2phy may be None when ``ranks`` is given and
            ``largest_count_width`` is set (the map is built afresh).
        tokens: the loads ``[S, L, E]`` the variant placed.
        num_groups, num_nodes: C and N for the hierarchical variants, 1 and 1
            for the others (renumberings then permute all GPUs).
        largest_count_width: the variant's X is its largest count (recomputed
            after the changes, one host read); else X stays as it is.
        active: GPUs alive, ``[G]`` 0/1 or bool, None for all.
        ranks: each slot's replica rank ``[L, P]`` if the variant has it
            (else derived from log2phy).

    Returns the outputs (same dtypes and device) and ``info`` int64 ``[L, 3]``:
    outcome (RELABELED, SEARCHED or KEPT), moves of the relabeled fresh
    placement, moves of the result.
    """
    phy2log, log2phy, _ = outputs
    L, P = phy2log.shape
    E = outputs[2].shape[1]
    k = num_local_physical_experts
    ranks = replica_ranks(log2phy, P, outputs[2]) if ranks is None else ranks.to(torch.int64).contiguous()
    act = _active_tensor(active, P // k, tokens.device)
    new_p2l, new_rank, count, info = _ops.call(
        _ops.ops.migrate, tokens, phy2log.to(torch.int64).contiguous(), ranks, plan.previous, act,
        k, num_groups, num_nodes, plan.max_moves, plan.min_improvement,
    )
    if largest_count_width:
        new_l2p = _ops.logical_to_physical_counted(new_p2l, new_rank, count, E)
    else:
        new_l2p = _ops.call(_ops.ops.logical_to_physical, new_p2l, new_rank, E, log2phy.shape[2])
    l2p_dtype = torch.int64 if log2phy is None else log2phy.dtype
    result = (new_p2l.to(phy2log.dtype), new_l2p.to(l2p_dtype), count.to(outputs[2].dtype))
    return result, info


def apply_previous(
    outputs: Tuple[Tensor, Tensor, Tensor],
    tokens: Tensor,
    plan: Optional[Plan],
    num_local_physical_experts: int,
    num_groups: int,
    num_nodes: int,
    *,
    largest_count_width: bool,
    active: Optional[Tensor] = None,
    ranks: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """``outputs`` unchanged without a plan, else ``migrate``'s outputs."""
    if plan is None:
        return outputs
    return migrate(outputs, tokens, plan, num_local_physical_experts, num_groups, num_nodes,
                   largest_count_width=largest_count_width, active=active, ranks=ranks)[0]
