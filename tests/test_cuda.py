"""CUDA kernels: golden cases, bit-equality with the CPU op, opcheck, CUDA
graphs and streams. Skipped where no CUDA device is present."""

import pytest
import torch

import eplb_ext
from eplb_ext import deepseek as ds_api

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none present)"),
]

from helpers import ALGORITHMS as VARIANTS  # noqa: E402
from helpers import ELASTIC, GOLDEN_MISSING, load_golden_cases  # noqa: E402

OPS = torch.ops.eplb_ext


def assert_same(a, b, context=""):
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape, context
        assert torch.equal(x.cpu(), y.cpu()), context


_CASES = load_golden_cases()


def golden_cases():
    return _CASES or []


@pytest.mark.parametrize("case", _CASES or [None], ids=lambda c: c["name"] if c else "golden-file-missing")
def test_golden_on_cuda(case):
    if case is None:
        pytest.skip(GOLDEN_MISSING)
    out = eplb_ext.rebalance_experts(
        case["tokens_per_expert"].cuda(),
        case["num_physical_experts"],
        case["num_local_physical_experts"],
        case["num_groups"],
        case["num_nodes"],
        case["algorithm"],
    )
    assert all(t.is_cuda for t in out)
    assert_same(out, (case["physical_to_logical_map"], case["logical_to_physical_map"], case["logical_count"]))


def test_golden_present():
    if _CASES is None:
        pytest.skip(GOLDEN_MISSING)
    assert len(golden_cases()) == 200


def loads(kind, S, L, E, dtype, gen):
    if kind == "skewed":
        base = torch.rand(L, E, generator=gen) ** 4 * 200
        x = torch.poisson(base.expand(S, L, E).contiguous(), generator=gen)
    elif kind == "ties":
        x = torch.randint(0, 3, (S, L, E), generator=gen).float()
    elif kind == "zeros":
        x = torch.zeros(S, L, E)
    else:  # fractional
        x = torch.rand(S, L, E, generator=gen) * 10
    return x.to(dtype)


CONFIGS = [
    # (S, L, E, P, k, C, N)
    (1, 58, 256, 288, 9, 8, 4),
    (4, 7, 256, 320, 10, 8, 8),
    (64, 5, 64, 96, 12, 8, 2),
    (3, 4, 60, 72, 12, 6, 3),
    (2, 3, 16, 16, 1, 4, 2),
    (1, 2, 1, 4, 2, 1, 1),
    (300, 3, 256, 288, 9, 8, 4),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("kind", ["skewed", "ties", "zeros", "fractional"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.float32, torch.float16])
def test_cuda_matches_cpu(cfg, kind, dtype):
    S, L, E, P, k, C, N = cfg
    gen = torch.Generator().manual_seed(hash((cfg, kind, str(dtype))) % 2**31)
    x = loads(kind, S, L, E, dtype, gen)
    for algo in VARIANTS:
        cpu = eplb_ext.rebalance_experts(x, P, k, C, N, algo)
        gpu = eplb_ext.rebalance_experts(x.cuda(), P, k, C, N, algo)
        assert_same(cpu, gpu)
    # The fused map at width P - E + 1 (one kernel) of the deepseek variants.
    for c, n in ((C, N), (1, 1)):
        assert_same(OPS.deepseek_mapped(x, P, k, c, n), OPS.deepseek_mapped(x.cuda(), P, k, c, n))


# Layer states above 48 KB (shared memory by opt-in), above what a block may
# have (global scratch), and more nodes than the kernel's node teams.
STATE_CONFIGS = [
    # (S, L, E, P, k, C, N)
    (1, 2, 4096, 4608, 9, 8, 4),
    (2, 2, 16384, 20480, 10, 16, 4),
    (2, 3, 64, 128, 4, 16, 16),
]


@pytest.mark.parametrize("cfg", STATE_CONFIGS, ids=str)
@pytest.mark.parametrize("kind", ["skewed", "ties"])
def test_cuda_deepseek_state_in_shared_or_global_memory(cfg, kind):
    S, L, E, P, k, C, N = cfg
    gen = torch.Generator().manual_seed(E + N)
    x = loads(kind, S, L, E, torch.float32, gen)
    for c, n in ((C, N), (1, 1)):
        assert_same(OPS.deepseek(x, P, k, c, n), OPS.deepseek(x.cuda(), P, k, c, n))
        assert_same(OPS.deepseek_mapped(x, P, k, c, n), OPS.deepseek_mapped(x.cuda(), P, k, c, n))


@pytest.mark.parametrize("n", [8, 8192, 65536])
def test_cuda_building_blocks_any_row_length(n):
    gen = torch.Generator().manual_seed(n)
    for kind in ("skewed", "ties", "zeros"):
        w = loads(kind, 1, 3, n, torch.float32, gen)[0]
        for m in (1, n // 8, n):
            assert_same(OPS.balanced_packing(w, m), OPS.balanced_packing(w.cuda(), m))
        assert_same(OPS.replicate_experts(w, n + n // 4), OPS.replicate_experts(w.cuda(), n + n // 4))


# Rows whose sort keys fill each register layout of a warp's sort (32 to
# 512 keys, padded to a power of two) and the memory one beyond, with up to
# 32 packs in registers and more through memory.
@pytest.mark.parametrize("n", [6, 24, 32, 33, 64, 96, 128, 160, 256, 288, 512, 576, 1024])
def test_cuda_warp_sort_and_packing_sizes(n):
    gen = torch.Generator().manual_seed(n + 1)
    for kind in ("skewed", "ties", "fractional"):
        w = loads(kind, 1, 4, n, torch.float32, gen)[0]
        widths = {1, 2, 3, 8, 16, 32, 48, 64, n // 2, n}
        for m in sorted(m for m in widths if n % m == 0):
            cpu, gpu = OPS.balanced_packing(w, m), OPS.balanced_packing(w.cuda(), m)
            assert_same(cpu, gpu, f"n={n} m={m}")
        # deepseek on one node: a warp sorts the n slots and packs them into
        # G GPUs (registers up to 32).
        x = w.unsqueeze(0)[:, :, : max(1, n // 2)]
        for G in (4, 32, 48):
            if n % G == 0 and n // G >= 2:
                cpu, gpu = OPS.deepseek(x, n, n // G, 1, 1), OPS.deepseek(x.cuda(), n, n // G, 1, 1)
                assert_same(cpu, gpu, f"n={n} G={G}")


def test_cuda_matches_cpu_large_steps():
    gen = torch.Generator().manual_seed(7)
    x = loads("skewed", 1000, 58, 256, torch.int64, gen)
    for algo in VARIANTS:
        assert_same(
            eplb_ext.rebalance_experts(x, 288, 9, 8, 4, algo),
            eplb_ext.rebalance_experts(x.cuda(), 288, 9, 8, 4, algo),
        )


def test_cuda_non_contiguous_and_building_blocks():
    gen = torch.Generator().manual_seed(3)
    x = loads("skewed", 6, 64, 5, torch.float32, gen).transpose(1, 2)  # [6, 5, 64], strided
    for algo in VARIANTS:
        assert_same(
            eplb_ext.rebalance_experts(x, 80, 5, 8, 4, algo),
            eplb_ext.rebalance_experts(x.cuda(), 80, 5, 8, 4, algo),
        )
    w = x.sum(0)
    assert_same(ds_api.balanced_packing(w, 8), ds_api.balanced_packing(w.cuda(), 8))
    assert_same(ds_api.replicate_experts(w, 90), ds_api.replicate_experts(w.cuda(), 90))
    assert_same(
        ds_api.rebalance_experts_hierarchical(w, 80, 8, 4, 16),
        ds_api.rebalance_experts_hierarchical(w.cuda(), 80, 8, 4, 16),
    )
    assert_same(ds_api.rebalance_experts(w, 80, 8, 4, 16), ds_api.rebalance_experts(w.cuda(), 80, 8, 4, 16))


def test_cuda_bad_values_are_rejected():
    x = torch.ones(2, 3, 16, device="cuda")
    x[1, 2, 5] = float("nan")
    with pytest.raises(ValueError, match=r"tokens_per_expert\[1, 2, 5\] = nan is NaN"):
        eplb_ext.rebalance_experts(x, 16, 4, 4, 2, "deepseek_vec")


def test_cuda_empty_batch():
    x = torch.zeros(1, 0, 8, device="cuda")
    for algo in VARIANTS:
        out = eplb_ext.rebalance_experts(x, 16, 4, 2, 2, algo)
        assert [t.shape[0] for t in out] == [0, 0, 0]


def test_opcheck_cuda():
    gen = torch.Generator().manual_seed(1)
    x = loads("skewed", 3, 4, 16, torch.float32, gen).cuda()
    w = x.sum(0)
    torch.library.opcheck(OPS.deepseek, (x, 24, 3, 4, 2))
    torch.library.opcheck(OPS.deepseek_mapped, (x, 24, 3, 4, 2))
    torch.library.opcheck(OPS.deepseek_vec, (x, 24, 3, 4, 2))
    torch.library.opcheck(OPS.balanced_packing, (w, 4))
    torch.library.opcheck(OPS.replicate_experts, (w, 20))
    p2l, rank, _ = OPS.deepseek(x, 24, 3, 4, 2)
    torch.library.opcheck(OPS.logical_to_physical, (p2l, rank, 16, 9))


@pytest.mark.parametrize("algo", VARIANTS)
def test_no_host_sync(algo):
    x = torch.poisson(torch.rand(8, 58, 256, device="cuda") * 50)
    eplb_ext.rebalance_experts(x, 288, 9, 8, 4, algo, fixed_width=True, check_values=False)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        eplb_ext.rebalance_experts(x, 288, 9, 8, 4, algo, fixed_width=True, check_values=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("algo", VARIANTS)
def test_cuda_graph_capture(algo):
    static = torch.zeros(4, 58, 256, device="cuda")
    kwargs = dict(fixed_width=True, check_values=False)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        eplb_ext.rebalance_experts(static, 288, 9, 8, 4, algo, **kwargs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = eplb_ext.rebalance_experts(static, 288, 9, 8, 4, algo, **kwargs)
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        data = loads("skewed", 4, 58, 256, torch.float32, gen)
        static.copy_(data)
        graph.replay()
        torch.cuda.synchronize()
        assert_same(out, eplb_ext.rebalance_experts(data, 288, 9, 8, 4, algo, fixed_width=True))


@pytest.mark.parametrize("algo", ELASTIC)
@pytest.mark.parametrize("dead", [[0], [13], [31], list(range(1, 32, 2)), list(range(31))[:-3]])
def test_elastic_cuda_matches_cpu(algo, dead):
    gen = torch.Generator().manual_seed(len(dead))
    x = loads("skewed", 3, 58, 256, torch.int64, gen)
    mask = torch.ones(32, dtype=torch.int32)
    mask[dead] = 0
    if 9 * int(mask.sum()) < 256:
        mask[:29] = 1
    cpu = eplb_ext.rebalance_experts(x, 288, 9, 8, 4, algo, active_ranks=mask)
    for active in (mask, mask.cuda(), mask.bool().cuda(), mask.tolist()):
        for fixed in (False, True):
            gpu = eplb_ext.rebalance_experts(x.cuda(), 288, 9, 8, 4, algo, active_ranks=active, fixed_width=fixed)
            assert all(t.is_cuda for t in gpu)
            want = cpu if not fixed else eplb_ext.rebalance_experts(x, 288, 9, 8, 4, algo, active_ranks=mask, fixed_width=True)
            assert_same(want, gpu)


def test_non_default_stream():
    gen = torch.Generator().manual_seed(5)
    x = loads("skewed", 16, 58, 256, torch.float32, gen)
    stream = torch.cuda.Stream()
    xs = x.cuda()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        outs = [eplb_ext.rebalance_experts(xs, 288, 9, 8, 4, a, fixed_width=True, check_values=False) for a in VARIANTS]
    stream.synchronize()
    for algo, out in zip(VARIANTS, outs):
        assert_same(out, eplb_ext.rebalance_experts(x, 288, 9, 8, 4, algo, fixed_width=True))


def test_cuda_logical_to_physical_malformed_like_cpu():
    # Duplicate (expert, rank) pairs keep the later slot, out-of-range ids and
    # ranks are skipped, on both devices.
    p2l = torch.tensor([[0, 0, 1, 0, 1, 5, -1, 0], [1, 1, 1, 1, 0, 0, 0, 0]])
    rank = torch.tensor([[0, 0, 0, 1, 0, 0, 0, 9], [0, 1, 0, 1, 2, 2, -3, 0]])
    gen = torch.Generator().manual_seed(2)
    rp2l = torch.randint(-1, 9, (5, 300), generator=gen)
    rrank = torch.randint(-1, 4, (5, 300), generator=gen)
    for a, b, E in ((p2l, rank, 2), (rp2l, rrank, 8)):
        for width in (0, 1, 2, 3):
            cpu = OPS.logical_to_physical(a, b, E, width)
            assert torch.equal(cpu, OPS.logical_to_physical(a.cuda(), b.cuda(), E, width).cpu())
