"""The caller's floating-point mode does not change a placement (SPEC "Tie
rule": IEEE results, the same with any thread count). torch.set_flush_denormal
(True) sets flush-to-zero and denormals-are-zero on the calling thread only,
which would make subnormal loads compare and add as zeros there but not on
other threads."""

from __future__ import annotations

import pytest
import torch

import eplb_ext
from eplb_ext import reference
from helpers import ALGORITHMS, assert_same

SMALLEST_SUBNORMAL = 2.0**-149


@pytest.fixture
def restore_mode():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
    torch.set_flush_denormal(False)


def _subnormal_loads(dtype):
    # Enough layers that the work is split into several chunks for 2 threads;
    # every load is a subnormal float32 (or zero), and so is every sum.
    g = torch.Generator().manual_seed(11)
    k = torch.randint(0, 4000, (8, 96, 64), generator=g).to(torch.float64)
    return (k * SMALLEST_SUBNORMAL).to(dtype)


def _flush_supported():
    ok = torch.set_flush_denormal(True)
    torch.set_flush_denormal(False)
    return ok


@pytest.mark.skipif(not _flush_supported(), reason="this CPU has no flush-to-zero mode for torch to set")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_placement_ignores_flush_denormal(algorithm, dtype, restore_mode):
    t = _subnormal_loads(dtype)
    args = (t, 80, 5, 8, 2, algorithm)
    expected = reference.rebalance_experts(*args)
    # The input is one whose placement the mode would change: the reference
    # itself, run with flushing on, differs.
    torch.set_flush_denormal(True)
    flushed = reference.rebalance_experts(*args)
    torch.set_flush_denormal(False)
    assert not all(torch.equal(a, b) for a, b in zip(flushed, expected))
    for flush in (False, True):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.set_flush_denormal(flush)
            out = eplb_ext.rebalance_experts(*args)
            torch.set_flush_denormal(False)
            assert_same(out, expected, f"flush_denormal={flush} threads={threads}")


@pytest.mark.skipif(not _flush_supported(), reason="this CPU has no flush-to-zero mode for torch to set")
def test_caller_mode_is_restored(restore_mode):
    tiny = torch.tensor([SMALLEST_SUBNORMAL * 3], dtype=torch.float32)
    torch.set_flush_denormal(True)
    eplb_ext.rebalance_experts(_subnormal_loads(torch.float32), 80, 5, 8, 2, "deepseek")
    assert (tiny * 1.0).item() == 0.0  # still flushing after the call
    torch.set_flush_denormal(False)
    eplb_ext.rebalance_experts(_subnormal_loads(torch.float32), 80, 5, 8, 2, "deepseek")
    assert (tiny * 1.0).item() == SMALLEST_SUBNORMAL * 3
