"""A previous placement (SPEC "Keeping experts where they are"): relabeling
is optimal (brute force, an independent exact solver), keeps the variant's
GPUs and the slot rule; the incremental search keeps its guarantees; layers
are kept; every option is checked."""

from __future__ import annotations

import itertools

import pytest
import torch

import eplb_ext
from eplb_ext import metrics, migration
from helpers import ALGORITHMS, HIERARCHICAL, check_invariants

rebalance = eplb_ext.rebalance_experts


def loads(L, E, seed, S=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(S, L, E, generator=g, dtype=torch.float64) ** 3 * 1000).round().to(torch.int64)


def drift(tokens, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    f = torch.exp(sigma * torch.randn(tokens.shape, generator=g, dtype=torch.float64))
    return (tokens.double() * f).round().to(torch.int64)


def gpu_sets(p2l, k):
    """Per layer, the multiset of GPU contents (sorted experts per GPU)."""
    L, P = p2l.shape
    rows = p2l.long().view(L, P // k, k).sort(dim=-1).values.tolist()
    return [sorted(r) for r in rows]


def min_moves_brute(fresh, prev, k, N):
    """Fewest moves over every allowed renumbering, by enumeration."""
    P = fresh.numel()
    G = P // k
    gpn = G // N
    f = [set(fresh[a * k:(a + 1) * k].tolist()) for a in range(G)]
    q = [set(prev[b * k:(b + 1) * k].tolist()) - {-1} for b in range(G)]
    best = None
    for nodes in itertools.permutations(range(N)):
        for inner in itertools.product(*[list(itertools.permutations(range(gpn)))] * N):
            m = 0
            for a in range(G):
                x, i = divmod(a, gpn)
                b = nodes[x] * gpn + inner[x][i]
                m += len(f[a] - q[b])
            best = m if best is None else min(best, m)
    return best


def max_overlap_dp(f_sets, q_sets):
    """Largest total overlap of a perfect matching, by a DP over subsets
    (independent of the op's Hungarian solver)."""
    n = len(f_sets)
    w = [[len(f_sets[a] & q_sets[b]) for b in range(n)] for a in range(n)]
    dp = {0: 0}
    for a in range(n):
        nxt = {}
        for mask, v in dp.items():
            for b in range(n):
                if not mask >> b & 1:
                    key = mask | 1 << b
                    cand = v + w[a][b]
                    if nxt.get(key, -1) < cand:
                        nxt[key] = cand
        dp = nxt
    return dp[(1 << n) - 1]


def check_slot_rule(out, fresh, prev, k, layers):
    """Each output GPU holds one fresh GPU's replicas (ranks follow them) and
    orders them by the slot rule."""
    p2l, l2p, _ = (t.long() for t in out)
    f_p2l, f_l2p = fresh[0].long(), fresh[1].long()
    L, P = p2l.shape
    for layer in layers:
        # Fresh slot of every output slot, through (expert, rank).
        src = [None] * P
        for e in range(l2p.shape[1]):
            for r in range(l2p.shape[2]):
                p = int(l2p[layer, e, r])
                if p >= 0:
                    src[p] = int(f_l2p[layer, e, r])
                    assert int(f_p2l[layer, src[p]]) == e
        for b in range(P // k):
            slots = range(b * k, (b + 1) * k)
            a_set = {src[p] // k for p in slots}
            assert len(a_set) == 1, "a GPU mixes replicas of several fresh GPUs"
            a = a_set.pop()
            items = [int(f_p2l[layer, a * k + i]) for i in range(k)]
            q = [int(prev[layer, p]) for p in slots]
            expected, used = [None] * k, [False] * k
            for j, e in enumerate(q):
                for i, x in enumerate(items):
                    if not used[i] and x == e:
                        expected[j], used[i] = a * k + i, True
                        break
            rest = iter(a * k + i for i in range(k) if not used[i])
            expected = [x if x is not None else next(rest) for x in expected]
            assert [src[p] for p in slots] == expected


CASES = [  # E, P, k, C, N
    (16, 24, 3, 4, 2),
    (12, 16, 4, 4, 2),
    (10, 15, 3, 1, 1),
]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("E,P,k,C,N", CASES)
def test_relabeling_is_optimal_and_keeps_gpus(algorithm, E, P, k, C, N):
    if algorithm in HIERARCHICAL and (E % C or C % N or (P // k) % N):
        pytest.skip("shape not hierarchical")
    L = 3
    tokens = loads(L, E, 1, S=2)
    fresh = rebalance(tokens, P, k, C, N, algorithm)
    prevs = [
        rebalance(drift(tokens, 0.3, 2), P, k, C, N, algorithm)[0],
        rebalance(loads(L, E, 3), P, k, C, N, "deepseek")[0],
        metrics.trivial_placement(E, P, L),
    ]
    holes = prevs[0].clone().long()
    holes[:, ::4] = -1
    prevs.append(holes)
    nodes = N if algorithm in HIERARCHICAL else 1
    G = P // k
    for prev in prevs:
        out = rebalance(tokens, P, k, C, N, algorithm, previous_physical_to_logical_map=prev)
        check_invariants(out, algorithm, L, E, P, k, C, N)
        got = metrics.moves(prev, out[0], k).per_layer.tolist()
        keepable = bool((prev >= 0).all())
        bal_f = metrics.balancedness(tokens, fresh[0], G)
        bal_q = metrics.balancedness(tokens, prev, G) if keepable else None
        relabeled = []
        for i in range(L):
            if keepable and float(bal_f[i]) < float(bal_q[i]) - 1e-12:  # SPEC: bal_new - bal_Q < 0 keeps Q
                assert torch.equal(out[0][i].long(), prev[i].long()) and got[i] == 0
                continue
            if keepable and float(bal_f[i]) <= float(bal_q[i]) + 1e-12:
                continue  # a tie within rounding: either is right
            relabeled.append(i)
            assert gpu_sets(out[0][i:i + 1], k) == gpu_sets(fresh[0][i:i + 1], k)
            assert got[i] == min_moves_brute(fresh[0][i].long(), prev[i].long(), k, nodes)
        check_slot_rule(out, fresh, prev, k, relabeled)
        assert relabeled, "no layer was relabeled"


def test_relabeling_matches_an_independent_solver():
    E, P, k, L = 40, 60, 5, 4  # 12 GPUs
    tokens = loads(L, E, 7)
    fresh = rebalance(tokens, P, k, None, None, "deepseek")[0]
    prev = rebalance(drift(tokens, 0.5, 8), P, k, None, None, "deepseek")[0]
    out = rebalance(tokens, P, k, None, None, "deepseek", previous_physical_to_logical_map=prev)[0]
    G = P // k
    for i in range(L):
        f_sets = [set(fresh[i, a * k:(a + 1) * k].tolist()) for a in range(G)]
        q_sets = [set(prev[i, b * k:(b + 1) * k].tolist()) for b in range(G)]
        distinct = sum(len(s) for s in f_sets)
        assert int(metrics.moves(prev[i:i + 1], out[i:i + 1], k).total) == distinct - max_overlap_dp(f_sets, q_sets)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_own_output_moves_nothing(algorithm):
    E, P, k, C, N = 16, 24, 3, 4, 2
    tokens = loads(4, E, 11, S=3)
    fresh = rebalance(tokens, P, k, C, N, algorithm)
    out = rebalance(tokens, P, k, C, N, algorithm, previous_physical_to_logical_map=fresh[0])
    for a, b in zip(out, fresh):
        assert a.dtype == b.dtype and torch.equal(a, b)
    same = rebalance(tokens, P, k, C, N, algorithm, previous_physical_to_logical_map=fresh[0].int(), max_moves=0)
    assert torch.equal(same[0], fresh[0]) and torch.equal(same[2], fresh[2])
    # From the variant's own placement the search may still gain, within M.
    searched = rebalance(tokens, P, k, C, N, algorithm, previous_physical_to_logical_map=fresh[0], max_moves=5)
    assert bool((metrics.moves(fresh[0], searched[0], k).per_layer <= 5).all())
    G = P // k
    assert bool((metrics.balancedness(tokens, searched[0], G) >= metrics.balancedness(tokens, fresh[0], G) - 1e-12).all())


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("M", [0, 1, 3, 8, 40])
def test_incremental_guarantees(algorithm, M):
    E, P, k, C, N, L = 32, 48, 6, 4, 2, 6
    old = loads(L, E, 21, S=2)
    new = drift(old, 0.4, 22)
    prev = rebalance(old, P, k, C, N, algorithm)[0]
    G = P // k
    relabeled = rebalance(new, P, k, C, N, algorithm, previous_physical_to_logical_map=prev)
    out = rebalance(new, P, k, C, N, algorithm, previous_physical_to_logical_map=prev, max_moves=M)
    check_invariants(out, algorithm, L, E, P, k, C, N)
    moved = metrics.moves(prev, out[0], k).per_layer
    assert bool((moved <= M).all())
    bal_q = metrics.balancedness(new, prev, G)
    bal = metrics.balancedness(new, out[0], G)
    assert bool((bal >= bal_q - 1e-12).all())
    bal_r = metrics.balancedness(new, relabeled[0], G)
    fits = metrics.moves(prev, relabeled[0], k).per_layer <= M
    assert bool((bal[fits] >= bal_r[fits] - 1e-12).all())
    if M == 0:
        assert torch.equal(out[0].long(), prev.long())
        assert torch.equal(out[2].long(), metrics.replica_counts(prev, E))
    if M >= 8:
        assert bool((bal > bal_q).any()), "the search improved no layer"
    if algorithm in HIERARCHICAL:  # a searched layer: each node keeps its experts
        for i in range(L):
            if torch.equal(out[0][i], relabeled[0][i]):
                continue
            for n in range(N):
                assert set(out[0][i].view(N, -1)[n].tolist()) == set(prev[i].view(N, -1)[n].tolist())


def test_searched_layers_list_slots_in_ascending_order():
    E, P, k, L = 16, 24, 3, 3
    old = loads(L, E, 31)
    prev = rebalance(old, P, k, None, None, "deepseek")[0]
    out = rebalance(drift(old, 0.5, 32), P, k, None, None, "deepseek", previous_physical_to_logical_map=prev, max_moves=4)
    l2p, cnt = out[1], out[2]
    assert l2p.shape[2] == int(cnt.max())
    for i in range(L):
        for e in range(E):
            slots = l2p[i, e, : int(cnt[i, e])].tolist()
            assert slots == sorted(slots)


def test_keeping_layers():
    E, P, k, L = 16, 24, 3, 4
    old = loads(L, E, 41)
    new = drift(old, 0.3, 42)
    prev = rebalance(old, P, k, None, None, "deepseek")[0].clone()
    prev[0, 0] = -1  # layer 0 has an empty slot: never kept
    out = rebalance(new, P, k, None, None, "deepseek", previous_physical_to_logical_map=prev, min_improvement=1.0)
    assert torch.equal(out[0][1:], prev[1:])
    assert not torch.equal(out[0][0], prev[0])
    assert torch.equal(out[2][1:], metrics.replica_counts(prev[1:], E))
    # A threshold between the layers' gains keeps exactly the layers below it.
    fresh = rebalance(new, P, k, None, None, "deepseek", previous_physical_to_logical_map=prev)
    gain = metrics.balancedness(new, fresh[0], P // k)[1:] - metrics.balancedness(new[:, 1:], prev[1:], P // k)
    low = gain.sort().values
    x = float(low[0] + low[1]) / 2
    out = rebalance(new, P, k, None, None, "deepseek", previous_physical_to_logical_map=prev, min_improvement=x)
    kept = [bool(torch.equal(out[0][i], prev[i])) for i in range(1, L)]
    assert kept == (gain < x).tolist()


def test_inactive_gpus_at_the_op():
    """An elasticity-style fresh placement (A of G GPUs alive, filler 0 on
    the others, in no map): only active GPUs are permuted; inactive slots
    stay; moves count on active GPUs; layers take the relabeled placement."""
    E, k, G, L = 12, 3, 6, 3
    P = k * G
    active = torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool)
    A = int(active.sum())
    tokens = loads(L, E, 51)
    p2l_a, l2p_a, cnt = rebalance(tokens, k * A, k, None, None, "deepseek", fixed_width=True)
    blocks = active.nonzero().flatten()
    slot_of = (blocks.view(-1, 1) * k + torch.arange(k)).flatten()  # active slot i -> full slot
    p2l = torch.zeros(L, P, dtype=torch.int64)
    p2l[:, slot_of] = p2l_a
    l2p = torch.where(l2p_a >= 0, slot_of[l2p_a.clamp(min=0)], -1)
    prev = metrics.trivial_placement(E, P, L).roll(4, dims=1)
    tok = tokens
    plan = migration.check_options(prev, 5, 0.0, num_layers=L, num_experts=E, num_physical_experts=P,
                                   device=tok.device)
    (out, out_l2p, out_cnt), info = migration.migrate((p2l, l2p, cnt), tok, plan, k, 1, 1,
                                                      largest_count_width=False, active=active)
    inactive_slots = (~active).repeat_interleave(k)
    assert bool((out[:, inactive_slots] == 0).all())
    assert torch.equal(out_cnt, cnt)
    assert bool((info[:, 0] == migration.RELABELED).all())
    listed = torch.zeros(L, P + 1, dtype=torch.int64).scatter_add_(
        1, torch.where(out_l2p >= 0, out_l2p, P).view(L, -1), torch.ones(L, out_l2p[0].numel(), dtype=torch.int64))
    assert bool((listed[:, :P][:, inactive_slots] == 0).all())
    for i in range(L):
        assert sorted(gpu_sets(out[i:i + 1, slot_of], k)[0]) == sorted(gpu_sets(p2l_a[i:i + 1], k)[0])
        got = metrics.moves(prev[i:i + 1], out[i:i + 1], k, active=active).total
        assert got == int(info[i, 1]) == int(info[i, 2])
        f_sets = [set(p2l_a[i, j * k:(j + 1) * k].tolist()) for j in range(A)]
        q_sets = [set(prev[i, b * k:(b + 1) * k].tolist()) for b in blocks.tolist()]
        assert got == sum(len(s) for s in f_sets) - max_overlap_dp(f_sets, q_sets)


@pytest.mark.parametrize("fixed_width", [True, False])
def test_replica_ranks_read_only_the_counted_columns(fixed_width):
    """With the counts, replica_ranks reads the columns below the largest
    count only; the ranks are those of the whole map, which name each
    slot's position in its expert's row."""
    E, P, k, C, N = 16, 40, 4, 4, 2
    tokens = loads(3, E, 81, S=2)
    tokens[1, 0] *= 50  # one hot expert: many replicas, a wide row
    p2l, l2p, cnt = rebalance(tokens, P, k, C, N, "deepseek_vec", fixed_width=fixed_width)
    whole = migration.replica_ranks(l2p, P)
    assert torch.equal(migration.replica_ranks(l2p, P, cnt), whole)
    for layer in range(3):
        for slot in range(P):
            e = int(p2l[layer, slot])
            assert int(l2p[layer, e, int(whole[layer, slot])]) == slot
    # A slot in no row (an inactive GPU's filler) keeps -1 either way.
    l2p_gap = torch.where(l2p == 5, -1, l2p)
    assert torch.equal(migration.replica_ranks(l2p_gap, P, cnt), migration.replica_ranks(l2p_gap, P))
    assert bool((migration.replica_ranks(l2p_gap, P, cnt)[:, 5] == -1).all())


def test_deterministic_across_runs_and_threads():
    E, P, k, C, N = 64, 80, 5, 8, 2
    old = loads(12, E, 61, S=4)
    new = drift(old, 0.3, 62)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            for algorithm in ("deepseek", "deepseek_vec_hierarchical"):
                prev = rebalance(old, P, k, C, N, algorithm)[0]
                results.append(rebalance(new, P, k, C, N, algorithm, previous_physical_to_logical_map=prev,
                                         max_moves=6, min_improvement=0.001))
    finally:
        torch.set_num_threads(before)
    for r in results[2:]:
        ref = results[0] if r[1].dtype == results[0][1].dtype else results[1]
        assert all(torch.equal(a, b) for a, b in zip(r, ref))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none present)")
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cuda_matches_cpu(algorithm):
    E, P, k, C, N = 64, 80, 5, 8, 2
    old = loads(6, E, 71, S=3)
    new = drift(old, 0.3, 72)
    prev = rebalance(old, P, k, C, N, algorithm)[0]
    for kwargs in (dict(), dict(max_moves=5), dict(max_moves=7, min_improvement=0.01)):
        cpu = rebalance(new, P, k, C, N, algorithm, previous_physical_to_logical_map=prev, **kwargs)
        gpu = rebalance(new.cuda(), P, k, C, N, algorithm, previous_physical_to_logical_map=prev.cuda(), **kwargs)
        for a, b in zip(cpu, gpu):
            assert b.is_cuda and a.dtype == b.dtype and torch.equal(a, b.cpu())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none present)")
@pytest.mark.parametrize("shape", [(256, 288, 9, 8, 4, 58), (1024, 1152, 9, 8, 4, 3)], ids=["dsv3", "global"])
def test_cuda_search_passes_in_blocks(shape):
    # The kernel runs each layer's search passes in blocks of their own and
    # the last to finish combines them: many layers (so the last block
    # varies), and a shape whose state is in global memory, not shared.
    E, P, k, C, N, L = shape
    old = loads(L, E, 81)
    prev = rebalance(old, P, k, C, N, "deepseek")[0]
    for sigma, M in ((0.05, 29), (0.2, 58)):
        new = drift(old, sigma, 82)
        cpu = rebalance(new, P, k, C, N, "deepseek", previous_physical_to_logical_map=prev, max_moves=M)
        gpu = rebalance(new.cuda(), P, k, C, N, "deepseek", previous_physical_to_logical_map=prev.cuda(),
                        max_moves=M)
        for a, b in zip(cpu, gpu):
            assert b.is_cuda and a.dtype == b.dtype and torch.equal(a, b.cpu())
