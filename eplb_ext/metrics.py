"""Quality measures of a placement (SPEC.md "Quality measures").

Every function takes CPU or CUDA tensors and returns tensors on the device of
its main input. Loads are accepted as ``[L, E]`` (one load per expert) or as
``[S, L, E]`` (one per step); a 3-D load is summed over steps. Unlike the
placement ops, which work in float32 as SPEC.md prescribes, the measures are
computed in float64 so that they describe the placement and not rounding:
integer loads are summed exactly (int64) and converted once, floating loads
are converted to float64 and then summed.

Definitions, per layer, with ``count[e]`` the number of slots holding expert
``e`` in the placement being measured:

* GPU load: sum over the GPU's slots of ``w[expert] / count[expert]``, with
  slot ``p`` on GPU ``p // k`` (``k = P / G`` slots per GPU).
* balancedness: mean GPU load / max GPU load, in (0, 1]; 1.0 is perfect, and
  a layer without load counts as perfectly balanced (1.0).
* lower bound on the max GPU load of *any* placement with P slots on G GPUs:
  ``max(total / G, the largest per-replica load after greedy replication)``;
  greedy replication (always give the next slot to the expert with the
  largest load per replica) minimises the largest per-replica load.

Over several layers (``overall_balancedness``) two numbers are reported:
``mean``, the mean of the per-layer balancedness, and ``aggregate``,
``sum_l mean_l / sum_l max_l``. Layers run one after another and each waits
for its slowest GPU, so ``aggregate`` is the ideal time over the actual time
of a forward pass: it weighs busy layers more than idle ones.

Functions that check values (every load for NaN; placement ids in
``gpu_loads`` and the functions built on it) read a few booleans on the
host, a synchronisation on a GPU.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from ._validate import has_integer_dtype

__all__ = [
    "expert_load",
    "replica_counts",
    "gpu_loads",
    "balancedness",
    "balancedness_of_loads",
    "step_balancedness",
    "overall_balancedness",
    "OverallBalancedness",
    "lower_bound",
    "bound_balancedness",
    "trivial_placement",
    "experts_moved",
    "moves",
    "Moves",
]

_F64 = torch.float64
_I64 = torch.int64


def expert_load(load: Tensor) -> Tensor:
    """The load of each expert, float64 ``[L, E]``.

    Args:
        load: ``[L, E]`` or ``[S, L, E]`` (summed over steps), any integer or
            floating dtype, any device.
    """
    _check_load(load)
    if load.dim() == 3:
        # Integers: exact int64 sum, one conversion; floats: float64 sum.
        load = load.sum(dim=0, dtype=_F64 if load.is_floating_point() else _I64)
    return _without_nan(load.to(_F64))


def _check_load(load: object) -> None:
    if not isinstance(load, Tensor):
        raise TypeError(f"load must be a torch.Tensor, got {type(load).__name__}")
    if load.dim() not in (2, 3):
        raise ValueError(f"load must be [L, E] or [S, L, E], got shape {tuple(load.shape)}")
    if load.dtype == torch.bool or load.is_complex():
        raise TypeError(f"load has dtype {load.dtype}; expected an integer or floating dtype")


def _without_nan(w: Tensor) -> Tensor:
    """``w`` (float64), or a ValueError if it holds NaN (a host read)."""
    if w.numel() > 0 and bool(w.isnan().any()):
        raise ValueError("load holds NaN: a placement has no balancedness on it")
    return w


def _describe(x: object) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def _check_map(phy2log: Tensor, num_layers: Optional[int], num_experts: Optional[int], num_gpus: int) -> Tensor:
    """Checks ``physical_to_logical_map`` against the load (any number of
    layers with ``num_layers`` None); returns it as int64."""
    if not isinstance(phy2log, Tensor):
        raise TypeError(f"physical_to_logical_map must be a torch.Tensor, got {type(phy2log).__name__}")
    if phy2log.dim() != 2:
        raise ValueError(f"physical_to_logical_map must be [L, P], got shape {tuple(phy2log.shape)}")
    if not has_integer_dtype(phy2log):
        raise TypeError(f"physical_to_logical_map must have an integer dtype, got {phy2log.dtype}")
    L, P = phy2log.shape
    if num_layers is not None and L != num_layers:
        raise ValueError(f"physical_to_logical_map has {L} layers but the load has {num_layers}")
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 1:
        raise ValueError(f"num_gpus must be a positive integer, got {num_gpus!r}")
    if P % num_gpus != 0:
        raise ValueError(f"num_gpus={num_gpus} must divide the number of slots {P}")
    phy2log = phy2log.to(_I64)
    if phy2log.numel() > 0:
        upper = num_experts if num_experts is not None else int(phy2log.max()) + 1
        if bool(((phy2log < 0) | (phy2log >= upper)).any()):
            raise ValueError(f"physical_to_logical_map holds ids outside [0, {upper})")
    return phy2log


def replica_counts(physical_to_logical_map: Tensor, num_experts: int) -> Tensor:
    """Slots holding each expert, int64 ``[L, E]``, derived from the map.

    Args:
        physical_to_logical_map: ``[L, P]`` integer, ids in ``[0, num_experts)``.
        num_experts: E.
    """
    if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 0:
        raise ValueError(f"num_experts must be an integer >= 0, got {num_experts!r}")
    return _counts(_check_map(physical_to_logical_map, None, num_experts, 1), num_experts)


def _counts(phy2log: Tensor, num_experts: int) -> Tensor:
    """replica_counts of a checked int64 map."""
    counts = torch.zeros(phy2log.shape[0], num_experts, dtype=_I64, device=phy2log.device)
    return counts.scatter_add_(1, phy2log, torch.ones_like(phy2log))


def _slot_loads(w: Tensor, phy2log: Tensor) -> Tensor:
    """``w[..., expert] / count[expert]`` of every slot, ``[..., L, P]``.

    ``w`` is float64 ``[L, E]`` or ``[S, L, E]``; the counts come from the map,
    and an expert without any slot is an error (its load would vanish).
    """
    E = w.shape[-1]
    counts = _counts(phy2log, E)
    if E > 0 and bool((counts == 0).any()):
        layer, expert = (int(i) for i in (counts == 0).nonzero()[0])
        raise ValueError(f"expert {expert} has no slot in layer {layer}; not a valid placement")
    per_replica = w / counts.to(w.dtype)
    index = phy2log.expand(*w.shape[:-1][:-1], *phy2log.shape)
    return per_replica.gather(-1, index)


def gpu_loads(
    load: Tensor, physical_to_logical_map: Tensor, num_gpus: int, *, per_step: bool = False, active_ranks=None
) -> Tensor:
    """Load of every GPU, float64 ``[L, G]`` (or ``[S, L, G]`` with ``per_step``).

    Args:
        load: ``[L, E]`` or ``[S, L, E]`` loads, any integer or floating dtype.
        physical_to_logical_map: ``[L, P]``, any integer dtype; slot ``p`` is
            on GPU ``p // (P / num_gpus)``. Moved to the load's device.
        num_gpus: G, must divide P.
        per_step: with a ``[S, L, E]`` load, return each step's GPU loads
            ``[S, L, G]`` instead of those of the load summed over steps.
        active_ranks: for a placement around failed GPUs (the
            ``elasticity_aware`` variants), which GPUs are alive, in any form
            ``rebalance_experts`` accepts; the loads are then those of the A
            active GPUs only, ``[L, A]``, and the inactive GPUs' filler slots
            count for nothing.

    GPU load = sum over its slots of ``w[expert] / count[expert]``.
    """
    if per_step:
        _check_load(load)
        if load.dim() != 3:
            raise ValueError("per_step=True needs a [S, L, E] load")
        w = _without_nan(load.to(_F64))
    else:
        w = expert_load(load)
    L, E = w.shape[-2:]
    phy2log = _check_map(physical_to_logical_map, L, E, num_gpus).to(w.device)
    gpus = num_gpus
    if active_ranks is not None:
        from .elasticity import active_flags

        alive = active_flags(active_ranks, num_gpus)
        # The live slots, GPU after GPU: k per active GPU.
        live = torch.tensor(alive, dtype=torch.bool).repeat_interleave(phy2log.shape[1] // num_gpus)
        phy2log, gpus = phy2log[:, live.to(phy2log.device)], sum(alive)
    slots = _slot_loads(w, phy2log)
    return slots.reshape(*slots.shape[:-1], gpus, slots.shape[-1] // max(gpus, 1)).sum(dim=-1)


def balancedness_of_loads(gpu_load: Tensor) -> Tensor:
    """Mean / max over the last dimension of ``gpu_load [..., G]``; 1.0 where
    every GPU has zero load. float64 ``[...]``."""
    mean = gpu_load.mean(dim=-1)
    peak = gpu_load.amax(dim=-1)
    return torch.where(peak > 0, mean / torch.where(peak > 0, peak, 1.0), 1.0)


def balancedness(load: Tensor, physical_to_logical_map: Tensor, num_gpus: int, *, active_ranks=None) -> Tensor:
    """Per-layer balancedness (mean GPU load / max GPU load), float64 ``[L]``.

    Args: as ``gpu_loads`` (with ``active_ranks``: over the active GPUs).
    1.0 is perfect; a layer without load gives 1.0.
    """
    return balancedness_of_loads(gpu_loads(load, physical_to_logical_map, num_gpus, active_ranks=active_ranks))


def step_balancedness(tokens: Tensor, physical_to_logical_map: Tensor, num_gpus: int) -> Tensor:
    """Per-layer balancedness over the steps, float64 ``[L]``.

    With ``tokens [S, L, E]``: ``sum_s mean_s / sum_s max_s`` of each step's
    GPU loads, i.e. ideal over actual time when every step waits for its own
    slowest GPU (what the step-aware ``deepseek_vec`` variants aim at). Equal
    to ``balancedness`` for S = 1; 1.0 for a layer without load.
    """
    if not isinstance(tokens, Tensor):
        raise TypeError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.dim() == 2:
        tokens = tokens.unsqueeze(0)
    loads = gpu_loads(tokens, physical_to_logical_map, num_gpus, per_step=True)  # [S, L, G]
    mean = loads.mean(dim=-1).sum(dim=0)
    peak = loads.amax(dim=-1).sum(dim=0)
    return torch.where(peak > 0, mean / torch.where(peak > 0, peak, 1.0), 1.0)


class OverallBalancedness(NamedTuple):
    """Balancedness over layers: ``mean`` of the per-layer values and
    ``aggregate`` = sum of mean GPU loads / sum of max GPU loads."""

    mean: float
    aggregate: float


def overall_balancedness(gpu_load: Tensor, reference_max: Optional[Tensor] = None) -> OverallBalancedness:
    """Summarises ``gpu_load [L, G]`` (from ``gpu_loads``) over layers.

    Args:
        gpu_load: float ``[L, G]``.
        reference_max: optional ``[L]`` to use instead of each layer's max GPU
            load (``bound_balancedness`` passes the lower bound here).

    Returns ``OverallBalancedness(mean, aggregate)``; 1.0 for both when there
    are no layers or no load at all.
    """
    if not isinstance(gpu_load, Tensor) or gpu_load.dim() != 2:
        raise TypeError(f"gpu_load must be a [L, G] torch.Tensor, got {_describe(gpu_load)}")
    if gpu_load.dtype == torch.bool or gpu_load.is_complex():
        raise TypeError(f"gpu_load has dtype {gpu_load.dtype}; expected an integer or floating dtype")
    gpu_load = gpu_load.to(_F64)
    mean = gpu_load.mean(dim=-1)
    peak = gpu_load.amax(dim=-1) if reference_max is None else reference_max.to(mean)
    per_layer = torch.where(peak > 0, mean / torch.where(peak > 0, peak, 1.0), 1.0)
    total_peak = float(peak.sum())
    return OverallBalancedness(
        mean=float(per_layer.mean()) if per_layer.numel() else 1.0,
        aggregate=float(mean.sum()) / total_peak if total_peak > 0 else 1.0,
    )


def lower_bound(load: Tensor, num_physical_experts: int, num_gpus: int) -> Tensor:
    """A max GPU load no placement can beat, per layer, float64 ``[L]``.

    Args:
        load: ``[L, E]`` or ``[S, L, E]`` (summed over steps).
        num_physical_experts: P >= E slots.
        num_gpus: G.

    Returns ``max(total / G, m)`` where ``m`` is the largest load per replica
    after greedy replication of the E experts into P slots: some GPU carries
    at least the average, and some GPU holds the replica with the largest
    load per replica, which greedy replication makes as small as possible.
    (The bound ignores that each GPU has exactly P / G slots, so it may not
    be reachable.)
    """
    w = expert_load(load)
    L, E = w.shape
    P = num_physical_experts
    if P < E:
        raise ValueError(f"num_physical_experts={P} is smaller than the number of experts {E}")
    if num_gpus < 1:
        raise ValueError(f"num_gpus={num_gpus} must be a positive integer")
    if E == 0:
        return w.new_zeros(L)
    # Greedy replication: one extra slot at a time to the expert with the
    # largest load per replica. P - E is small (tens) in every deployment;
    # when it exceeds E, most slots are given at once (_greedy_counts).
    counts = _greedy_counts(w, P) if P - E > E else torch.ones_like(w)
    left = P - counts.sum(dim=-1)
    rows = torch.arange(L, device=w.device)
    for i in range(int(left.max()) if L > 0 else 0):
        pick = (w / counts).argmax(dim=-1)
        take = left > i
        counts[rows[take], pick[take]] += 1
    per_replica = (w / counts).amax(dim=-1)
    return torch.maximum(w.sum(dim=-1) / num_gpus, per_replica)


def _greedy_counts(w: Tensor, P: int) -> Tensor:
    """Replica counts (float64 ``[L, E]``) that greedy replication into at
    most P slots passes through, found without a step per slot.

    The greedy gives a slot only to an expert whose load per replica is the
    largest, so it passes through the counts c of any threshold m with
    w / c <= m for every expert and w / (c - 1) > m for every expert with
    c > 1 (as float64 divisions, the greedy's comparisons), if they fit in P
    slots. ``at(m)`` is c = max(1, ceil(w / m)), repaired where the rounded
    division put ceil across the threshold; it grows as m falls, and a
    bisection per layer finds an m close to the smallest whose counts fit.
    """

    def at(m: Tensor) -> Tensor:
        c = torch.ceil(w / m).clamp(min=1)
        c = torch.where(w / c > m, c + 1, c)
        return torch.where((c > 1) & (w / (c - 1).clamp(min=1) <= m), c - 1, c)

    hi = w.amax(dim=-1, keepdim=True)
    hi = torch.where(hi > 0, hi, torch.ones_like(hi))  # every count 1: E <= P slots
    lo = torch.zeros_like(hi)
    for _ in range(64):
        mid = (lo + hi) / 2
        fits = at(mid).sum(dim=-1, keepdim=True) <= P
        hi, lo = torch.where(fits, mid, hi), torch.where(fits, lo, mid)
    return at(hi)


def bound_balancedness(load: Tensor, num_physical_experts: int, num_gpus: int) -> Tensor:
    """The best balancedness any placement could reach, per layer: mean GPU
    load / ``lower_bound``, float64 ``[L]`` (1.0 for a layer without load)."""
    w = expert_load(load)
    bound = lower_bound(w, num_physical_experts, num_gpus)
    mean = w.sum(dim=-1) / num_gpus
    return torch.where(bound > 0, mean / torch.where(bound > 0, bound, 1.0), 1.0)


def trivial_placement(
    num_experts: int,
    num_physical_experts: int,
    num_layers: Optional[int] = None,
    *,
    device: Union[str, torch.device, None] = None,
) -> Tensor:
    """The placement without load balancing: slot ``p`` holds expert ``p % E``.

    With P = E this is expert ``e`` in slot ``e``; the P - E extra slots hold
    experts 0, 1, ... again. Returns int64 ``[P]``, or ``[num_layers, P]``
    (the same row for every layer) when ``num_layers`` is given.
    """
    for name, v in (("num_experts", num_experts), ("num_physical_experts", num_physical_experts),
                    ("num_layers", 0 if num_layers is None else num_layers)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an integer, got {v!r} of type {type(v).__name__}")
    if num_layers is not None and num_layers < 0:
        raise ValueError(f"num_layers={num_layers} must be >= 0")
    if num_experts < 1 or num_physical_experts < num_experts:
        raise ValueError(
            f"need 1 <= num_experts <= num_physical_experts, got {num_experts} and {num_physical_experts}"
        )
    row = torch.arange(num_physical_experts, dtype=_I64, device=device) % num_experts
    if num_layers is None:
        return row
    return row.expand(num_layers, num_physical_experts).contiguous()


def _presence(phy2log: Tensor, num_gpus: int, num_experts: int) -> Tensor:
    """``[L, G, E]`` bool: does GPU g hold expert e (in any of its slots)."""
    L, P = phy2log.shape
    gpu = torch.arange(P, device=phy2log.device) // (P // num_gpus)
    flat = (gpu * num_experts).unsqueeze(0) + phy2log
    present = torch.zeros(L, num_gpus * num_experts, dtype=torch.bool, device=phy2log.device)
    present.scatter_(1, flat, True)
    return present.view(L, num_gpus, num_experts)


class Moves(NamedTuple):
    """Expert weights GPUs must receive: ``per_layer`` int64 ``[L]`` and
    their ``total`` over layers."""

    per_layer: Tensor
    total: int


def moves(
    previous: Tensor,
    new: Tensor,
    num_local_physical_experts: int,
    *,
    active: Optional[Tensor] = None,
) -> Moves:
    """moves(new, previous) of SPEC.md "Keeping experts where they are".

    Per layer, the number of (GPU g, expert e) pairs such that g holds e in
    ``new`` and in no slot of ``previous``: the expert weights g must receive
    from elsewhere. A second copy of e on a GPU that already holds it is a
    local copy, not a move; an empty slot (-1) of ``previous`` holds nothing.

    Args:
        previous: integer ``[L, P]``, ids in ``[0, E)`` or -1.
        new: integer ``[L, P]``, ids in ``[0, E)`` (-1 allowed: holds nothing).
        num_local_physical_experts: k, slots per GPU (slot p on GPU p // k).
        active: optional ``[G]`` bool or 0/1: inactive GPUs count nothing.

    Returns ``Moves(per_layer, total)``; ``per_layer`` is on ``new``'s device.
    """
    for name, m in (("previous", previous), ("new", new)):
        if not isinstance(m, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(m).__name__}")
        if m.dim() != 2:
            raise ValueError(f"{name} must be [L, P], got shape {tuple(m.shape)}")
        if not has_integer_dtype(m):
            raise TypeError(f"{name} must have an integer dtype, got {m.dtype}")
    if previous.shape != new.shape:
        raise ValueError(f"the placements differ in shape: {tuple(previous.shape)} vs {tuple(new.shape)}")
    k = num_local_physical_experts
    L, P = new.shape
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or P % k != 0:
        raise ValueError(f"num_local_physical_experts={k!r} must be a positive integer dividing P={P}")
    old = previous.to(device=new.device, dtype=_I64)
    cur = new.to(_I64)
    if L == 0 or P == 0:
        return Moves(torch.zeros(L, dtype=_I64, device=new.device), 0)
    if bool((old < -1).any()) or bool((cur < -1).any()):
        raise ValueError("placements hold ids below -1")
    G = P // k
    if int(torch.maximum(old.max(), cur.max())) >= 2 * P:
        # Ids far beyond the slot count: renumber the ones present, so that
        # the presence tables below stay [L, G, <= 2 P + 1].
        ids, inverse = torch.unique(torch.cat([old, cur], dim=1), return_inverse=True)
        inverse = inverse - int((ids < 0).sum())  # -1 (empty) stays -1
        old, cur = inverse[:, :P], inverse[:, P:]
    E = int(torch.maximum(old.max(), cur.max())) + 2  # id -1 goes to column E - 1
    old_has = _presence(torch.where(old < 0, E - 1, old), G, E)
    new_has = _presence(torch.where(cur < 0, E - 1, cur), G, E)
    added = new_has[..., : E - 1] & ~old_has[..., : E - 1]
    if active is not None:
        on = torch.as_tensor(active, device=new.device)
        if on.dim() != 1 or on.numel() != G:
            raise ValueError(f"active must be 1-D with one entry per GPU ({G}), got shape {tuple(on.shape)}")
        on = on.to(torch.bool).view(1, G, 1)
        added = added & on
    per_layer = added.sum(dim=(1, 2))
    return Moves(per_layer, int(per_layer.sum()))


def experts_moved(
    old_physical_to_logical_map: Tensor,
    new_physical_to_logical_map: Tensor,
    num_gpus: int,
    *,
    num_experts: Optional[int] = None,
) -> Tensor:
    """``moves(old, new, P // num_gpus).per_layer``, int64 ``[L]``, for
    callers that count GPUs rather than slots per GPU; ids are checked to lie
    in ``[0, num_experts)`` (default: the largest id in either map + 1).
    """
    for name, m in (("old_physical_to_logical_map", old_physical_to_logical_map),
                    ("new_physical_to_logical_map", new_physical_to_logical_map)):
        if not isinstance(m, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(m).__name__}")
    new = new_physical_to_logical_map
    old = old_physical_to_logical_map.to(new.device)
    if old.shape != new.shape:
        raise ValueError(f"the placements differ in shape: {tuple(old.shape)} vs {tuple(new.shape)}")
    L = new.shape[0] if new.dim() == 2 else -1
    if num_experts is None:
        num_experts = max(int(old.max()), int(new.max())) + 1 if new.numel() > 0 else 1
    old = _check_map(old, L, num_experts, num_gpus)
    new = _check_map(new, L, num_experts, num_gpus)
    return moves(old, new, new.shape[1] // num_gpus).per_layer
