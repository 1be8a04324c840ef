"""The CUDA kernel's code for deepseek / deepseek_hierarchical
(csrc/core/deepseek_team.h), run on the host with 1 and 32 emulated lanes
by the test op ``_lanes_deepseek``, against the sequential CPU op bit for bit
and against the golden vectors (SPEC "Tie rule": the same bits on every
device)."""

from __future__ import annotations

import pytest
import torch

from eplb_ext import _ops
from helpers import GOLDEN_MISSING, load_golden_cases, load_pattern, raises_with

ops = torch.ops.eplb_ext
WIDTHS = (1, 32)

_CASES = [c for c in (load_golden_cases() or []) if c["algorithm"] in ("deepseek", "deepseek_hierarchical")]
_GOLDEN_ABSENT = load_golden_cases() is None


def _expected(x, P, k, C, N):
    """The sequential op's outputs, with the map at the kernel's width."""
    p2l, rank, cnt = ops.deepseek(x, P, k, C, N)
    l2p = ops.logical_to_physical(p2l, rank, x.shape[-1], P - x.shape[-1] + 1)
    return p2l, l2p, cnt


def _assert_lanes_match(x, P, k, C, N, context=""):
    expected = _expected(x, P, k, C, N)
    mapped = ops.deepseek_mapped(x, P, k, C, N)
    assert all(torch.equal(a, e) for a, e in zip(mapped[:3], expected)), f"{context} deepseek_mapped"
    assert torch.equal(mapped[3], ops.deepseek(x, P, k, C, N)[1]), f"{context} deepseek_mapped rank"
    for width in WIDTHS:
        got = ops._lanes_deepseek(x, P, k, C, N, width)
        for name, a, e in zip(("phy2log", "log2phy", "logcnt"), got, expected):
            assert a.dtype == e.dtype == torch.int64, f"{context} width={width} {name}"
            assert a.shape == e.shape, f"{context} width={width} {name}: {a.shape} != {e.shape}"
            if not torch.equal(a, e):
                first = (a != e).nonzero()[:5].tolist()
                raise AssertionError(f"{context} width={width} {name}: values differ at {first}")


@pytest.mark.parametrize("case", _CASES or [None], ids=lambda c: c["name"] if c else "golden-file-missing")
@pytest.mark.parametrize("width", WIDTHS)
def test_golden(case, width):
    if case is None:
        pytest.skip(GOLDEN_MISSING)
    x = case["tokens_per_expert"]
    P, k = case["num_physical_experts"], case["num_local_physical_experts"]
    C, N = (case["num_groups"], case["num_nodes"]) if case["algorithm"] == "deepseek_hierarchical" else (1, 1)
    p2l, l2p, cnt = ops._lanes_deepseek(x, P, k, C, N, width)
    assert torch.equal(p2l, case["physical_to_logical_map"])
    assert torch.equal(cnt, case["logical_count"])
    gold = case["logical_to_physical_map"]
    X = gold.shape[2]
    assert torch.equal(l2p[:, :, :X], gold)
    assert bool((l2p[:, :, X:] == -1).all())


def test_golden_covers_both_variants():
    if _GOLDEN_ABSENT:
        pytest.skip(GOLDEN_MISSING)
    assert {c["algorithm"] for c in _CASES} == {"deepseek", "deepseek_hierarchical"}


def _loads(kind, S, L, E, dtype, gen):
    x = load_pattern(kind, S, L, E, gen)
    if x is None and kind == "neg_zero":
        # -0.0 and +0.0 must tie (lower index first), also against small loads.
        x = torch.where(torch.rand(S, L, E, generator=gen) < 0.5, -0.0, 0.0).double()
        x[..., ::5] = 1.0
    elif x is None:  # fractional
        x = torch.rand(S, L, E, generator=gen, dtype=torch.float64) * 10
    return x.to(dtype)


SHAPES = [
    # (S, L, E, P, k, C, N)
    (1, 3, 256, 288, 9, 8, 4),  # DeepSeek-V3, hierarchical
    (2, 2, 256, 288, 9, 1, 1),  # DeepSeek-V3, global
    (3, 2, 60, 72, 12, 6, 3),  # nothing a power of two
    (2, 2, 16, 16, 1, 4, 2),  # k = 1: slots keep their order
    (2, 2, 32, 48, 6, 4, 4),  # one group per node: groups keep their order
    (2, 2, 32, 64, 2, 16, 16),  # more nodes than node teams
    (1, 2, 1, 4, 2, 1, 1),  # one expert
    (4, 3, 24, 40, 5, 6, 2),
    (1, 1, 1024, 1280, 10, 8, 2),  # longer sorts and reductions
]

DTYPES = [torch.int64, torch.int32, torch.uint8, torch.float32, torch.float16, torch.bfloat16, torch.float64]
KINDS = ["skewed", "ties", "zeros", "equal", "neg_zero", "fractional"]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_cpu_op(shape, kind):
    S, L, E, P, k, C, N = shape
    gen = torch.Generator().manual_seed(hash((shape, kind)) % 2**31)
    x = _loads(kind, S, L, E, torch.float64, gen)
    for dtype in DTYPES:
        xd = x.to(dtype) if dtype.is_floating_point else x.abs().round().to(dtype)
        _assert_lanes_match(xd, P, k, C, N, f"{shape} {kind} {dtype}")


def test_more_dtypes_and_steps():
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(0, 1000, (5, 3, 64), generator=gen)
    for dtype in (torch.int8, torch.int16, torch.uint16, torch.uint32, torch.uint64):
        _assert_lanes_match((x % 100).to(dtype), 80, 10, 8, 2, str(dtype))
    # S = 0: every load is 0; a 2-D input is one step.
    _assert_lanes_match(torch.zeros(0, 3, 64), 80, 10, 8, 2, "S=0")
    _assert_lanes_match(x[0].double() / 3, 80, 10, 8, 2, "2-D")


def test_large_sums_round_like_cpu():
    # Integer sums beyond 2**24 (and beyond 2**64 in int64) round once, as
    # the sequential op; float sums that overflow to inf still tie by index.
    gen = torch.Generator().manual_seed(11)
    big = torch.randint(2**40, 2**41, (4, 2, 32), generator=gen)
    _assert_lanes_match(big, 48, 6, 4, 2, "int64 > 2**24")
    huge = torch.full((3, 2, 32), 2**62, dtype=torch.int64)
    huge[..., ::3] -= 1
    _assert_lanes_match(huge, 48, 6, 4, 2, "int64 sum > 2**64")
    f = torch.full((2, 2, 32), 3.0e38, dtype=torch.float32)
    f[..., 1::4] = 1.0
    _assert_lanes_match(f, 48, 6, 4, 2, "float32 sums overflow")


def test_empty_and_strided():
    x = torch.rand(2, 0, 16)
    for width in WIDTHS:
        p2l, l2p, cnt = ops._lanes_deepseek(x, 24, 3, 4, 2, width)
        assert p2l.shape == (0, 24) and l2p.shape == (0, 16, 9) and cnt.shape == (0, 16)
    gen = torch.Generator().manual_seed(3)
    y = torch.poisson(torch.rand(3, 16, 4, generator=gen) * 40).transpose(1, 2)
    assert not y.is_contiguous()
    _assert_lanes_match(y, 24, 3, 4, 2, "strided")


def test_sensitive_to_ties():
    # Two experts with equal loads: the lower index takes the extra replica.
    x = torch.tensor([[5.0, 9.0, 9.0, 1.0]])
    p2l, l2p, cnt = ops._lanes_deepseek(x, 5, 1, 1, 1, 32)
    assert cnt.tolist() == [[1, 2, 1, 1]]
    assert sorted(p2l[0].tolist()) == [0, 1, 1, 2, 3]
    assert sorted(l2p[0, 1, :2].tolist()) == sorted(i for i, e in enumerate(p2l[0].tolist()) if e == 1)


@pytest.mark.cpp_raises
def test_rejects_bad_arguments():
    x = torch.ones(2, 16)
    with raises_with(ValueError, "width=4"):
        _ops.call(ops._lanes_deepseek, x, 24, 3, 4, 2, 4)
    with raises_with(ValueError, "num_nodes=3"):
        _ops.call(ops._lanes_deepseek, x, 24, 3, 4, 3, 32)
    bad = x.clone()
    bad[1, 5] = -1.0
    with raises_with(ValueError, "negative"):
        _ops.call(ops._lanes_deepseek, bad, 24, 3, 4, 2, 32)
