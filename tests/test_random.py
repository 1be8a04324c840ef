"""Randomised comparison of the compiled implementation against the
pure-PyTorch oracle (eplb_ext.reference), bit for bit, with the SPEC
invariants checked on every output."""

from __future__ import annotations

import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eplb_ext
from eplb_ext import deepseek as ds
from eplb_ext import reference
from helpers import ALGORITHMS, HIERARCHICAL, assert_same, check_against_reference, check_invariants

# --------------------------------------------------------------------------
# loads
# --------------------------------------------------------------------------

# (kind, dtype): every kind of load the tests generate.
LOAD_KINDS = [
    ("heavy", torch.int64),
    ("ties", torch.int64),
    ("zeros", torch.int64),
    ("equal", torch.int64),
    ("frac", torch.float32),
    ("frac", torch.float64),
    ("frac", torch.float16),
    ("frac", torch.bfloat16),
    ("heavy", torch.float32),
    ("ties", torch.float32),  # includes -0.0
    ("tiny", torch.float32),  # subnormals and tiny normals
    ("heavy", torch.int8),
    ("heavy", torch.int16),
    ("heavy", torch.int32),
    ("heavy", torch.uint8),
    ("ties", torch.uint8),
    ("heavy", torch.float64),
    ("equal", torch.float16),
    ("zeros", torch.bfloat16),
]
LAYOUTS = ["contiguous", "transposed", "strided", "expand_steps", "expand_experts", "two_d"]

_INT_MAX = {torch.int8: 127, torch.uint8: 255, torch.int16: 32767, torch.int32: 2**31 - 1, torch.int64: 2**62}


def _values(kind: str, dtype: torch.dtype, shape, g: torch.Generator) -> torch.Tensor:
    """float64 values of the given kind, representable in ``dtype``."""
    if kind == "heavy":
        # Heavy-tailed Poisson counts: a few hot experts, many cold ones.
        scale = 1000.0 if dtype in (torch.float16, torch.int8, torch.uint8, torch.int16) else 50000.0
        v = torch.poisson(torch.rand(shape, generator=g, dtype=torch.float64) ** 4 * scale, generator=g)
    elif kind == "ties":
        v = torch.randint(0, 3, shape, generator=g).double()
        if dtype.is_floating_point:
            # Negative zeros must tie with positive zeros.
            v = torch.where(torch.rand(shape, generator=g) < 0.3, torch.tensor(-0.0, dtype=torch.float64), v)
    elif kind == "zeros":
        v = torch.zeros(shape, dtype=torch.float64)
    elif kind == "equal":
        v = torch.full(shape, 7.0, dtype=torch.float64)
    elif kind == "frac":
        v = torch.rand(shape, generator=g, dtype=torch.float64) ** 3 * 300.0
    elif kind == "tiny":
        # float32 subnormals (2**-149 .. 2**-126) and tiny normals.
        e = torch.randint(-149, -120, shape, generator=g).double()
        v = torch.where(torch.rand(shape, generator=g) < 0.2, torch.zeros(shape, dtype=torch.float64), 2.0**e)
    else:
        raise AssertionError(kind)
    if not dtype.is_floating_point:
        v = v.clamp(max=_INT_MAX[dtype])
    return v


def make_tokens(seed: int, S: int, L: int, E: int, kind: str, dtype: torch.dtype, layout: str) -> torch.Tensor:
    """A [S, L, E] (or [L, E] for layout 'two_d') load tensor with the given strides."""
    g = torch.Generator().manual_seed(seed)
    if layout == "two_d":
        return _values(kind, dtype, (L, E), g).to(dtype)
    if layout == "contiguous":
        return _values(kind, dtype, (S, L, E), g).to(dtype)
    if layout == "transposed":
        t = _values(kind, dtype, (E, L, S), g).to(dtype).permute(2, 1, 0)
        assert L * E <= 1 or S <= 1 or not t.is_contiguous()
        return t
    if layout == "strided":
        return _values(kind, dtype, (S + 1, 2 * L, 3 * E), g).to(dtype)[1:, ::2, 1::3]
    if layout == "expand_steps":
        return _values(kind, dtype, (1, L, E), g).to(dtype).expand(S, L, E)
    if layout == "expand_experts":
        return _values(kind, dtype, (S, L, 1), g).to(dtype).expand(S, L, E)
    raise AssertionError(layout)


def run_case(tokens, P, k, C, N, algorithm, context=""):
    """Compiled vs reference, invariants, fixed_width, and the same result for
    a contiguous copy of the input."""
    out = check_against_reference(tokens, P, k, C, N, algorithm, context=context)
    if not tokens.is_contiguous():
        assert_same(eplb_ext.rebalance_experts(tokens.contiguous(), P, k, C, N, algorithm), out, context)
    return out


# --------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------

# (E, P, k, C, N), valid for every variant (hierarchical rules hold).
HIER_CONFIGS = [
    (16, 24, 3, 4, 2),  # the basic shape
    (16, 16, 2, 4, 2),  # P == E: no redundant experts
    (16, 32, 1, 4, 2),  # k == 1: one slot per GPU
    (16, 24, 6, 4, 1),  # one node
    (16, 24, 12, 4, 2),  # one GPU per node
    (1, 1, 1, 1, 1),  # a single expert, a single slot
    (1, 5, 5, 1, 1),  # a single expert, replicated
    (1, 6, 2, 1, 1),
    (12, 18, 3, 6, 3),
    (8, 16, 2, 8, 8),  # one group per node
    (8, 8, 1, 8, 8),
    (60, 64, 4, 4, 4),
    (32, 48, 6, 8, 4),
    (6, 12, 4, 3, 3),  # one GPU per node, 3 nodes
    (4, 7, 7, 1, 1),  # one GPU
    (20, 40, 5, 5, 1),
    (10, 20, 2, 2, 1),  # every expert doubled
    (64, 80, 5, 8, 2),
]
# Configurations only the global variants accept (num_groups / num_nodes
# unused there: they need only be None or positive integers).
FLAT_CONFIGS = [
    (7, 11, 11, None, None),
    (5, 13, 1, None, None),
    (9, 9, 3, 3, 7),
    (10, 25, 5, 3, 2),
    (3, 100, 4, 5, None),
    (13, 26, 13, None, 4),
]

SL = [(1, 1), (2, 3), (5, 0), (17, 3), (1, 3), (5, 1), (17, 1), (2, 0)]


def _sweep_params():
    params = []
    for cfg in HIER_CONFIGS:
        for algo in ALGORITHMS:
            params.append(pytest.param(algo, cfg, id=f"{algo}-E{cfg[0]}_P{cfg[1]}_k{cfg[2]}_C{cfg[3]}_N{cfg[4]}"))
    for cfg in FLAT_CONFIGS:
        for algo in ("deepseek", "deepseek_vec"):
            params.append(pytest.param(algo, cfg, id=f"{algo}-E{cfg[0]}_P{cfg[1]}_k{cfg[2]}_C{cfg[3]}_N{cfg[4]}"))
    return params


@pytest.mark.parametrize("algorithm,config", _sweep_params())
def test_sweep(algorithm, config):
    """Every load kind, several (S, L) and layouts, for one configuration."""
    E, P, k, C, N = config
    for i, (kind, dtype) in enumerate(LOAD_KINDS):
        S, L = SL[i % len(SL)]
        layout = LAYOUTS[i % len(LAYOUTS)]
        seed = zlib.crc32(repr((algorithm, config, i)).encode())
        tokens = make_tokens(seed, S, L, E, kind, dtype, layout)
        run_case(tokens, P, k, C, N, algorithm, context=f"{kind}/{dtype}/{layout}/S{S}/L{L}")


# --------------------------------------------------------------------------
# hypothesis
# --------------------------------------------------------------------------


@st.composite
def hier_config(draw):
    """(E, P, k, C, N) satisfying every hierarchical rule."""
    N = draw(st.integers(1, 3))
    gpn = draw(st.integers(1, 3))  # groups per node
    m = draw(st.integers(1, 4))  # experts per group
    C = N * gpn
    E = C * m
    if draw(st.booleans()):
        # P == E: G = N*b with b dividing E/N.
        en = E // N
        b = draw(st.sampled_from([d for d in range(1, en + 1) if en % d == 0]))
        G, k = N * b, en // b
    else:
        b = draw(st.integers(1, 3))
        G = N * b
        kmin = -(-E // G)
        k = draw(st.integers(kmin, kmin + 2))
    return E, G * k, k, C, N


@st.composite
def flat_config(draw):
    """(E, P, k, C, N) for the global variants; C and N are unused."""
    E = draw(st.integers(1, 12))
    P = E + draw(st.integers(0, 9))
    k = draw(st.sampled_from([d for d in range(1, P + 1) if P % d == 0]))
    C = draw(st.sampled_from([None, 1, 2, 3, 7]))
    N = draw(st.sampled_from([None, 1, 2, 5]))
    return E, P, k, C, N


_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@_SETTINGS
@given(data=st.data())
def test_hypothesis(algorithm, data):
    if algorithm in HIERARCHICAL or data.draw(st.booleans(), label="use_hier_config"):
        E, P, k, C, N = data.draw(hier_config(), label="config")
    else:
        E, P, k, C, N = data.draw(flat_config(), label="config")
    S = data.draw(st.sampled_from([1, 2, 5, 17]), label="S")
    L = data.draw(st.sampled_from([0, 1, 3]), label="L")
    kind, dtype = data.draw(st.sampled_from(LOAD_KINDS), label="kind")
    layout = data.draw(st.sampled_from(LAYOUTS), label="layout")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    tokens = make_tokens(seed, S, L, E, kind, dtype, layout)
    run_case(tokens, P, k, C, N, algorithm)


@_SETTINGS
@given(data=st.data())
def test_hypothesis_auto(data):
    """"auto" through the dispatcher equals the reference of the variant
    compute_algorithm picks, for arbitrary (possibly non-hierarchical) C, N."""
    E, P, k, _, _ = data.draw(hier_config() if data.draw(st.booleans()) else flat_config(), label="config")
    C = data.draw(st.sampled_from([None, 1, 2, 3, 4]), label="C")
    N = data.draw(st.sampled_from([None, 1, 2, 3]), label="N")
    S = data.draw(st.sampled_from([1, 2, 5]), label="S")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    tokens = make_tokens(seed, S, 3, E, "heavy", torch.int64, "contiguous")
    algo = eplb_ext.compute_algorithm("auto", C, N, num_logical_experts=E, num_gpus=P // k)
    if algo.name == "deepseek_hierarchical":
        assert C is not None and E % C == 0 and C % (N or 1) == 0 and (P // k) % (N or 1) == 0
    out = eplb_ext.rebalance_experts(tokens, P, k, C, N, "auto")
    ref = reference.rebalance_experts(tokens, P, k, C, N or 1, algo.name)
    assert_same(out, ref)
    check_invariants(out, algo.name, 3, E, P, k, C, N or 1)


# --------------------------------------------------------------------------
# fixed_width
# --------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("config", HIER_CONFIGS[:8])
def test_fixed_width_is_padded_default(algorithm, config):
    E, P, k, C, N = config
    t = make_tokens(3, 4, 3, E, "heavy", torch.int64, "contiguous")
    p2l, l2p, cnt = eplb_ext.rebalance_experts(t, P, k, C, N, algorithm)
    fp2l, fl2p, fcnt = eplb_ext.rebalance_experts(t, P, k, C, N, algorithm, fixed_width=True)
    assert torch.equal(p2l, fp2l) and torch.equal(cnt, fcnt)
    assert fl2p.shape == (3, E, P - E + 1) and fl2p.dtype == l2p.dtype
    padded = torch.full_like(fl2p, -1)
    padded[..., : l2p.shape[-1]] = l2p
    assert torch.equal(fl2p, padded)
    if algorithm.startswith("deepseek_vec"):
        assert torch.equal(l2p, fl2p)  # already P - E + 1 wide
    else:
        assert l2p.shape[-1] == int(cnt.max())


# --------------------------------------------------------------------------
# DeepSeek's eplb.py API
# --------------------------------------------------------------------------


def _weights(seed, L, n, kind):
    dtype = {"frac": torch.float32, "ties": torch.float32, "heavy": torch.int64, "zeros": torch.float64}[kind]
    return make_tokens(seed, 1, L, n, kind, dtype, "two_d")


@pytest.mark.parametrize("kind", ["heavy", "ties", "frac", "zeros"])
@pytest.mark.parametrize("n,m", [(1, 1), (4, 4), (6, 2), (8, 4), (9, 3), (12, 1), (16, 8), (40, 5), (256, 8)])
def test_balanced_packing_matches_reference(n, m, kind):
    w = _weights(n * 31 + m, 5, n, kind)
    pack, rank = ds.balanced_packing(w, m)
    rpack, rrank = reference.balanced_packing(w, m)
    assert pack.dtype == rank.dtype == torch.int64
    assert torch.equal(pack, rpack) and torch.equal(rank, rrank)
    # Every pack gets exactly n/m items, with ranks 0 .. n/m - 1.
    slot = pack * (n // m) + rank
    assert torch.equal(slot.sort(-1).values, torch.arange(n).expand(5, n))
    # Through the raw op too.
    assert torch.equal(torch.ops.eplb_ext.balanced_packing(w, m)[0], rpack)


@pytest.mark.parametrize("kind", ["heavy", "ties", "frac", "zeros"])
@pytest.mark.parametrize("n,p", [(1, 1), (1, 7), (3, 3), (3, 10), (8, 9), (16, 40), (60, 64), (256, 288)])
def test_replicate_experts_matches_reference(n, p, kind):
    w = _weights(n * 17 + p, 4, n, kind)
    out = ds.replicate_experts(w, p)
    ref = reference.replicate_experts(w, p)
    for a, b in zip(out, ref):
        assert a.dtype == torch.int64 and torch.equal(a, b)
    phy2log, rank, cnt = out
    assert bool((cnt.sum(-1) == p).all())
    assert torch.equal(phy2log[:, :n], torch.arange(n).expand(4, n))


# (E, P, C, N, G)
DS_CONFIGS = [(16, 24, 4, 2, 8), (16, 16, 4, 2, 4), (12, 18, 6, 3, 6), (8, 12, 2, 1, 4), (256, 288, 8, 4, 32), (6, 12, 3, 3, 3)]


@pytest.mark.parametrize("kind", ["heavy", "ties", "frac"])
@pytest.mark.parametrize("E,P,C,N,G", DS_CONFIGS)
def test_rebalance_experts_hierarchical_matches_reference(E, P, C, N, G, kind):
    w = _weights(E + P + C, 3, E, kind)
    out = ds.rebalance_experts_hierarchical(w, P, C, N, G)
    ref = reference.rebalance_experts_hierarchical(w, P, C, N, G)
    for a, b in zip(out, ref):
        assert a.dtype == torch.int64 and torch.equal(a, b)


def _ds_rebalance_reference(w, P, C, N, G):
    """DeepSeek's rebalance_experts from the reference's building blocks."""
    if C % N != 0:
        C, N = 1, 1
    phy2log, rank, cnt = reference.rebalance_experts_hierarchical(w, P, C, N, G)
    L, E = w.shape
    X = P - E + 1
    log2phy = torch.full((L, E * X), -1, dtype=torch.int64)
    log2phy.scatter_(1, phy2log * X + rank, torch.arange(P).expand(L, P))
    return phy2log, log2phy.view(L, E, X), cnt


@pytest.mark.parametrize("kind", ["heavy", "ties", "frac"])
@pytest.mark.parametrize(
    "E,P,C,N,G", DS_CONFIGS + [(12, 20, 3, 2, 4), (10, 15, 5, 3, 5)]  # C % N != 0: the global policy
)
def test_deepseek_rebalance_experts_matches_reference(E, P, C, N, G, kind):
    w = _weights(E * P + C, 3, E, kind)
    out = ds.rebalance_experts(w, P, C, N, G)
    ref = _ds_rebalance_reference(w, P, C, N, G)
    assert_same(out, ref)
    assert out[1].shape == (3, E, P - E + 1)
    algo = "deepseek_hierarchical" if C % N == 0 else "deepseek"
    check_invariants(out, algo, 3, E, P, P // G, C, N, fixed_width=True)
    # Same as the SGLang dispatcher with fixed_width.
    assert_same(out, eplb_ext.rebalance_experts(w, P, P // G, C, N, algo, fixed_width=True))


# --------------------------------------------------------------------------
# DeepSeek-V3 shape
# --------------------------------------------------------------------------


@pytest.mark.parametrize("S", [1, 64])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_deepseek_v3_shape(algorithm, S):
    L, E, P, C, N, G = 58, 256, 288, 8, 4, 32
    g = torch.Generator().manual_seed(S)
    tokens = torch.poisson(torch.rand(S, L, E, generator=g) ** 4 * 2000, generator=g).to(torch.int64)
    out = run_case(tokens, P, P // G, C, N, algorithm)
    # Replication must actually have happened somewhere.
    assert int(out[2].max()) > 1


# --------------------------------------------------------------------------
# extreme integer loads (SPEC: the exact integer sum, converted once)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["deepseek", "deepseek_hierarchical"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint32])
def test_integer_sum_beyond_float_precision(algorithm, dtype):
    # Expert 0: 2**24 + 1 + 0 -> exactly 2**24 + 1 -> 2**24 in float32.
    # Expert 1: 2**24 + 1 + 1 -> exactly 2**24 + 2 (representable).
    # Float32 additions would give 2**24 for both (a tie, won by expert 0);
    # the exact sums make expert 1 the hotter one.
    t = torch.tensor([[[2**24, 2**24]], [[1, 1]], [[0, 1]]]).to(dtype)
    p2l, _, cnt = out = eplb_ext.rebalance_experts(t, 3, 1, 1, 1, algorithm)
    assert p2l.tolist() == [[0, 1, 1]] and cnt.tolist() == [[1, 2]]
    assert_same(out, reference.rebalance_experts(t, 3, 1, 1, 1, algorithm))


@pytest.mark.parametrize("algorithm", ["deepseek", "deepseek_hierarchical"])
def test_integer_sum_above_int64_max(algorithm):
    # Four steps of 2**61: the exact sum 2**63 does not fit in int64 but is
    # still far above expert 1's load, so expert 0 takes the spare slot.
    t = torch.tensor([[[2**61, 1]]] * 4)
    p2l, _, cnt = eplb_ext.rebalance_experts(t, 3, 1, 1, 1, algorithm)
    assert p2l.tolist() == [[0, 1, 0]] and cnt.tolist() == [[2, 1]]


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint64])
def test_integer_sum_above_uint64_max(dtype):
    # Four steps of 2**62 (exact sum 2**64) against a load of 1.
    t = torch.tensor([[[2**62, 1]]] * 4).to(dtype)
    p2l, _, cnt = eplb_ext.rebalance_experts(t, 3, 1, None, None, "deepseek")
    assert p2l.tolist() == [[0, 1, 0]] and cnt.tolist() == [[2, 1]]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype_name", ["float8_e4m3fn", "float8_e5m2"])
def test_float8_loads(algorithm, dtype_name):
    dtype = getattr(torch, dtype_name)
    t = make_tokens(11, 3, 2, 16, "frac", torch.float32, "contiguous").clamp(max=200).to(dtype)
    run_case(t, 24, 3, 4, 2, algorithm)
    # The same as the float32 values they stand for.
    assert_same(eplb_ext.rebalance_experts(t, 24, 3, 4, 2, algorithm), eplb_ext.rebalance_experts(t.float(), 24, 3, 4, 2, algorithm))
    bad = t.float()
    bad[2, 1, 3] = -1.0
    with pytest.raises(ValueError, match=r"tokens_per_expert\[2, 1, 3\]"):
        eplb_ext.rebalance_experts(bad.to(dtype), 24, 3, 4, 2, algorithm)
