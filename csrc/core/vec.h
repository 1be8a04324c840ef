// SGLang's step-aware variants for one layer (SPEC "deepseek_vec,
// deepseek_vec_hierarchical"). deepseek_vec is the C = N = 1 case: one group
// into one node renumbers nothing and gives one chunk of P slots.
//
// Per chunk, every step keeps a tournament tree over the chunk's experts whose
// nodes hold the largest score (first index on ties: the left child, with the
// lower indices, wins equal scores) and the second largest score. A new
// replica changes one expert's count, so only one leaf-to-root path changes,
// and it is the same path at every step: the trees are stored node-major,
// [node][step], and each update is a loop over steps.
#pragma once

#include "packing.h"

namespace eplb {

struct VecDims {
  int64_t S;
  int32_t E, P, k, C, N;  // N nodes = N chunks
};

struct VecScratch {
  Sum128* acc;         // E   integer sums over steps
  double* saving;      // E/N
  float* expert_sum;   // E   sum over steps, original order
  float* group_w;      // C
  int32_t* group_pack; // C
  int32_t* group_rank; // C
  int32_t* orig;       // E   renumbered -> original expert
  int32_t* cnt;        // E   renumbered
  int32_t* p2l;        // P   renumbered expert per slot, before dealing
  int32_t* prank;      // P
  int32_t* newpos;     // P/N
  float* slot_w;       // P/N
  int32_t* first;      // E/N first step at which the expert is the argmax
  int32_t* cand;       // E/N the argmax experts, in order of first step
  int32_t* amax;       // S
  float* vmax;         // S
  float* valt;         // S
  float* prefix;       // S + 1
  float* tt;           // E * S   the layer's loads, expert-major (original ids)
  float* v1;           // 2 * Ec2 * S   tree: best score,
  int32_t* i1;         // 2 * Ec2 * S   its expert,
  float* v2;           // 2 * Ec2 * S   and the second best score
  PackScratch pack;    // order, tmp: max(C, P/N); pack_w, pack_n: N
};

// Carves the scratch from buf (nullptr: only counts); returns its bytes.
EPLB_HD int64_t vec_scratch(VecDims d, void* buf, VecScratch* out) {
  const int64_t pn = d.P / d.N, en = d.E / d.N;
  const int64_t n_sort = d.C > pn ? d.C : pn;
  const int64_t nodes = 2 * (int64_t)next_pow2((int32_t)en) * d.S;
  Carver c{(char*)buf, 0};
  VecScratch s;
  s.acc = c.take<Sum128>(d.E);
  s.saving = c.take<double>(en);
  s.expert_sum = c.take<float>(d.E);
  s.group_w = c.take<float>(d.C);
  s.group_pack = c.take<int32_t>(d.C);
  s.group_rank = c.take<int32_t>(d.C);
  s.orig = c.take<int32_t>(d.E);
  s.cnt = c.take<int32_t>(d.E);
  s.p2l = c.take<int32_t>(d.P);
  s.prank = c.take<int32_t>(d.P);
  s.newpos = c.take<int32_t>(pn);
  s.slot_w = c.take<float>(pn);
  s.first = c.take<int32_t>(en);
  s.cand = c.take<int32_t>(en);
  s.amax = c.take<int32_t>(d.S);
  s.vmax = c.take<float>(d.S);
  s.valt = c.take<float>(d.S);
  s.prefix = c.take<float>(d.S + 1);
  s.tt = c.take<float>((int64_t)d.E * d.S);
  s.v1 = c.take<float>(nodes);
  s.i1 = c.take<int32_t>(nodes);
  s.v2 = c.take<float>(nodes);
  s.pack = take_pack_scratch(c, n_sort, d.N);
  if (out) *out = s;
  return c.off;
}

// One chunk's state: experts [e0, e0 + en), trees with n2 leaves.
struct VecChunk {
  VecScratch s;
  int64_t S;
  int32_t e0, en, n2;

  // score = (t + e * 1e-4) / count, each operation rounded to float32.
  EPLB_HD void set_leaf(int32_t j, int64_t s0, int64_t s1, int64_t ds) {
    const int64_t x = (int64_t)(n2 + j) * S;
    float* v1 = s.v1 + x;
    int32_t* i1 = s.i1 + x;
    float* v2 = s.v2 + x;
    const float ninf = neg_inf();
    if (j >= en) {
      for_steps(s0, s1, ds, [&](int64_t st) {
        v1[st] = ninf;
        i1[st] = j;
        v2[st] = ninf;
      });
      return;
    }
    const float bias = (float)(e0 + j) * 0.0001f;
    const float count = (float)s.cnt[e0 + j];
    const float* load = s.tt + (int64_t)s.orig[e0 + j] * S;
    for_steps(s0, s1, ds, [&](int64_t st) {
      const float num = load[st] + bias;
      v1[st] = div_f32(num, count);
      i1[st] = j;
      v2[st] = ninf;
    });
  }

  EPLB_HD void fix_node(int32_t node, int64_t s0, int64_t s1, int64_t ds) {
    const int64_t x = (int64_t)node * S, l = 2 * x, r = 2 * x + S;
    float* v1 = s.v1 + x;
    int32_t* i1 = s.i1 + x;
    float* v2 = s.v2 + x;
    const float *lv1 = s.v1 + l, *rv1 = s.v1 + r, *lv2 = s.v2 + l, *rv2 = s.v2 + r;
    const int32_t *li1 = s.i1 + l, *ri1 = s.i1 + r;
    for_steps(s0, s1, ds, [&](int64_t st) {
      const float a1 = lv1[st], b1 = rv1[st], a2 = lv2[st], b2 = rv2[st];
      const int32_t ai = li1[st], bi = ri1[st];
      const uint32_t right = lane_mask(b1 > a1);
      // `x > y ? x : y` and `x < y ? x : y` return one operand's bits
      // exactly (the other on equal values), which SSE's max and min do in
      // one instruction each; the mixed-type selects stay bitwise.
      const float lose = a1 < b1 ? a1 : b1;
      const float keep = select_f32(right, b2, a2);
      v1[st] = b1 > a1 ? b1 : a1;
      i1[st] = select_i32(right, bi, ai);
      v2[st] = lose > keep ? lose : keep;
    });
  }

  // Per step: a = argmax, its score, and candidate a's value: the largest of
  // its relief t / (count + 1) and every other expert's score.
  EPLB_HD void step_values(int64_t s0, int64_t s1, int64_t ds) {
    const float* v1 = s.v1 + S;  // node 1, the root (the only leaf when n2 == 1)
    const int32_t* i1 = s.i1 + S;
    const float* v2 = s.v2 + S;
    for_steps(s0, s1, ds, [&](int64_t st) {
      const int32_t a = i1[st];
      const float relief =
          div_f32(s.tt[(int64_t)s.orig[e0 + a] * S + st], (float)(s.cnt[e0 + a] + 1));
      const float other = v2[st];
      s.amax[st] = a;
      s.vmax[st] = v1[st];
      s.valt[st] = relief > other ? relief : other;
    });
  }
};

// Picks the expert that gets the next replica (SPEC chunk procedure): the one
// whose per-step values, summed s = 0, 1, ... in float32, are smallest. Runs
// on one thread after step_values.
//
// An expert that is never a step's argmax sums the per-step maxima: the
// shared total `common`. An argmax expert's value is never above the maximum
// at any step, so its float32 sum (rounding is monotone) is never above
// `common`. Estimating each argmax expert's sum in double with the standard
// bound on float32 summation error lets the exact sequential sum be skipped
// for every expert that cannot be the smallest; near-ties are summed exactly,
// so the pick is the exact one.
EPLB_HD int32_t vec_pick(const VecChunk& c) {
  const VecScratch& s = c.s;
  const int64_t S = c.S;
  // first[] is -1 and saving[] 0 for every expert on entry, and again on exit.
  int32_t nc = 0;
  s.prefix[0] = 0.0f;
  double common_d = 0.0;
  bool finite = true;
  for (int64_t st = 0; st < S; ++st) {
    const int32_t a = s.amax[st];
    const float m = s.vmax[st], alt = s.valt[st];
    if (s.first[a] < 0) {
      s.first[a] = (int32_t)st;
      s.cand[nc++] = a;
    }
    s.saving[a] += (double)m - (double)alt;
    s.prefix[st + 1] = s.prefix[st] + m;
    common_d += (double)m;
    finite = finite && f32_is_finite(m) && f32_is_finite(alt) && alt >= 0.0f && m >= alt;
  }
  const float common = s.prefix[S];
  finite = finite && f32_is_finite(common);
  // |float32 sum - real sum| <= gamma * real sum for S non-negative terms;
  // slack covers the rounding of the double estimates themselves.
  const double u = 1.0 / 16777216.0;
  const double gamma = (double)(S + 2) * u / (1.0 - (double)(S + 2) * u) * 1.0625;
  const double slack = common_d * (double)(S + 2) * 4.5e-16 + 1e-300;
  const bool use_bounds = finite && (double)(S + 2) * u < 0.25;

  int32_t first_plain = 0;  // lowest-index expert that is never an argmax
  while (first_plain < c.en && s.first[first_plain] >= 0) ++first_plain;
  const bool has_plain = first_plain < c.en;
  double best_hi = has_plain ? (double)common : common_d * 2.0 + 1.0;
  for (int32_t k = 0; k < nc; ++k) {
    const double v = common_d - s.saving[s.cand[k]];
    const double hi = v + gamma * v + slack;
    if (hi < best_hi) best_hi = hi;
  }

  int32_t best = -1;
  float best_v = 0.0f;
  auto consider = [&](int32_t j, float v) {
    if (best < 0 || v < best_v || (v == best_v && j < best)) {
      best = j;
      best_v = v;
    }
  };
  for (int32_t k = 0; k < nc; ++k) {
    const int32_t j = s.cand[k];
    const double approx = common_d - s.saving[j];
    if (use_bounds && approx - gamma * approx - slack > best_hi) continue;
    float v = s.prefix[s.first[j]];
    for (int64_t st = s.first[j]; st < S; ++st) {
      v = v + (s.amax[st] == j ? s.valt[st] : s.vmax[st]);
    }
    consider(j, v);
  }
  if (has_plain) consider(first_plain, common);
  for (int32_t k = 0; k < nc; ++k) {
    s.first[s.cand[k]] = -1;
    s.saving[s.cand[k]] = 0.0;
  }
  return best;
}

// Step 1 of the hierarchical variant, after the loads are summed
// (expert_sum): group loads, groups into nodes, and the node-major
// renumbering (orig[renumbered] = original).
EPLB_HD void vec_renumber(VecDims d, VecScratch s) {
  const int32_t m = d.E / d.C, groups_per_node = d.C / d.N;
  for (int32_t c = 0; c < d.C; ++c) {
    float acc = 0.0f;
    for (int32_t j = 0; j < m; ++j) acc = acc + s.expert_sum[c * m + j];
    s.group_w[c] = acc;
  }
  // SGLang's pack_groups sorts even when each node takes one group.
  balanced_pack(s.group_w, d.C, d.N, false, s.group_pack, s.group_rank, s.pack);
  for (int32_t c = 0; c < d.C; ++c) {
    const int32_t base = (s.group_pack[c] * groups_per_node + s.group_rank[c]) * m;
    for (int32_t j = 0; j < m; ++j) s.orig[base + j] = c * m + j;
  }
}

// Chunk c's expert j starts with one replica, rank 0, in slot c * Pc + j.
EPLB_HD void vec_init_expert(VecDims d, VecScratch s, int32_t c, int32_t j) {
  const int32_t en = d.E / d.N, pn = d.P / d.N;
  s.first[j] = -1;
  s.saving[j] = 0.0;
  s.cnt[c * en + j] = 1;
  s.p2l[c * pn + j] = c * en + j;
  s.prank[c * pn + j] = 0;
}

// Builds the trees of steps s0, s0 + ds, ... (each step's tree is touched
// only by the thread that owns the step).
EPLB_HD void vec_build_trees(VecChunk& ch, int64_t s0, int64_t ds) {
  for (int32_t j = 0; j < ch.n2; ++j) ch.set_leaf(j, s0, ch.S, ds);
  for (int32_t x = ch.n2 - 1; x >= 1; --x) ch.fix_node(x, s0, ch.S, ds);
}

// Expert j's count changed: recompute its leaf and its path to the root.
EPLB_HD void vec_refresh_trees(VecChunk& ch, int32_t j, int64_t s0, int64_t ds) {
  ch.set_leaf(j, s0, ch.S, ds);
  for (int32_t x = (ch.n2 + j) >> 1; x >= 1; x >>= 1) ch.fix_node(x, s0, ch.S, ds);
}

// Spreads chunk c's slots over its GPUs in snake order by load and writes the
// outputs in original expert ids. log2phy [E, X], X = P - E + 1, must be
// pre-filled with -1.
template <typename P2L, typename OutT>
EPLB_HD void vec_deal_chunk(VecDims d, VecScratch s, int32_t c, P2L* phy2log, OutT* log2phy,
                            OutT* logcnt) {
  const int32_t en = d.E / d.N, pn = d.P / d.N;
  const int32_t e0 = c * en, p0 = c * pn;
  const int64_t X = (int64_t)d.P - d.E + 1;
  if (d.k > 1) {
    const int32_t gpus = pn / d.k;
    for (int32_t x = 0; x < pn; ++x) {
      const int32_t e = s.p2l[p0 + x];
      s.slot_w[x] = div_f32(s.expert_sum[s.orig[e]], (float)s.cnt[e]);
    }
    argsort_desc_stable(s.slot_w, pn, s.pack.order, s.pack.keys, s.pack.tmp);
    // Round q deals ranks q * gpus ...: forwards when q is even.
    for (int32_t r = 0, q = 0, j = 0; r < pn; ++r) {
      const int32_t g = (q % 2 == 0) ? j : gpus - 1 - j;
      s.newpos[s.pack.order[r]] = g * d.k + q;
      if (++j == gpus) j = 0, ++q;
    }
  } else {
    for (int32_t x = 0; x < pn; ++x) s.newpos[x] = x;
  }
  for (int32_t x = 0; x < pn; ++x) {
    const int32_t slot = p0 + s.newpos[x];
    const int32_t expert = s.orig[s.p2l[p0 + x]];
    phy2log[slot] = (P2L)expert;
    log2phy[(int64_t)expert * X + s.prank[p0 + x]] = (OutT)slot;
  }
  for (int32_t j = 0; j < en; ++j) logcnt[s.orig[e0 + j]] = (OutT)s.cnt[e0 + j];
}

// Records replica i of chunk c for expert e0 + j.
EPLB_HD void vec_add_replica(VecDims d, VecScratch s, int32_t c, int32_t i, int32_t j) {
  const int32_t en = d.E / d.N, pn = d.P / d.N;
  const int32_t e = c * en + j, slot = c * pn + en + i;
  s.p2l[slot] = e;
  s.prank[slot] = s.cnt[e];
  s.cnt[e] += 1;
}

// One layer, single-threaded: the CPU kernel's unit of work. The CUDA kernel
// runs the same phases with the step loops spread over a block's threads.
// Returns -1, or the layer's first bad load (load_layer), placing nothing.
template <typename T, typename P2L, typename OutT>
EPLB_HD int64_t vec_layer(const Loads<T>& t, int64_t l, VecDims d, VecScratch s, P2L* phy2log,
                       OutT* log2phy, OutT* logcnt) {
  const int32_t en = d.E / d.N, rn = (d.P - d.E) / d.N;
  const int64_t S = d.S;
  const int64_t bad = load_layer(t, l, s.expert_sum, s.acc, s.tt);
  if (bad >= 0) return bad;
  vec_renumber(d, s);
  for (int32_t c = 0; c < d.N; ++c) {
    VecChunk ch{s, S, c * en, en, next_pow2(en)};
    for (int32_t j = 0; j < en; ++j) vec_init_expert(d, s, c, j);
    if (rn > 0 && S > 0) vec_build_trees(ch, 0, 1);
    for (int32_t i = 0; i < rn; ++i) {
      int32_t j = 0;  // with no steps every total is 0: the first expert wins
      if (S > 0) {
        ch.step_values(0, S, 1);
        j = vec_pick(ch);
      }
      vec_add_replica(d, s, c, i, j);
      if (i + 1 < rn && S > 0) vec_refresh_trees(ch, j, 0, 1);
    }
    vec_deal_chunk(d, s, c, phy2log, log2phy, logcnt);
  }
  return -1;
}

}  // namespace eplb
