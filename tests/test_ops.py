"""The raw ops as PyTorch operators: opcheck, torch.compile, thread count
and run-to-run determinism (SPEC "Tie rule": bit-identical output on every
run, with any thread count)."""

from __future__ import annotations

import pytest
import torch

import eplb_ext
from helpers import ALGORITHMS, assert_same, check_invariants

ops = torch.ops.eplb_ext


def _tokens(S=3, L=4, E=16, seed=0, dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.rand(S, L, E, generator=g) ** 4 * 300, generator=g).to(dtype)


def _opcheck_samples():
    t = _tokens()
    tf = _tokens(seed=1, dtype=torch.float32) + 0.25
    p2l, rank, _ = ops.deepseek(t, 24, 3, 4, 2)
    samples = [
        ("deepseek", (t, 24, 3, 4, 2)),
        ("deepseek", (tf, 24, 3, 1, 1)),
        ("deepseek", (t[:, :0], 24, 3, 4, 2)),  # L = 0
        ("deepseek_mapped", (t, 24, 3, 4, 2)),
        ("deepseek_mapped", (tf.to(torch.float16), 24, 3, 1, 1)),
        ("deepseek_mapped", (t[:, :0], 24, 3, 4, 2)),
        ("deepseek_vec", (t, 24, 3, 4, 2)),
        ("deepseek_vec", (tf.to(torch.bfloat16), 24, 3, 1, 1)),
        ("deepseek_vec", (t.transpose(0, 1).contiguous().transpose(0, 1), 16, 1, 1, 1)),
        ("balanced_packing", (tf[0], 4)),
        ("balanced_packing", (t[0], 16)),
        ("replicate_experts", (t[0], 20)),
        ("replicate_experts", (tf[0].double(), 16)),
        ("logical_to_physical", (p2l, rank, 16, 9)),
        ("logical_to_physical", (p2l, rank, 16, 2)),
    ]
    return [pytest.param(name, args, id=f"{name}-{i}") for i, (name, args) in enumerate(samples)]


@pytest.mark.parametrize("name,args", _opcheck_samples())
def test_opcheck(name, args):
    result = torch.library.opcheck(getattr(ops, name), args)
    assert all(v == "SUCCESS" for v in result.values()), result


def _all_ops(t):
    """Every op once, on loads t [S, L, 16] (C=4, N=2, P=24, k=3)."""
    p2l, rank, cnt = ops.deepseek(t, 24, 3, 4, 2)
    l2p = ops.logical_to_physical(p2l, rank, 16, 9)
    vec = ops.deepseek_vec(t, 24, 3, 4, 2)
    pack = ops.balanced_packing(t[0], 4)
    rep = ops.replicate_experts(t[0], 20)
    return (p2l, rank, cnt, l2p) + tuple(vec) + tuple(pack) + tuple(rep)


def _assert_tuple_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_every_op(backend, dynamic):
    torch._dynamo.reset()
    compiled = torch.compile(_all_ops, backend=backend, fullgraph=True, dynamic=dynamic)
    for S, seed in [(3, 0), (5, 1), (1, 2)]:
        t = _tokens(S=S, seed=seed)
        _assert_tuple_equal(compiled(t), _all_ops(t))


def test_compile_inductor():
    """Default backend (inductor) on a graph of the placement ops alone."""

    def f(t):
        p2l, rank, cnt = ops.deepseek(t, 24, 3, 4, 2)
        return (p2l, ops.logical_to_physical(p2l, rank, 16, 9), cnt) + tuple(ops.deepseek_vec(t, 24, 3, 4, 2))

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    t = _tokens()
    _assert_tuple_equal(compiled(t), f(t))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_compile_dispatcher_fixed_width(algorithm):
    """rebalance_experts with fixed_width=True traces as one graph."""

    def f(t):
        return eplb_ext.rebalance_experts(t, 24, 3, 4, 2, algorithm, fixed_width=True)

    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    t = _tokens(seed=3)
    out = compiled(t)
    assert_same(out, f(t))
    check_invariants(out, algorithm, 4, 16, 24, 3, 4, 2, fixed_width=True)


@pytest.mark.parametrize("algorithm", ["deepseek", "deepseek_hierarchical", "deepseek_vec"])
def test_compile_dispatcher_with_a_previous_placement(algorithm):
    """With a previous placement and a budget the call still traces as one
    graph on CPU (no value is read on the host while tracing)."""

    def f(t, prev):
        return eplb_ext.rebalance_experts(t, 24, 3, 4, 2, algorithm, fixed_width=True, check_values=False,
                                          previous_physical_to_logical_map=prev, max_moves=3)

    t = _tokens(seed=6)
    prev = eplb_ext.rebalance_experts(_tokens(seed=7), 24, 3, 4, 2, algorithm)[0].to(torch.int64)
    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert_same(compiled(t, prev), f(t, prev))


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_compile_dispatcher_with_a_dynamic_dimension(dim):
    """A dimension marked dynamic stays symbolic: the argument checks write
    their messages only for a rule that fails (formatting a size would fix
    it), and the graph serves other sizes of that dimension."""

    def f(t):
        return eplb_ext.rebalance_experts(t, 24, 3, 4, 2, "deepseek", fixed_width=True, check_values=False)

    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    t = _tokens(S=3, L=4, seed=8)
    torch._dynamo.mark_dynamic(t, dim)
    assert_same(compiled(t), f(t))
    shape = list(t.shape)
    shape[dim] += 4 if dim < 2 else 8  # E stays a multiple of the 4 groups
    other = _tokens(S=shape[0], L=shape[1], E=shape[2], seed=9) if dim == 2 else _tokens(S=shape[0], L=shape[1], seed=9)
    assert_same(compiled(other), f(other))


def test_fake_kernels_reject_what_the_ops_reject(cpp_errors_reach_python):
    from torch._subclasses.fake_tensor import FakeTensorMode

    cases = [
        ("deepseek", (torch.rand(2, 8).to(torch.float8_e4m3fn), 8, 1, 1, 1), "float8"),
        ("deepseek_vec", (torch.rand(2, 8).to(torch.float8_e5m2), 8, 1, 1, 1), "float8"),
        ("balanced_packing", (torch.rand(2, 8) > 0.5, 2), "torch.bool"),
        ("replicate_experts", (torch.rand(2, 8).to(torch.complex64), 9), "torch.complex64"),
        ("deepseek", (torch.rand(2, 8), 8, 1, 1, 0), "num_nodes=0"),
    ]
    for name, args, fragment in cases:
        mode = FakeTensorMode()
        with pytest.raises(RuntimeError, match=r"\[eplb_ext (TypeError|ValueError)\]") as fake:
            with mode:
                getattr(ops, name)(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
        assert fragment in str(fake.value)
        if cpp_errors_reach_python:  # else a raw op's error ends the process (conftest.py)
            with pytest.raises(RuntimeError, match=r"\[eplb_ext (TypeError|ValueError)\]") as real:
                getattr(ops, name)(*args)
            assert fragment in str(real.value)


# --------------------------------------------------------------------------
# thread count and determinism
# --------------------------------------------------------------------------


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _big_inputs():
    # Enough layers for about ten chunks (parallel.h grain_for), which the
    # threads claim in an order that depends on timing.
    t = _tokens(S=6, L=600, E=64, seed=5)
    tf = _tokens(S=6, L=600, E=64, seed=6, dtype=torch.float32) / 7.0
    return t, tf


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_same_bits_with_any_thread_count(algorithm, restore_threads):
    t, tf = _big_inputs()
    results = {}
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        assert torch.get_num_threads() == threads
        results[threads] = [eplb_ext.rebalance_experts(x, 80, 5, 8, 2, algorithm) for x in (t, tf)]
    for threads in (2, 3):
        for a, b in zip(results[1], results[threads]):
            assert_same(a, b, f"threads={threads}")


def test_building_block_ops_same_bits_with_any_thread_count(restore_threads):
    w = _tokens(S=1, L=300, E=48, seed=8, dtype=torch.float32)[0] / 3.0
    p2l = rank = None
    outs = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        p2l, rank, _ = ops.deepseek(w.unsqueeze(0), 64, 4, 4, 2)
        outs[threads] = (
            ops.balanced_packing(w, 8) + ops.replicate_experts(w, 64) + (ops.logical_to_physical(p2l, rank, 48, 17),)
        )
    _assert_tuple_equal(outs[1], outs[2])


def test_thread_count_restored(restore_threads):
    # Guard for the fixture: changing it here must not leak to other tests.
    torch.set_num_threads(1)
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_repeated_calls_are_identical(algorithm):
    t, tf = _big_inputs()
    for x in (t, tf):
        first = eplb_ext.rebalance_experts(x, 80, 5, 8, 2, algorithm)
        for _ in range(3):
            assert_same(eplb_ext.rebalance_experts(x, 80, 5, 8, 2, algorithm), first)
        # The input is not modified.
        assert torch.equal(x, t if x is t else tf)


def test_outputs_are_fresh_tensors():
    t = _tokens()
    a = eplb_ext.rebalance_experts(t, 24, 3, 4, 2, "deepseek_vec")
    b = eplb_ext.rebalance_experts(t, 24, 3, 4, 2, "deepseek_vec")
    assert all(x.data_ptr() != y.data_ptr() for x, y in zip(a, b))
    assert all(x.is_contiguous() for x in a)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.float32, torch.float16,
                                   torch.bfloat16, torch.float64])
def test_sum_steps_gives_what_the_placement_ops_place(dtype):
    # The API places sum_steps' [L, E] sums instead of [S, L, E] steps for the
    # deepseek variants: the sums must be the ones the ops compute, so that
    # the placement is the same bit for bit.
    t = _tokens(S=9, L=3, E=16, seed=4).clamp(max=250)
    if dtype.is_floating_point:
        t = t * 0.37 + 0.125  # values that do not add exactly
    t = t.to(dtype)
    sums, bad = ops.sum_steps(t)
    assert bad == -1 and sums.dtype == torch.float32 and sums.shape == (3, 16)
    if dtype.is_floating_point:
        ref = torch.zeros(3, 16)
        for s in range(t.shape[0]):
            ref = ref + t[s].float()  # float32, step by step
    else:
        ref = t.to(torch.int64).sum(0).float()  # exact, rounded once
    assert torch.equal(sums, ref)
    view = t.transpose(0, 1).contiguous().transpose(0, 1)
    assert torch.equal(ops.sum_steps(view)[0], sums)
    for op in (ops.deepseek, ops.deepseek_mapped):
        for C, N in ((4, 2), (1, 1)):
            steps, summed = op(t, 24, 3, C, N), op(sums, 24, 3, C, N)
            assert all(torch.equal(a, b) for a, b in zip(steps, summed))
    if dtype != torch.uint8:
        u = t.clone()
        u[5, 2, 7] = -1
        u[6, 0, 0] = -1
        assert ops.sum_steps(u)[1] == (5 * 3 + 2) * 16 + 7


@pytest.mark.parametrize("shape, wide", [((1, 0), (2, 0)), ((1, 1, 0), (2, 3, 0)), ((1, 3, 0), (4, 3, 0))])
def test_sum_steps_and_first_bad_load_on_zero_experts(shape, wide):
    # No experts leaves nothing to sum or check, also in views whose layer
    # stride is 0 (an expanded tensor), where the run length of the summing
    # pass would have been divided by zero.
    base = torch.zeros(shape, dtype=torch.int64)
    for t in (base, base.expand(wide)):
        sums, bad = ops.sum_steps(t)
        assert bad == -1 and sums.shape == (t.shape[-2], 0) and sums.dtype == torch.float32
        assert ops.first_bad_load(t) == -1
