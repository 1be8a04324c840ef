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

}  // namespace eplb
