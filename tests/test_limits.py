"""Inputs at the edges: sizes that cannot fit, allocations that fail, huge
integers, meta and fake tensors, tracing, and exact sums past 2**63. Each
must give a clear error (or the right answer) at once, never a hang."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from helpers import ALGORITHMS, assert_same, raises_with

import eplb_ext
from eplb_ext import _ops, reference
from eplb_ext import deepseek as ds

ops = torch.ops.eplb_ext
rebalance = eplb_ext.rebalance_experts




@pytest.mark.cpp_raises
def test_packs_beyond_the_items_are_rejected():
    # next_pow2 of this pack count used to overflow and loop forever.
    with raises_with(ValueError, "num_packs=1073741825", "exceeds the number of items 0"):
        ds.balanced_packing(torch.rand(3, 0), 2**30 + 1)
    with raises_with(ValueError, "num_packs=8", "exceeds the number of items 4"):
        ds.balanced_packing(torch.rand(3, 4), 8)
    with raises_with(RuntimeError, "[eplb_ext ValueError]", "num_packs=16"):
        ops.balanced_packing(torch.rand(2, 8), 16)
    # An empty row still packs into one pack.
    pack, rank = ds.balanced_packing(torch.rand(3, 0), 1)
    assert pack.shape == rank.shape == (3, 0)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_steps_beyond_int32_are_rejected_before_reading(algorithm):
    # A stride-0 view: 2**33 steps that take no memory. The check depends on
    # the shape only, so it fails before a single load is read.
    tokens = torch.ones(1, 2, 8).expand(2**33, 2, 8)
    with raises_with(ValueError, "tokens_per_expert", "8589934592 steps", "2147483647"):
        rebalance(tokens, 16, 2, 4, 2, algorithm)


@pytest.mark.cpp_raises
@pytest.mark.parametrize("algorithm", ["deepseek_vec", "deepseek_vec_hierarchical"])
def test_scratch_that_cannot_be_allocated_is_a_memory_error(algorithm):
    # 2**30 steps of the step-aware variants need ~100 GiB of scratch per layer.
    tokens = torch.ones(1, 2, 8).expand(2**30, 2, 8)
    with raises_with(MemoryError, "could not allocate", "bytes"):
        rebalance(tokens, 16, 2, 4, 2, algorithm)


@pytest.mark.cpp_raises
def test_outputs_that_cannot_be_allocated_are_a_memory_error():
    # phy2log alone would be [2**20, 2**30] int32: 4 PiB.
    tokens = torch.ones(2**20, 4)
    with raises_with(MemoryError, "could not allocate", "[1048576, 1073741824]", "bytes"):
        rebalance(tokens, 2**30, 2**10, None, None, "deepseek_vec")


@pytest.mark.parametrize("name", ["num_physical_experts", "num_local_physical_experts", "num_groups", "num_nodes"])
def test_integers_beyond_int64_name_the_argument(name):
    args = {"num_physical_experts": 24, "num_local_physical_experts": 3, "num_groups": 4, "num_nodes": 2}
    args[name] = 2**63
    with raises_with(ValueError, f"{name}={2**63}", "2**63 - 1"):
        rebalance(torch.rand(3, 16), **args)


def test_two_dimensional_loads_report_two_dimensional_indices():
    bad = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    for algorithm in ("deepseek", "deepseek_vec"):
        with raises_with(ValueError, "tokens_per_expert[1, 1] = -1", "negative"):
            rebalance(bad, 4, 2, None, None, algorithm)


@pytest.mark.cpp_raises
def test_logical_to_physical_errors_are_translated():
    p2l, rank, cnt = ops.deepseek(torch.rand(2, 8), 12, 3, 1, 1)
    with raises_with(TypeError, "physical_to_logical_map", "int64"):
        _ops.logical_to_physical_counted(p2l.int(), rank, cnt, 8)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_meta_tensors(algorithm):
    tokens = torch.empty(5, 3, 16, device="meta")
    out = rebalance(tokens, 24, 3, 4, 2, algorithm, fixed_width=True)
    assert all(t.device.type == "meta" for t in out)
    assert out[0].shape == (3, 24) and out[1].shape == (3, 16, 9) and out[2].shape == (3, 16)
    if not algorithm.startswith("deepseek_vec"):
        with raises_with(ValueError, "meta", "fixed_width=True"):
            rebalance(tokens, 24, 3, 4, 2, algorithm)


def test_fake_kernels_check_their_arguments():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(3, 4, 16)
        for op in (ops.deepseek, ops.deepseek_vec):
            with raises_with(RuntimeError, "[eplb_ext ValueError]", "num_physical_experts=15"):
                op(x, 15, 3, 4, 2)
            with raises_with(RuntimeError, "[eplb_ext ValueError]", "num_local_physical_experts=5"):
                op(x, 24, 5, 4, 2)
            with raises_with(RuntimeError, "[eplb_ext ValueError]", "num_groups=3"):
                op(x, 24, 3, 3, 1)
        with raises_with(RuntimeError, "[eplb_ext ValueError]", "num_packs=32"):
            ops.balanced_packing(torch.empty(2, 16), 32)


@pytest.mark.parametrize("algorithm", ["deepseek", "deepseek_hierarchical"])
def test_compile_fullgraph_default_width(algorithm):
    torch._dynamo.reset()
    tokens = torch.randint(0, 100, (2, 4, 16))
    compiled = torch.compile(lambda t: rebalance(t, 24, 3, 4, 2, algorithm), fullgraph=True, backend="eager")
    assert_same(compiled(tokens), rebalance(tokens, 24, 3, 4, 2, algorithm), algorithm)


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint64])
def test_reference_sums_past_int64_exactly(dtype):
    # Per-expert sums of 3 * 2**62 and more: int64 arithmetic would wrap.
    base = torch.tensor([2**62, 2**62 + 2**40 + 1, 5, 2**61, 7, 2**62 - 1, 0, 3])
    tokens = torch.stack([base, base, base.flip(0)]).reshape(3, 1, 8).to(dtype)
    expected = reference.rebalance_experts(tokens, 12, 3, 2, 2, "deepseek_hierarchical")
    assert_same(rebalance(tokens, 12, 3, 2, 2, "deepseek_hierarchical"), expected, str(dtype))
    sums = reference._sum_over_steps(tokens)[0].tolist()
    for e, got in enumerate(sums):
        # The float32 nearest to the exact integer sum: no float32 neighbour is closer.
        exact = sum(int(v) for v in tokens[:, 0, e].tolist())
        f = np.float32(got)
        for neighbour in (np.nextafter(f, np.float32(np.inf)), np.nextafter(f, np.float32(0))):
            assert abs(Fraction(float(f)) - exact) <= abs(Fraction(float(neighbour)) - exact), (e, got, exact)
