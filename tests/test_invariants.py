"""SPEC "Invariants" on compiled outputs, and the invariant checker itself:
every corruption of a valid placement must be caught."""

from __future__ import annotations

import pytest
import torch

import eplb_ext
from helpers import ALGORITHMS, HIERARCHICAL, check_invariants

E, P, k, C, N = 16, 24, 3, 4, 2


def _tokens(seed=0, S=3, L=4):
    g = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.rand(S, L, E, generator=g) ** 4 * 500, generator=g).long()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("seed", range(5))
def test_invariants_hold(algorithm, seed):
    t = _tokens(seed)
    out = eplb_ext.rebalance_experts(t, P, k, C, N, algorithm)
    check_invariants(out, algorithm, 4, E, P, k, C, N)
    out = eplb_ext.rebalance_experts(t, P, k, C, N, algorithm, fixed_width=True)
    check_invariants(out, algorithm, 4, E, P, k, C, N, fixed_width=True)


@pytest.mark.parametrize("algorithm", HIERARCHICAL)
def test_hierarchical_groups_follow_group_packing(algorithm):
    """Each group lands on the node it was packed into: with one group far
    heavier than the rest, the packing is forced and checkable by hand."""
    L = 2
    t = torch.ones(1, L, E, dtype=torch.int64)
    # Layer 0: group 3 (experts 12..15) is hottest, then group 1.
    t[0, 0, 12:16] = 1000
    t[0, 0, 4:8] = 100
    # Layer 1: group 0 hottest, group 2 next.
    t[0, 1, 0:4] = 1000
    t[0, 1, 8:12] = 100
    phy2log, _, cnt = eplb_ext.rebalance_experts(t, P, k, C, N, algorithm)
    check_invariants((phy2log, _, cnt), algorithm, L, E, P, k, C, N)
    node_of_slot = torch.arange(P) // (P // N)
    m = E // C

    def node_of_group(l, c):
        nodes = node_of_slot[(phy2log[l].long() // m) == c].unique()
        assert nodes.numel() == 1
        return int(nodes)

    # Heaviest group goes to node 0, the next one to node 1; the two light
    # groups fill the remaining place on each node.
    assert node_of_group(0, 3) == 0 and node_of_group(0, 1) == 1
    assert node_of_group(1, 0) == 0 and node_of_group(1, 2) == 1
    # The hot groups got the redundant replicas of their node.
    assert int(cnt[0, 12:16].sum()) == 4 + (P - E) // N
    assert int(cnt[1, 0:4].sum()) == 4 + (P - E) // N


# ----- the checker must reject corrupted placements -----


def _valid(algorithm):
    return tuple(o.clone() for o in eplb_ext.rebalance_experts(_tokens(7), P, k, C, N, algorithm))


def _corruptions(algorithm):
    def bad_expert(o):
        o[0][0, 0] = E

    def negative_expert(o):
        o[0][1, 3] = -1

    def count_off(o):
        o[2][0, 0] += 1

    def zero_count(o):
        # Expert e with one replica loses it to another expert.
        l = 0
        e = int((o[2][l] == 1).nonzero()[0])
        slot = int(o[1][l, e, 0])
        other = (e + 1) % E
        o[0][l, slot] = other
        o[2][l, e] = 0
        o[2][l, other] += 1

    def log2phy_wrong_slot(o):
        l = 0
        e = int(o[0][l, 0])
        o[1][l, e, 0] = (int(o[1][l, e, 0]) + 1) % P

    def log2phy_no_padding(o):
        l = 0
        e = int((o[2][l] < o[1].shape[-1]).nonzero()[0])
        o[1][l, e, int(o[2][l, e])] = int(o[1][l, e, 0])

    def swap_ranks(o):
        # Swap the two positions of a replicated expert: still a set of
        # slots holding e, but equal to a valid map; then duplicate one.
        l = 0
        e = int((o[2][l] >= 2).nonzero()[0])
        o[1][l, e, 1] = o[1][l, e, 0]

    def swap_across_nodes(o):
        # Exchange the experts of two slots on different nodes whose experts
        # are in different groups: counts and maps stay consistent.
        l = 0
        m = E // C
        p2l = o[0][l].long()
        a = 0
        b = next(p for p in range(P // N, P) if int(p2l[p]) // m != int(p2l[a]) // m)
        ea, eb = int(p2l[a]), int(p2l[b])
        o[0][l, a], o[0][l, b] = eb, ea
        for e, old, new in ((ea, a, b), (eb, b, a)):
            row = o[1][l, e]
            row[row == old] = new

    cases = [bad_expert, negative_expert, count_off, zero_count, log2phy_wrong_slot, log2phy_no_padding, swap_ranks]
    if algorithm in HIERARCHICAL:
        cases.append(swap_across_nodes)
    return cases


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_checker_rejects_corruptions(algorithm):
    check_invariants(_valid(algorithm), algorithm, 4, E, P, k, C, N)
    for corrupt in _corruptions(algorithm):
        o = list(_valid(algorithm))
        corrupt(o)
        with pytest.raises(AssertionError):
            check_invariants(tuple(o), algorithm, 4, E, P, k, C, N)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_checker_rejects_wrong_dtype_and_width(algorithm):
    o = _valid(algorithm)
    with pytest.raises(AssertionError):
        check_invariants((o[0].to(torch.int16), o[1], o[2]), algorithm, 4, E, P, k, C, N)
    wider = torch.cat([o[1], torch.full_like(o[1][..., :1], -1)], dim=-1)
    with pytest.raises(AssertionError):
        check_invariants((o[0], wider, o[2]), algorithm, 4, E, P, k, C, N)
