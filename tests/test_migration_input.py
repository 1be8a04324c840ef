"""Bad previous placements and options (SPEC "Keeping experts where they
are", "Bad input"): a ValueError/TypeError naming the argument, its value and
the rule, before any work, through the Python API and the raw op; and
metrics.moves, the one definition of moves."""

from __future__ import annotations


import pytest
import torch
from helpers import raises_with

import eplb_ext
from eplb_ext import metrics

ops = torch.ops.eplb_ext
rebalance = eplb_ext.rebalance_experts
E, P, k, C, N, L = 16, 24, 3, 4, 2, 3
TOKENS = torch.arange(2 * L * E).reshape(2, L, E) % 7
GOOD = metrics.trivial_placement(E, P, L)




@pytest.mark.parametrize(
    "prev,exc,fragments",
    [
        (GOOD[:2], ValueError, ("previous_physical_to_logical_map", "(2, 24)", "[3, 24]")),
        (GOOD[:, :12], ValueError, ("previous_physical_to_logical_map", "(3, 12)")),
        (GOOD[0], ValueError, ("previous_physical_to_logical_map", "(24,)")),
        (GOOD.float(), TypeError, ("previous_physical_to_logical_map", "torch.float32")),
        (GOOD.to(torch.int16), TypeError, ("previous_physical_to_logical_map", "torch.int16")),
        (GOOD.bool(), TypeError, ("previous_physical_to_logical_map", "torch.bool")),
        (GOOD.tolist(), TypeError, ("previous_physical_to_logical_map", "list")),
        (torch.where(GOOD == 5, E, GOOD), ValueError, ("previous_physical_to_logical_map[0, 5] = 16", "[0, 16)")),
        (torch.where(GOOD == 3, -2, GOOD), ValueError, ("previous_physical_to_logical_map[0, 3] = -2", "-1")),
    ],
)
@pytest.mark.parametrize("algorithm", ["deepseek", "deepseek_vec_hierarchical"])
def test_bad_previous(prev, exc, fragments, algorithm):
    with raises_with(exc, *fragments):
        rebalance(TOKENS, P, k, C, N, algorithm, previous_physical_to_logical_map=prev)


@pytest.mark.parametrize(
    "kwargs,exc,fragments",
    [
        (dict(max_moves=-1), ValueError, ("max_moves=-1", ">= 0")),
        (dict(max_moves=2.0), TypeError, ("max_moves", "2.0")),
        (dict(max_moves=True), TypeError, ("max_moves", "True")),
        (dict(max_moves="3"), TypeError, ("max_moves", "'3'")),
        (dict(min_improvement=-0.1), ValueError, ("min_improvement=-0.1", "[0, 1]")),
        (dict(min_improvement=1.5), ValueError, ("min_improvement=1.5", "[0, 1]")),
        (dict(min_improvement=float("nan")), ValueError, ("min_improvement=nan",)),
        (dict(min_improvement="0.1"), TypeError, ("min_improvement", "'0.1'")),
        (dict(min_improvement=None), TypeError, ("min_improvement", "None")),
    ],
)
def test_bad_options(kwargs, exc, fragments):
    with raises_with(exc, *fragments):
        rebalance(TOKENS, P, k, C, N, "deepseek", previous_physical_to_logical_map=GOOD, **kwargs)


def test_any_budget_above_p_is_p():
    # No layer has more than P moves: a larger integer, even beyond int64,
    # places as max_moves = P does (and is not an error of the op's argument).
    ref = rebalance(TOKENS, P, k, C, N, "deepseek", previous_physical_to_logical_map=GOOD, max_moves=P)
    for budget in (P + 1, 2**63, 2**70):
        out = rebalance(TOKENS, P, k, C, N, "deepseek", previous_physical_to_logical_map=GOOD, max_moves=budget)
        assert all(torch.equal(a, b) for a, b in zip(out, ref))


def test_options_need_a_previous_placement():
    with raises_with(ValueError, "max_moves=3", "previous_physical_to_logical_map"):
        rebalance(TOKENS, P, k, C, N, max_moves=3)
    with raises_with(ValueError, "max_moves=0", "previous_physical_to_logical_map"):
        rebalance(TOKENS, P, k, C, N, max_moves=0)
    with raises_with(ValueError, "min_improvement=0.2", "previous_physical_to_logical_map"):
        rebalance(TOKENS, P, k, C, N, min_improvement=0.2)
    plain = rebalance(TOKENS, P, k, C, N)
    same = rebalance(TOKENS, P, k, C, N, min_improvement=0, previous_physical_to_logical_map=None)
    assert all(torch.equal(a, b) for a, b in zip(plain, same))


def test_device_mismatch():
    if not torch.cuda.is_available():
        with raises_with(ValueError, "previous_physical_to_logical_map", "meta", "cpu"):
            rebalance(TOKENS, P, k, C, N, previous_physical_to_logical_map=GOOD.to("meta"))
    else:
        with raises_with(ValueError, "previous_physical_to_logical_map", "cuda", "cpu"):
            rebalance(TOKENS, P, k, C, N, previous_physical_to_logical_map=GOOD.cuda())


def test_empty_batch_and_odd_inputs_do_not_crash():
    empty = rebalance(torch.zeros(1, 0, E), P, k, C, N, previous_physical_to_logical_map=torch.zeros(0, P, dtype=torch.long), max_moves=3)
    assert empty[0].shape == (0, P)
    # All empty, all one expert, all zero loads: valid outputs, no hang.
    for prev in (torch.full((L, P), -1), torch.zeros(L, P, dtype=torch.long)):
        out = rebalance(TOKENS * 0, P, k, C, N, previous_physical_to_logical_map=prev, max_moves=4, min_improvement=0.5)
        assert bool((out[2] >= 1).all()) and bool((out[2].sum(-1) == P).all())


def _op(prev=GOOD, active=None, **kw):
    args = dict(k=k, C=C, N=N, max_moves=2, gain=0.0)
    args.update(kw)
    p2l, rank, _ = ops.deepseek(TOKENS, P, k, C, N)
    act = torch.empty(0, dtype=torch.uint8) if active is None else active
    return ops.migrate(TOKENS, p2l, rank, prev, act, args["k"], args["C"], args["N"], args["max_moves"], args["gain"])


@pytest.mark.cpp_raises
@pytest.mark.parametrize(
    "call,fragments",
    [
        (lambda: _op(prev=torch.where(GOOD == 2, 99, GOOD)), ("previous_physical_to_logical_map[0, 2] = 99",)),
        (lambda: _op(prev=GOOD[:, :21]), ("previous_physical_to_logical_map", "[3, 21]")),
        (lambda: _op(active=torch.ones(5, dtype=torch.uint8)), ("active", "8 entries")),
        (lambda: _op(active=torch.full((8,), 2, dtype=torch.uint8)), ("active[0] = 2",)),
        (lambda: _op(max_moves=-2), ("max_moves=-2",)),
        (lambda: _op(gain=2.0), ("min_improvement=2",)),
        (lambda: _op(k=5), ("num_local_physical_experts=5",)),
    ],
)
def test_raw_op_rejects(call, fragments):
    with raises_with(RuntimeError, *fragments):
        call()


def test_moves_definition():
    old = torch.tensor([[0, 1, 2, 3]])
    assert metrics.moves(old, old, 2) == (torch.tensor([0]), 0)
    assert metrics.moves(old, torch.tensor([[1, 0, 3, 2]]), 2).total == 0
    assert metrics.moves(old, torch.tensor([[2, 1, 0, 3]]), 2).total == 2
    # A second copy on a GPU that holds the expert is a local copy.
    assert metrics.moves(old, torch.tensor([[0, 0, 2, 3]]), 2).total == 0
    # Empty slots hold nothing; inactive GPUs count nothing.
    assert metrics.moves(torch.tensor([[-1, 1, -1, -1]]), torch.tensor([[0, 1, 2, 2]]), 2).total == 2
    assert metrics.moves(torch.tensor([[-1, 1, -1, -1]]), torch.tensor([[0, 1, 2, 2]]), 2,
                         active=torch.tensor([True, False])).total == 1
    two = metrics.moves(torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]]), torch.tensor([[3, 1, 2, 0], [0, 1, 2, 3]]), 2)
    assert two.per_layer.tolist() == [2, 0] and two.total == 2
    # experts_moved is the same measure, counted by GPUs.
    assert metrics.experts_moved(old, torch.tensor([[2, 1, 0, 3]]), 2).tolist() == [2]
    with raises_with(ValueError, "num_local_physical_experts=3"):
        metrics.moves(old, old, 3)
    with raises_with(ValueError, "differ in shape"):
        metrics.moves(old, old[:, :2], 1)
    with raises_with(TypeError, "previous"):
        metrics.moves(old.float(), old, 2)


@pytest.mark.parametrize("max_moves,gain,active", [(-1, 0.0, None), (4, 0.0, None), (3, 0.05, None),
                                                   (2, 0.0, torch.tensor([1, 1, 0, 1, 1, 1, 1, 1], dtype=torch.uint8))])
def test_opcheck_migrate(max_moves, gain, active):
    p2l, rank, _ = ops.deepseek(TOKENS, P, k, C, N)
    prev = torch.roll(p2l, 4, dims=1)
    act = torch.empty(0, dtype=torch.uint8) if active is None else active
    result = torch.library.opcheck(ops.migrate, (TOKENS, p2l, rank, prev, act, k, C, N, max_moves, gain))
    assert all(v == "SUCCESS" for v in result.values()), result


def test_compile_with_previous():
    torch._dynamo.reset()

    def f(t, prev):
        p2l, rank, _ = ops.deepseek(t, P, k, C, N)
        return ops.migrate(t, p2l, rank, prev, torch.empty(0, dtype=torch.uint8), k, C, N, 3, 0.0)

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    prev = GOOD.clone()
    for a, b in zip(compiled(TOKENS, prev), f(TOKENS, prev)):
        assert torch.equal(a, b)
