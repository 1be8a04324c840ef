"""vLLM's default EPLB policy, re-stated in numpy for the tests, and tie-free
test loads.

``dt`` is the float type of every load computation: float64 is what vLLM
computes, float32 (added one at a time) is what eplb_ext computes. On loads
where both order the same, both place the same.
"""

from __future__ import annotations

import numpy as np

def vllm_packing(weight, num_packs, dt=np.float64):
    rows, n = weight.shape
    per_pack = n // num_packs
    if per_pack == 1:
        return np.tile(np.arange(n, dtype=np.int64), (rows, 1)), np.zeros((rows, n), dtype=np.int64)
    pack = np.full((rows, n), -1, dtype=np.int64)
    rank = np.full((rows, n), -1, dtype=np.int64)
    for r in range(rows):
        total = np.zeros(num_packs, dtype=dt)
        items = np.zeros(num_packs, dtype=np.int64)
        for item in np.argsort(-weight[r], kind="stable"):
            p = int(np.argmin(np.where(items < per_pack, total, np.inf)))
            pack[r, item], rank[r, item] = p, items[p]
            total[p] = dt(total[p] + dt(weight[r, item]))
            items[p] += 1
    return pack, rank


def vllm_replicate(weight, num_phy, dt=np.float64):
    rows, n = weight.shape
    phy2log = np.tile(np.arange(num_phy, dtype=np.int64), (rows, 1))
    count = np.ones((rows, n), dtype=np.int64)
    for slot in range(n, num_phy):
        best = np.argmax(weight.astype(dt) / count.astype(dt), axis=-1)
        phy2log[:, slot] = best
        count[np.arange(rows), best] += 1
    return phy2log, count


def _inverse(perm):
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.broadcast_to(np.arange(perm.shape[1]), perm.shape), axis=1)
    return inv


def vllm_hierarchical(weight, P, C, N, G, dt=np.float64):
    w = np.asarray(weight, dtype=dt)
    L, E = w.shape
    m, k = E // C, P // G
    grouped = w.reshape(L, C, m)
    group_load = grouped[:, :, 0].copy()
    for j in range(1, m):
        group_load = (group_load + grouped[:, :, j]).astype(dt)
    node, rank = vllm_packing(group_load, N, dt)
    log2mlog = ((node * (C // N) + rank)[..., None] * m + np.arange(m)).reshape(L, E)
    mlog2log = _inverse(log2mlog)
    w_node = np.take_along_axis(w, mlog2log, axis=1).reshape(L * N, E // N)
    phy2mlog, count = vllm_replicate(w_node, P // N, dt)
    slot_load = np.take_along_axis((w_node / count.astype(dt)).astype(dt), phy2mlog, axis=1)
    gpu, q = vllm_packing(slot_load, G // N, dt)
    local = np.empty_like(phy2mlog)
    np.put_along_axis(local, gpu * k + q, phy2mlog, axis=1)
    mlog = (local.reshape(L, N, P // N) + (np.arange(N) * (E // N))[None, :, None]).reshape(L, P)
    return np.take_along_axis(mlog2log, mlog, axis=1)


def vllm_preserve(new, num_ranks, old):
    L, P = new.shape
    if num_ranks <= 0 or P % num_ranks:
        return new
    k = P // num_ranks
    out = new.copy()
    for layer in range(L):
        for g in range(num_ranks):
            mine = list(range(g * k, g * k + k))
            free_new = {s: int(new[layer, s]) for s in mine}
            taken = set()
            for s in mine:
                match = next((t for t in mine if t in free_new and free_new[t] == old[layer, s]), None)
                if match is not None:
                    out[layer, s] = free_new.pop(match)
                    taken.add(s)
            leftovers = [free_new[t] for t in mine if t in free_new]
            for s, e in zip([s for s in mine if s not in taken], leftovers):
                out[layer, s] = e
    return out


def vllm_policy(weight, num_replicas, num_groups, num_nodes, num_ranks, dt=np.float64):
    if num_groups % num_nodes == 0:
        return vllm_hierarchical(weight, num_replicas, num_groups, num_nodes, num_ranks, dt)
    return vllm_hierarchical(weight, num_replicas, 1, 1, num_ranks, dt)


def balancedness(weight, phy2log, num_ranks):
    """Per layer, mean / max GPU load (float64)."""
    L, P = phy2log.shape
    count = np.stack([np.bincount(row, minlength=weight.shape[1]) for row in phy2log])
    slot = np.take_along_axis(weight / count, phy2log, axis=1)
    gpu = slot.reshape(L, num_ranks, P // num_ranks).sum(-1)
    return gpu.mean(-1) / gpu.max(-1)


def tie_free_loads(seed, L, E, max_count=12):
    """Integer loads (every sum exact in float32) with no two experts'
    per-replica loads w / c equal for c <= max_count. (Distinct rationals
    with these sizes differ far beyond float64's resolution, and equal ones
    round alike, so float64 tells them apart exactly.)"""
    rng = np.random.default_rng(seed)
    rows = []
    while len(rows) < L:
        row = rng.choice(np.arange(1000, 60000), size=E, replace=False)
        per_replica = row[:, None] / np.arange(1, max_count + 1)[None, :]
        if np.unique(per_replica).size == per_replica.size:
            rows.append(row)
    return np.stack(rows).astype(np.int64)
