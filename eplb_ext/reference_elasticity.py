"""Pure-PyTorch reference of ``elasticity_aware`` and
``elasticity_aware_hierarchical`` (SPEC "elasticity_aware,
elasticity_aware_hierarchical"): the oracle of the compiled path.

Built on ``eplb_ext.reference`` only (never on the compiled extension). It
follows SPEC's words literally and slot by slot: the global policy on the
k * A live slots of A GPUs, then block i of k slots onto the i-th active GPU.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import reference

__all__ = ["elasticity_aware", "elasticity_aware_hierarchical"]


def _alive(active_ranks, num_gpus: int) -> List[bool]:
    if active_ranks is None:
        return [True] * num_gpus
    values = active_ranks.tolist() if isinstance(active_ranks, Tensor) else list(active_ranks)
    return [bool(v) for v in values]


def _place(tokens: Tensor, P: int, k: int, C: int, N: int, active_ranks) -> Tuple[Tensor, Tensor, Tensor]:
    alive = _alive(active_ranks, P // k)
    if all(alive):
        return reference.deepseek_hierarchical(tokens, P, k, C, N)
    device = tokens.device
    t = reference._as_steps(tokens)
    _, L, E = t.shape
    if L == 0:
        empty = torch.empty(0, P, dtype=torch.int64)
        outputs = (empty, torch.empty(0, E, 0, dtype=torch.int64), torch.empty(0, E, dtype=torch.int64))
        return tuple(o.to(device) for o in outputs)
    w = reference._sum_over_steps(t)
    A = sum(alive)
    live_p2l, live_rank, count = reference.rebalance_experts_hierarchical(w, k * A, 1, 1, A)

    # Where live slot j lands in the full numbering: block i of k live slots
    # goes to the i-th active GPU, slot order kept inside the block.
    landing = [g * k + q for g in range(len(alive)) if alive[g] for q in range(k)]
    width = int(count.max())
    p2l = torch.zeros(L, P, dtype=torch.int64)
    l2p = torch.full((L, E, width), -1, dtype=torch.int64)
    for layer in range(L):
        for j, slot in enumerate(landing):
            expert = int(live_p2l[layer, j])
            p2l[layer, slot] = expert
            l2p[layer, expert, int(live_rank[layer, j])] = slot
    return p2l.to(device), l2p.to(device), count.to(device)


def elasticity_aware(
    tokens_per_expert: Tensor,
    num_physical_experts: int,
    num_local_physical_experts: int,
    num_groups: Optional[int] = None,
    num_nodes: Optional[int] = None,
    active_ranks=None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """``deepseek`` when every GPU is active, else the placement on the active
    GPUs (inactive slots hold expert 0, referenced nowhere). int64 outputs;
    X = the largest count."""
    return _place(tokens_per_expert, num_physical_experts, num_local_physical_experts, 1, 1, active_ranks)


def elasticity_aware_hierarchical(
    tokens_per_expert: Tensor,
    num_physical_experts: int,
    num_local_physical_experts: int,
    num_groups: int,
    num_nodes: int,
    active_ranks=None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """``deepseek_hierarchical`` when every GPU is active, else exactly
    ``elasticity_aware`` (groups and nodes dropped)."""
    return _place(tokens_per_expert, num_physical_experts, num_local_physical_experts, num_groups, num_nodes, active_ranks)
