"""The compiled implementation against the golden upstream vectors (exact)."""

from __future__ import annotations

import pytest
import torch

import eplb_ext
from eplb_ext import EplbAlgorithm, compute_algorithm
from helpers import ALGORITHMS, ELASTIC, OUTPUT_NAMES, assert_same, check_invariants, golden_case_names, load_golden_cases

_CASES = load_golden_cases()
_NAMES = golden_case_names(_CASES)


def _args(case):
    return (
        case["tokens_per_expert"],
        case["num_physical_experts"],
        case["num_local_physical_experts"],
        case["num_groups"],
        case["num_nodes"],
    )


def _expected(case):
    return tuple(case[n] for n in OUTPUT_NAMES)


@pytest.mark.parametrize("name", _NAMES)
def test_golden_by_name(name, golden_cases):
    case = golden_cases[name]
    out = eplb_ext.rebalance_experts(*_args(case), case["algorithm"])
    assert_same(out, _expected(case), name)
    t = case["tokens_per_expert"]
    P, k, C, N = _args(case)[1:]
    check_invariants(out, case["algorithm"], t.shape[1], t.shape[2], P, k, C, N)


@pytest.mark.parametrize("name", _NAMES)
def test_golden_by_enum(name, golden_cases):
    case = golden_cases[name]
    algo = EplbAlgorithm[case["algorithm"]]
    assert_same(eplb_ext.rebalance_experts(*_args(case), algo), _expected(case), name)


def test_golden_case_count_and_coverage(golden_cases):
    assert len(golden_cases) == 200
    # The golden vectors cover the four upstream variants; the elasticity
    # variants are checked against the reference (test_elasticity.py).
    assert {c["algorithm"] for c in golden_cases.values()} == set(ALGORITHMS) - set(ELASTIC)
    assert {c["tokens_per_expert"].shape[0] for c in golden_cases.values()} >= {1, 4}


def test_golden_2d_input_when_one_step(golden_cases):
    # [L, E] means S = 1.
    n = 0
    for name, case in golden_cases.items():
        t = case["tokens_per_expert"]
        if t.shape[0] != 1:
            continue
        args = (t[0],) + _args(case)[1:]
        assert_same(eplb_ext.rebalance_experts(*args, case["algorithm"]), _expected(case), name)
        n += 1
    assert n > 0


def test_golden_auto_matches_compute_algorithm(golden_cases):
    """"auto" runs exactly the variant compute_algorithm picks for the arguments."""
    picked = set()
    for name, case in golden_cases.items():
        t, P, k, C, N = _args(case)
        choice = compute_algorithm("auto", C, N, num_logical_experts=t.shape[-1], num_gpus=P // k)
        assert isinstance(choice, EplbAlgorithm)
        assert choice in (EplbAlgorithm.deepseek, EplbAlgorithm.deepseek_hierarchical)
        picked.add(choice)
        auto = eplb_ext.rebalance_experts(t, P, k, C, N, "auto")
        assert_same(auto, eplb_ext.rebalance_experts(t, P, k, C, N, choice), name)
        # default algorithm is "auto"
        assert_same(eplb_ext.rebalance_experts(t, P, k, C, N), auto, name)
        if case["algorithm"] == choice.name:
            assert_same(auto, _expected(case), name)
    assert EplbAlgorithm.deepseek_hierarchical in picked


@pytest.mark.parametrize("name", [n for n in _NAMES if n.startswith("deepseek/")][:8] or _NAMES[:1])
def test_golden_auto_without_groups_is_deepseek(name, golden_cases):
    # num_groups=None: "auto" is the global policy, whatever num_nodes says.
    case = golden_cases[name]
    t, P, k, C, N = _args(case)
    assert compute_algorithm("auto", None, N) is EplbAlgorithm.deepseek
    assert_same(eplb_ext.rebalance_experts(t, P, k, None, N), _expected(case), name)
    assert_same(eplb_ext.rebalance_experts(t, P, k, None, None, "deepseek"), _expected(case), name)


def test_golden_fixed_width(golden_cases):
    for name, case in golden_cases.items():
        if case["algorithm"] not in ("deepseek", "deepseek_hierarchical"):
            continue
        t, P, k, C, N = _args(case)
        E = t.shape[-1]
        p2l, l2p, cnt = eplb_ext.rebalance_experts(t, P, k, C, N, case["algorithm"], fixed_width=True)
        exp = _expected(case)
        X = exp[1].shape[-1]
        assert l2p.shape == (t.shape[1], E, P - E + 1), name
        assert torch.equal(p2l, exp[0]) and torch.equal(cnt, exp[2]), name
        assert torch.equal(l2p[..., :X], exp[1]), name
        assert bool((l2p[..., X:] == -1).all()), name
