// One layer of the migrate op: the variant's fresh placement F and the
// previous placement Q in, the placement to serve out (SPEC "Keeping experts
// where they are"):
//
//  1. R = F relabeled for minimum moves (relabel.h); always computed.
//  2. With max_moves M >= 0, if Q fills every active slot, holds every
//     expert, all GPUs are active and (hierarchical variants) no group of Q
//     spans two nodes: M = 0 gives Q; otherwise the incremental search from
//     Q (incremental.h), replaced by R when R needs at most M moves and is
//     strictly more balanced. Any other layer gets R.
//  3. If Q fills every slot, holds every expert and all GPUs are active, the
//     layer keeps Q when bal(result) - bal(Q) < min_improvement.
//
// Outputs: the placement; replica ranks (R: F's ranks, which follow their
// replicas; Q or a searched placement: each expert's slots in ascending
// order); counts over the active slots; info = (outcome, moves of R, moves
// of the result). Inputs may hold any values: ids outside their range read
// as empty, so the CUDA kernel, which cannot raise, stays in bounds.
#pragma once

#include "incremental.h"

namespace eplb {

enum MigrateOutcome : int32_t { kRelabeled = 0, kSearched = 1, kKept = 2 };

struct MigrateIO {
  const float* w;         // E   load summed over steps (float32, SPEC)
  const int64_t* fresh;   // P   F
  const int64_t* frank;   // P   F's replica ranks, -1 for slots in no map
  const int64_t* prev;    // P   Q
  const uint8_t* active;  // G   nonzero: active; nullptr: all active
  int64_t* out_p2l;       // P
  int64_t* out_rank;      // P
  int64_t* out_cnt;       // E
  int64_t* info;          // 3
};

EPLB_HD int32_t clamp_id(int64_t v, int64_t n) { return v >= 0 && v < n ? (int32_t)v : -1; }

// What the sequential first part decides for the rest of the layer.
struct MigratePlan {
  int32_t na;        // active GPUs
  int32_t moves_r;   // moves of R
  int32_t keepable;  // Q is full, holds every expert, all GPUs active
  int32_t search;    // run the incremental search (M > 0 and Q allows it)
  int32_t hier;      // node-preserving changes only
  int32_t outcome;
};

// Step 1 and the checks of step 2, on one lane.
EPLB_HD MigratePlan migrate_begin(MigrateDims d, MigrateScratch& s, MigrateIO io) {
  const int32_t k = d.k, P = d.P, E = d.E;
  s.tag = 0;
  for (int32_t e = 0; e < E; ++e) s.stamp[e] = -1, s.w[e] = (double)io.w[e];
  int32_t na = 0;
  for (int32_t g = 0; g < d.G; ++g) {
    s.on[g] = io.active == nullptr || io.active[g] != 0;
    if (s.on[g]) s.act[na++] = g;
  }
  const bool all_active = na == d.G;
  for (int32_t p = 0; p < P; ++p) {
    s.q[p] = clamp_id(io.prev[p], E);
    s.f[p] = clamp_id(io.fresh[p], E);
    s.fr[p] = clamp_id(io.frank[p], P);
  }
  gpu_counts(d, s.q, s.qcnt);
  const bool hier = d.N > 1 && all_active;
  relabel_perm(d, s, na, hier);
  relabel_slots(d, s);
  const int32_t moves_r = count_moves(d, s, s.r, na);

  // What Q allows (SPEC): full slots, every expert, groups whole on nodes.
  bool full = true, split = false;
  for (int32_t i = 0; i < na; ++i) {
    for (int32_t j = 0; j < k; ++j) full = full && s.q[s.act[i] * k + j] >= 0;
  }
  count_replicas(d, s, s.q, na);
  for (int32_t e = 0; e < E; ++e) full = full && s.cnt[e] > 0;
  const bool keepable = full && all_active;
  if (keepable) {
    const int32_t m = E / d.C, slots_per_node = P / d.N;
    for (int32_t e = 0; e < E; ++e) s.home[e] = -1;
    for (int32_t p = 0; p < P; ++p) {
      const int32_t lead = s.q[p] / m * m;  // the group's first expert holds its node
      const int32_t node = hier ? p / slots_per_node : 0;
      if (s.home[lead] < 0) s.home[lead] = node;
      split = split || s.home[lead] != node;
    }
    for (int32_t e = 0; e < E; ++e) s.home[e] = s.home[e / m * m];
  }
  const bool q_ok = d.max_moves >= 0 && keepable && !split;
  return MigratePlan{na, moves_r, keepable, q_ok && d.max_moves > 0, hier,
                     q_ok ? (int32_t)kSearched : (int32_t)kRelabeled};
}

// The choice between R, Q and the searched placement (s.best, whose
// balancedness is bal_s), step 3 and the outputs, on one lane.
EPLB_HD void migrate_end(MigrateDims d, MigrateScratch& s, MigrateIO io, MigratePlan pl,
                         double bal_s) {
  const int32_t P = d.P, E = d.E, na = pl.na;
  const int32_t* res = s.r;
  int32_t outcome = pl.outcome;
  if (outcome == kSearched) {
    res = s.q;
    if (pl.search) {
      res = s.best;
      if (pl.moves_r <= d.max_moves && balancedness_of(d, s, s.r, na) > bal_s) {
        res = s.r, outcome = kRelabeled;
      }
    }
  }
  if (pl.keepable && res != s.q) {
    const double bal_new = balancedness_of(d, s, res, na);
    const double bal_q = balancedness_of(d, s, s.q, na);
    if (bal_new - bal_q < d.min_improvement) res = s.q, outcome = kKept;
  } else if (pl.keepable && 0.0 < d.min_improvement) {
    outcome = kKept;
  }

  count_replicas(d, s, res, na);
  for (int32_t e = 0; e < E; ++e) io.out_cnt[e] = s.cnt[e];
  if (res == s.r) {
    for (int32_t p = 0; p < P; ++p) io.out_p2l[p] = s.r[p], io.out_rank[p] = s.rr[p];
  } else {
    for (int32_t e = 0; e < E; ++e) s.head[e] = 0;  // next rank of each expert
    for (int32_t p = 0; p < P; ++p) {
      io.out_p2l[p] = res[p];
      io.out_rank[p] = s.head[res[p]]++;
    }
  }
  io.info[0] = outcome;
  io.info[1] = pl.moves_r;
  io.info[2] = count_moves(d, s, res, na);
}

// One layer on a team: the relabeling and the final choice are sequential,
// the search's candidate scans are spread over the lanes.
template <typename Team>
EPLB_HD void migrate_layer(const Team& team, MigrateDims d, MigrateScratch& s, MigrateIO io) {
  const MigratePlan pl = team.single_result([&] { return migrate_begin(d, s, io); });
  double bal_s = 0.0;
  if (pl.search) bal_s = incremental_search(team, d, s, pl.hier != 0, d.max_moves);
  team.single([&] { migrate_end(d, s, io, pl, bal_s); });
}

// The CUDA kernel runs step 6's passes side by side instead: one block per
// (layer, pass), each from Q (search_pass with no earlier best), leaving its
// best placement and balancedness on the layer's board; the last block to
// arrive combines them. This gives migrate_layer's bits. A pass's path does
// not depend on the earlier passes, only which placements it keeps does:
// alone it keeps the first placement of its highest balancedness, which is
// what incremental_search keeps from it when that balancedness beats the
// earlier passes'. So the combination takes the passes in order, a later
// one winning only when strictly more balanced, and only while the best so
// far is below 1 (where incremental_search stops).
struct PassBoard {
  int32_t* best;  // kSearchPasses * P
  double* bal;    // kSearchPasses
};

EPLB_HD int64_t pass_board(MigrateDims d, void* buf, PassBoard* out) {
  Carver c{(char*)buf, 0};
  PassBoard b;
  b.best = c.take<int32_t>((int64_t)kSearchPasses * d.P);
  b.bal = c.take<double>(kSearchPasses);
  if (out) *out = b;
  return c.off;
}

// Blocks per layer: the passes when the search may run, else one.
EPLB_HD int32_t migrate_blocks(MigrateDims d) { return d.max_moves > 0 ? kSearchPasses : 1; }

// Block `pass` of a layer. arrive() is called by every lane once the
// block's board entries are written, and is true, on every lane, in
// exactly one block of the layer: the last to arrive, whose reads of the
// board (volatile: other blocks wrote it) must see every block's entries.
template <typename Team, typename Arrive>
EPLB_HD void migrate_layer_pass(const Team& team, MigrateDims d, MigrateScratch& s, MigrateIO io,
                                int32_t pass, PassBoard board, const Arrive& arrive) {
  const MigratePlan pl = team.single_result([&] { return migrate_begin(d, s, io); });
  if (!pl.search) {
    // Every block planned alike: block 0 writes the layer, the others leave.
    if (pass == 0) team.single([&] { migrate_end(d, s, io, pl, 0.0); });
    return;
  }
  const double bal = search_pass(team, d, s, pl.hier != 0, d.max_moves, search_floor(pass), -1.0);
  team.for_each(d.P, [&](int32_t p) { board.best[(int64_t)pass * d.P + p] = s.best[p]; });
  team.single([&] { board.bal[pass] = bal; });
  if (!arrive()) return;
  const volatile int32_t* seen = board.best;
  const volatile double* bals = board.bal;
  int32_t win = 0;
  double best_bal = bals[0];
  for (int32_t i = 1; i < kSearchPasses; ++i) {
    const double b = bals[i];
    if (best_bal < 1.0 && b > best_bal) win = i, best_bal = b;
  }
  if (win != pass) {
    team.for_each(d.P, [&](int32_t p) { s.best[p] = seen[(int64_t)win * d.P + p]; });
    team.sync();
  }
  team.single([&] { migrate_end(d, s, io, pl, best_bal); });
}

// A layer's blocks run one after another, in the arrival order `order` (a
// permutation of [0, migrate_blocks(d))): how the host tests run the CUDA
// kernel's layout, every order giving migrate_layer's bits.
template <typename Team>
void migrate_layer_blocks(const Team& team, MigrateDims d, MigrateScratch& s, MigrateIO io,
                          PassBoard board, const int32_t* order) {
  const int32_t n = migrate_blocks(d);
  for (int32_t i = 0; i < n; ++i) {
    migrate_layer_pass(team, d, s, io, order[i], board, [&] { return i == n - 1; });
  }
}

}  // namespace eplb
