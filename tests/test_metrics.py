"""eplb_ext.metrics against hand-computed cases and against the placements
of every variant."""

import pytest
import torch

from eplb_ext import metrics
from eplb_ext.demo import DEPLOYMENTS, VARIANTS, synthetic_load

# Expert loads 4, 2, 1, 1; six slots on three GPUs (two each); expert 0 has
# three replicas (slots 0, 4, 5), so each carries 4/3.
W = torch.tensor([[4.0, 2.0, 1.0, 1.0]])
MAP = torch.tensor([[0, 1, 2, 3, 0, 0]])


def test_gpu_loads_hand_case():
    loads = metrics.gpu_loads(W, MAP, 3)
    # GPU 0: 4/3 + 2; GPU 1: 1 + 1; GPU 2: 4/3 + 4/3.
    assert loads.dtype == torch.float64 and loads.shape == (1, 3)
    assert loads[0].tolist() == pytest.approx([10 / 3, 2.0, 8 / 3], rel=1e-15)


def test_balancedness_hand_case():
    # mean (8/3) / max (10/3)
    assert metrics.balancedness(W, MAP, 3).tolist() == pytest.approx([0.8], rel=1e-15)


def test_counts_come_from_the_map():
    assert metrics.replica_counts(MAP, 4).tolist() == [[3, 1, 1, 1]]
    # Same slots, but expert 1 replicated instead: GPU 0 holds 4 + 1, GPU 2 holds 1 + 1.
    other = torch.tensor([[0, 1, 2, 3, 1, 1]])
    assert metrics.gpu_loads(W, other, 3)[0].tolist() == pytest.approx([4 + 2 / 3, 2.0, 4 / 3], rel=1e-15)


def test_steps_are_summed_and_dtypes_agree():
    steps = torch.tensor([[[3, 2, 0, 1]], [[1, 0, 1, 0]]])  # sums to W
    assert torch.equal(metrics.gpu_loads(steps, MAP, 3), metrics.gpu_loads(W, MAP, 3))
    assert torch.equal(metrics.gpu_loads(W.to(torch.int32), MAP.to(torch.int32), 3), metrics.gpu_loads(W, MAP, 3))
    per_step = metrics.gpu_loads(steps, MAP, 3, per_step=True)
    assert per_step.shape == (2, 1, 3)
    # Step 0: GPU 0 = 3/3 + 2, GPU 1 = 0 + 1, GPU 2 = 1 + 1.
    assert per_step[0, 0].tolist() == pytest.approx([3.0, 1.0, 2.0], rel=1e-15)
    assert torch.allclose(per_step.sum(dim=0), metrics.gpu_loads(steps, MAP, 3), rtol=1e-15)


def test_step_balancedness_hand_case():
    steps = torch.tensor([[[3, 2, 0, 1]], [[1, 0, 1, 0]]])
    # Step 0: loads 3, 1, 2 (mean 2, max 3); step 1: 1/3, 1, 2/3 (mean 2/3, max 1).
    expected = (2 + 2 / 3) / (3 + 1)
    assert metrics.step_balancedness(steps, MAP, 3).tolist() == pytest.approx([expected], rel=1e-15)
    # One step: the same as balancedness.
    assert torch.equal(metrics.step_balancedness(W, MAP, 3), metrics.balancedness(W, MAP, 3))


def test_perfect_and_empty_layers_are_balanced():
    w = torch.tensor([[5, 5, 5, 5], [0, 0, 0, 0], [1, 3, 3, 1]])
    phy2log = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]])
    assert metrics.balancedness(w, phy2log, 2).tolist() == [1.0, 1.0, 1.0]
    assert metrics.balancedness(w, phy2log, 4).tolist()[:2] == [1.0, 1.0]
    assert metrics.bound_balancedness(w, 4, 4).tolist()[1] == 1.0


def test_overall_balancedness_hand_case():
    # Layer 0: GPU loads 4 and 0 (mean 2, max 4 -> 0.5); layer 1: 1 and 1 (1.0).
    w = torch.tensor([[4.0, 0.0], [1.0, 1.0]])
    phy2log = torch.tensor([[0, 1], [0, 1]])
    loads = metrics.gpu_loads(w, phy2log, 2)
    overall = metrics.overall_balancedness(loads)
    assert overall.mean == pytest.approx(0.75, rel=1e-15)
    assert overall.aggregate == pytest.approx((2 + 1) / (4 + 1), rel=1e-15)
    # Against the lower bound instead of the max: bound of layer 0 is 4 (one
    # expert, one replica), of layer 1 is 1.
    bound = metrics.lower_bound(w, 2, 2)
    assert bound.tolist() == [4.0, 1.0]
    assert metrics.overall_balancedness(loads, reference_max=bound) == overall
    assert metrics.overall_balancedness(torch.zeros(0, 3)) == (1.0, 1.0)


@pytest.mark.parametrize(
    "w, P, G, expected",
    [
        ([[4, 2, 1, 1]], 6, 3, 8 / 3),  # total / G = 8/3 beats the replica bound 2
        ([[9, 1, 1, 1]], 5, 5, 4.5),  # one extra slot halves expert 0: 9/2
        ([[9, 1, 1, 1]], 6, 2, 6.0),  # total / G = 6 beats 9/3
        ([[6, 6, 1, 1]], 6, 6, 3.0),  # both hot experts get one extra slot: 6/2
        ([[0, 0, 0]], 3, 3, 0.0),
    ],
)
def test_lower_bound_hand_cases(w, P, G, expected):
    assert metrics.lower_bound(torch.tensor(w), P, G).tolist() == pytest.approx([expected], rel=1e-15)


CASES = [
    ("dsv3-4x8", 3),
    ("dsv3-8x8", 2),
    ("dsv3-18x8", 2),
    ("moe128-4x8", 4),
]


@pytest.mark.parametrize("name, layers", CASES)
@pytest.mark.parametrize("steps", [1, 8])
def test_no_variant_beats_the_bound(name, layers, steps):
    d = DEPLOYMENTS[name]
    tokens = synthetic_load(d, steps, seed=1, num_layers=layers)
    bound = metrics.lower_bound(tokens, d.num_physical_experts, d.num_gpus)
    best_possible = metrics.bound_balancedness(tokens, d.num_physical_experts, d.num_gpus)
    trivial = metrics.trivial_placement(d.num_experts, d.num_physical_experts, layers)
    placements = [trivial]
    for variant in VARIANTS:
        try:
            placements.append(d.place(tokens, variant)[0])
        except ValueError:
            continue  # a hierarchical variant on a deployment without groups
    assert len(placements) >= 3
    for phy2log in placements:
        peak = metrics.gpu_loads(tokens, phy2log, d.num_gpus).amax(dim=-1)
        # Float64 sums can land one rounding below the bound's total / G.
        assert bool((bound <= peak * (1 + 1e-12)).all())
        assert bool((metrics.balancedness(tokens, phy2log, d.num_gpus) <= best_possible * (1 + 1e-12)).all())


def test_counts_match_the_library():
    d = DEPLOYMENTS["dsv3-4x8"]
    tokens = synthetic_load(d, 2, num_layers=2)
    for variant in VARIANTS:
        phy2log, _, logcnt = d.place(tokens, variant)
        assert torch.equal(metrics.replica_counts(phy2log, d.num_experts), logcnt.to(torch.int64))


def test_trivial_placement():
    assert metrics.trivial_placement(4, 6).tolist() == [0, 1, 2, 3, 0, 1]
    assert metrics.trivial_placement(4, 6, 2).tolist() == [[0, 1, 2, 3, 0, 1]] * 2
    assert metrics.trivial_placement(3, 3, 0).shape == (0, 3)
    with pytest.raises(ValueError):
        metrics.trivial_placement(5, 4)


def test_experts_moved():
    old = torch.tensor([[0, 1, 2, 3]])
    assert metrics.experts_moved(old, old, 2).tolist() == [0]
    # GPU 0 {0, 1} -> {2, 1} loads expert 2; GPU 1 {2, 3} -> {0, 3} loads expert 0.
    assert metrics.experts_moved(old, torch.tensor([[2, 1, 0, 3]]), 2).tolist() == [2]
    # Swapping slots within a GPU moves nothing.
    assert metrics.experts_moved(old, torch.tensor([[1, 0, 3, 2]]), 2).tolist() == [0]
    # Three GPUs of two slots: GPU 0 {0, 1} -> {0}: 0; GPU 1 {2, 3} -> {1, 2}: 1;
    # GPU 2 {0, 1} -> {3} (two slots, one expert): 1.
    old3 = metrics.trivial_placement(4, 6, 1)
    new3 = torch.tensor([[0, 0, 1, 2, 3, 3]])
    assert metrics.experts_moved(old3, new3, 3).tolist() == [2]
    # Back: GPU 0 {0} -> {0, 1}: 1; GPU 1 {1, 2} -> {2, 3}: 1; GPU 2 {3} -> {0, 1}: 2.
    assert metrics.experts_moved(new3, old3, 3).tolist() == [4]
    # Per layer, and any integer dtypes.
    both_old = torch.cat([old3, old3]).to(torch.int32)
    both_new = torch.cat([old3, new3])
    assert metrics.experts_moved(both_old, both_new, 3).tolist() == [0, 2]


def test_experts_moved_of_a_rebalance():
    d = DEPLOYMENTS["dsv3-4x8"]
    tokens = synthetic_load(d, 1, num_layers=2)
    trivial = metrics.trivial_placement(d.num_experts, d.num_physical_experts, 2)
    placed = d.place(tokens, "deepseek")[0]
    moved = metrics.experts_moved(trivial, placed, d.num_gpus)
    assert moved.shape == (2,) and moved.dtype == torch.int64
    # Each GPU newly loads at most its k slots' experts.
    assert bool((moved > 0).all()) and bool((moved <= d.num_physical_experts).all())
    assert metrics.experts_moved(placed, placed, d.num_gpus).tolist() == [0, 0]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: metrics.gpu_loads(W, MAP, 4), "must divide"),
        (lambda: metrics.gpu_loads(W, torch.tensor([[0, 1, 2, 4, 0, 0]]), 3), "outside"),
        (lambda: metrics.gpu_loads(W, torch.tensor([[0, 1, 2, 2, 0, 0]]), 3), "expert 3 has no slot in layer 0"),
        (lambda: metrics.gpu_loads(W, MAP.repeat(2, 1), 3), "2 layers"),
        (lambda: metrics.gpu_loads(W[0], MAP, 3), r"\[L, E\]"),
        (lambda: metrics.gpu_loads(W, MAP[0], 3), r"\[L, P\]"),
        (lambda: metrics.gpu_loads(W, MAP, 3, per_step=True), "per_step"),
        (lambda: metrics.lower_bound(W, 3, 3), "smaller"),
        (lambda: metrics.experts_moved(MAP, MAP[:, :4], 3), "differ in shape"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_lower_bound_for_many_slots_is_the_greedys():
    # Beyond P - E = E slots most replicas are given at once: the counts the
    # greedy passes through for a threshold, then its remaining steps. The
    # bound must be the slot-by-slot greedy's, bit for bit.
    def greedy(w, P, G):
        w = metrics.expert_load(w)
        counts, rows = torch.ones_like(w), torch.arange(w.shape[0])
        for _ in range(P - w.shape[1]):
            counts[rows, (w / counts).argmax(dim=-1)] += 1
        return torch.maximum(w.sum(dim=-1) / G, (w / counts).amax(dim=-1))

    g = torch.Generator().manual_seed(3)
    cases = [torch.randint(0, 100, (3, 7), generator=g), torch.rand(2, 9, generator=g, dtype=torch.float64) ** 4,
             torch.randint(0, 3, (4, 5), generator=g), torch.tensor([[0, 0, 5, 5, 5]]), torch.zeros(2, 4)]
    for w in cases:
        E = w.shape[-1]
        for P in (2 * E + 1, 3 * E + 2, 10 * E + 7):
            assert torch.equal(metrics.lower_bound(w, P, 1), greedy(w, P, 1)), (w, P)
    # Four million slots are as quick as a few (the slot-by-slot loop took minutes).
    assert metrics.lower_bound(torch.ones(1, 4), 4_000_000, 1).item() == 4.0
    assert metrics.lower_bound(torch.ones(1, 0), 4, 2).tolist() == [0.0]
    assert metrics.lower_bound(torch.ones(0, 4), 100, 2).shape == (0,)
    assert metrics.bound_balancedness(torch.ones(1, 0), 4, 2).tolist() == [1.0]


def test_bad_inputs_raise_value_or_type_errors():
    p = torch.tensor([[0, 1, 2, 3]])
    with pytest.raises(TypeError, match="physical_to_logical_map must be a torch.Tensor"):
        metrics.gpu_loads(torch.ones(1, 4), [[0, 1, 2, 3]], 2)
    with pytest.raises(TypeError, match="tokens must be a torch.Tensor"):
        metrics.step_balancedness([[1, 2, 3, 4]], p, 2)
    with pytest.raises(TypeError, match="old_physical_to_logical_map"):
        metrics.experts_moved([[0, 1]], [[0, 1]], 1)
    with pytest.raises(ValueError, match="active must be 1-D with one entry per GPU"):
        metrics.moves(p, p, 2, active=[1, 1, 1])
    for bad in ([[-1, 0]], [[5, 0]]):
        with pytest.raises(ValueError, match=r"ids outside \[0, 2\)"):
            metrics.replica_counts(torch.tensor(bad), 2)
    with pytest.raises(ValueError, match="num_layers=-1"):
        metrics.trivial_placement(4, 8, -1)
    with pytest.raises(ValueError, match="NaN"):
        metrics.balancedness(torch.tensor([[float("nan"), 1.0, 1.0, 1.0]]), p, 2)
    # Integer GPU loads are measured as well as float ones.
    assert metrics.overall_balancedness(torch.tensor([[1, 2]])) == metrics.overall_balancedness(
        torch.tensor([[1.0, 2.0]]))


def test_no_steps():
    # No steps: no GPU load in any step, so every layer counts as balanced.
    p = metrics.trivial_placement(16, 32, 3)
    assert metrics.gpu_loads(torch.zeros(0, 3, 16), p, 8, per_step=True).shape == (0, 3, 8)
    assert metrics.step_balancedness(torch.zeros(0, 3, 16), p, 8).tolist() == [1.0, 1.0, 1.0]


def test_moves_with_ids_far_beyond_the_slots():
    # Counted without a table as wide as the largest id (2**33 would ask for
    # 16 GiB): the ids present are renumbered first.
    old = torch.tensor([[0, 1, 2, 3]])
    for big in (2**33, 2**62):
        new = torch.tensor([[0, 1, 2, big]])
        assert metrics.moves(old, new, 2).total == 1
        assert metrics.moves(new, new, 2).total == 0
        # GPU 0 gains 0 and 1 (it held only `big`), GPU 1 gains `big`.
        assert metrics.moves(torch.tensor([[-1, big, 2, 3]]), new, 2).per_layer.tolist() == [3]


def test_bad_types():
    with pytest.raises(TypeError):
        metrics.gpu_loads(W.tolist(), MAP, 3)
    with pytest.raises(TypeError):
        metrics.gpu_loads(W, MAP.float(), 3)
    with pytest.raises(TypeError):
        metrics.expert_load(W > 0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    d = DEPLOYMENTS["dsv3-4x8"]
    tokens = synthetic_load(d, 4, num_layers=3)
    phy2log = d.place(tokens, "deepseek_hierarchical")[0]
    trivial = metrics.trivial_placement(d.num_experts, d.num_physical_experts, 3)
    tc, pc = tokens.cuda(), phy2log.cuda()
    loads = metrics.gpu_loads(tc, pc, d.num_gpus)
    assert loads.device.type == "cuda"
    assert torch.allclose(loads.cpu(), metrics.gpu_loads(tokens, phy2log, d.num_gpus), rtol=1e-12)
    for fn in (metrics.balancedness, metrics.step_balancedness):
        assert torch.allclose(fn(tc, pc, d.num_gpus).cpu(), fn(tokens, phy2log, d.num_gpus), rtol=1e-12)
    assert torch.allclose(
        metrics.lower_bound(tc, d.num_physical_experts, d.num_gpus).cpu(),
        metrics.lower_bound(tokens, d.num_physical_experts, d.num_gpus),
        rtol=1e-12,
    )
    assert torch.equal(
        metrics.experts_moved(trivial.cuda(), pc, d.num_gpus).cpu(), metrics.experts_moved(trivial, phy2log, d.num_gpus)
    )
