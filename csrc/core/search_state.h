// The state of the incremental search (incremental.h, steps 1 and 2): the
// placement being changed, replica counts and loads, per-GPU expert counts
// against Q, the moves spent, and what one candidate change would do to the
// objective. A change updates only what it touches, to the values a
// recomputation from scratch would give, so CPU and GPU agree bit for bit.
#pragma once

#include "relabel.h"
#include "team.h"

namespace eplb {

struct Search {
  MigrateDims d;
  MigrateScratch& s;
  bool hier;
  int32_t gpn;  // GPUs per node (G when not hierarchical)
  int32_t moves;
  double mean, inv;
  double tau;  // the pass's floor: Phi counts the load above mean + tau (max - mean)

  EPLB_HD int32_t node(int32_t g) const { return hier ? g / gpn : 0; }

  EPLB_HD double phi(double l) const {
    const double y = (l - mean) * inv - tau;
    if (!(y > 0.0)) return 0.0;
    return y * y;
  }

  // Lists, counts, loads, first-copy flags and moves of s.cur; returns the
  // balancedness.
  EPLB_HD double refresh() {
    for (int32_t e = 0; e < d.E; ++e) s.head[e] = -1;
    for (int32_t p = d.P - 1; p >= 0; --p) {
      s.nxt[p] = s.head[s.cur[p]];
      s.head[s.cur[p]] = p;
    }
    for (int32_t g = 0; g < d.G; ++g) {
      const int32_t tag = s.tag++;
      for (int32_t j = 0; j < d.k; ++j) {
        const int32_t e = s.cur[g * d.k + j];
        s.uniq[g * d.k + j] = s.stamp[e] != tag;
        s.stamp[e] = tag;
      }
    }
    moves = count_moves(d, s, s.cur, d.G);
    return balancedness_of(d, s, s.cur, d.G);
  }

  // A change touches a few GPUs and at most two experts: the bookkeeping
  // below updates only those, giving the same values refresh() would.
  // Slot p leaves expert e's list / joins it in ascending slot order.
  EPLB_HD void unlink(int32_t e, int32_t p) {
    if (s.head[e] == p) {
      s.head[e] = s.nxt[p];
      return;
    }
    int32_t q = s.head[e];
    while (s.nxt[q] != p) q = s.nxt[q];
    s.nxt[q] = s.nxt[p];
  }
  EPLB_HD void link(int32_t e, int32_t p) {
    if (s.head[e] < 0 || s.head[e] > p) {
      s.nxt[p] = s.head[e];
      s.head[e] = p;
      return;
    }
    int32_t q = s.head[e];
    while (s.nxt[q] >= 0 && s.nxt[q] < p) q = s.nxt[q];
    s.nxt[p] = s.nxt[q];
    s.nxt[q] = p;
  }
  // First-copy flags and the load of GPU g, its slots added in ascending
  // order from 0 (as gpu_loads_bal does), so the loads stay exact.
  EPLB_HD void redo_gpu(int32_t g) {
    const int32_t tag = s.tag++;
    double l = 0.0;
    for (int32_t j = 0; j < d.k; ++j) {
      const int32_t e = s.cur[g * d.k + j];
      s.uniq[g * d.k + j] = s.stamp[e] != tag;
      s.stamp[e] = tag;
      l = l + s.rep[e];
    }
    s.load[g] = l;
  }
  // Balancedness from the loads (all GPUs active in the search).
  EPLB_HD double bal_now() const {
    double total = 0.0, peak = 0.0;
    for (int32_t g = 0; g < d.G; ++g) {
      total = total + s.load[g];
      peak = s.load[g] > peak ? s.load[g] : peak;
    }
    if (!(peak > 0.0)) return 1.0;
    return total / (double)d.G / peak;
  }
  // Slot a and slot b (other GPUs) exchange experts. The caller adds the
  // change of moves (every lane keeps its own count).
  EPLB_HD void apply_swap(int32_t a, int32_t b) {
    const int32_t e = s.cur[a], f = s.cur[b], ga = a / d.k, gb = b / d.k;
    s.gcnt[(int64_t)ga * d.E + e] -= 2, s.gcnt[(int64_t)gb * d.E + e] += 2;
    s.gcnt[(int64_t)gb * d.E + f] -= 2, s.gcnt[(int64_t)ga * d.E + f] += 2;
    unlink(e, a), unlink(f, b);
    s.cur[a] = f, s.cur[b] = e;
    link(f, a), link(e, b);
    redo_gpu(ga), redo_gpu(gb);
  }
  // Slot t gets expert x (its expert y keeps >= 1 replica): the replica
  // loads of x and y change, so every GPU holding either is redone.
  EPLB_HD void apply_give(int32_t t, int32_t x) {
    const int32_t h = t / d.k, y = s.cur[t];
    s.gcnt[(int64_t)h * d.E + y] -= 2, s.gcnt[(int64_t)h * d.E + x] += 2;
    unlink(y, t);
    s.cur[t] = x;
    link(x, t);
    s.cnt[x] += 1, s.cnt[y] -= 1;
    s.rep[x] = s.w[x] / (double)s.cnt[x];
    s.rep[y] = s.w[y] / (double)s.cnt[y];
    redo_gpu(h);
    for (int32_t p = s.head[x]; p >= 0; p = s.nxt[p]) redo_gpu(p / d.k);
    for (int32_t p = s.head[y]; p >= 0; p = s.nxt[p]) redo_gpu(p / d.k);
  }

  // gcnt holds 2 x (copies of e on g) + (Q had e on g): one read tells
  // whether g gaining e is a move (0) or losing a copy refunds one (2).
  EPLB_HD bool novel(int32_t g, int32_t e) const {
    return s.gcnt[(int64_t)g * d.E + e] == 0;
  }
  EPLB_HD bool last_new(int32_t g, int32_t e) const {
    return s.gcnt[(int64_t)g * d.E + e] == 2;
  }

  // Phi change of "slot t gets expert x" (its expert y keeps >= 1 replica).
  EPLB_HD double eval_give(int32_t t, int32_t x) {
    const int32_t h = t / d.k, y = s.cur[t];
    const double nx = s.w[x] / (double)(s.cnt[x] + 1);
    const double ny = s.w[y] / (double)(s.cnt[y] - 1);
    int32_t n = 0;
    s.touched[n++] = h;
    s.dl[h] = nx - s.rep[y];
    for (int32_t p = s.head[x]; p >= 0; p = s.nxt[p]) add(p / d.k, nx - s.rep[x], n);
    for (int32_t p = s.head[y]; p >= 0; p = s.nxt[p]) {
      if (p != t) add(p / d.k, ny - s.rep[y], n);
    }
    double dphi = 0.0;
    for (int32_t i = 0; i < n; ++i) {
      const int32_t g = s.touched[i];
      dphi = dphi + (phi(s.load[g] + s.dl[g]) - s.phi0[g]);
      s.dl[g] = 0.0;
      s.on[g] &= (uint8_t)~2u;  // clears the "touched" bit (bit 1)
    }
    return dphi;
  }

  // eval_give(t, x) for every donor t spends most of its work on x's
  // holders, the same for all donors. prep_give stores, per holder GPU in
  // the order eval_give first touches it, its Phi change (its load change
  // summed slot by slot from 0, as eval_give does), and marks the holders
  // (s.on bit 2). Returns their number.
  EPLB_HD int32_t prep_give(int32_t x) {
    const double nx = s.w[x] / (double)(s.cnt[x] + 1);
    const double dx = nx - s.rep[x];
    int32_t n = 0;
    for (int32_t p = s.head[x]; p >= 0;) {
      const int32_t g = p / d.k;
      double dl = 0.0;
      for (; p >= 0 && p / d.k == g; p = s.nxt[p]) dl = dl + dx;
      s.xg[n] = g;
      s.xterm[n++] = phi(s.load[g] + dl) - s.phi0[g];
      s.on[g] |= 4;
    }
    double sum = 0.0;
    for (int32_t i = 0; i < n; ++i) sum = sum + s.xterm[i];
    s.xsum[0] = sum;
    return n;
  }
  // Per donor slot t (its expert y loses a replica), the terms eval_give
  // adds for y's other holders, which do not depend on the expert given:
  // each GPU's change summed slot by slot from 0, in first-slot order. Only
  // for donors whose GPU holds no other copy of y (its change then mixes
  // with the expert given's) and while the buffer of P entries lasts.
  EPLB_HD void prep_donors(int32_t nd) {
    int32_t used = 0;
    for (int32_t j = 0; j < nd; ++j) {
      const int32_t t = s.donor[j], h = t / d.k, y = s.cur[t];
      s.yb[t] = -1;
      bool simple = true;
      int32_t n = 0;
      for (int32_t p = s.head[y]; p >= 0; p = s.nxt[p]) {
        if (p == t) continue;
        if (p / d.k == h) simple = false;
        n += 1;
      }
      if (!simple || used + n > d.P) continue;
      const double dy = s.w[y] / (double)(s.cnt[y] - 1) - s.rep[y];
      s.yb[t] = used;
      for (int32_t p = s.head[y]; p >= 0;) {
        const int32_t g = p / d.k;
        double dl = 0.0;
        for (; p >= 0 && p / d.k == g; p = s.nxt[p]) dl = dl + dy;
        if (g == h) continue;
        s.yg[used] = g;
        s.yt[used++] = phi(s.load[g] + dl) - s.phi0[g];
      }
      s.ye[t] = used;
      double sum = 0.0;
      for (int32_t i = s.yb[t]; i < used; ++i) sum = sum + s.yt[i];
      s.ysum[t] = sum;
    }
  }
  EPLB_HD void done_give(int32_t nx) {
    for (int32_t i = 0; i < nx; ++i) s.on[s.xg[i]] &= (uint8_t)~4u;
  }
  // eval_give(t, x) without touching shared state, when the donor's GPU
  // and the other GPUs holding its expert y hold no x: then each GPU's
  // change comes from one side only, and the holders' terms are prep_give's
  // and prep_donors', added up once per step (xsum, ysum) instead of once
  // per candidate. The terms are eval_give's; their sum is rounded in
  // another order, the same on every device. Returns false (dp unset) when
  // eval_give is needed.
  EPLB_HD bool give_fast(int32_t t, int32_t x, int32_t n_x, double& dp) const {
    const int32_t h = t / d.k, y = s.cur[t];
    if (s.on[h] & 4) return false;
    const double nx = s.w[x] / (double)(s.cnt[x] + 1);
    if (s.yb[t] >= 0) {
      for (int32_t i = s.yb[t]; i < s.ye[t]; ++i) {
        if (s.on[s.yg[i]] & 4) return false;
      }
      dp = (phi(s.load[h] + (nx - s.rep[y])) - s.phi0[h]) + (s.xsum[0] + s.ysum[t]);
      return true;
    }
    for (int32_t p = s.head[y]; p >= 0; p = s.nxt[p]) {
      if (p != t && (s.on[p / d.k] & 4)) return false;
    }
    const double ny = s.w[y] / (double)(s.cnt[y] - 1);
    const double dy = ny - s.rep[y];
    double dlh = nx - s.rep[y];
    for (int32_t p = s.head[y]; p >= 0; p = s.nxt[p]) {
      if (p != t && p / d.k == h) dlh = dlh + dy;
    }
    double dphi = 0.0;
    dphi = dphi + (phi(s.load[h] + dlh) - s.phi0[h]);
    for (int32_t i = 0; i < n_x; ++i) dphi = dphi + s.xterm[i];
    for (int32_t p = s.head[y]; p >= 0;) {
      const int32_t g = p / d.k;
      double dl = 0.0;
      bool any = false;
      for (; p >= 0 && p / d.k == g; p = s.nxt[p]) {
        if (p != t) dl = dl + dy, any = true;
      }
      if (g != h && any) dphi = dphi + (phi(s.load[g] + dl) - s.phi0[g]);
    }
    dp = dphi;
    return true;
  }

  // s.on's bit 1 marks GPUs already in the touched list (bit 0: active).
  EPLB_HD void add(int32_t g, double delta, int32_t& n) {
    if (!(s.on[g] & 2) && g != s.touched[0]) {
      s.on[g] |= 2;
      s.touched[n++] = g;
    }
    s.dl[g] = s.dl[g] + delta;
  }

  EPLB_HD int32_t give_cost(int32_t t, int32_t x) const {
    const int32_t h = t / d.k;
    return (int32_t)novel(h, x) - (int32_t)last_new(h, s.cur[t]);
  }
};

}  // namespace eplb
