"""The elasticity_aware variants (GPUs that failed): hand-made cases, the
pure-PyTorch reference, the A == G identity with the deepseek variants,
active_ranks forms and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import eplb_ext
from eplb_ext import reference
from helpers import ELASTIC, assert_same, check_invariants


def _place(tokens, P, k, C, N, algorithm, active, **kw):
    return eplb_ext.rebalance_experts(tokens, P, k, C, N, algorithm, active_ranks=active, **kw)


# --------------------------------------------------------------------------
# hand-made cases (worked out from SPEC by hand)
# --------------------------------------------------------------------------

# E = 4 experts, k = 2, G = 3 GPUs (P = 6), one dead GPU: the live placement
# has P' = 4 = E slots, one per expert; packing by load 10, 5, 3, 1 gives
# GPU blocks [0, 1] and [2, 3].
ONE_DEAD = [
    ([0, 1, 1], [0, 0, 0, 1, 2, 3], [[2], [3], [4], [5]]),
    ([1, 0, 1], [0, 1, 0, 0, 2, 3], [[0], [1], [4], [5]]),
    ([1, 1, 0], [0, 1, 2, 3, 0, 0], [[0], [1], [2], [3]]),
]


@pytest.mark.parametrize("algorithm", ELASTIC)
@pytest.mark.parametrize("active, p2l, l2p", ONE_DEAD, ids=["first", "middle", "last"])
def test_one_dead_gpu_by_hand(algorithm, active, p2l, l2p):
    w = torch.tensor([[10, 1, 5, 3]])
    out = _place(w, 6, 2, 2, 1, algorithm, active)
    assert out[0].tolist() == [p2l]
    assert out[1].tolist() == [l2p]
    assert out[2].tolist() == [[1, 1, 1, 1]]
    check_invariants(out, algorithm, 1, 4, 6, 2, 2, 1, active_ranks=active)


def test_dead_first_gpu_with_a_replica_by_hand():
    # E = 3, loads 9, 2, 4; live slots P' = 4: expert 0 gets the extra replica
    # (9 / 1 is the largest); slot loads 4.5, 2, 4, 4.5 pack as
    # GPU 0 <- slot 0, slot 2 (tie with GPU 1, first wins); GPU 1 <- slot 3, slot 1.
    out = _place(torch.tensor([[9.0, 2.0, 4.0]]), 6, 2, None, None, "elasticity_aware", [0, 1, 1])
    assert out[0].tolist() == [[0, 0, 0, 2, 0, 1]]
    assert out[1].tolist() == [[[2, 4], [5, -1], [3, -1]]]
    assert out[2].tolist() == [[2, 1, 1]]


@pytest.mark.parametrize("alive", [0, 1, 2])
def test_all_dead_but_one(alive):
    active = [int(g == alive) for g in range(3)]
    out = _place(torch.tensor([[3, 7]]), 6, 2, None, None, "elasticity_aware", active)
    # One GPU of two slots: packing visits the heavier expert 1 first.
    expected = [0] * 6
    expected[2 * alive : 2 * alive + 2] = [1, 0]
    assert out[0].tolist() == [expected]
    assert out[1].tolist() == [[[2 * alive + 1], [2 * alive]]]
    assert out[2].tolist() == [[1, 1]]


def test_too_few_live_slots_rejected():
    with pytest.raises(ValueError, match=r"active_ranks leaves 1 active GPU\(s\) x 2 slots = 2 slots for 3 experts"):
        _place(torch.ones(1, 3), 6, 2, None, None, "elasticity_aware", [0, 0, 1])
    # k * A == E is enough.
    out = _place(torch.ones(1, 4), 6, 2, None, None, "elasticity_aware", [0, 1, 1])
    assert out[2].tolist() == [[1, 1, 1, 1]]


# --------------------------------------------------------------------------
# against the reference
# --------------------------------------------------------------------------

CONFIGS = [
    # (S, L, E, P, k, C, N)
    (1, 5, 16, 32, 4, 4, 2),
    (3, 4, 12, 24, 3, 4, 2),
    (2, 3, 8, 8, 1, 2, 2),
    (1, 6, 64, 96, 12, 8, 2),
    (4, 2, 5, 15, 3, 5, 1),
]


def _loads(S, L, E, gen, kind):
    if kind == "ties":
        return torch.randint(0, 3, (S, L, E), generator=gen)
    if kind == "float":
        return torch.rand(S, L, E, generator=gen, dtype=torch.float64) * 50
    return torch.poisson((torch.rand(L, E, generator=gen) ** 3 * 300).expand(S, L, E).contiguous(), generator=gen).long()


def _random_masks(G, k, E, gen, count):
    masks = []
    while len(masks) < count:
        mask = (torch.rand(G, generator=gen) < 0.7).long().tolist()
        if k * sum(mask) >= E and sum(mask) > 0:
            masks.append(mask)
    return masks


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("kind", ["skewed", "ties", "float"])
@pytest.mark.parametrize("algorithm", ELASTIC)
def test_matches_reference(cfg, kind, algorithm):
    S, L, E, P, k, C, N = cfg
    G = P // k
    gen = torch.Generator().manual_seed(hash((cfg, kind)) % 2**31)
    tokens = _loads(S, L, E, gen, kind)
    for mask in _random_masks(G, k, E, gen, 4) + [[1] * G]:
        out = _place(tokens, P, k, C, N, algorithm, mask)
        ref = reference.rebalance_experts(tokens, P, k, C, N, algorithm, active_ranks=mask)
        assert_same(out, ref, f"{algorithm} {mask}")
        check_invariants(out, algorithm, L, E, P, k, C, N, active_ranks=mask)
        fixed = _place(tokens, P, k, C, N, algorithm, mask, fixed_width=True)
        check_invariants(fixed, algorithm, L, E, P, k, C, N, fixed_width=True, active_ranks=mask)
        X = out[1].shape[-1]
        assert torch.equal(fixed[0], out[0]) and torch.equal(fixed[2], out[2])
        assert torch.equal(fixed[1][..., :X], out[1]) and bool((fixed[1][..., X:] == -1).all())


def test_reference_is_not_the_compiled_path():
    # The oracle must stand on its own: placing around a dead GPU by hand.
    out = reference.rebalance_experts(torch.tensor([[9.0, 2.0, 4.0]]), 6, 2, None, None, "elasticity_aware",
                                      active_ranks=[0, 1, 1])
    assert out[0].tolist() == [[0, 0, 0, 2, 0, 1]] and out[1].tolist() == [[[2, 4], [5, -1], [3, -1]]]


# --------------------------------------------------------------------------
# every GPU active; the two variants with a dead GPU; active_ranks forms
# --------------------------------------------------------------------------


@pytest.mark.parametrize("active", [None, [1] * 8, [True] * 8, torch.ones(8, dtype=torch.int32), torch.ones(8, dtype=torch.bool)])
def test_all_active_is_deepseek(active):
    tokens = _loads(3, 4, 32, torch.Generator().manual_seed(5), "skewed")
    for elastic, plain in (("elasticity_aware", "deepseek"), ("elasticity_aware_hierarchical", "deepseek_hierarchical")):
        for fixed in (False, True):
            out = _place(tokens, 48, 6, 4, 2, elastic, active, fixed_width=fixed)
            assert_same(out, eplb_ext.rebalance_experts(tokens, 48, 6, 4, 2, plain, fixed_width=fixed), elastic)


def test_hierarchical_with_a_dead_gpu_drops_groups_and_nodes():
    tokens = _loads(2, 5, 32, torch.Generator().manual_seed(6), "skewed")
    mask = [1, 1, 0, 1, 1, 1, 1, 0]
    assert_same(_place(tokens, 48, 6, 4, 2, "elasticity_aware_hierarchical", mask),
                _place(tokens, 48, 6, None, None, "elasticity_aware", mask))


FORMS = [
    [1, 0, 1, 1],
    [True, False, True, True],
    (1, 0, 1, 1),
    torch.tensor([1, 0, 1, 1]),
    torch.tensor([1, 0, 1, 1], dtype=torch.int32),
    torch.tensor([1, 0, 1, 1], dtype=torch.uint8),
    torch.tensor([True, False, True, True]),
    torch.tensor([1, 0, 1, 1, 7])[:4],
    np.array([1, 0, 1, 1]),
    [np.int64(1), np.int64(0), np.int64(1), np.int64(1)],
]


@pytest.mark.parametrize("active", FORMS, ids=lambda a: type(a).__name__ + str(getattr(a, "dtype", "")))
def test_active_ranks_forms(active):
    tokens = _loads(1, 3, 8, torch.Generator().manual_seed(8), "skewed")
    expected = _place(tokens, 16, 4, None, None, "elasticity_aware", [1, 0, 1, 1])
    assert_same(_place(tokens, 16, 4, None, None, "elasticity_aware", active), expected)
    assert bool((expected[0][:, 4:8] == 0).all())


def test_empty_batch():
    for mask in ([1, 0, 1, 1], None):
        out = _place(torch.zeros(2, 0, 8), 16, 4, 2, 2, "elasticity_aware_hierarchical", mask)
        assert [tuple(t.shape) for t in out] == [(0, 16), (0, 8, 0), (0, 8)]
        assert all(t.dtype == torch.int64 for t in out)


def test_outputs_are_new_tensors_on_the_input_device():
    tokens = torch.rand(1, 2, 8)
    out = _place(tokens, 16, 4, None, None, "elasticity_aware", [0, 1, 1, 1])
    assert all(t.device == tokens.device and t.is_contiguous() for t in out)


# --------------------------------------------------------------------------
# bad active_ranks
# --------------------------------------------------------------------------

BAD = [
    ([1, 1, 1], ValueError, r"active_ranks has 3 entries; it needs one per GPU: 4"),
    (torch.ones(5, dtype=torch.bool), ValueError, r"active_ranks has 5 entries"),
    ([1, 2, 1, 1], ValueError, r"active_ranks\[1\] = 2; entries must be 0 \(inactive\) or 1 \(active\)"),
    (torch.tensor([1, 1, -1, 1]), ValueError, r"active_ranks\[2\] = -1"),
    ([0, 0, 0, 0], ValueError, r"active_ranks marks all 4 GPUs inactive"),
    (torch.ones(4), TypeError, r"active_ranks has dtype torch.float32"),
    ([1.0, 1.0, 1.0, 1.0], TypeError, r"active_ranks\[0\] = 1.0 of type float"),
    (torch.ones(2, 2, dtype=torch.bool), ValueError, r"active_ranks must be 1-D, got shape \(2, 2\)"),
    ("1111", TypeError, r"active_ranks must be None or"),
    (3, TypeError, r"active_ranks must be None or .* got int"),
    ([1, None, 1, 1], TypeError, r"active_ranks\[1\] = None"),
    (torch.ones(4, dtype=torch.int64).to_sparse(), ValueError, r"active_ranks must be a dense tensor"),
    (torch.ones(4, dtype=torch.int64, device="meta"), ValueError, r"active_ranks must be a dense tensor"),
]


@pytest.mark.parametrize("algorithm", ELASTIC)
@pytest.mark.parametrize("active, error, message", BAD, ids=lambda v: repr(v)[:20])
def test_bad_active_ranks(algorithm, active, error, message):
    with pytest.raises(error, match=message):
        _place(torch.ones(1, 8), 16, 4, 2, 1, algorithm, active)


@pytest.mark.parametrize("algorithm", ["deepseek", "deepseek_hierarchical", "deepseek_vec", "deepseek_vec_hierarchical"])
def test_other_variants_take_only_all_active(algorithm):
    tokens = torch.rand(2, 3, 8)
    plain = eplb_ext.rebalance_experts(tokens, 16, 4, 2, 1, algorithm)
    assert_same(_place(tokens, 16, 4, 2, 1, algorithm, [1, 1, 1, 1]), plain)
    assert_same(_place(tokens, 16, 4, 2, 1, algorithm, torch.ones(4, dtype=torch.bool)), plain)
    with pytest.raises(ValueError, match=rf"active_ranks marks GPU\(s\) \[2\] inactive, but algorithm {algorithm}"):
        _place(tokens, 16, 4, 2, 1, algorithm, [1, 1, 0, 1])
    with pytest.raises(ValueError, match="active_ranks has 3 entries"):
        _place(tokens, 16, 4, 2, 1, algorithm, [1, 1, 1])


@pytest.mark.parametrize("active", [None, [1, 0, 1, 1]])
def test_hierarchical_checks_groups_and_nodes_whatever_active_ranks(active):
    tokens = torch.rand(1, 2, 8)
    with pytest.raises(ValueError, match="needs num_groups"):
        _place(tokens, 16, 4, None, 1, "elasticity_aware_hierarchical", active)
    with pytest.raises(ValueError, match="num_groups=3 must divide"):
        _place(tokens, 16, 4, 3, 1, "elasticity_aware_hierarchical", active)
    with pytest.raises(ValueError, match="num_nodes=4 must divide num_groups=2"):
        _place(tokens, 16, 4, 2, 4, "elasticity_aware_hierarchical", active)


def test_active_ranks_checked_before_the_loads():
    bad = torch.tensor([[1.0, -1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="active_ranks"):
        _place(bad, 8, 2, None, None, "elasticity_aware", [1, 1, 1])


def test_compute_algorithm_knows_all_six_names():
    for name in ("deepseek", "deepseek_hierarchical", "deepseek_vec", "deepseek_vec_hierarchical", *ELASTIC):
        assert eplb_ext.compute_algorithm(name, 8, 4) is eplb_ext.EplbAlgorithm[name]
    with pytest.raises(ValueError, match="elasticity_aware_hierarchical"):
        eplb_ext.compute_algorithm("elastic", 8, 4)
    assert eplb_ext.EplbAlgorithm.elasticity_aware_hierarchical.hierarchical
    assert [a.name for a in eplb_ext.EplbAlgorithm if a.elastic] == list(ELASTIC)


def test_metrics_over_the_active_gpus():
    from eplb_ext import metrics

    tokens = _loads(2, 3, 16, torch.Generator().manual_seed(9), "skewed")
    mask = [1, 0, 1, 1, 0, 1]
    p2l = _place(tokens, 24, 4, None, None, "elasticity_aware", mask)[0]
    loads = metrics.gpu_loads(tokens, p2l, 6, active_ranks=mask)
    assert loads.shape == (3, 4) and loads.dtype == torch.float64
    # The live slots alone form a placement on 4 GPUs: the same loads.
    live = torch.tensor(mask, dtype=torch.bool).repeat_interleave(4)
    assert torch.equal(loads, metrics.gpu_loads(tokens, p2l[:, live], 4))
    assert torch.allclose(loads.sum(-1), metrics.expert_load(tokens).sum(-1))
    bal = metrics.balancedness(tokens, p2l, 6, active_ranks=torch.tensor(mask))
    assert torch.equal(bal, metrics.balancedness_of_loads(loads))
    # All active: as without active_ranks.
    full = _place(tokens, 24, 4, None, None, "elasticity_aware", None)[0]
    assert torch.equal(metrics.gpu_loads(tokens, full, 6, active_ranks=[1] * 6), metrics.gpu_loads(tokens, full, 6))
    with pytest.raises(ValueError, match="active_ranks marks all 6 GPUs inactive"):
        metrics.gpu_loads(tokens, p2l, 6, active_ranks=[0] * 6)
    with pytest.raises(ValueError, match="active_ranks has 4 entries"):
        metrics.balancedness(tokens, p2l, 6, active_ranks=[1] * 4)


@pytest.mark.parametrize("algorithm", ELASTIC)
def test_previous_placement_around_failed_gpus(algorithm):
    # SPEC: with an inactive GPU the live GPUs are renumbered among
    # themselves (fewest moves); dead GPUs stay filler and count nothing.
    gen = torch.Generator().manual_seed(7)
    P, k, C, N = 24, 3, 4, 2
    active = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1])
    dead = (active == 0).repeat_interleave(k)
    old_loads = torch.randint(1, 200, (2, 3, 16), generator=gen)
    new_loads = (old_loads * torch.rand(3, 16, generator=gen).add(0.5)).round().long()
    first = eplb_ext.rebalance_experts(old_loads, P, k, C, N, algorithm, active_ranks=active)
    fresh = eplb_ext.rebalance_experts(new_loads, P, k, C, N, algorithm, active_ranks=active)
    again = eplb_ext.rebalance_experts(
        new_loads, P, k, C, N, algorithm, active_ranks=active, previous_physical_to_logical_map=first[0]
    )
    check_invariants(again, algorithm, 3, 16, P, k, C, N, active_ranks=active.tolist())
    assert bool((again[0][:, dead] == 0).all())
    moved = eplb_ext.metrics.moves(first[0], again[0], k, active=active).per_layer
    assert bool((moved <= eplb_ext.metrics.moves(first[0], fresh[0], k, active=active).per_layer).all())
    # Only GPUs moved: each live GPU holds one of the fresh live GPUs' slot sets.
    for layer in range(3):
        sets = lambda m: sorted(sorted(m[layer, g * k:(g + 1) * k].tolist()) for g in range(8) if active[g])  # noqa: E731
        assert sets(again[0]) == sets(fresh[0])
    # Its own output as the previous placement: nothing moves.
    same = eplb_ext.rebalance_experts(
        new_loads, P, k, C, N, algorithm, active_ranks=active, previous_physical_to_logical_map=fresh[0]
    )
    assert int(eplb_ext.metrics.moves(fresh[0], same[0], k, active=active).total) == 0
