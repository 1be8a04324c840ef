"""Pure-PyTorch reference implementation of SPEC.md.

This module is the oracle for the tests and the baseline for the benchmarks.
It depends on nothing but ``torch`` and the standard library (never on the
compiled extension), and it follows SPEC.md to the bit:

* every order or pick by load uses the tie rule: sorts are stable, "largest" /
  "smallest" pick the first index;
* every load is float32, each formula is evaluated one IEEE operation at a
  time in the order SPEC.md writes it (separate tensor ops, so no FMA);
* sums whose order matters (over steps, over a group's experts) run as
  explicit Python loops, because ``Tensor.sum`` may reorder float additions.

Work is vectorised over layers (and nodes / chunks) but loops over slots,
items and steps, like the published SGLang / DeepSeek code. Everything runs on
the CPU; a CUDA input is moved to the CPU and the results moved back.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

__all__ = [
    "balanced_packing",
    "replicate_experts",
    "rebalance_experts_hierarchical",
    "deepseek",
    "deepseek_hierarchical",
    "deepseek_vec",
    "deepseek_vec_hierarchical",
    "rebalance_experts",
]

_F32 = torch.float32
_I64 = torch.int64


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def _first_index_of(x: Tensor, best: Tensor) -> Tensor:
    """First index along the last dim where ``x == best``, as int64.

    Spelled out with ``where``/``amin`` rather than relying on which index
    ``torch.max`` happens to return for equal values. A narrow index dtype
    keeps this cheap on the big ``[S, L, chunks, experts]`` score tensors.
    """
    n = x.shape[-1]
    idx_dtype = torch.int16 if n < 2**15 - 1 else _I64
    idx = torch.arange(n, dtype=idx_dtype)
    return torch.where(x == best, idx, n).amin(dim=-1).to(_I64)


def _first_argmax(x: Tensor) -> Tensor:
    """Index of the largest value along the last dim, first index on ties."""
    return _first_index_of(x, x.amax(dim=-1, keepdim=True))


def _first_argmin(x: Tensor) -> Tensor:
    """Index of the smallest value along the last dim, first index on ties."""
    return _first_index_of(x, x.amin(dim=-1, keepdim=True))


def _stable_desc_order(x: Tensor) -> Tensor:
    """Permutation visiting the last dim by value descending, ties ascending."""
    return torch.sort(x, dim=-1, descending=True, stable=True).indices


def _as_steps(tokens_per_expert: Tensor) -> Tensor:
    """``[L, E]`` means one step; always return ``[S, L, E]`` on the CPU."""
    t = tokens_per_expert
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise ValueError(
            f"tokens_per_expert must be [S, L, E] or [L, E], got shape {tuple(tokens_per_expert.shape)}"
        )
    return t.cpu()


def _round_int_to_f32(n: int) -> float:
    """The float32 nearest to the integer n >= 0 (ties to even), as a float."""
    bits = n.bit_length()
    if bits <= 24:
        return float(n)
    shift = bits - 24
    q, r = n >> shift, n & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    if r > half or (r == half and q & 1):
        q += 1
    return float(q) * 2.0**shift  # exact: q <= 2**24


def _exact_int_sum_f32(t: Tensor) -> Tensor:
    """Exact integer sum over dim 0 of non-negative integers, rounded to
    float32 once. int64 arithmetic when no sum can reach 2**63; otherwise
    Python integers, which cannot overflow."""
    S = t.shape[0]
    if t.numel() == 0:
        return torch.zeros(t.shape[1:], dtype=_F32)
    if t.dtype == torch.uint64:
        fits = False
    elif t.dtype.itemsize <= 4:
        fits = True  # S < 2**31 values below 2**32
    else:
        fits = int(t.max()) * S < 2**63
    if fits:
        return t.to(_I64).sum(dim=0).to(_F32)
    rows = t.reshape(S, -1).tolist()
    sums = [sum(col) for col in zip(*rows)] if S > 0 else [0] * t[0].numel()
    return torch.tensor([_round_int_to_f32(x) for x in sums], dtype=_F32).reshape(t.shape[1:])


def _sum_over_steps(t: Tensor) -> Tensor:
    """SPEC "sum over steps": ``[S, L, E]`` -> float32 ``[L, E]``.

    Integers are summed exactly and converted once; floats are
    converted to float32 first and added s = 0, 1, ... in float32.
    """
    if not t.is_floating_point():
        return _exact_int_sum_f32(t)
    t32 = t.to(_F32)
    if t32.shape[0] == 0:
        return torch.zeros(t32.shape[1:], dtype=_F32)
    acc = t32[0].clone()
    for s in range(1, t32.shape[0]):
        acc += t32[s]
    return acc


def _group_sums(w: Tensor, num_groups: int) -> Tensor:
    """Per-group load ``[L, C]`` of ``w [L, E]``, adding experts in order."""
    L, E = w.shape
    m = E // num_groups
    wg = w.reshape(L, num_groups, m)
    acc = wg[:, :, 0].clone()
    for j in range(1, m):
        acc += wg[:, :, j]
    return acc


def _inverse_perm(perm: Tensor) -> Tensor:
    """Row-wise inverse of a batch of permutations ``[R, n]``."""
    inv = torch.empty_like(perm)
    inv.scatter_(-1, perm, torch.arange(perm.shape[-1], dtype=perm.dtype).expand(perm.shape))
    return inv


def _pack(weight: Tensor, num_packs: int, allow_shortcut: bool) -> Tuple[Tensor, Tensor]:
    """Balanced packing, vectorised over rows; see ``balanced_packing``."""
    rows, n = weight.shape
    per_pack = n // num_packs if num_packs > 0 else 0
    if allow_shortcut and per_pack == 1:
        # SPEC: no sorting at all, item i -> pack i, rank 0.
        pack_index = torch.arange(n, dtype=_I64).expand(rows, n).clone()
        return pack_index, torch.zeros(rows, n, dtype=_I64)

    w = weight.to(_F32)
    order = _stable_desc_order(w)
    pack_w = torch.zeros(rows, num_packs, dtype=_F32)
    pack_n = torch.zeros(rows, num_packs, dtype=_I64)
    pack_index = torch.full((rows, n), -1, dtype=_I64)
    rank_in_pack = torch.full((rows, n), -1, dtype=_I64)
    ar = torch.arange(rows, dtype=_I64)
    inf = torch.tensor(float("inf"), dtype=_F32)
    for j in range(n):
        item = order[:, j]
        # Full packs can never win: loads are finite, so a non-full pack always
        # beats +inf.
        open_w = torch.where(pack_n < per_pack, pack_w, inf)
        pack = _first_argmin(open_w)
        pack_index[ar, item] = pack
        rank_in_pack[ar, item] = pack_n[ar, pack]
        pack_w[ar, pack] = pack_w[ar, pack] + w[ar, item]
        pack_n[ar, pack] += 1
    return pack_index, rank_in_pack


def _log2phy(phy2log: Tensor, phyrank: Tensor, num_logical: int, width: int, dtype: torch.dtype) -> Tensor:
    """Invert (slot -> expert, rank) into ``[L, E, width]``, padded with -1."""
    L, P = phy2log.shape
    out = torch.full((L, num_logical * width), -1, dtype=_I64)
    if L > 0 and P > 0:
        out.scatter_(
            -1,
            phy2log.to(_I64) * width + phyrank.to(_I64),
            torch.arange(P, dtype=_I64).expand(L, P),
        )
    return out.view(L, num_logical, width).to(dtype)


def _restore(outputs: Tuple[Tensor, ...], device: torch.device) -> Tuple[Tensor, ...]:
    return tuple(o.to(device) for o in outputs)


# --------------------------------------------------------------------------
# SPEC building blocks (DeepSeek eplb.py API)
# --------------------------------------------------------------------------


def balanced_packing(weight: Tensor, num_packs: int) -> Tuple[Tensor, Tensor]:
    """Pack the n weighted items of each row into ``num_packs`` packs of n/m items.

    Args:
        weight: ``[L, n]`` loads, any real dtype (converted to float32).
        num_packs: m, must divide n.

    Returns:
        ``pack_index`` int64 ``[L, n]``: the pack of each item.
        ``rank_in_pack`` int64 ``[L, n]``: its position inside that pack.

    If n/m == 1, item i goes to pack i with rank 0. Otherwise items are visited
    by weight descending (stable) and each goes to the lightest pack that is
    not yet full (first on ties); pack totals accumulate in float32.
    """
    device = weight.device
    return _restore(_pack(weight.cpu(), num_packs, allow_shortcut=True), device)


def replicate_experts(weight: Tensor, num_phy: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Greedily replicate the n experts of each row into ``num_phy`` slots.

    Args:
        weight: ``[L, n]`` expert loads, any real dtype (converted to float32).
        num_phy: p >= n slots.

    Returns:
        ``phy2log`` int64 ``[L, p]``: expert held by each slot.
        ``rank`` int64 ``[L, p]``: replica rank of that slot.
        ``logcnt`` int64 ``[L, n]``: replicas per expert.

    Slot i < n holds expert i (rank 0); each further slot goes to the expert
    with the largest float32 ``w / float32(count)``, first on ties.
    """
    device = weight.device
    w = weight.cpu().to(_F32)
    rows, n = w.shape
    phy2log = torch.arange(num_phy, dtype=_I64).repeat(rows, 1)
    rank = torch.zeros(rows, num_phy, dtype=_I64)
    logcnt = torch.ones(rows, n, dtype=_I64)
    ar = torch.arange(rows, dtype=_I64)
    for i in range(n, num_phy):
        e = _first_argmax(w / logcnt.to(_F32))
        phy2log[:, i] = e
        rank[:, i] = logcnt[ar, e]
        logcnt[ar, e] += 1
    return _restore((phy2log, rank, logcnt), device)


def rebalance_experts_hierarchical(
    weight: Tensor,
    num_physical_experts: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """DeepSeek's hierarchical policy (SPEC deepseek steps 1-3) on summed loads.

    Args:
        weight: ``[L, E]`` per-expert loads (converted to float32).
        num_physical_experts: P; num_groups: C; num_nodes: N; num_gpus: G.

    Returns:
        ``phy2log`` int64 ``[L, P]``: original expert id held by each slot.
        ``phyrank`` int64 ``[L, P]``: replica rank (from step 2) of that slot.
        ``logcnt`` int64 ``[L, E]``: replicas per expert.
    """
    device = weight.device
    w = weight.cpu().to(_F32)
    L, E = w.shape
    P, C, N, G = num_physical_experts, num_groups, num_nodes, num_gpus
    m = E // C  # experts per group
    groups_per_node = C // N
    k = P // G  # slots per GPU
    e_node = E // N
    p_node = P // N

    # Step 1: pack groups onto nodes; renumber experts node-major.
    group_w = _group_sums(w, C)
    node, rank_in_node = _pack(group_w, N, allow_shortcut=True)
    group_pos = node * groups_per_node + rank_in_node  # [L, C]
    log2mlog = ((group_pos * m).unsqueeze(-1) + torch.arange(m, dtype=_I64)).reshape(L, E)
    mlog2log = _inverse_perm(log2mlog)

    # Step 2: replicate inside each node; rows are (layer, node) pairs.
    w_mlog = w.gather(-1, mlog2log).reshape(L * N, e_node)
    phy2mlog, phyrank, mlogcnt = replicate_experts(w_mlog, p_node)

    # Step 3: pack each node's slots onto its GPUs.
    slot_w = (w_mlog / mlogcnt.to(_F32)).gather(-1, phy2mlog)
    gpu, q = _pack(slot_w, G // N, allow_shortcut=True)
    dest = gpu * k + q  # slot index within the node
    node_mlog = torch.empty_like(phy2mlog).scatter_(-1, dest, phy2mlog)
    node_rank = torch.empty_like(phyrank).scatter_(-1, dest, phyrank)

    # Node-local renumbered ids -> global renumbered ids -> original ids.
    node_base = (torch.arange(N, dtype=_I64) * e_node).view(1, N, 1)
    pphy2mlog = (node_mlog.view(L, N, p_node) + node_base).reshape(L, P)
    phy2log = mlog2log.gather(-1, pphy2mlog)
    pphyrank = node_rank.reshape(L, P)
    logcnt = mlogcnt.reshape(L, E).gather(-1, log2mlog)
    return _restore((phy2log, pphyrank, logcnt), device)


# --------------------------------------------------------------------------
# deepseek / deepseek_hierarchical
# --------------------------------------------------------------------------


def deepseek_hierarchical(
    tokens_per_expert: Tensor,
    num_physical_experts: int,
    num_local_physical_experts: int,
    num_groups: int,
    num_nodes: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """DeepSeek EPLB, hierarchical policy.

    Args:
        tokens_per_expert: ``[S, L, E]`` or ``[L, E]`` (S = 1), any real dtype.
        num_physical_experts: P; num_local_physical_experts: k (slots per GPU);
        num_groups: C; num_nodes: N.

    Returns:
        ``physical_to_logical_map`` int64 ``[L, P]``,
        ``logical_to_physical_map`` int64 ``[L, E, X]`` (X = largest count in
        the batch, 0 when L == 0), ``logical_count`` int64 ``[L, E]``.
    """
    device = tokens_per_expert.device
    t = _as_steps(tokens_per_expert)
    _, L, E = t.shape
    P = num_physical_experts
    w = _sum_over_steps(t)
    if L == 0:
        return _restore(
            (
                torch.empty(0, P, dtype=_I64),
                torch.empty(0, E, 0, dtype=_I64),
                torch.empty(0, E, dtype=_I64),
            ),
            device,
        )
    phy2log, phyrank, logcnt = rebalance_experts_hierarchical(
        w, P, num_groups, num_nodes, P // num_local_physical_experts
    )
    width = int(logcnt.max().item())
    log2phy = _log2phy(phy2log, phyrank, E, width, _I64)
    return _restore((phy2log, log2phy, logcnt), device)


def deepseek(
    tokens_per_expert: Tensor,
    num_physical_experts: int,
    num_local_physical_experts: int,
    num_groups: int = None,
    num_nodes: int = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """DeepSeek EPLB, global policy: ``deepseek_hierarchical`` with C = N = 1.

    ``num_groups`` and ``num_nodes`` are accepted for the dispatcher and
    ignored. Shapes and dtypes as in ``deepseek_hierarchical``.
    """
    return deepseek_hierarchical(
        tokens_per_expert, num_physical_experts, num_local_physical_experts, 1, 1
    )


# --------------------------------------------------------------------------
# deepseek_vec / deepseek_vec_hierarchical
# --------------------------------------------------------------------------


def _chunk_procedure(
    t: Tensor,
    w_sum: Tensor,
    num_physical_experts: int,
    num_local_physical_experts: int,
    chunk_size: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """SPEC "Chunk procedure" on (possibly renumbered) loads.

    Args:
        t: float32 ``[S, L, E]`` per-step loads.
        w_sum: float32 ``[L, E]`` sum over steps of ``t`` (per SPEC rules).

    Returns int64 ``phy2e [L, P]``, ``phyrank [L, P]``, ``count [L, E]`` in
    the expert numbering of ``t``.
    """
    t = t.contiguous()  # the loop below works on views of t and its scores
    S, L, E = t.shape
    P, k, Pc = num_physical_experts, num_local_physical_experts, chunk_size
    Nc = P // Pc
    Ec = E // Nc
    Rc = (P - E) // Nc

    phy2e = torch.zeros(L, Nc, Pc, dtype=_I64)
    phyrank = torch.zeros(L, Nc, Pc, dtype=_I64)
    phy2e[:, :, :Ec] = torch.arange(E, dtype=_I64).view(Nc, Ec)
    count = torch.ones(L, E, dtype=_I64)
    chunk_base = torch.arange(Nc, dtype=_I64) * Ec  # first expert of each chunk

    # float(e) * 0.0001f, both operands float32.
    e_offset = torch.arange(E, dtype=_F32) * torch.tensor(1e-4, dtype=_F32)
    t_offset = t + e_offset  # [S, L, E]
    # Scores only change in the column of the expert that just got a replica,
    # so keep them and recompute that column (same bits as recomputing all).
    score = t_offset / count.to(_F32)
    score4 = score.view(S, L, Nc, Ec)
    t4 = t.view(S, L, Nc, Ec)
    count3 = count.view(L, Nc, Ec)

    for i in range(Rc):
        a = _first_argmax(score4).unsqueeze(-1)  # [S, L, Nc, 1], in-chunk index
        a_score = score4.gather(-1, a)
        # relief is only ever needed for a, so compute it there alone.
        a_count = count3.unsqueeze(0).expand(S, L, Nc, Ec).gather(-1, a)
        a_relief = t4.gather(-1, a) / (a_count + 1).to(_F32)
        # Chunk maximum once a's score is replaced by its relief; the scores
        # are restored right after.
        score4.scatter_(-1, a, a_relief)
        relieved_max = score4.amax(dim=-1, keepdim=True)
        score4.scatter_(-1, a, a_score)
        values = a_score.expand(S, L, Nc, Ec).clone()
        values.scatter_(-1, a, relieved_max)

        # Sequential float32 sum over steps, s = 0, 1, ...
        total = torch.zeros(L, Nc, Ec, dtype=_F32)
        for s in range(S):
            total += values[s]
        pick = _first_argmin(total) + chunk_base  # [L, Nc], global index

        phy2e[:, :, Ec + i] = pick
        phyrank[:, :, Ec + i] = count.gather(-1, pick)
        count.scatter_add_(-1, pick, torch.ones_like(pick))
        cols = pick.unsqueeze(0).expand(S, L, Nc)
        new_count = count.gather(-1, pick).to(_F32).unsqueeze(0).expand(S, L, Nc)
        score.scatter_(-1, cols, t_offset.gather(-1, cols) / new_count)

    phy2e = phy2e.view(L, P)
    phyrank = phyrank.view(L, P)

    if k > 1:
        slot_load = w_sum.gather(-1, phy2e) / count.gather(-1, phy2e).to(_F32)
        order = _stable_desc_order(slot_load.view(L, Nc, Pc))  # [L, Nc, Pc]
        # The j-th slot in that order is dealt in round q = j // Gc to GPU g
        # (snake: forward on even rounds, backward on odd) and lands at g*k + q.
        Gc = Pc // k
        j = torch.arange(Pc, dtype=_I64)
        q, r = j // Gc, j % Gc
        g = torch.where(q % 2 == 0, r, Gc - 1 - r)
        dest = (g * k + q).expand(L, Nc, Pc)
        new_e = torch.empty(L, Nc, Pc, dtype=_I64)
        new_rank = torch.empty(L, Nc, Pc, dtype=_I64)
        new_e.scatter_(-1, dest, phy2e.view(L, Nc, Pc).gather(-1, order))
        new_rank.scatter_(-1, dest, phyrank.view(L, Nc, Pc).gather(-1, order))
        phy2e = new_e.view(L, P)
        phyrank = new_rank.view(L, P)

    return phy2e, phyrank, count


def deepseek_vec(
    tokens_per_expert: Tensor,
    num_physical_experts: int,
    num_local_physical_experts: int,
    num_groups: int = None,
    num_nodes: int = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """SGLang's step-aware variant: the chunk procedure with one chunk of P slots.

    Args:
        tokens_per_expert: ``[S, L, E]`` or ``[L, E]`` (S = 1), any real dtype.
        num_physical_experts: P; num_local_physical_experts: k.
        ``num_groups`` / ``num_nodes`` are ignored.

    Returns:
        ``physical_to_logical_map`` int32 ``[L, P]``,
        ``logical_to_physical_map`` int32 ``[L, E, P - E + 1]``,
        ``logical_count`` int32 ``[L, E]``.
    """
    device = tokens_per_expert.device
    t = _as_steps(tokens_per_expert)
    _, L, E = t.shape
    P = num_physical_experts
    phy2e, phyrank, count = _chunk_procedure(
        t.to(_F32), _sum_over_steps(t), P, num_local_physical_experts, P
    )
    log2phy = _log2phy(phy2e, phyrank, E, P - E + 1, torch.int32)
    return _restore((phy2e.to(torch.int32), log2phy, count.to(torch.int32)), device)


def deepseek_vec_hierarchical(
    tokens_per_expert: Tensor,
    num_physical_experts: int,
    num_local_physical_experts: int,
    num_groups: int,
    num_nodes: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """SGLang's step-aware hierarchical variant: renumber by groups, N chunks.

    Args:
        tokens_per_expert: ``[S, L, E]`` or ``[L, E]`` (S = 1), any real dtype.
        num_physical_experts: P; num_local_physical_experts: k;
        num_groups: C; num_nodes: N.

    Returns:
        ``physical_to_logical_map`` int64 ``[L, P]`` (upstream quirk),
        ``logical_to_physical_map`` int32 ``[L, E, P - E + 1]``,
        ``logical_count`` int32 ``[L, E]``.
    """
    device = tokens_per_expert.device
    t = _as_steps(tokens_per_expert)
    S, L, E = t.shape
    P, C, N = num_physical_experts, num_groups, num_nodes
    m = E // C
    groups_per_node = C // N

    w_sum = _sum_over_steps(t)
    # Renumber like deepseek step 1, but always sorting (no n/m == 1 shortcut).
    node, rank_in_node = _pack(_group_sums(w_sum, C), N, allow_shortcut=False)
    group_pos = node * groups_per_node + rank_in_node
    log2mlog = ((group_pos * m).unsqueeze(-1) + torch.arange(m, dtype=_I64)).reshape(L, E)
    mlog2log = _inverse_perm(log2mlog)

    t_mlog = t.to(_F32).gather(-1, mlog2log.unsqueeze(0).expand(S, L, E))
    phy2mlog, phyrank, mlog_count = _chunk_procedure(
        t_mlog, w_sum.gather(-1, mlog2log), P, num_local_physical_experts, P // N
    )

    phy2log = mlog2log.gather(-1, phy2mlog)
    count = mlog_count.gather(-1, log2mlog)
    log2phy = _log2phy(phy2log, phyrank, E, P - E + 1, torch.int32)
    return _restore((phy2log, log2phy, count.to(torch.int32)), device)


# --------------------------------------------------------------------------
# dispatcher
# --------------------------------------------------------------------------

_ALGORITHMS = {
    "deepseek": deepseek,
    "deepseek_hierarchical": deepseek_hierarchical,
    "deepseek_vec": deepseek_vec,
    "deepseek_vec_hierarchical": deepseek_vec_hierarchical,
}


def rebalance_experts(
    tokens_per_expert: Tensor,
    num_physical_experts: int,
    num_local_physical_experts: int,
    num_groups,
    num_nodes: int,
    algorithm,
    active_ranks=None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Run the variant named ``algorithm`` (a name or an enum with that ``.name``).

    ``active_ranks`` (which GPUs are alive) is for the ``elasticity_aware``
    variants; the others take only None.
    Returns ``(physical_to_logical_map, logical_to_physical_map,
    logical_count)`` with the shapes and dtypes of that variant.
    """
    name = algorithm if isinstance(algorithm, str) else getattr(algorithm, "name", algorithm)
    if name in ("elasticity_aware", "elasticity_aware_hierarchical"):
        from . import reference_elasticity

        fn = getattr(reference_elasticity, name)
        return fn(tokens_per_expert, num_physical_experts, num_local_physical_experts, num_groups, num_nodes, active_ranks)
    if active_ranks is not None:
        raise ValueError(f"algorithm {name!r} takes no active_ranks")
    try:
        fn = _ALGORITHMS[name]
    except KeyError:
        raise ValueError(
            f"algorithm={algorithm!r} is not one of {sorted(_ALGORITHMS) + ['elasticity_aware', 'elasticity_aware_hierarchical']}"
        ) from None
    return fn(
        tokens_per_expert,
        num_physical_experts,
        num_local_physical_experts,
        num_groups,
        num_nodes,
    )
