"""SPEC "Bad input": every rejection is a ValueError / TypeError raised
before any work, naming the argument and its value; nothing crashes. Checked
through the Python API and straight through the raw ops."""

from __future__ import annotations


import pytest
import torch

import eplb_ext
from eplb_ext import EplbAlgorithm, compute_algorithm, metrics, reference
from eplb_ext import deepseek as ds
from helpers import ALGORITHMS, HIERARCHICAL, assert_same, check_invariants, raises_with

ops = torch.ops.eplb_ext
rebalance = eplb_ext.rebalance_experts

E, P, k, C, N = 16, 24, 3, 4, 2


def _t(S=2, L=3, dtype=torch.float32, E=E):
    return torch.arange(S * L * E, dtype=torch.float64).reshape(S, L, E).remainder(7).to(dtype)




# --------------------------------------------------------------------------
# the load tensor
# --------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("shape", [(E,), (1, 2, 3, E), ()])
def test_wrong_rank(algorithm, shape):
    with raises_with(ValueError, "tokens_per_expert", str(tuple(shape))):
        rebalance(torch.ones(shape), P, k, C, N, algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", [torch.bool, torch.complex64, torch.complex128])
def test_bad_dtype(algorithm, dtype):
    with raises_with(TypeError, "tokens_per_expert", str(dtype)):
        rebalance(torch.ones(2, 3, E, dtype=dtype), P, k, C, N, algorithm)


@pytest.mark.parametrize("value", [[[1.0] * E], 3, None, "tokens", (torch.ones(3, E),)])
def test_not_a_tensor(value):
    with raises_with(TypeError, "tokens_per_expert"):
        rebalance(value, P, k, C, N)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(
    "dtype,value,what",
    [
        (torch.float32, -1.0, "negative"),
        (torch.float32, -1e-30, "negative"),
        (torch.float32, float("nan"), "NaN"),
        (torch.float32, float("inf"), "infinite"),
        (torch.float32, float("-inf"), "infinite"),
        (torch.float64, -1e-300, "negative"),
        (torch.float64, 1e300, "infinite"),  # finite in float64, infinite in float32
        (torch.float64, -1e300, "infinite"),
        (torch.float64, float("nan"), "NaN"),
        (torch.float16, float("inf"), "infinite"),
        (torch.float16, -2.0, "negative"),
        (torch.bfloat16, float("nan"), "NaN"),
        (torch.bfloat16, -3.0, "negative"),
        (torch.int64, -3, "negative"),
        (torch.int32, -1, "negative"),
        (torch.int16, -7, "negative"),
        (torch.int8, -128, "negative"),
    ],
)
def test_bad_load_values(algorithm, dtype, value, what):
    t = _t(dtype=dtype)
    t[1, 2, 5] = value
    with raises_with(ValueError, "tokens_per_expert[1, 2, 5]", what):
        rebalance(t, P, k, C, N, algorithm)
    # The 2-D form ([L, E], one step) is checked too. (The index it reports
    # is that of the [1, L, E] view: "[0, 2, 5]".)
    with raises_with(ValueError, "tokens_per_expert[", "2, 5]", what):
        rebalance(t[1], P, k, C, N, algorithm)


def test_first_bad_load_is_reported():
    t = _t(S=3)
    t[2, 0, 0] = -1.0
    t[1, 2, 7] = float("nan")
    t[1, 1, 9] = -5.0
    # (step, layer, expert) order: step 1 first, layer 1 before layer 2.
    with raises_with(ValueError, "tokens_per_expert[1, 1, 9]", "negative"):
        rebalance(t, P, k, C, N)


def test_bad_load_in_noncontiguous_view():
    base = _t(S=4, L=6)
    base[2, 4, 3] = float("nan")
    view = base[::2, ::2]  # step 2 -> 1, layer 4 -> 2
    with raises_with(ValueError, "tokens_per_expert[1, 2, 3]", "NaN"):
        rebalance(view, P, k, C, N)
    with raises_with(ValueError, "tokens_per_expert", "NaN"):
        rebalance(base.permute(0, 1, 2).transpose(0, 1).transpose(0, 1), P, k, C, N)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_finite_loads_whose_sum_overflows_are_valid(algorithm):
    # Every load is finite in float32, their float32 sum over steps is not:
    # a valid input, placed as the unchecked call places the steps, with and
    # without a previous placement (the sums are not loads to check).
    t = _t(S=4).double()
    t[:, 1, 3] = 1e38
    t[:, 2, :5] = 1e38  # several infinite sums: ties the ops break by index
    out = rebalance(t, P, k, C, N, algorithm)
    assert_same(out, rebalance(t, P, k, C, N, algorithm, check_values=False))
    relabeled = rebalance(t, P, k, C, N, algorithm, previous_physical_to_logical_map=out[0])
    assert torch.equal(relabeled[0], out[0])  # its own placement: nothing to move
    searched = rebalance(t, P, k, C, N, algorithm, previous_physical_to_logical_map=out[0], max_moves=2)
    assert int(metrics.moves(out[0], searched[0], k).per_layer.max()) <= 2


def test_negative_zero_is_a_valid_load():
    t = _t()
    t[0, 0, :] = -0.0
    for algorithm in ALGORITHMS:
        out = rebalance(t, P, k, C, N, algorithm)
        assert_same(out, reference.rebalance_experts(t, P, k, C, N, algorithm))


# --------------------------------------------------------------------------
# integer arguments
# --------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_fewer_slots_than_experts(algorithm):
    with raises_with(ValueError, "num_physical_experts=15", "16"):
        rebalance(_t(), 15, 1, C, N, algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_k_does_not_divide_P(algorithm):
    with raises_with(ValueError, "num_local_physical_experts=5", "num_physical_experts=24"):
        rebalance(_t(), 24, 5, C, N, algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("name,index", [("num_physical_experts", 1), ("num_local_physical_experts", 2)])
@pytest.mark.parametrize("value", [0, -1, -24])
def test_non_positive_sizes(algorithm, name, index, value):
    args = [_t(), P, k, C, N]
    args[index] = value
    with raises_with(ValueError, f"{name}={value}"):
        rebalance(*args, algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(
    "name,index", [("num_physical_experts", 1), ("num_local_physical_experts", 2), ("num_groups", 3), ("num_nodes", 4)]
)
@pytest.mark.parametrize("value", [True, False, 24.0, 2.5, "24", torch.tensor(24)])
def test_non_integer_sizes(algorithm, name, index, value):
    args = [_t(), P, k, C, N]
    args[index] = value
    with raises_with(TypeError, name, type(value).__name__):
        rebalance(*args, algorithm)


def test_numpy_integers_are_integers():
    np = pytest.importorskip("numpy")
    out = rebalance(_t(), np.int64(P), np.int32(k), np.int64(C), np.int16(N), "deepseek_hierarchical")
    assert_same(out, rebalance(_t(), P, k, C, N, "deepseek_hierarchical"))


@pytest.mark.parametrize("algorithm", HIERARCHICAL)
def test_hierarchical_needs_groups(algorithm):
    with raises_with(ValueError, "num_groups", "None"):
        rebalance(_t(), P, k, None, N, algorithm)
    with raises_with(ValueError, "num_groups", "None"):
        rebalance(_t(), P, k, None, None, EplbAlgorithm[algorithm])


@pytest.mark.parametrize("algorithm", HIERARCHICAL)
def test_groups_must_divide_experts(algorithm):
    with raises_with(ValueError, "num_groups=3", "16"):
        rebalance(_t(), P, k, 3, 1, algorithm)
    with raises_with(ValueError, "num_groups=32", "16"):
        rebalance(_t(), 32, 1, 32, 1, algorithm)


@pytest.mark.parametrize("algorithm", HIERARCHICAL)
def test_nodes_must_divide_groups(algorithm):
    with raises_with(ValueError, "num_nodes=3", "num_groups=4"):
        rebalance(_t(), 24, 1, 4, 3, algorithm)  # G = 24: 3 | G, 3 does not divide 4


@pytest.mark.parametrize("algorithm", HIERARCHICAL)
def test_nodes_must_divide_gpus(algorithm):
    # E=16, C=4, N=2; P=18, k=6: G=3, odd.
    with raises_with(ValueError, "num_nodes=2", "3"):
        rebalance(_t(), 18, 6, 4, 2, algorithm)
    # N=4 | C=4, but G = 24/4 = 6.
    with raises_with(ValueError, "num_nodes=4", "6"):
        rebalance(_t(), 24, 4, 4, 4, algorithm)


@pytest.mark.parametrize("algorithm", HIERARCHICAL)
@pytest.mark.parametrize("name,index", [("num_groups", 3), ("num_nodes", 4)])
@pytest.mark.parametrize("value", [0, -1])
def test_hierarchical_non_positive_groups_nodes(algorithm, name, index, value):
    args = [_t(), P, k, C, N]
    args[index] = value
    with raises_with(ValueError, f"{name}={value}"):
        rebalance(*args, algorithm)


@pytest.mark.parametrize("algorithm", ["deepseek", "deepseek_vec"])
def test_unused_arguments_need_only_be_none_or_positive(algorithm):
    t = _t(E=8)
    expected = reference.rebalance_experts(t, 12, 3, None, None, algorithm)
    # Values that would break a hierarchical variant are fine here.
    for groups, nodes in [(None, None), (3, None), (None, 5), (3, 5), (16, 7), (1, 1), (8, 3)]:
        assert_same(rebalance(t, 12, 3, groups, nodes, algorithm), expected, f"C={groups} N={nodes}")
    for groups, nodes, name, value in [(0, None, "num_groups", 0), (-1, 2, "num_groups", -1), (4, 0, "num_nodes", 0), (None, -3, "num_nodes", -3)]:
        with raises_with(ValueError, f"{name}={value}"):
            rebalance(t, 12, 3, groups, nodes, algorithm)
    for groups, nodes, name in [(2.0, None, "num_groups"), (None, True, "num_nodes"), ("4", 1, "num_groups")]:
        with raises_with(TypeError, name):
            rebalance(t, 12, 3, groups, nodes, algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("P_big", [2**31 - 1, 2**31, 2**40, 2**63 - 1])
def test_slot_count_overflow(algorithm, P_big):
    with raises_with(ValueError, "num_physical_experts", str(P_big)):
        rebalance(_t(), P_big, 1, 1, 1, algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_output_too_large(algorithm):
    # [L, E, P - E + 1] with L = 2**40 (a stride-0 view) cannot be addressed.
    big = torch.zeros(1, 1, 1).expand(1, 2**40, 8)
    with raises_with(ValueError, "too large"):
        rebalance(big, 2**30, 1, 1, 1, algorithm)


@pytest.mark.cpp_raises
def test_huge_allocation_fails_cleanly():
    # Addressable but not allocatable: an error, never a crash.
    big = torch.zeros(1, 1, 1).expand(1, 2**40, 8)
    with pytest.raises((RuntimeError, MemoryError, ValueError)):
        rebalance(big, 8, 1, None, None, "deepseek")


def test_bad_flags():
    with raises_with(TypeError, "fixed_width"):
        rebalance(_t(), P, k, C, N, "deepseek", fixed_width=1)
    with raises_with(TypeError, "check_values"):
        rebalance(_t(), P, k, C, N, "deepseek", check_values="yes")


def test_no_experts():
    with raises_with(ValueError, "tokens_per_expert"):
        rebalance(torch.ones(2, 3, 0), P, k, None, None)


# --------------------------------------------------------------------------
# algorithm names and compute_algorithm
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nope", "DeepSeek", "deepseek_vec_hier", "", "AUTO"])
def test_unknown_algorithm_lists_valid_names(name):
    with raises_with(ValueError, repr(name), "auto", *ALGORITHMS):
        rebalance(_t(), P, k, C, N, name)
    with raises_with(ValueError, repr(name), *ALGORITHMS):
        compute_algorithm(name, C, N)


@pytest.mark.parametrize("value", [None, 3, 1.5, EplbAlgorithm])
def test_algorithm_of_wrong_type(value):
    with raises_with(TypeError, "algorithm", *ALGORITHMS):
        rebalance(_t(), P, k, C, N, value)


def test_compute_algorithm_rules():
    H, D = EplbAlgorithm.deepseek_hierarchical, EplbAlgorithm.deepseek
    # Never raises on num_groups=None.
    assert compute_algorithm("auto", None, None) is D
    assert compute_algorithm("auto", None, 4) is D
    assert compute_algorithm("auto", None, 4, num_logical_experts=16, num_gpus=8) is D
    assert compute_algorithm("auto", 8, 4) is H
    assert compute_algorithm("auto", 8, None) is H
    assert compute_algorithm("auto", 8, 3) is D
    assert compute_algorithm("auto", 8, 4, num_logical_experts=256, num_gpus=32) is H
    assert compute_algorithm("auto", 8, 4, num_logical_experts=100, num_gpus=32) is D
    assert compute_algorithm("auto", 8, 4, num_logical_experts=256, num_gpus=6) is D
    for algo in EplbAlgorithm:
        assert compute_algorithm(algo, None, None) is algo
        assert compute_algorithm(algo.name, None, None) is algo
        assert compute_algorithm(algo.name, 3, 7) is algo


def test_auto_falls_back_to_global_policy():
    t = _t()
    # C=3 does not divide E=16: auto is the global policy, not an error.
    assert_same(rebalance(t, P, k, 3, 1), reference.rebalance_experts(t, P, k, 3, 1, "deepseek"))
    # N=2 does not divide G=3.
    assert_same(rebalance(t, 18, 6, 4, 2), reference.rebalance_experts(t, 18, 6, 4, 2, "deepseek"))
    # No groups.
    assert_same(rebalance(t, P, k, None, N), reference.rebalance_experts(t, P, k, None, N, "deepseek"))


# --------------------------------------------------------------------------
# empty inputs
# --------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.float32, torch.bfloat16])
def test_empty_batch(algorithm, dtype):
    t = torch.zeros(2, 0, E, dtype=dtype)
    out = rebalance(t, P, k, C, N, algorithm)
    check_invariants(out, algorithm, 0, E, P, k, C, N)
    vec = algorithm.startswith("deepseek_vec")
    assert tuple(out[1].shape) == (0, E, P - E + 1 if vec else 0)
    assert_same(out, reference.rebalance_experts(t, P, k, C, N, algorithm))
    fixed = rebalance(t, P, k, C, N, algorithm, fixed_width=True)
    assert tuple(fixed[1].shape) == (0, E, P - E + 1)
    assert tuple(rebalance(t[0], P, k, C, N, algorithm)[0].shape) == (0, P)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.float32, torch.float16])
def test_no_steps(algorithm, dtype):
    """S = 0: every load is zero; a valid placement, equal to the reference's."""
    t = torch.zeros(0, 3, E, dtype=dtype)
    out = rebalance(t, P, k, C, N, algorithm)
    check_invariants(out, algorithm, 3, E, P, k, C, N)
    assert_same(out, reference.rebalance_experts(t, P, k, C, N, algorithm))
    # Same as all-zero loads for the summed variants.
    if not algorithm.startswith("deepseek_vec"):
        assert_same(out, rebalance(torch.zeros(1, 3, E, dtype=dtype), P, k, C, N, algorithm))


# --------------------------------------------------------------------------
# DeepSeek's API
# --------------------------------------------------------------------------


def test_deepseek_api_bad_input(no_op_calls):
    # Every rejection comes from the Python layer, before any op runs.
    w = torch.rand(3, 8)
    with raises_with(ValueError, "num_packs=3", "8"):
        ds.balanced_packing(w, 3)
    with raises_with(ValueError, "num_packs=0"):
        ds.balanced_packing(w, 0)
    with raises_with(TypeError, "num_packs"):
        ds.balanced_packing(w, 2.0)
    with raises_with(ValueError, "weight", "2-D", "(1, 3, 8)"):
        ds.balanced_packing(w.unsqueeze(0), 2)  # wrong rank
    with raises_with(ValueError, "num_phy=7", "8"):
        ds.replicate_experts(w, 7)
    with raises_with(TypeError, "weight", "bool"):
        ds.replicate_experts(w > 0.5, 8)
    bad = w.clone()
    bad[1, 4] = float("nan")
    with raises_with(ValueError, "weight[1, 4]", "NaN"):
        ds.replicate_experts(bad, 10)
    with raises_with(ValueError, "weight[1, 4]", "NaN"):
        ds.balanced_packing(bad, 2)
    with raises_with(ValueError, "num_gpus=5", "16"):
        ds.rebalance_experts_hierarchical(w, 16, 2, 1, 5)
    with raises_with(ValueError, "num_gpus=3", "num_replicas=16"):
        ds.rebalance_experts(w, 16, 2, 1, 3)
    with raises_with(ValueError, "num_groups=3"):
        ds.rebalance_experts_hierarchical(w, 16, 3, 1, 4)
    with raises_with(ValueError, "num_nodes=3", "num_groups=2"):
        ds.rebalance_experts_hierarchical(w, 12, 2, 3, 6)
    with raises_with(TypeError, "num_groups"):
        ds.rebalance_experts(w, 16, None, 1, 4)
    with raises_with(ValueError, "num_packs=16", "exceeds the number of items 8"):
        ds.balanced_packing(w, 16)
    with raises_with(ValueError, "num_phy=2147483648", "exceeds"):
        ds.replicate_experts(w, 2**31)
    with raises_with(ValueError, "weight has no experts"):
        ds.replicate_experts(torch.ones(3, 0), 4)
    with raises_with(ValueError, "weight[1, 4]", "NaN"):
        ds.rebalance_experts(bad, 16, 4, 2, 8)
    with raises_with(ValueError, "weight[1, 4]", "NaN"):
        ds.rebalance_experts_hierarchical(bad, 16, 4, 2, 8)


@pytest.mark.parametrize("fn", ["rebalance_experts", "rebalance_experts_hierarchical"])
def test_deepseek_api_bad_load_names_weight(fn):
    bad = torch.rand(3, 8)
    bad[1, 4] = float("nan")
    with raises_with(ValueError, "weight[1, 4]", "NaN"):
        getattr(ds, fn)(bad, 16, 2, 1, 4)


# --------------------------------------------------------------------------
# the raw ops
# --------------------------------------------------------------------------


def _tagged(kind, *fragments):
    return raises_with(RuntimeError, f"[eplb_ext {kind}]", *fragments)


@pytest.mark.cpp_raises
@pytest.mark.parametrize("op", ["deepseek", "deepseek_vec"])
def test_raw_placement_ops(op):
    f = getattr(ops, op)
    t = _t()
    # [L, E] is one step: the same placement as [1, L, E].
    for a, b in zip(f(t[0], P, k, C, N), f(t[:1], P, k, C, N)):
        assert torch.equal(a, b)
    with _tagged("ValueError", "tokens_per_expert", "[S, L, E] or [L, E]"):
        f(t[0, 0], P, k, C, N)
    with _tagged("ValueError", "tokens_per_expert", "[S, L, E] or [L, E]"):
        f(t.unsqueeze(0), P, k, C, N)
    with _tagged("TypeError", "tokens_per_expert", "torch.bool"):
        f(t > 1, P, k, C, N)
    with _tagged("TypeError", "tokens_per_expert", "complex"):
        f(t.to(torch.complex64), P, k, C, N)
    with _tagged("ValueError", "num_physical_experts=15"):
        f(t, 15, 1, C, N)
    with _tagged("ValueError", "num_physical_experts=-24"):
        f(t, -24, k, C, N)
    with _tagged("ValueError", "num_local_physical_experts=5"):
        f(t, P, 5, C, N)
    with _tagged("ValueError", "num_local_physical_experts=0"):
        f(t, P, 0, C, N)
    with _tagged("ValueError", "num_local_physical_experts=-3"):
        f(t, P, -3, C, N)
    with _tagged("ValueError", "num_groups=0"):
        f(t, P, k, 0, N)
    with _tagged("ValueError", "num_groups=3"):
        f(t, P, k, 3, 1)
    with _tagged("ValueError", "num_nodes=0"):
        f(t, P, k, C, 0)
    with _tagged("ValueError", "num_nodes=3", "num_groups=4"):
        f(t, P, 1, C, 3)
    with _tagged("ValueError", "num_nodes=2", "3"):
        f(t, 18, 6, C, 2)
    for P_big in (2**31 - 1, 2**31, 2**62):
        with _tagged("ValueError", "num_physical_experts", str(P_big)):
            f(t, P_big, 1, 1, 1)
    with _tagged("ValueError", "tokens_per_expert"):
        f(torch.ones(2, 3, 0), P, k, 1, 1)
    for value, fragment in [(-1.0, "negative"), (float("nan"), "NaN"), (float("inf"), "infinite"), (1e300, "infinite")]:
        bad = _t(dtype=torch.float64)
        bad[0, 1, 2] = value
        with _tagged("ValueError", "tokens_per_expert[0, 1, 2]", fragment):
            f(bad, P, k, C, N)
    bad = _t(dtype=torch.int32)
    bad[1, 0, 15] = -2
    with _tagged("ValueError", "tokens_per_expert[1, 0, 15]", "negative"):
        f(bad, P, k, C, N)
    # Wrong Python types are rejected by the schema (no tag, still no crash).
    with pytest.raises(RuntimeError):
        f(t, float(P), k, C, N)
    with pytest.raises((RuntimeError, TypeError)):
        f(t, P, k, None, N)
    with pytest.raises((RuntimeError, TypeError)):
        f(t.tolist(), P, k, C, N)


@pytest.mark.cpp_raises
def test_raw_op_errors_map_to_python_classes():
    from eplb_ext import _ops

    with raises_with(ValueError, "num_physical_experts=15"):
        _ops.call(ops.deepseek, _t(), 15, 1, 1, 1)
    with raises_with(TypeError, "torch.bool"):
        _ops.call(ops.deepseek_vec, _t() > 1, P, k, 1, 1)
    # An error raised by torch itself stays a RuntimeError.
    with pytest.raises(RuntimeError):
        _ops.call(ops.deepseek, _t(), 1.5, 1, 1, 1)


def test_raw_building_block_ops():
    w = torch.rand(3, 8)
    with _tagged("ValueError", "num_packs=3", "8"):
        ops.balanced_packing(w, 3)
    with _tagged("ValueError", "num_packs=0"):
        ops.balanced_packing(w, 0)
    with _tagged("ValueError", "num_packs=-2"):
        ops.balanced_packing(w, -2)
    with _tagged("ValueError", "weight", "2-D"):
        ops.balanced_packing(w[0], 2)
    with _tagged("TypeError", "weight", "torch.bool"):
        ops.balanced_packing(w > 0.5, 2)
    with _tagged("ValueError", "num_phy=7"):
        ops.replicate_experts(w, 7)
    with _tagged("ValueError", "num_phy", str(2**40)):
        ops.replicate_experts(w, 2**40)
    with _tagged("ValueError", "weight"):
        ops.replicate_experts(torch.rand(3, 0), 4)
    with _tagged("ValueError", "weight", "2-D"):
        ops.replicate_experts(w.unsqueeze(0), 8)
    with _tagged("TypeError", "weight", "complex"):
        ops.replicate_experts(w.to(torch.complex64), 8)
    bad = w.clone()
    bad[2, 6] = -1.0
    with _tagged("ValueError", "weight[2, 6]", "negative"):
        ops.replicate_experts(bad, 8)
    with _tagged("ValueError", "weight[2, 6]", "negative"):
        ops.balanced_packing(bad, 4)


@pytest.mark.cpp_raises
def test_raw_logical_to_physical():
    p2l = torch.zeros(2, 8, dtype=torch.int64)
    rank = torch.arange(8).expand(2, 8).contiguous()
    good = ops.logical_to_physical(p2l, rank, 1, 8)
    assert torch.equal(good, torch.arange(8).expand(2, 1, 8))
    for dtype in (torch.int32, torch.float32, torch.bool, torch.int16):
        with _tagged("TypeError", "physical_to_logical_map", "int64"):
            ops.logical_to_physical(p2l.to(dtype), rank, 1, 8)
        with _tagged("TypeError", "physical_rank", "int64"):
            ops.logical_to_physical(p2l, rank.to(dtype), 1, 8)
    with _tagged("ValueError", "physical_to_logical_map", "2-D"):
        ops.logical_to_physical(p2l[0], rank[0], 1, 8)
    with _tagged("ValueError", "physical_rank", "2-D"):
        ops.logical_to_physical(p2l, rank.unsqueeze(0), 1, 8)
    with _tagged("ValueError", "same shape"):
        ops.logical_to_physical(p2l, rank[:, :7].contiguous(), 1, 8)
    with _tagged("ValueError", "contiguous"):
        ops.logical_to_physical(torch.zeros(8, 2, dtype=torch.int64).t(), rank, 1, 8)
    with _tagged("ValueError", "num_logical_experts=0"):
        ops.logical_to_physical(p2l, rank, 0, 8)
    with _tagged("ValueError", "width=-1"):
        ops.logical_to_physical(p2l, rank, 1, -1)
    with _tagged("ValueError", "too large"):
        ops.logical_to_physical(p2l, rank, 2**62, 2**10)
    # Out-of-range experts / ranks are skipped, never written out of bounds.
    wild = torch.tensor([[0, 5, -3, 0, 2**40, 0, 0, 0]])
    wild_rank = torch.tensor([[0, 0, 0, 9, 0, -1, 2**40, 1]])
    out = ops.logical_to_physical(wild, wild_rank, 2, 3)
    assert out.tolist() == [[[0, 7, -1], [-1, -1, -1]]]
    # Width 0 and an empty batch.
    assert ops.logical_to_physical(p2l, rank, 4, 0).shape == (2, 4, 0)
    empty = torch.zeros(0, 8, dtype=torch.int64)
    assert ops.logical_to_physical(empty, empty, 4, 3).shape == (0, 4, 3)
    # An allocation that cannot succeed is an error, not a crash.
    with pytest.raises(RuntimeError):
        ops.logical_to_physical(p2l, rank, 8, 2**40)


@pytest.mark.parametrize("op", ["deepseek", "deepseek_vec"])
def test_raw_ops_empty_batch_and_no_steps(op):
    f = getattr(ops, op)
    p2l, _, cnt = f(torch.zeros(2, 0, E), P, k, C, N)
    assert p2l.shape == (0, P) and cnt.shape == (0, E)
    p2l, _, cnt = f(torch.zeros(0, 3, E), P, k, C, N)
    assert p2l.shape == (3, P) and bool((cnt.sum(-1) == P).all())


# --------------------------------------------------------------------------
# the Python API raises before any placement op runs
# --------------------------------------------------------------------------
# A C++ exception that crosses from the compiled library into torch is the
# one error path whose behaviour depends on how torch itself was built, so the
# Python API checks every argument and load value first. Here the placement
# ops are replaced by a function that fails the test if it is called at all.


@pytest.fixture
def no_op_calls(monkeypatch):
    from eplb_ext import _ops

    def refuse(op, *args):
        raise AssertionError(f"{op} was called with bad input; the Python API should have raised first")

    monkeypatch.setattr(_ops, "call", refuse)


def _with_bad(t, index, value):
    t = t.clone()
    t[index] = value
    return t


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(
    "make,exc,fragments",
    [
        (lambda: _with_bad(_t(), (1, 2, 5), float("nan")), ValueError, ("tokens_per_expert[1, 2, 5]", "NaN")),
        (lambda: _with_bad(_t(dtype=torch.int64), (0, 1, 3), -4), ValueError, ("tokens_per_expert[0, 1, 3]", "negative")),
        (lambda: _with_bad(_t()[0], (2, 7), float("-inf")), ValueError, ("tokens_per_expert[2, 7]",)),
        (lambda: _with_bad(_t(dtype=torch.float64), (1, 0, 0), 1e300), ValueError, ("infinite in float32",)),
        (lambda: torch.ones(1, 2, E).expand(2**33, 2, E), ValueError, ("8589934592 steps",)),
        # An expanded view: only its distinct values are scanned.
        (lambda: _with_bad(torch.ones(1, 3, E), (0, 2, 5), -1.0).expand(2**20, 3, E), ValueError,
         ("tokens_per_expert[0, 2, 5]",)),
    ],
)
def test_api_raises_load_errors_before_any_op(no_op_calls, algorithm, make, exc, fragments):
    with raises_with(exc, *fragments):
        rebalance(make(), P, k, C, N, algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_api_raises_size_errors_before_any_op(no_op_calls, algorithm):
    with raises_with(ValueError, "num_physical_experts=2147483648", "exceeds"):
        rebalance(_t(), 2**31, 1, 1, 1, algorithm)
    big = torch.zeros(1, 1, 1).expand(1, 2**40, 8)
    with raises_with(ValueError, "too large"):
        rebalance(big, 2**30, 1, 1, 1, algorithm)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.int8])
def test_first_bad_load_op_reports_the_first_in_index_order(dtype):
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 50, (6, 4, 9), generator=g).to(dtype)
    assert ops.first_bad_load(t) == -1
    assert ops.first_bad_load(t[:, :0]) == -1
    # Bad values at several places: the first in (step, layer, expert) order
    # wins, whatever layer it is in; a strided view is read as it is indexed.
    bad = -1 if not dtype.is_floating_point else float("nan")
    for places in ([(4, 0, 1), (3, 3, 8), (3, 2, 0)], [(0, 3, 0), (0, 1, 8)], [(5, 3, 8)]):
        u = t.clone()
        for p in places:
            u[p] = bad
        s, l, e = min(places)
        assert ops.first_bad_load(u) == (s * 4 + l) * 9 + e
        view = u.transpose(0, 1).contiguous().transpose(0, 1)
        assert ops.first_bad_load(view) == (s * 4 + l) * 9 + e
        assert ops.first_bad_load(u[s]) == l * 9 + e
