// Incremental rebalancing (SPEC "Incremental rebalancing"): start from Q and
// change it, at most M moves away from Q, to lower the largest GPU load.
//
// The search, for one layer whose Q holds every expert in full slots (all
// GPUs active; hierarchical: groups whole on their nodes):
//
//  1. State: the placement (initially Q), replica counts, per-replica loads
//     rep[e] = w[e] / count[e] and GPU loads (float64, each GPU's slots added
//     in ascending order, so they are exactly the loads SPEC defines), and
//     moves(placement, Q). A change redoes only what it touches: the two
//     GPUs of a swap, or every GPU holding one of the two experts whose
//     counts a reassignment changes, each load summed again from its slots
//     (so the values equal a recomputation from scratch).
//  2. Objective: Phi = sum over GPUs of max(0, (l_g - mean) / (max - mean))^2,
//     max taken at the start of the step: the squared excess over the mean.
//     Unlike the plain maximum it rewards relieving any of several near-tied
//     hot GPUs, so greedy steps do not stall on plateaus, and it prefers
//     changes that leave no GPU far above the mean. (On DeepSeek-V3 shapes
//     it did better than the 4th and 8th powers for M of 5 to 20% of P.)
//     Products and one reciprocal only: no transcendental function, so CPU
//     and GPU round alike.
//  3. Each step takes g = the hottest GPU (lowest index on ties) and scores
//     the changes that relieve it, in this order:
//       a. swaps of a slot of g with a slot of another GPU h (the same node
//          for the hierarchical variants) holding another expert, the
//          partners h taken from the least loaded up (lowest index on
//          ties): each swap whose transfer is in (0, gap) is scored by its
//          exact drop of Phi (only g and h change). An h whose best
//          possible swap (the half-gap transfer, Phi being convex, at its
//          cheapest cost) cannot beat the incumbent is skipped, and its scan
//          stops once the incumbent reaches that bound; colder partners
//          come first because their bound is the lowest;
//       b. giving a slot whose expert has >= 2 replicas (any GPU of g's
//          node) to an expert that g holds: every GPU holding that expert is
//          relieved at once, which is what pays when the drift sits in a few
//          hot experts. Candidates that an upper bound on their drop (the
//          drops of the relieved GPUs each taken alone) shows cannot win are
//          not evaluated.
//     Slots and experts are otherwise visited in ascending index; a GPU's
//     second copy of an expert is skipped (it gives the same change). A candidate is
//     admissible if it lowers Phi and keeps moves <= M. The step applies the
//     best one: first those that cost no move (cost = change of
//     moves(placement, Q), so undoing an earlier change is free or refunds),
//     by the largest drop of Phi; otherwise the largest drop of Phi per move.
//     Only a strictly better candidate replaces the incumbent, so the first
//     in the order above wins ties.
//  4. When no candidate is admissible but moves were spent: a refund step,
//     the swap (any two GPUs, within a node for the hierarchical variants)
//     that gives moves back (cost < 0: an expert new on its GPU goes back
//     out) and leaves both GPUs below the current maximum, raising Phi
//     least; the next steps can spend the refund where it now pays more.
//  5. Stop when nothing is admissible and no refund exists, the layer is
//     perfectly balanced, or after 2 M + 8 steps. The result is the most
//     balanced placement seen (balancedness strictly higher replaces it), Q
//     included, so it is never less balanced than Q.
//  6. Three passes of steps 1 to 5, each from Q, with Phi's floor lowered:
//     Phi = sum over GPUs of max(0, (l_g - mean) / (max - mean) - tau)^2 for
//     tau = 0, -0.6, -1.2; the result is the most balanced placement of all
//     passes (the earliest on ties); a perfectly balanced one ends the
//     search. A lower floor also counts GPUs below the mean, so a pass
//     sends load to the coldest GPUs rather than to those near the mean,
//     and takes other paths: each pass wins in some layers. (On DeepSeek-V3
//     shapes, 20 windows of drifting loads, M = 10% of P, sigma = 0.05:
//     0.9946 against 0.9933 for the first pass alone; the first two passes
//     gave 0.9944; four passes (tau = 0, -0.2, -0.4, -0.6) 0.9949 for a
//     third more time.)
#pragma once

#include "search_state.h"

namespace eplb {

struct Pick {
  int32_t kind;  // -1 none, 0 swap slots (a, b), 1 slot b gets expert a
  int32_t a, b, cost;
  double dphi;
  int64_t ord;  // place in the scan order: the first wins ties
  int32_t slow;  // some give candidate was left for eval_give (search_step)

  // Whether candidate (c, dp) is strictly better: free candidates first, by
  // drop; then paid ones by drop per move.
  EPLB_HD bool worse_than(int32_t c, double dp) const {
    if (kind < 0) return true;
    const bool paid = c > 0, mine = cost > 0;
    if (paid != mine) return mine;
    return paid ? dp / (double)c < dphi / (double)cost : dp < dphi;
  }
  // Offers made in scan order keep the first of equal candidates.
  EPLB_HD void offer(int32_t k, int32_t x, int32_t y, int32_t c, double dp, int64_t o) {
    if (worse_than(c, dp)) kind = k, a = x, b = y, cost = c, dphi = dp, ord = o;
  }
};

// The better of two picks; of equal ones the earlier in the scan order. A
// total order, so lanes that scanned different candidates agree.
EPLB_HD Pick better_pick(const Pick& x, const Pick& y) {
  if (y.kind < 0) return x;
  if (x.kind < 0 || x.worse_than(y.cost, y.dphi)) return y;
  if (y.worse_than(x.cost, x.dphi)) return x;
  return y.ord < x.ord ? y : x;
}

// Whether p is strictly better than every candidate of cost c whose drop is
// at least bound: then none of them can win, even on ties.
EPLB_HD bool beats_bound(const Pick& p, int32_t c, double bound) {
  if (p.kind < 0) return false;
  const Pick x{1, 0, 0, c, bound, 0, 0};
  return x.worse_than(p.cost, p.dphi);
}

// The bounds that let a scan skip candidates hold in real arithmetic, but a
// candidate's drop is rounded in another order than its bound and can come
// out a few ulps past it (a swap of exactly half the gap, which integer
// loads make common). A bound is therefore loosened by far more than that
// rounding, 1e-9 of the size of the Phi terms it is made of, before it
// skips anything: no skipped candidate could have won, so the pick is the
// full scan's whichever lane scans what.
EPLB_HD double loosened(double bound, double terms) { return bound - 1e-9 * terms; }

// One step's candidates for the hottest GPU g (see the top of the file).
// Lanes scan disjoint candidates, each keeping its first best; the merge by
// better_pick gives the pick of one lane scanning them all in order. A lane
// skips only candidates that cannot beat a pick it already holds, which
// comes earlier in the scan order, so skipping never changes the result.
template <typename Team>
EPLB_HD Pick search_step(const Team& team, Search& z, int32_t g, int32_t M) {
  const MigrateDims d = z.d;
  MigrateScratch& s = z.s;
  const int32_t k = d.k, n = z.node(g), moves = z.moves;
  const int32_t h0 = z.hier ? n * z.gpn : 0, h1 = z.hier ? (n + 1) * z.gpn : d.G;
  const int32_t no = h1 - h0;
  // The parts of a swap's cost that depend on one side only, and the
  // replica loads, are read once per slot: srep[t] = rep of t's expert;
  // sadd[t] = novel(g, f) - last_new(h, f) for a slot t of h holding f
  // (-last_new(g, e) for g's own slots), or 9 for a GPU's second copy.
  team.for_each(no * k, [&](int32_t x) {
    const int32_t t = h0 * k + x, f = s.cur[t], h = t / k;
    s.srep[t] = s.rep[f];
    s.sadd[t] = !s.uniq[t] ? 9
                : h == g   ? -(int32_t)z.last_new(g, f)
                           : (int32_t)z.novel(g, f) - (int32_t)z.last_new(h, f);
  });
  // a. swaps. Partners by ascending load, lowest index on ties.
  team.single([&] {
    for (int32_t h = h0; h < h1; ++h) {
      int32_t j = h - h0;
      for (; j > 0 && (s.load[s.ord[j - 1]] > s.load[h]); --j) s.ord[j] = s.ord[j - 1];
      s.ord[j] = h;
    }
  });
  // Only g and h change and their sum stays; Phi is convex, so a swap can
  // improve only when the transfer is in (0, gap), and never by more than
  // at half the gap (reach), nor for fewer moves than the cheapest g side
  // plus the cheapest h side (cmin). One item per partner: a lane holds few
  // of them, and scans each slot pair in slot order.
  const Pick none{-1, 0, 0, 0, 0.0, 0, 0};
  Pick best = team.fold(no, none, [&](int32_t oi, Pick& acc) {
    const int32_t h = s.ord[oi];
    const double lg = s.load[g], lh = s.load[h], pg = s.phi0[g], ph = s.phi0[h];
    const double gap = lg - lh;
    if (h == g || !(gap > 0.0)) return;
    const double mid = (lg + lh) / 2.0;
    const double pm = z.phi(mid);
    const double reach = loosened((pm + pm) - (pg + ph), (pm + pm) + (pg + ph));
    if (!acc.worse_than(0, reach)) return;
    int32_t cmin_g = 9, cmin_h = 9;
    for (int32_t t = h * k; t < (h + 1) * k; ++t) cmin_h = s.sadd[t] < cmin_h ? s.sadd[t] : cmin_h;
    for (int32_t i = g * k; i < (g + 1) * k; ++i) {
      if (s.sadd[i] == 9) continue;
      const int32_t ce = s.sadd[i] + (int32_t)z.novel(h, s.cur[i]);
      cmin_g = ce < cmin_g ? ce : cmin_g;
    }
    const int32_t cmin = cmin_g + cmin_h;
    for (int32_t i = g * k; i < (g + 1) * k; ++i) {
      // Nothing left with h can beat a pick that reached h's bound.
      if (!acc.worse_than(cmin, reach)) return;
      if (s.sadd[i] == 9) continue;
      const int32_t e = s.cur[i];
      const double a = s.srep[i];
      const int32_t ce = s.sadd[i] + (int32_t)z.novel(h, e);
      for (int32_t t = h * k; t < (h + 1) * k; ++t) {
        const double delta = a - s.srep[t];
        if (s.sadd[t] == 9 || !(delta > 0.0) || !(delta < gap) || s.cur[t] == e) continue;
        const int32_t c = ce + s.sadd[t];
        if (moves + c > M) continue;
        const double dp = (z.phi(lg - delta) - pg) + (z.phi(lh + delta) - ph);
        const int64_t ord = ((int64_t)oi * k + (i - g * k)) * k + (t - h * k);
        if (dp < 0.0) acc.offer(0, i, t, c, dp, ord);
      }
    }
  }, better_pick);
  // b. a slot whose expert has >= 2 replicas (a donor) goes to an expert of
  // g. relief is the drop of Phi over e's holders if e had one more
  // replica; a candidate's drop is at most relief plus the drop at the
  // donor's GPU, each taken alone (Phi is convex and nondecreasing): a bound
  // that skips most candidates unevaluated.
  const int32_t nd = team.single_result([&] {
    int32_t c = 0;
    for (int32_t t = h0 * k; t < h1 * k; ++t) {
      if (s.uniq[t] && s.cnt[s.cur[t]] >= 2) s.donor[c++] = t;
    }
    if (c > 0) z.prep_donors(c);
    return c;
  });
  if (nd == 0) return best;
  for (int32_t ii = 0; ii < k; ++ii) {
    const int32_t i = g * k + ii;
    if (!s.uniq[i]) continue;
    const int32_t e = s.cur[i];
    const double ne = s.w[e] / (double)(s.cnt[e] + 1);
    double relief = 0.0, held = 0.0;  // held: the holders' Phi terms, for loosened()
    for (int32_t p = s.head[e]; p >= 0; p = s.nxt[p]) {
      const int32_t y = p / k;
      if (!s.uniq[p] || !(s.phi0[y] > 0.0)) continue;
      const double n_y = (double)(s.gcnt[(int64_t)y * d.E + e] >> 1);
      relief = relief + (s.phi0[y] - z.phi(s.load[y] + n_y * (ne - s.rep[e])));
      held = held + s.phi0[y];
    }
    const int32_t n_x = team.single_result([&] { return z.prep_give(e); });
    const int64_t base = (int64_t)no * k * k + (int64_t)ii * nd;
    // Donor j's cost c; false when it is not admissible or skip(c, bound)
    // says an upper bound on its drop cannot win (a cheap, weaker bound is
    // tried first).
    auto admit = [&](int32_t j, int32_t& c, const auto& skip) {
      const int32_t t = s.donor[j], h = t / k, f = s.cur[t];
      if (f == e) return false;
      c = z.give_cost(t, e);
      const double terms = held + s.phi0[h];
      if (moves + c > M || skip(c, loosened(-relief - s.phi0[h], terms))) return false;
      double bound = -relief;
      if (ne < s.rep[f]) bound = bound + (z.phi(s.load[h] + (ne - s.rep[f])) - s.phi0[h]);
      return !skip(c, loosened(bound, terms));
    };
    // Donors whose GPUs also hold e need eval_give, which adds up per-GPU
    // changes in shared scratch: the lanes only flag them (s.slow, cleared
    // again below), and one lane evaluates them after the merge.
    best.slow = 0;
    best = team.fold(nd, best, [&](int32_t j, Pick& acc) {
      int32_t c;
      double dp;
      if (!admit(j, c, [&](int32_t c2, double b) { return !acc.worse_than(c2, b); })) return;
      if (!z.give_fast(s.donor[j], e, n_x, dp)) {
        s.slow[j] = 1;
        acc.slow = 1;
      } else if (dp < 0.0) {
        acc.offer(1, e, s.donor[j], c, dp, base + j);
      }
    }, [](const Pick& x, const Pick& y) {
      Pick r = better_pick(x, y);
      r.slow = x.slow | y.slow;
      return r;
    });
    if (!best.slow) {
      team.single([&] { z.done_give(n_x); });
      continue;
    }
    best = team.single_result([&] {
      Pick acc = best;
      for (int32_t j = 0; j < nd; ++j) {
        int32_t c;
        if (!s.slow[j]) continue;
        s.slow[j] = 0;
        if (!admit(j, c, [&](int32_t c2, double b) { return beats_bound(acc, c2, b); })) continue;
        const double dp = z.eval_give(s.donor[j], e);
        if (dp < 0.0) acc = better_pick(acc, Pick{1, e, s.donor[j], c, dp, base + j, 0});
      }
      z.done_give(n_x);
      return acc;
    });
  }
  return best;
}

// When nothing is admissible and moves were spent: a swap that gives moves
// back (cost < 0) and leaves both its GPUs below the current maximum, the one
// that raises Phi least (first in slot order on ties). The next steps can
// spend the refund where it now helps more.
template <typename Team>
EPLB_HD Pick refund_step(const Team& team, Search& z, double peak) {
  const MigrateDims d = z.d;
  MigrateScratch& s = z.s;
  const int32_t k = d.k;
  auto least = [](const Pick& x, const Pick& y) {
    if (y.kind < 0) return x;
    if (x.kind < 0 || y.dphi < x.dphi) return y;
    if (x.dphi < y.dphi) return x;
    return y.ord < x.ord ? y : x;
  };
  const Pick none{-1, 0, 0, 0, 0.0, 0, 0};
  return team.fold(d.P, none, [&](int32_t i, Pick& acc) {
    const int32_t x = i / k, e = s.cur[i];
    if (!s.uniq[i] || !z.last_new(x, e)) return;
    const int32_t lo = z.hier ? z.node(x) * z.gpn * k : 0, hi = z.hier ? lo + z.gpn * k : d.P;
    for (int32_t t = lo; t < hi; ++t) {
      const int32_t y = t / k, f = s.cur[t];
      if (y == x || !s.uniq[t] || f == e) continue;
      const int32_t c = (int32_t)z.novel(y, e) + (int32_t)z.novel(x, f) - 1 - (int32_t)z.last_new(y, f);
      if (c >= 0) continue;
      const double lx = s.load[x] - s.rep[e] + s.rep[f], ly = s.load[y] + s.rep[e] - s.rep[f];
      if (!(lx < peak) || !(ly < peak)) continue;
      const double dp = (z.phi(lx) - s.phi0[x]) + (z.phi(ly) - s.phi0[y]);
      if (acc.kind < 0 || dp < acc.dphi) acc = Pick{0, i, t, c, dp, (int64_t)i * d.P + t, 0};
    }
  }, least);
}

struct SearchStart {
  double bal;
  int32_t moves;
};

// One pass of the search (steps 1 to 5) with the objective's floor at
// mean + tau (max - mean). The first pass (best_bal < 0) starts s.best at
// Q; a later one replaces s.best only by a strictly more balanced placement.
// Every lane keeps the step's scalars (the hottest GPU, mean, moves)
// itself, from values in scratch that only team.single changes.
template <typename Team>
EPLB_HD double search_pass(const Team& team, MigrateDims d, MigrateScratch& s, bool hier, int32_t M,
                           double tau, double best_bal) {
  Search z{d, s, hier, hier ? d.G / d.N : d.G, 0, 0.0, 0.0, tau};
  const bool first = best_bal < 0.0;
  team.for_each(d.P, [&](int32_t p) {
    s.cur[p] = s.q[p];
    if (first) s.best[p] = s.q[p];
    s.slow[p] = 0;
  });
  team.for_each(d.G, [&](int32_t g) {
    for (int32_t e = 0; e < d.E; ++e) s.gcnt[(int64_t)g * d.E + e] = 0;
    s.dl[g] = 0.0, s.on[g] = 1;
  });
  team.sync();
  const SearchStart start = team.single_result([&] {
    // gcnt = 2 qcnt + (qcnt > 0): zero but where Q has a slot.
    for (int32_t p = 0; p < d.P; ++p) {
      const int64_t i = (int64_t)(p / d.k) * d.E + s.q[p];
      s.gcnt[i] = 2 * s.qcnt[i] + 1;
    }
    const double bal = z.refresh();
    return SearchStart{bal, z.moves};
  });
  if (first) best_bal = start.bal;
  z.moves = start.moves;
  double total = 0.0;
  for (int32_t g = 0; g < d.G; ++g) total = total + s.load[g];
  z.mean = total / (double)d.G;
  const int64_t max_steps = 2 * (int64_t)M + 8;
  for (int64_t step = 0; step < max_steps; ++step) {
    int32_t g = 0;
    for (int32_t x = 1; x < d.G; ++x) g = s.load[x] > s.load[g] ? x : g;
    const double span = s.load[g] - z.mean;
    if (!(span > 0.0)) break;
    z.inv = 1.0 / span;
    team.for_each(d.G, [&](int32_t x) { s.phi0[x] = z.phi(s.load[x]); });
    team.sync();
    Pick pk = search_step(team, z, g, M);
    if (pk.kind < 0 && z.moves > 0) pk = refund_step(team, z, s.load[g]);
    if (pk.kind < 0) break;
    team.single([&] {
      if (pk.kind == 0) {
        z.apply_swap(pk.a, pk.b);
      } else {
        z.apply_give(pk.b, pk.a);
      }
    });
    z.moves += pk.cost;
    const double bal = z.bal_now();
    if (bal > best_bal) {
      best_bal = bal;
      team.for_each(d.P, [&](int32_t p) { s.best[p] = s.cur[p]; });
    }
  }
  team.sync();
  return best_bal;
}

// Step 6's passes and their floors (tau).
constexpr int32_t kSearchPasses = 3;
EPLB_HD double search_floor(int32_t pass) { return pass == 0 ? 0.0 : pass == 1 ? -0.6 : -1.2; }

// Runs the search from s.q (which must hold every expert in full slots,
// all GPUs active, s.qcnt and s.home filled): step 6, one pass per floor,
// the most balanced placement of all passes in s.best (the earliest pass on
// ties); returns its balancedness.
template <typename Team>
EPLB_HD double incremental_search(const Team& team, MigrateDims d, MigrateScratch& s, bool hier,
                                  int32_t M) {
  double best_bal = -1.0;
  for (int32_t i = 0; i < kSearchPasses && best_bal < 1.0; ++i) {
    best_bal = search_pass(team, d, s, hier, M, search_floor(i), best_bal);
  }
  return best_bal;
}

}  // namespace eplb
