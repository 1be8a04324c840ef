"""SGLang-compatible entry points: ``EplbAlgorithm``, ``compute_algorithm`` and
the ``rebalance_experts`` dispatcher."""

from __future__ import annotations

from enum import Enum, auto
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from . import _ops, elasticity, migration
from ._validate import check_int, check_load_values, check_loads, check_placement, summed_checked_loads


class EplbAlgorithm(Enum):
    """The placement variants (SPEC.md "Variants")."""

    deepseek = auto()
    deepseek_hierarchical = auto()
    deepseek_vec = auto()
    deepseek_vec_hierarchical = auto()
    elasticity_aware = auto()
    elasticity_aware_hierarchical = auto()

    @property
    def hierarchical(self) -> bool:
        return self in (
            EplbAlgorithm.deepseek_hierarchical,
            EplbAlgorithm.deepseek_vec_hierarchical,
            EplbAlgorithm.elasticity_aware_hierarchical,
        )

    @property
    def elastic(self) -> bool:
        """Takes ``active_ranks`` (GPUs that may have failed)."""
        return self in (EplbAlgorithm.elasticity_aware, EplbAlgorithm.elasticity_aware_hierarchical)

    @property
    def step_aware(self) -> bool:
        return self in (EplbAlgorithm.deepseek_vec, EplbAlgorithm.deepseek_vec_hierarchical)


def _valid_names() -> str:
    return ", ".join(["auto"] + [a.name for a in EplbAlgorithm])


def compute_algorithm(
    raw_algorithm: Union[str, EplbAlgorithm],
    num_groups: Optional[int],
    num_nodes: Optional[int],
    *,
    num_logical_experts: Optional[int] = None,
    num_gpus: Optional[int] = None,
) -> EplbAlgorithm:
    """Resolves a variant name, an ``EplbAlgorithm`` or ``"auto"``.

    ``"auto"`` picks ``deepseek_hierarchical`` when the model has groups and
    ``num_groups % num_nodes == 0`` (and, where given,
    ``num_logical_experts % num_groups == 0`` and ``num_gpus % num_nodes ==
    0``), else ``deepseek``. ``num_nodes=None`` counts as one node.
    """
    if isinstance(raw_algorithm, EplbAlgorithm):
        return raw_algorithm
    if not isinstance(raw_algorithm, str):
        raise TypeError(
            f"algorithm must be a str or EplbAlgorithm, got {type(raw_algorithm).__name__}; "
            f"valid names: {_valid_names()}"
        )
    if raw_algorithm != "auto":
        try:
            return EplbAlgorithm[raw_algorithm]
        except KeyError:
            raise ValueError(f"unknown algorithm {raw_algorithm!r}; valid names: {_valid_names()}") from None
    groups = check_int("num_groups", num_groups, allow_none=True)
    nodes = check_int("num_nodes", num_nodes, allow_none=True) or 1
    experts = check_int("num_logical_experts", num_logical_experts, allow_none=True)
    gpus = check_int("num_gpus", num_gpus, allow_none=True)
    hierarchical = (
        groups is not None
        and groups % nodes == 0
        and (experts is None or experts % groups == 0)
        and (gpus is None or gpus % nodes == 0)
    )
    return EplbAlgorithm.deepseek_hierarchical if hierarchical else EplbAlgorithm.deepseek


def rebalance_experts(
    tokens_per_expert: Tensor,
    num_physical_experts: int,
    num_local_physical_experts: int,
    num_groups: Optional[int],
    num_nodes: Optional[int],
    algorithm: Union[str, EplbAlgorithm] = "auto",
    *,
    fixed_width: bool = False,
    check_values: bool = True,
    active_ranks: elasticity.ActiveRanks = None,
    previous_physical_to_logical_map: Optional[Tensor] = None,
    max_moves: Optional[int] = None,
    min_improvement: float = 0.0,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Places experts on GPUs.

    Args:
        tokens_per_expert: ``[S, L, E]`` (or ``[L, E]``, meaning S = 1) loads of
            any integer or floating dtype, finite and >= 0, on CPU or CUDA;
            any strides.
        num_physical_experts: P, slots in total (P >= E).
        num_local_physical_experts: k, slots per GPU (k divides P).
        num_groups: C, expert groups, or None for a model without groups.
        num_nodes: N, nodes (None means 1).
        algorithm: an ``EplbAlgorithm``, its name, or ``"auto"``.
        fixed_width: for the ``deepseek`` variants, return
            ``logical_to_physical_map`` at width ``P - E + 1`` instead of the
            largest count, which avoids reading the counts on the host.
        check_values: for a tensor on a GPU, check that every load is finite
            and >= 0 before placing (one boolean read on the host). With
            ``check_values=False`` and ``fixed_width=True`` a CUDA call never
            synchronises and can be captured in a CUDA graph; bad loads then
            give an unspecified (but in-bounds) placement. CPU tensors are
            always checked: before placing, in one pass in C++, or (with
            ``check_values=False`` or while tracing) by the placing op.
        active_ranks: which of the G = P / k GPUs are alive, for the
            ``elasticity_aware`` variants: a 1-D bool or 0/1 integer tensor
            (any device) or a sequence of G bools / 0/1 ints; None means all.
            A tensor on a GPU is read once on the host (a synchronisation).
            Other variants accept only None or all GPUs active.
        previous_physical_to_logical_map: the placement Q being served,
            int32/int64 ``[L, P]`` on the loads' device, -1 for an empty
            slot. The result is then relabeled for the fewest moves (see
            ``eplb_ext.migration``).
        max_moves: with Q, change Q itself by at most this many moves per
            layer instead (incremental rebalancing); any integer >= 0, and
            one above P (no layer has more moves) acts as P.
        min_improvement: with Q, keep Q for layers whose balancedness would
            improve by less than this (in [0, 1]).

    Returns:
        ``(physical_to_logical_map [L, P], logical_to_physical_map [L, E, X],
        logical_count [L, E])`` on the input's device: int64 for the
        ``deepseek`` variants (X = largest count, or P - E + 1 with
        ``fixed_width``); int32 for the vec variants (X = P - E + 1), except
        ``deepseek_vec_hierarchical``'s int64 ``physical_to_logical_map``;
        int64 for the ``elasticity_aware`` variants (X as for ``deepseek``),
        whose inactive GPUs' slots hold the filler expert 0 and appear in no
        ``logical_to_physical_map`` entry and no count.
    """
    tokens = check_loads("tokens_per_expert", tokens_per_expert, (2, 3))
    num_experts = tokens.shape[-1]
    P = check_int("num_physical_experts", num_physical_experts)
    k = check_int("num_local_physical_experts", num_local_physical_experts)
    C = check_int("num_groups", num_groups, allow_none=True)
    N = check_int("num_nodes", num_nodes, allow_none=True) or 1
    if P % k != 0:
        raise ValueError(f"num_local_physical_experts={k} must divide num_physical_experts={P}")
    if num_experts < 1:
        raise ValueError("tokens_per_expert has no experts (last dimension is 0); at least 1 is required")
    if P < num_experts:
        raise ValueError(
            f"num_physical_experts={P} is smaller than the number of logical experts {num_experts}; "
            "every expert needs at least one slot"
        )
    G = P // k
    algo = compute_algorithm(algorithm, C, N, num_logical_experts=num_experts, num_gpus=G)
    if algo.hierarchical:
        if C is None:
            raise ValueError(f"algorithm {algo.name} needs num_groups, got None")
        if num_experts % C != 0:
            raise ValueError(f"num_groups={C} must divide the number of logical experts {num_experts}")
        if C % N != 0:
            raise ValueError(f"num_nodes={N} must divide num_groups={C}")
        if G % N != 0:
            raise ValueError(f"num_nodes={N} must divide the number of GPUs {G} (num_physical_experts / k)")
    else:
        C, N = 1, 1
    check_placement(tokens, P, k, C, N)
    for flag, value in (("fixed_width", fixed_width), ("check_values", check_values)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be a bool, got {type(value).__name__}")
    # Read before the loads are checked on the device: a wrong active_ranks
    # is an argument error, raised before any work.
    active = elasticity.active_gpus(active_ranks, G, k, num_experts, algo)
    # Meta tensors have no values; while tracing, values cannot be read.
    compiling = torch.compiler.is_compiling()
    # While tracing, the CPU kernel's own check is the one that runs.
    if check_values and tokens.device.type == "cpu" and not compiling:
        if tokens.dim() == 3 and tokens.shape[0] != 1 and not algo.step_aware:
            # The variants that place the sums over steps get them from the
            # pass that checks the loads: the steps are read once. A float32
            # sum of finite loads can overflow: the ops place it as they
            # place those steps but reject it as a load, so then the steps go.
            sums = summed_checked_loads("tokens_per_expert", tokens)
            if not bool(torch.isinf(sums).any()):
                tokens = sums
        else:
            check_load_values("tokens_per_expert", tokens)
    elif check_values and tokens.device.type not in ("cpu", "meta"):
        if compiling:
            raise ValueError(
                "check_values=True reads a boolean on the host, which cannot be traced (torch.compile); "
                "check the loads before the compiled region and pass check_values=False"
            )
        check_load_values("tokens_per_expert", tokens)
    if tokens.device.type == "meta" and not fixed_width and not algo.step_aware:
        raise ValueError(
            f"algorithm {algo.name}: the width of logical_to_physical_map is the largest replica count, "
            "which a meta tensor does not have; pass fixed_width=True for a width of "
            "num_physical_experts - num_experts + 1"
        )
    plan = migration.check_options(
        previous_physical_to_logical_map, max_moves, min_improvement, num_layers=tokens.shape[-2],
        num_experts=num_experts, num_physical_experts=P, device=tokens.device, check_values=check_values,
    )
    if active is not None:
        outputs = elasticity.place(tokens, P, k, active, fixed_width)
        if plan is None:
            return outputs
        # Around failed GPUs the live GPUs are renumbered among themselves only.
        mask = torch.zeros(G, dtype=torch.uint8)
        mask[active] = 1
        return migration.apply_previous(
            outputs, tokens, plan, k, 1, 1, largest_count_width=not fixed_width, active=mask.to(tokens.device)
        )

    if algo.step_aware:
        phy2log, log2phy, logcnt = _ops.call(_ops.ops.deepseek_vec, tokens, P, k, C, N)
        if algo is EplbAlgorithm.deepseek_vec_hierarchical:
            phy2log = phy2log.to(torch.int64)
        return migration.apply_previous((phy2log, log2phy, logcnt), tokens, plan, k, C, N, largest_count_width=False)

    if fixed_width:
        # The map's width is known in advance: one call (one kernel on CUDA).
        phy2log, log2phy, logcnt, phy_rank = _ops.call(_ops.ops.deepseek_mapped, tokens, P, k, C, N)
    else:
        phy2log, phy_rank, logcnt = _ops.call(_ops.ops.deepseek, tokens, P, k, C, N)
        # The one host read of the call: the width is the largest count. With
        # a previous map, migrate builds the map of the placement it returns
        # and the fresh placement's would only be dropped.
        log2phy = None if plan is not None else _ops.logical_to_physical_counted(phy2log, phy_rank, logcnt, num_experts)
    return migration.apply_previous(
        (phy2log, log2phy, logcnt), tokens, plan, k, C, N, largest_count_width=not fixed_width, ranks=phy_rank
    )
