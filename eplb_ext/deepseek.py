"""DeepSeek's ``eplb.py`` API, compiled: same names, arguments and outputs.

All functions take CPU or CUDA tensors of any integer or floating dtype and
return int64 tensors on the same device. Loads must be finite and >= 0; on a
GPU that check reads one boolean on the host. (The two placement functions
check [L, E] loads in Python, so errors name ``weight`` and its 2-D index.)
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from . import _ops
from ._validate import MAX_INDEX, check_int, check_load_values, check_loads, check_placement

__all__ = ["balanced_packing", "replicate_experts", "rebalance_experts_hierarchical", "rebalance_experts"]


def balanced_packing(weight: Tensor, num_packs: int) -> Tuple[Tensor, Tensor]:
    """Packs the n items of each row of ``weight [X, n]`` into ``num_packs``
    packs of n / num_packs items, heaviest first into the lightest open pack.

    Returns ``(pack_index [X, n], rank_in_pack [X, n])``, int64.
    """
    weight = check_loads("weight", weight, (2,))
    num_packs = check_int("num_packs", num_packs)
    n = weight.shape[1]
    if num_packs > max(n, 1):
        raise ValueError(f"num_packs={num_packs} exceeds the number of items {n}; every pack needs at least one item")
    if n % num_packs != 0:
        raise ValueError(f"num_packs={num_packs} must divide the number of items {n}")
    if n > MAX_INDEX:
        raise ValueError(f"weight has {n} items; at most {MAX_INDEX} are supported")
    check_load_values("weight", weight)
    return _ops.call(_ops.ops.balanced_packing, weight, int(num_packs))


def replicate_experts(weight: Tensor, num_phy: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Replicates the n experts of each row of ``weight [X, n]`` into
    ``num_phy >= n`` slots, each extra slot going to the expert with the
    largest load per replica.

    Returns ``(phy2log [X, num_phy], rank [X, num_phy], logcnt [X, n])``, int64.
    """
    weight = check_loads("weight", weight, (2,))
    num_phy = check_int("num_phy", num_phy)
    n = weight.shape[1]
    if n < 1:
        raise ValueError("weight has no experts; at least 1 is required")
    if num_phy < n:
        raise ValueError(f"num_phy={num_phy} is smaller than the number of experts {n}")
    if num_phy > MAX_INDEX:
        raise ValueError(f"num_phy={num_phy} exceeds {MAX_INDEX}, the largest number of slots supported")
    check_load_values("weight", weight)
    return _ops.call(_ops.ops.replicate_experts, weight, int(num_phy))


def rebalance_experts_hierarchical(
    weight: Tensor, num_physical_experts: int, num_groups: int, num_nodes: int, num_gpus: int
) -> Tuple[Tensor, Tensor, Tensor]:
    """DeepSeek's hierarchical policy on ``weight [L, E]``.

    Returns ``(phy2log [L, P], phyrank [L, P], logcnt [L, E])``, int64, where
    ``phyrank`` is the replica rank of the expert in each slot.
    """
    weight = check_loads("weight", weight, (2,))
    P = check_int("num_physical_experts", num_physical_experts)
    C = check_int("num_groups", num_groups)
    N = check_int("num_nodes", num_nodes)
    G = check_int("num_gpus", num_gpus)
    if P % G != 0:
        raise ValueError(f"num_gpus={G} must divide num_physical_experts={P}")
    check_placement(weight, P, P // G, C, N)
    check_load_values("weight", weight)
    return _ops.call(_ops.ops.deepseek, weight, P, P // G, C, N)


def rebalance_experts(
    weight: Tensor, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
) -> Tuple[Tensor, Tensor, Tensor]:
    """DeepSeek's entry point on ``weight [L, E]``: the hierarchical policy
    when ``num_groups % num_nodes == 0``, else the global one.

    Returns ``(phy2log [L, num_replicas], log2phy [L, E, num_replicas - E + 1],
    logcnt [L, E])``, int64; ``log2phy`` is padded with -1, as in DeepSeek's
    code (its width does not depend on the counts).
    """
    weight = check_loads("weight", weight, (2,))
    P = check_int("num_replicas", num_replicas)
    C = check_int("num_groups", num_groups)
    N = check_int("num_nodes", num_nodes)
    G = check_int("num_gpus", num_gpus)
    if P % G != 0:
        raise ValueError(f"num_gpus={G} must divide num_replicas={P}")
    if C % N != 0:
        C, N = 1, 1
    check_placement(weight, P, P // G, C, N)
    check_load_values("weight", weight)
    phy2log, log2phy, logcnt, _ = _ops.call(_ops.ops.deepseek_mapped, weight, P, P // G, C, N)
    return phy2log, log2phy, logcnt
