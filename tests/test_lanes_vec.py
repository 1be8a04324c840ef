"""The CUDA kernels' step-aware code (csrc/core/vec_team.h), run on the host
through emulated lanes by the _lanes_vec op, against the golden vectors and
bit for bit against the sequential CPU op (deepseek_vec). Widths 1 and 32
run the same lane-parallel phases with different splits of the work; the
GPU runs them with a block of threads. Each runs with the per-step lists of
shared memory and with the shorter ones (or none) of global scratch."""

from __future__ import annotations

import pytest
import torch

from eplb_ext import _ops
from helpers import OUTPUT_NAMES, assert_same, golden_case_names, load_golden_cases, load_pattern, raises_with

ops = torch.ops.eplb_ext
WIDTHS = (1, 32)
LAYOUTS = tuple((w, g) for w in WIDTHS for g in (False, True))  # (width, global_state)

_CASES = load_golden_cases()
# Every name when the file is absent: the one placeholder, whose test skips.
_VEC_NAMES = [
    n for n in golden_case_names(_CASES) if _CASES is None or n.startswith("deepseek_vec")
]


def lanes(t, P, k, C, N, width, global_state=False):
    return _ops.call(ops._lanes_vec, t, P, k, C, N, width, global_state)


def assert_lanes_match(t, P, k, C, N, context=""):
    expected = _ops.call(ops.deepseek_vec, t, P, k, C, N)
    for w, g in LAYOUTS:
        assert_same(lanes(t, P, k, C, N, w, g), expected, f"{context} width={w} global={g}")
    return expected


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda x: "w{}{}".format(x[0], "_global" * x[1]))
@pytest.mark.parametrize("name", _VEC_NAMES)
def test_golden(name, layout, golden_cases):
    case = golden_cases[name]
    t = case["tokens_per_expert"]
    P, k = case["num_physical_experts"], case["num_local_physical_experts"]
    hierarchical = case["algorithm"] == "deepseek_vec_hierarchical"
    C, N = (case["num_groups"], case["num_nodes"]) if hierarchical else (1, 1)
    p2l, l2p, cnt = lanes(t, P, k, C, N, *layout)
    if hierarchical:
        p2l = p2l.to(torch.int64)  # the dispatcher's upstream quirk
    assert_same((p2l, l2p, cnt), tuple(case[n] for n in OUTPUT_NAMES), name)


# (E, P, k, C, N): redundant slots, none, k = 1 (no dealing), one GPU, one
# expert, one expert per chunk, and DeepSeek-V3's shape.
SHAPES = [
    (16, 24, 3, 4, 2),
    (32, 40, 5, 8, 4),
    (8, 8, 2, 2, 2),
    (12, 36, 1, 1, 1),
    (5, 12, 12, 1, 1),
    (1, 4, 2, 1, 1),
    (4, 8, 1, 4, 4),
    (256, 288, 9, 8, 4),
]
DTYPES = [
    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32,
    torch.uint64, torch.float16, torch.bfloat16, torch.float32, torch.float64,
]


def make_loads(kind, S, L, E, seed, dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    t = load_pattern(kind, S, L, E, g)
    if t is None and kind == "spike":
        # One expert leads every step: each of its picks rescans every step.
        t = torch.randint(0, 5, (S, L, E), generator=g).double()
        t[:, :, E // 2] = 100
    elif t is None and kind == "wide":
        # Magnitudes 1e-3 .. 1e6: float32 sums depend on their order.
        t = torch.rand(S, L, E, generator=g, dtype=torch.float64)
        t = t * 10.0 ** torch.randint(-3, 7, (S, L, E), generator=g)
    elif t is None:
        raise AssertionError(kind)
    if dtype == torch.float16:
        t = t.clamp(max=6e4)
    if not dtype.is_floating_point:
        t = t.round().clamp(0, min(torch.iinfo(dtype).max, 10**9))
    return t.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("S", [1, 7])
def test_every_dtype(dtype, S):
    for E, P, k, C, N in SHAPES[:4]:
        for kind in ("skewed", "ties", "wide"):
            t = make_loads(kind, S, 2, E, seed=E + S, dtype=dtype)
            for c, n in ((1, 1), (C, N)):
                assert_lanes_match(t, P, k, c, n, f"{dtype} S={S} {kind} E={E} C={c} N={n}")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "E{}_P{}_k{}_C{}_N{}".format(*s))
@pytest.mark.parametrize("kind", ["skewed", "ties", "zeros", "equal", "spike", "wide"])
@pytest.mark.parametrize("S", [1, 7, 300])
def test_shapes_and_kinds(shape, kind, S):
    E, P, k, C, N = shape
    dtype = torch.float32 if kind == "wide" else torch.int32
    t = make_loads(kind, S, 2, E, seed=S * 31 + E, dtype=dtype)
    for c, n in ((1, 1), (C, N)):
        out = assert_lanes_match(t, P, k, c, n, f"S={S} {kind} {shape} C={c} N={n}")
        assert int(out[2].sum()) == 2 * P  # every slot was placed


def test_sums_overflowing_float32():
    # Per-step values near FLT_MAX: the sums over steps are infinite and tie.
    t = torch.full((7, 2, 16), 3.0e38, dtype=torch.float32)
    t[:, 1, 3] = 1.0
    assert_lanes_match(t, 24, 3, 4, 2)
    assert_lanes_match(t, 24, 3, 1, 1)


def test_two_dimensional_and_strided_input():
    t = make_loads("skewed", 5, 3, 16, seed=3)
    assert_lanes_match(t[0], 24, 3, 4, 2, "2-D")
    strided = t.transpose(0, 2).contiguous().transpose(0, 2)
    assert not strided.is_contiguous()
    assert_lanes_match(strided, 24, 3, 4, 2, "strided")
    assert_lanes_match(t[:, :, ::2], 12, 3, 2, 2, "every other expert")


def test_no_layers():
    t = torch.zeros(4, 0, 16, dtype=torch.int64)
    for w, g in LAYOUTS:
        p2l, l2p, cnt = lanes(t, 24, 3, 4, 2, w, g)
        assert p2l.shape == (0, 24) and l2p.shape == (0, 16, 9) and cnt.shape == (0, 16)


def test_no_steps():
    t = torch.zeros(0, 2, 16, dtype=torch.int64)
    assert_lanes_match(t, 24, 3, 4, 2)


@pytest.mark.parametrize("S", [1, 3, 40])
@pytest.mark.parametrize("E,P,N", [(256, 288, 1), (256, 320, 4), (24, 60, 1)])
def test_step_lists_run_short(S, E, P, N):
    # Twenty experts of nearly equal loads lead every step: each pick takes
    # one of them out of most steps' lists of eight (its score halves), so
    # the lists run short and are scanned again, several times per layer,
    # by folds (S * 64 <= experts per chunk) or a lane per step.
    g = torch.Generator().manual_seed(S + E + P)
    t = torch.randint(0, 3, (S, 2, E), generator=g)
    hot = torch.randperm(E, generator=g)[:20]
    t[:, :, hot] = 1000 + torch.randint(0, 40, (S, 2, 20), generator=g)
    C = N * 2 if E % (N * 2) == 0 else N
    out = assert_lanes_match(t, P, 1, C, N, f"S={S} E={E} P={P} N={N}")
    # The hot experts took most of the replicas: most picks changed lists.
    assert int(out[2][:, hot].sum()) >= 2 * (20 + (P - E) // 2)


def test_picks_follow_the_steps():
    # Expert 1 has the largest total but is only ever second; a replica of
    # expert 0, alone at step 0, lowers the summed step maxima the most.
    t = torch.zeros(3, 1, 4, dtype=torch.int64)
    t[0, 0, 0] = 100
    t[1, 0, 2] = t[2, 0, 3] = 100
    t[1:, 0, 1] = 99
    for w, g in LAYOUTS:
        _, _, cnt = lanes(t, 5, 1, 1, 1, w, g)
        assert cnt.tolist() == [[2, 1, 1, 1]]


@pytest.mark.cpp_raises
def test_rejects_bad_width_and_loads():
    t = make_loads("skewed", 2, 2, 16, seed=0)
    with raises_with(ValueError, "width=3"):
        lanes(t, 24, 3, 4, 2, 3)
    bad = t.clone()
    bad[1, 1, 5] = -1
    with raises_with(ValueError, "tokens_per_expert[1, 1, 5]", "negative"):
        lanes(bad, 24, 3, 4, 2, 32)
    with raises_with(ValueError, "num_nodes=3"):
        lanes(t, 24, 3, 4, 3, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none present)")
@pytest.mark.parametrize("S", [2900, 3100])
def test_cuda_chunk_state_in_shared_or_global_memory(S):
    # A chunk keeps 76 bytes per step (8 keys, the list's length, valt and a
    # step index) and about 10 KB more: 2900 steps still fit one block's
    # shared memory on Hopper (227 KB, over the default 48 KB), 3100 do not
    # and the state moves to global memory. Both give the CPU op's bits.
    t = make_loads("skewed", S, 2, 256, seed=S)
    for C, N in ((1, 1), (8, 4)):
        expected = _ops.call(ops.deepseek_vec, t, 288, 9, C, N)
        got = _ops.call(ops.deepseek_vec, t.cuda(), 288, 9, C, N)
        assert all(x.is_cuda for x in got)
        assert_same(tuple(x.cpu() for x in got), expected, f"S={S} N={N}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none present)")
@pytest.mark.parametrize("E,P,k,C,N", [(16, 24, 3, 4, 4), (32, 40, 5, 8, 4), (256, 288, 9, 8, 4)])
def test_cuda_lists_in_global_scratch_stay_within_a_float32_copy(E, P, k, C, N):
    # At 6000 steps no chunk's state fits shared memory. In global scratch
    # the lists keep what the chunk's loads would take as float32: 6 entries
    # for 16 experts, 2 for 8, 8 for 32 and more, none for 4 (the picks then
    # find each step's first two). Same bits as the CPU op either way, and
    # the peak above the input, less the outputs, stays within one float32
    # copy of the loads plus 64 bytes per slot (4 KB for the allocator's
    # rounding of four small blocks).
    S, L = 6000, 2
    t = make_loads("ties", S, L, E, seed=E)
    for c, n in ((1, 1), (C, N)):
        expected = _ops.call(ops.deepseek_vec, t, P, k, c, n)
        tc = t.cuda()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        got = _ops.call(ops.deepseek_vec, tc, P, k, c, n)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        outputs = sum(x.numel() * x.element_size() for x in got)
        assert_same(tuple(x.cpu() for x in got), expected, f"E={E} N={n}")
        assert peak - outputs <= 4 * S * L * E + 64 * L * P + 4096, (peak, outputs)
