// Placing a fresh placement F against the previous one Q (SPEC "Keeping
// experts where they are"): per-GPU expert counts, moves, balancedness in
// float64, and the exact relabeling of F's GPUs that minimises moves.
//
// Relabeling. moves(F relabeled, Q) = sum over GPUs of the distinct experts
// a GPU holds minus those it already held in Q; the first term does not
// depend on the renumbering, so minimising moves is maximising the overlap
// sum over (new GPU a -> old position b) of |experts(F, a) & experts(Q, b)|.
// That is an assignment problem, solved exactly (assignment.h) with cost
//   (k - overlap(a, b)) * (n + 1) + (a != b)
// over the n GPUs being permuted: the first term is the moves, the second
// only breaks ties among minimum renumberings, towards leaving the most GPUs
// where the variant put them, and then as assignment.h fixes. Node-preserving
// renumberings (hierarchical variants, all GPUs active): for every node pair
// (x, y) the same problem on x's and y's GPUs (local indices in the tie
// term), then the node assignment with cost
//   (P/N - best overlap(x, y)) * (N + 1) + (x != y).
// With an inactive GPU, only active GPUs are permuted (indices in the
// ascending list of active GPUs in the tie term); inactive ones stay.
#pragma once

#include "assignment.h"

namespace eplb {

struct MigrateDims {
  int32_t E, P, k, G, C, N;
  int32_t max_moves;       // -1: relabel only
  double min_improvement;  // in [0, 1]
};

// Per-layer scratch, carved from one buffer (migrate_scratch). Arrays
// marked R serve only the relabeling and share their bytes with gcnt.
struct MigrateScratch {
  double* w;         // E      the layer's load (float32 sum over steps, widened)
  double* rep;       // E      load per replica, w / count
  double* load;      // G      GPU loads
  double* dl;        // G      load changes of one candidate
  double* phi0;      // G      each GPU's term of the search objective
  int32_t* q;        // P      Q, ids outside [0, E) read as -1 (empty)
  int32_t* f;        // P      F's experts (R)
  int32_t* fr;       // P      F's replica ranks (R)
  int32_t* r;        // P      F relabeled
  int32_t* rr;       // P      its ranks
  int32_t* cur;      // P      the search's placement
  int32_t* best;     // P      the best placement the search has seen
  int32_t* nxt;      // P      next slot of the same expert (search)
  int32_t* donor;    // P      slots whose expert has >= 2 replicas (search)
  uint8_t* slow;     // P      per donor: needs eval_give (search, one expert)
  double* srep;      // P      each slot's replica load (search, one step)
  int32_t* sadd;     // P      each slot's part of a swap's cost (search, one step)
  double* xterm;     // G      Phi change of each holder of the expert given (search)
  int32_t* xg;       // G      those holders, in first-slot order (search)
  int32_t* yb;       // P      per donor slot: its range in yg/yt, yb[t] < 0: none (search)
  int32_t* ye;       // P
  int32_t* yg;       // P      the other GPUs holding a donor's expert (search, one step)
  double* yt;        // P      their Phi change when it loses the donor's replica
  double* ysum;      // P      per donor slot: the total of its yt range
  double* xsum;      // 1      the total of xterm (search, one expert)
  uint8_t* uniq;     // P      first slot of its expert on its GPU (search)
  int32_t* head;     // E      first slot of each expert (search)
  int32_t* cnt;      // E      replica counts
  int32_t* stamp;    // E      "seen on this GPU" marks
  int32_t* home;     // E      node of each expert in Q
  int32_t* qcnt;     // G * E  copies of e on GPU g in Q
  int32_t* qoff;     // E + 1  offsets into qhold (R)
  int32_t* qhold;    // P      active GPUs holding each expert in Q, per expert (R)
  int32_t* gcnt;     // G * E  search state per (GPU, expert), incremental.h
  int32_t* overlap;  // G * G  (R)
  int64_t* cost;     // G * G  (also N * N) (R)
  int32_t* perm;     // G      new GPU -> old position (R)
  int32_t* act;      // G      active GPUs, ascending
  int32_t* col;      // G      assignment result (R)
  int32_t* sub;      // N * N * G/N  best GPU assignment of each node pair (R)
  int64_t* nodew;    // N * N  (R)
  int32_t* touched;  // G
  int32_t* ord;      // G      GPUs by ascending load (search, one step)
  uint8_t* on;       // G      active GPUs
  uint8_t* used;     // k      (R)
  uint8_t* filled;   // k      (R)
  int32_t tag;       // the next stamp value
  AssignScratch as;  // sized G (R)
};

EPLB_HD int64_t migrate_scratch(MigrateDims d, void* buf, MigrateScratch* out) {
  Carver c{(char*)buf, 0};
  MigrateScratch s;
  const int64_t E = d.E, P = d.P, G = d.G, N = d.N;
  s.w = c.take<double>(E);
  s.rep = c.take<double>(E);
  s.load = c.take<double>(G);
  s.dl = c.take<double>(G);
  s.phi0 = c.take<double>(G);
  s.q = c.take<int32_t>(P);
  s.r = c.take<int32_t>(P);
  s.rr = c.take<int32_t>(P);
  s.cur = c.take<int32_t>(P);
  s.best = c.take<int32_t>(P);
  s.nxt = c.take<int32_t>(P);
  s.donor = c.take<int32_t>(P);
  s.slow = c.take<uint8_t>(P);
  s.srep = c.take<double>(P);
  s.sadd = c.take<int32_t>(P);
  s.xterm = c.take<double>(G);
  s.xg = c.take<int32_t>(G);
  s.yb = c.take<int32_t>(P);
  s.ye = c.take<int32_t>(P);
  s.yg = c.take<int32_t>(P);
  s.yt = c.take<double>(P);
  s.ysum = c.take<double>(P);
  s.xsum = c.take<double>(1);
  s.uniq = c.take<uint8_t>(P);
  s.head = c.take<int32_t>(E);
  s.cnt = c.take<int32_t>(E);
  s.stamp = c.take<int32_t>(E);
  s.home = c.take<int32_t>(E);
  s.qcnt = c.take<int32_t>(G * E);
  s.act = c.take<int32_t>(G);
  s.touched = c.take<int32_t>(G);
  s.ord = c.take<int32_t>(G);
  s.on = c.take<uint8_t>(G);
  s.tag = 0;
  // The relabeling's own arrays are dead once R is made (migrate_begin),
  // before the search first touches gcnt: they share its bytes, which keeps
  // a DeepSeek-V3 layer near 95 KB instead of 115 KB (two blocks per SM
  // where the state is in shared memory).
  const int64_t shared = c.off;
  s.f = c.take<int32_t>(P);
  s.fr = c.take<int32_t>(P);
  s.qoff = c.take<int32_t>(E + 1);
  s.qhold = c.take<int32_t>(P);
  s.overlap = c.take<int32_t>(G * G);
  s.cost = c.take<int64_t>(G * G > N * N ? G * G : N * N);
  s.perm = c.take<int32_t>(G);
  s.col = c.take<int32_t>(G);
  s.sub = c.take<int32_t>(N * G);
  s.nodew = c.take<int64_t>(N * N);
  s.used = c.take<uint8_t>(d.k);
  s.filled = c.take<uint8_t>(d.k);
  s.as = take_assign_scratch(c, G);
  const int64_t relabel_end = c.off;
  c.off = shared;
  s.gcnt = c.take<int32_t>(G * E);
  if (out) *out = s;
  return c.off > relabel_end ? c.off : relabel_end;
}

// gc[g * E + e] = copies of e on GPU g in placement a (empty slots skipped).
EPLB_HD void gpu_counts(MigrateDims d, const int32_t* a, int32_t* gc) {
  for (int64_t i = 0; i < (int64_t)d.G * d.E; ++i) gc[i] = 0;
  for (int32_t p = 0; p < d.P; ++p) {
    if (a[p] >= 0) gc[(int64_t)(p / d.k) * d.E + a[p]] += 1;
  }
}

// f(e) once for each expert e that GPU g holds in placement a (empty slots
// skipped), in slot order; a fresh stamp tells the copies apart.
template <typename F>
EPLB_HD void for_distinct(MigrateDims d, MigrateScratch& s, const int32_t* a, int32_t g,
                          const F& f) {
  const int32_t tag = s.tag++;
  for (int32_t j = 0; j < d.k; ++j) {
    const int32_t e = a[g * d.k + j];
    if (e < 0 || s.stamp[e] == tag) continue;
    s.stamp[e] = tag;
    f(e);
  }
}

// moves(a, Q) over the active GPUs (act[0 .. na)), SPEC "Moves".
EPLB_HD int32_t count_moves(MigrateDims d, MigrateScratch& s, const int32_t* a, int32_t na) {
  int32_t moves = 0;
  for (int32_t i = 0; i < na; ++i) {
    const int32_t g = s.act[i];
    for_distinct(d, s, a, g, [&](int32_t e) { moves += s.qcnt[(int64_t)g * d.E + e] == 0; });
  }
  return moves;
}

// Replica counts of a over the active GPUs, then rep = w / count.
EPLB_HD void count_replicas(MigrateDims d, MigrateScratch& s, const int32_t* a, int32_t na) {
  for (int32_t e = 0; e < d.E; ++e) s.cnt[e] = 0;
  for (int32_t i = 0; i < na; ++i) {
    for (int32_t j = 0; j < d.k; ++j) {
      const int32_t e = a[s.act[i] * d.k + j];
      if (e >= 0) s.cnt[e] += 1;
    }
  }
  for (int32_t e = 0; e < d.E; ++e) s.rep[e] = s.cnt[e] > 0 ? s.w[e] / (double)s.cnt[e] : 0.0;
}

// GPU loads (each GPU's slots in ascending order) from s.rep; returns the
// balancedness over the active GPUs: mean / max, 1 when the max is 0.
EPLB_HD double gpu_loads_bal(MigrateDims d, MigrateScratch& s, const int32_t* a, int32_t na) {
  double total = 0.0, peak = 0.0;
  for (int32_t i = 0; i < na; ++i) {
    const int32_t g = s.act[i];
    double l = 0.0;
    for (int32_t j = 0; j < d.k; ++j) {
      const int32_t e = a[g * d.k + j];
      if (e >= 0) l = l + s.rep[e];
    }
    s.load[g] = l;
    total = total + l;
    peak = l > peak ? l : peak;
  }
  if (!(peak > 0.0)) return 1.0;
  return total / (double)na / peak;
}

// The balancedness of placement a, its counts included (clobbers cnt, rep, load).
EPLB_HD double balancedness_of(MigrateDims d, MigrateScratch& s, const int32_t* a, int32_t na) {
  count_replicas(d, s, a, na);
  return gpu_loads_bal(d, s, a, na);
}

// Solves the assignment of n GPUs (new ga[i] -> old gb[j]) on the overlaps;
// writes col[i]; returns the overlap total.
EPLB_HD int64_t assign_gpus(MigrateDims d, MigrateScratch& s, const int32_t* ga, const int32_t* gb,
                            int32_t n, int32_t* col) {
  for (int32_t i = 0; i < n; ++i) {
    for (int32_t j = 0; j < n; ++j) {
      const int64_t ov = s.overlap[(int64_t)ga[i] * d.G + gb[j]];
      s.cost[(int64_t)i * n + j] = ((int64_t)d.k - ov) * (n + 1) + (i != j);
    }
  }
  assign_min_cost(s.cost, n, col, s.as);
  int64_t total = 0;
  for (int32_t i = 0; i < n; ++i) total += s.overlap[(int64_t)ga[i] * d.G + gb[col[i]]];
  return total;
}

// Writes perm (new GPU -> old position) minimising moves; needs qcnt.
EPLB_HD void relabel_perm(MigrateDims d, MigrateScratch& s, int32_t na, bool hier) {
  for (int64_t i = 0; i < (int64_t)d.G * d.G; ++i) s.overlap[i] = 0;
  // overlap(a, b) counts the distinct experts of a that b held in Q: for
  // each such expert, only its few holders in Q are visited (a list per
  // expert of the active GPUs holding it, each once), not all GPUs.
  for (int32_t e = 0; e <= d.E; ++e) s.qoff[e] = 0;
  for (int32_t pass = 0; pass < 2; ++pass) {
    for (int32_t jb = 0; jb < na; ++jb) {
      const int32_t b = s.act[jb];
      for_distinct(d, s, s.q, b, [&](int32_t e) {
        if (pass == 0) s.qoff[e + 1] += 1;
        else s.qhold[s.qoff[e]++] = b;
      });
    }
    // qoff[e] becomes the start of e's list (the counts sit one to the right).
    if (pass == 0) {
      for (int32_t e = 0; e < d.E; ++e) s.qoff[e + 1] += s.qoff[e];
    }
  }
  // After the fill, qoff[e] is the end of e's list and qoff[e - 1] its start.
  for (int32_t i = 0; i < na; ++i) {
    const int32_t a = s.act[i];
    for_distinct(d, s, s.f, a, [&](int32_t e) {
      for (int32_t x = e > 0 ? s.qoff[e - 1] : 0; x < s.qoff[e]; ++x) {
        s.overlap[(int64_t)a * d.G + s.qhold[x]] += 1;
      }
    });
  }
  for (int32_t g = 0; g < d.G; ++g) s.perm[g] = g;
  if (!hier) {
    assign_gpus(d, s, s.act, s.act, na, s.col);
    for (int32_t i = 0; i < na; ++i) s.perm[s.act[i]] = s.act[s.col[i]];
    return;
  }
  const int32_t gpn = d.G / d.N;
  for (int32_t x = 0; x < d.N; ++x) {
    for (int32_t y = 0; y < d.N; ++y) {
      int32_t* sub = s.sub + ((int64_t)x * d.N + y) * gpn;
      // Node x's and y's GPUs are consecutive: pass index ranges via act.
      for (int32_t i = 0; i < gpn; ++i) s.col[i] = y * gpn + i;
      for (int32_t i = 0; i < gpn; ++i) s.touched[i] = x * gpn + i;
      s.nodew[x * d.N + y] = assign_gpus(d, s, s.touched, s.col, gpn, sub);
    }
  }
  const int64_t per_node = (int64_t)d.P / d.N;
  for (int32_t x = 0; x < d.N; ++x) {
    for (int32_t y = 0; y < d.N; ++y) {
      s.cost[x * d.N + y] = (per_node - s.nodew[x * d.N + y]) * (d.N + 1) + (x != y);
    }
  }
  assign_min_cost(s.cost, d.N, s.col, s.as);
  for (int32_t x = 0; x < d.N; ++x) {
    const int32_t y = s.col[x];
    const int32_t* sub = s.sub + ((int64_t)x * d.N + y) * gpn;
    for (int32_t i = 0; i < gpn; ++i) s.perm[x * gpn + i] = y * gpn + sub[i];
  }
}

// F relabeled into (r, rr): new GPU a's slots go to position perm[a]; inside
// it, an expert Q held there keeps min(copies) of its Q slots, lowest first,
// taken by its replicas in F's slot order; the rest fill the free slots in
// ascending order, in F's slot order. Inactive GPUs are copied as they are.
EPLB_HD void relabel_slots(MigrateDims d, MigrateScratch& s) {
  const int32_t k = d.k;
  for (int32_t a = 0; a < d.G; ++a) {
    const int32_t b = s.perm[a];
    if (!s.on[a]) {
      for (int32_t j = 0; j < k; ++j) s.r[a * k + j] = s.f[a * k + j], s.rr[a * k + j] = s.fr[a * k + j];
      continue;
    }
    const int32_t* fe = s.f + (int64_t)a * k;
    const int32_t* fk = s.fr + (int64_t)a * k;
    int32_t* re = s.r + (int64_t)b * k;
    int32_t* rk = s.rr + (int64_t)b * k;
    for (int32_t i = 0; i < k; ++i) s.used[i] = s.filled[i] = 0;
    for (int32_t j = 0; j < k; ++j) {
      const int32_t e = s.q[b * k + j];
      if (e < 0) continue;
      for (int32_t i = 0; i < k; ++i) {
        if (s.used[i] || fe[i] != e) continue;
        re[j] = e, rk[j] = fk[i];
        s.used[i] = s.filled[j] = 1;
        break;
      }
    }
    int32_t j = 0;
    for (int32_t i = 0; i < k; ++i) {
      if (s.used[i]) continue;
      while (s.filled[j]) ++j;
      re[j] = fe[i], rk[j] = fk[i];
      s.filled[j] = 1;
    }
  }
}

}  // namespace eplb
