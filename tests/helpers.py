"""Shared test helpers: output comparison and the invariants of SPEC.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence, Tuple

import pytest
import torch
from torch import Tensor

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden" / "upstream_v1.pt"
OUTPUT_NAMES = ("physical_to_logical_map", "logical_to_physical_map", "logical_count")
ALGORITHMS = (
    "deepseek",
    "deepseek_hierarchical",
    "deepseek_vec",
    "deepseek_vec_hierarchical",
    "elasticity_aware",
    "elasticity_aware_hierarchical",
)
HIERARCHICAL = ("deepseek_hierarchical", "deepseek_vec_hierarchical", "elasticity_aware_hierarchical")
ELASTIC = ("elasticity_aware", "elasticity_aware_hierarchical")

# SPEC "Outputs": dtypes of (phy2log, log2phy, logcnt) per variant.
DTYPES = {
    "deepseek": (torch.int64, torch.int64, torch.int64),
    "deepseek_hierarchical": (torch.int64, torch.int64, torch.int64),
    "deepseek_vec": (torch.int32, torch.int32, torch.int32),
    "deepseek_vec_hierarchical": (torch.int64, torch.int32, torch.int32),
    "elasticity_aware": (torch.int64, torch.int64, torch.int64),
    "elasticity_aware_hierarchical": (torch.int64, torch.int64, torch.int64),
}


# Why golden tests skip where ../shared is not beside the checkout.
GOLDEN_MISSING = f"golden vectors not found at {GOLDEN} (expected ../shared/golden beside the checkout)"


def load_golden_cases() -> Optional[list]:
    """The 200 golden cases, or None where the file is absent."""
    if not GOLDEN.exists():
        return None
    return torch.load(GOLDEN, weights_only=True)["cases"]


def golden_case_names(cases: Optional[list]) -> list:
    """Test ids: one placeholder (whose test skips) when the file is absent."""
    return [c["name"] for c in cases] if cases is not None else ["golden-file-missing"]


def assert_same(actual: Sequence[Tensor], expected: Sequence[Tensor], context: str = "") -> None:
    """Exact equality of the three outputs: dtype, shape and values."""
    assert len(actual) == len(expected) == 3
    for name, a, e in zip(OUTPUT_NAMES, actual, expected):
        assert a.dtype == e.dtype, f"{context} {name}: dtype {a.dtype} != {e.dtype}"
        assert a.shape == e.shape, f"{context} {name}: shape {tuple(a.shape)} != {tuple(e.shape)}"
        if not torch.equal(a, e):
            diff = (a != e).nonzero()[:5].tolist()
            raise AssertionError(f"{context} {name}: values differ, first at {diff}")


def check_invariants(
    outputs: Tuple[Tensor, Tensor, Tensor],
    algorithm: str,
    L: int,
    E: int,
    P: int,
    k: int,
    C: Optional[int] = None,
    N: Optional[int] = None,
    *,
    fixed_width: bool = False,
    active_ranks: Optional[Sequence[int]] = None,
) -> None:
    """SPEC "Invariants" (and the output contract) for one call's outputs.

    With ``active_ranks`` (0/1 per GPU, some 0): the live slots satisfy the
    invariants with counts summing to k * A, inactive slots hold expert 0 and
    are listed nowhere, and groups are not checked."""
    phy2log, log2phy, count = outputs
    live = torch.ones(P, dtype=torch.bool)
    if active_ranks is not None:
        live = torch.tensor([bool(a) for a in active_ranks]).repeat_interleave(k)
        if bool(live.all()):
            active_ranks = None
    vec = algorithm.startswith("deepseek_vec")

    # Dtypes and shapes.
    assert tuple(o.dtype for o in outputs) == DTYPES[algorithm], [o.dtype for o in outputs]
    assert tuple(phy2log.shape) == (L, P)
    assert tuple(count.shape) == (L, E)
    assert log2phy.dim() == 3 and tuple(log2phy.shape[:2]) == (L, E)
    X = log2phy.shape[2]
    if vec or fixed_width:
        assert X == P - E + 1
    else:
        assert X == (int(count.max()) if L > 0 else 0)
    if L == 0:
        return

    p2l, l2p, cnt = phy2log.long().cpu(), log2phy.long().cpu(), count.long().cpu()

    # Every slot holds a valid expert; every expert has >= 1 slot; counts sum
    # to P (to the live slots k * A with inactive GPUs, whose slots hold 0).
    assert bool(((p2l >= 0) & (p2l < E)).all()), "a slot holds an invalid expert"
    assert bool((p2l[:, ~live] == 0).all()), "an inactive slot does not hold the filler 0"
    assert bool((cnt >= 1).all()), "an expert has no slot"
    assert bool((cnt.sum(-1) == int(live.sum())).all()), "counts do not sum to the live slots"
    live_p2l = p2l[:, live]
    hist = torch.zeros(L, E, dtype=torch.int64).scatter_add_(1, live_p2l, torch.ones_like(live_p2l))
    assert torch.equal(hist, cnt), "logical_count disagrees with physical_to_logical_map"

    # log2phy[l, e, r]: a slot holding e for r < count, -1 after.
    r = torch.arange(X).view(1, 1, X)
    valid = r < cnt.unsqueeze(-1)
    assert bool((l2p[~valid] == -1).all()), "log2phy is not -1 after the count"
    assert bool(((l2p[valid] >= 0) & (l2p[valid] < P)).all()), "log2phy holds an invalid slot"
    held = p2l.gather(1, l2p.clamp(min=0).reshape(L, E * X)).view(L, E, X)
    expert = torch.arange(E).view(1, E, 1).expand(L, E, X)
    assert torch.equal(held[valid], expert[valid]), "log2phy lists a slot that holds another expert"
    # Each slot is listed exactly once (so both maps are inverse to each other).
    slots = l2p.reshape(L, E * X)
    listed = torch.zeros(L, P + 1, dtype=torch.int64).scatter_add_(
        1, torch.where(slots < 0, P, slots), torch.ones_like(slots)
    )[:, :P]
    assert bool((listed[:, live] == 1).all()), "a live slot is listed zero or several times in log2phy"
    assert bool((listed[:, ~live] == 0).all()), "an inactive slot is listed in log2phy"

    # Hierarchical: each group's experts and replicas on a single node, and
    # each node holds exactly C/N groups.
    if algorithm in HIERARCHICAL and active_ranks is None:
        assert C is not None and N is not None
        m = E // C
        slot_node = (torch.arange(P) // (P // N)).expand(L, P)
        group_of_slot = p2l // m
        node_of_group = torch.full((L, C), -1, dtype=torch.int64)
        node_of_group.scatter_reduce_(1, group_of_slot, slot_node, reduce="amax", include_self=True)
        min_node = torch.full((L, C), N, dtype=torch.int64)
        min_node.scatter_reduce_(1, group_of_slot, slot_node, reduce="amin", include_self=True)
        assert torch.equal(node_of_group, min_node), "a group's replicas span several nodes"
        per_node = torch.zeros(L, N, dtype=torch.int64).scatter_add_(
            1, node_of_group, torch.ones_like(node_of_group)
        )
        assert bool((per_node == C // N).all()), "a node does not hold exactly C/N groups"


def check_against_reference(tokens, P, k, C, N, algorithm, *, check_fixed_width=True, context=""):
    """Compiled vs reference (exact), plus invariants; returns the outputs."""
    import eplb_ext
    from eplb_ext import reference

    out = eplb_ext.rebalance_experts(tokens, P, k, C, N, algorithm)
    ref = reference.rebalance_experts(tokens, P, k, C, N, algorithm)
    assert_same(out, ref, context)
    L, E = tokens.shape[-2], tokens.shape[-1]
    check_invariants(out, algorithm, L, E, P, k, C, N)
    if check_fixed_width:
        fixed = eplb_ext.rebalance_experts(tokens, P, k, C, N, algorithm, fixed_width=True)
        check_invariants(fixed, algorithm, L, E, P, k, C, N, fixed_width=True)
        assert torch.equal(fixed[0], out[0]) and torch.equal(fixed[2], out[2])
        X = out[1].shape[-1]
        assert torch.equal(fixed[1][..., :X], out[1]), context
        assert bool((fixed[1][..., X:] == -1).all()), context
    return out


def declared_entry_point(group: str, name: str) -> Optional[str]:
    """The object reference of entry point ``name`` in ``group`` as
    pyproject.toml declares it (read without tomllib, absent from Python 3.10)."""
    import re

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    section = re.search(rf'^\[project\.entry-points\."{re.escape(group)}"\]\n(.*?)(?=^\[|\Z)', text, re.M | re.S)
    if section is None:
        return None
    entry = re.search(rf'^{re.escape(name)}\s*=\s*"([^"]+)"', section.group(1), re.M)
    return entry.group(1) if entry else None


def check_installed_entry_point(group: str, register) -> None:
    """eplb_ext's entry point in ``group`` loads ``register``; skips where
    eplb_ext is not pip-installed (a plain checkout has no entry points)."""
    from importlib.metadata import PackageNotFoundError, distribution, entry_points

    try:
        distribution("eplb_ext")
    except PackageNotFoundError:
        pytest.skip("eplb_ext is not pip-installed here: no entry points to check")
    found = [ep for ep in entry_points(group=group) if ep.name == "eplb_ext"]
    assert len(found) == 1, "reinstall eplb_ext (pip install -e .) to register its entry points"
    assert found[0].load() is register


def raises_with(exc, *fragments):
    """pytest.raises for ``exc`` whose message contains every fragment, in any order."""
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(f)})" for f in fragments)
    return pytest.raises(exc, match=pattern)


def load_pattern(kind: str, S: int, L: int, E: int, gen: torch.Generator) -> Optional[Tensor]:
    """Loads ``[S, L, E]`` (float64) of a pattern that stresses the tie rule
    and the sums: "skewed" (a few hot experts), "ties" (values 0..2),
    "zeros", "equal"; None for another kind."""
    if kind == "skewed":
        return torch.poisson(torch.rand(S, L, E, generator=gen) ** 4 * 300, generator=gen)
    if kind == "ties":
        return torch.randint(0, 3, (S, L, E), generator=gen).double()
    if kind == "zeros":
        return torch.zeros(S, L, E, dtype=torch.float64)
    if kind == "equal":
        return torch.full((S, L, E), 7.0, dtype=torch.float64)
    return None
