// The step-aware variants (SPEC "deepseek_vec, deepseek_vec_hierarchical")
// as lane-parallel phases on a team (team.h): the CUDA kernels' code, which
// the CPU tests run through LaneTeam. The CPU op keeps the sequential core
// (vec.h); both give the same bits.
//
// Per step the chunk keeps a short list of its first experts by score
// (kVecTop, below; fewer in global scratch, vec_list_len) and the top
// expert's own value (valt). A pick lowers one expert's scores, which the
// lists absorb without a scan (vec_update_step): a step is scanned again
// only when its list runs short, a few times per layer instead of at every
// pick that touches its top two.
#pragma once

#include "team.h"
#include "vec.h"

namespace eplb {

// One layer's sums over steps and renumbering, shared by its chunks. The
// per-step loads are read where they are (VecSteps): a float32 copy would
// be as large as the input, the scratch the SPEC bound leaves to the
// per-step lists when they do not fit shared memory.
struct VecLayer {
  float* expert_sum;    // E
  int32_t* orig;        // E   renumbered -> original expert
  float* group_w;       // C
  int32_t* group_pack;  // C
  int32_t* group_rank;  // C
  PackScratch pack;     // C items into N packs
};

EPLB_HD int64_t vec_layer_scratch(VecDims d, void* buf, VecLayer* out) {
  Carver c{(char*)buf, 0};
  VecLayer s;
  s.expert_sum = c.take<float>(d.E);
  s.orig = c.take<int32_t>(d.E);
  s.group_w = c.take<float>(d.C);
  s.group_pack = c.take<int32_t>(d.C);
  s.group_rank = c.take<int32_t>(d.C);
  s.pack = take_pack_scratch(c, d.C, d.N);
  if (out) *out = s;
  return c.off;
}

// Layer l's loads in place, as float32 (to_f32, the CPU op's conversion):
// the layer's base and two strides, which keeps a GPU thread's registers
// for the scans.
template <typename T>
struct VecSteps {
  const T* base;
  int64_t ss, se;
  EPLB_HD VecSteps(const Loads<T>& t, int64_t l) : base(t.data + l * t.sl), ss(t.ss), se(t.se) {}
  EPLB_HD float at(int64_t st, int32_t e) const { return to_f32<T>(base[st * ss + e * se]); }
};

// Every step keeps the first kVecTop experts of its order (score
// descending, then index ascending: the tie rule), as keys: a pick lowers
// one expert's scores, which moves it later in that order and leaves every
// other expert where it was, so a step's list stays exact after a pick
// without looking at the experts outside it (see vec_update_step); only a
// step whose list runs short is scanned again.
constexpr int32_t kVecTop = 8;

// How many entries a step's list keeps (lt), where the chunk's state lives:
//  * shared memory: kVecTop, or every expert of a smaller chunk;
//  * global scratch: no more than the chunk's loads take as float32 per step
//    (4 * Ec bytes for 8 * lt bytes of keys and 12 of tn, redo and valt), so
//    that the scratch stays within SPEC's bound of one float32 copy of the
//    input plus O(L * P) whatever S. A list shorter than the two entries a
//    pick needs is no list: lt = 0 (chunks of fewer than 7 experts), and the
//    pick finds each step's first two itself (vec_team_pick).
// Any lt gives the same picks; a shorter list only runs short more often.
EPLB_HD int32_t vec_list_len(VecDims d, bool global) {
  const int32_t en = d.E / d.N;
  int32_t lt = en < kVecTop ? en : kVecTop;
  if (global) {
    const int64_t fit = (4 * (int64_t)en - 12) / 8;
    if (fit < lt) lt = fit < 2 ? 0 : (int32_t)fit;
  }
  return lt;
}

// One chunk's state, small enough for shared memory at realistic S.
struct VecTeamChunk {
  int32_t lt;       //     entries per step list (vec_list_len)
  int32_t* cnt;     // Ec
  int32_t* orig;    // Ec  original id of each chunk expert
  int32_t* p2l;     // Pc  chunk expert of each slot, before dealing
  int32_t* prank;   // Pc
  int32_t* newpos;  // Pc
  uint64_t* keys;   // next_pow2(Pc)  slot sort keys
  uint64_t* top;    // lt * S  top[r * S + st]: step st's r-th expert, as vec_key
  int32_t* tn;      // S   entries in step st's list  (these three: none when lt = 0)
  int32_t* redo;    // S   the steps to scan again
  float* valt;      // S   the top expert's value: max(its relief, the second score)
};

EPLB_HD int64_t vec_chunk_scratch(VecDims d, int32_t lt, void* buf, VecTeamChunk* out) {
  const int32_t en = d.E / d.N, pn = d.P / d.N;
  const int64_t steps = lt > 0 ? d.S : 0;
  Carver c{(char*)buf, 0};
  VecTeamChunk s;
  s.lt = lt;
  s.keys = c.take<uint64_t>(next_pow2(pn));
  s.top = c.take<uint64_t>(lt * steps);
  s.cnt = c.take<int32_t>(en);
  s.orig = c.take<int32_t>(en);
  s.p2l = c.take<int32_t>(pn);
  s.prank = c.take<int32_t>(pn);
  s.newpos = c.take<int32_t>(pn);
  s.tn = c.take<int32_t>(steps);
  s.redo = c.take<int32_t>(steps);
  s.valt = c.take<float>(steps);
  if (out) *out = s;
  return c.off;
}

// Phase 1, per layer: the sums over steps and the group renumbering (one
// lane: a packing is sequential by definition).
template <typename Team, typename T>
EPLB_HD void vec_team_prepare(const Team& team, const Loads<T>& t, int64_t l, VecDims d,
                              VecLayer s) {
  team.for_each(d.E, [&](int32_t e) { s.expert_sum[e] = sum_over_steps_one(t, l, e); });
  team.sync();
  team.single([&] {
    // The CPU core's renumbering, which uses only these fields.
    VecScratch v{};
    v.expert_sum = s.expert_sum;
    v.group_w = s.group_w;
    v.group_pack = s.group_pack;
    v.group_rank = s.group_rank;
    v.orig = s.orig;
    v.pack = s.pack;
    vec_renumber(d, v);
  });
}

// Step st's load of chunk expert j, and the score (t + e * 1e-4) / count
// of a load t, each operation rounded to float32.
template <typename T>
EPLB_HD float vec_load(const VecSteps<T>& ly, const VecTeamChunk& c, int32_t j, int64_t st) {
  return ly.at(st, c.orig[j]);
}
EPLB_HD float vec_score(float t, int32_t e0, int32_t j, int32_t count) {
  const float num = t + (float)(e0 + j) * 0.0001f;
  return div_f32(num, (float)count);
}

// A step's order as one unsigned key: the larger score first, then the
// lower index (the CPU's trees let the lower index win equal scores).
// Scores of loads >= 0 are >= +0, which nonneg_bits orders; the score
// comes back from the key unchanged (+0 for -0, which no load >= 0 gives).
// 0 is no expert's key: it marks an empty entry.
EPLB_HD uint64_t vec_key(float score, int32_t j) {
  return ((uint64_t)nonneg_bits(score) << 32) | (uint32_t)~(uint32_t)j;
}
EPLB_HD int32_t vec_key_expert(uint64_t key) { return (int32_t)~(uint32_t)key; }
EPLB_HD float vec_key_score(uint64_t key) {
  const uint32_t bits = (uint32_t)(key >> 32);
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
}

// The first kVecTop keys seen, in order, 0-padded.
struct VecTop {
  uint64_t key[kVecTop];
  EPLB_HD void add(uint64_t k) {
    if (!(k > key[kVecTop - 1])) return;
    for (int32_t r = 0; r < kVecTop; ++r) {
      if (k > key[r]) {
        const uint64_t t = key[r];
        key[r] = k;
        k = t;
      }
    }
  }
};

// The first kVecTop of two lists' keys: keys are unique, so any split of
// the experts over lanes merges to the same list. The larger of a[r] and
// b[kVecTop - 1 - r] over r are those keys as a bitonic sequence, which
// half-cleaners sort (fixed indices only: a GPU keeps the lists in
// registers).
EPLB_HD VecTop vec_top_merge(const VecTop& a, const VecTop& b) {
  VecTop r;
  for (int32_t i = 0; i < kVecTop; ++i) {
    const uint64_t x = a.key[i], y = b.key[kVecTop - 1 - i];
    r.key[i] = x > y ? x : y;
  }
  for (int32_t h = kVecTop / 2; h > 0; h /= 2) {
    for (int32_t i = 0; i < kVecTop; ++i) {
      if ((i & h) != 0) continue;
      const uint64_t x = r.key[i], y = r.key[i + h];
      r.key[i] = x > y ? x : y;
      r.key[i + h] = x > y ? y : x;
    }
  }
  return r;
}

// The top expert's value at a step whose first keys are `top` (at least
// one): max(its relief t / (count + 1), the second score), -inf for the
// second score of a one-expert chunk.
template <typename T>
EPLB_HD float vec_valt(const VecSteps<T>& ly, const VecTeamChunk& c, int64_t st,
                       const VecTop& top) {
  const int32_t i1 = vec_key_expert(top.key[0]);
  const float relief = div_f32(vec_load(ly, c, i1, st), (float)(c.cnt[i1] + 1));
  const float v2 = top.key[1] != 0 ? vec_key_score(top.key[1]) : neg_inf();
  return relief > v2 ? relief : v2;
}

// Stores step st's list (its first lt keys, at least one) and valt.
template <typename T>
EPLB_HD void vec_store_step(const VecSteps<T>& ly, const VecTeamChunk& c, int64_t S, int64_t st,
                            const VecTop& top) {
  int32_t n = 0;
  for (int32_t r = 0; r < kVecTop; ++r) {
    if (r >= c.lt) break;
    c.top[r * S + st] = top.key[r];
    n += top.key[r] != 0;
  }
  c.tn[st] = n;
  c.valt[st] = vec_valt(ly, c, st, top);
}

// Step st's first keys by one lane, the loads read a few experts ahead of
// their use, which keeps several reads of a GPU thread in flight.
template <typename T>
EPLB_HD VecTop vec_step_keys(const VecSteps<T>& ly, const VecTeamChunk& c, int32_t e0,
                             int32_t en, int64_t st) {
  constexpr int32_t kAhead = 8;
  VecTop top{};
  for (int32_t j0 = 0; j0 < en; j0 += kAhead) {
    float t[kAhead];
    for (int32_t i = 0; i < kAhead; ++i) t[i] = j0 + i < en ? vec_load(ly, c, j0 + i, st) : 0.0f;
    for (int32_t i = 0; i < kAhead && j0 + i < en; ++i) {
      const int32_t j = j0 + i;
      top.add(vec_key(vec_score(t[i], e0, j, c.cnt[j]), j));
    }
  }
  return top;
}

// The same list by a fold over the experts (for few steps, where a lane
// per step would leave most lanes idle).
template <typename Team, typename T>
EPLB_HD void vec_fill_step_team(const Team& team, const VecSteps<T>& ly, const VecTeamChunk& c,
                                int64_t S, int32_t e0, int32_t en, int64_t st) {
  auto visit = [&](int32_t j, VecTop& acc) {
    acc.add(vec_key(vec_score(vec_load(ly, c, j, st), e0, j, c.cnt[j]), j));
  };
  const VecTop top = team.fold(en, VecTop{}, visit, vec_top_merge);
  team.single([&] { vec_store_step(ly, c, S, st, top); });
}

// The entries a step's list must hold for the pick (its top and second
// score; one for a one-expert chunk): a shorter list is scanned again.
EPLB_HD int32_t vec_list_need(int32_t en) { return en < 2 ? en : 2; }

// Step st after chunk expert j got a replica, on one lane. Only j's key
// changed, and it moved later in the order. Every expert outside the list
// comes after the list's last key (true after a scan, and kept here), so:
// j outside stays outside, nothing changes; j inside leaves its place and
// goes back in where its new key falls if that is before the last key of
// the others (or if the list holds every expert), else it drops out. When
// fewer than two entries remain (one for a one-expert chunk), tn says so
// and the list is left unstored: the step must be scanned again.
template <typename T>
EPLB_HD void vec_update_step(const VecSteps<T>& ly, const VecTeamChunk& c, int64_t S, int32_t e0,
                             int32_t en, int64_t st, int32_t j) {
  // Fixed indices into the lists, as in vec_top_merge.
  const int32_t n = c.tn[st];
  uint64_t a[kVecTop];
  int32_t p = n;
  for (int32_t r = 0; r < kVecTop; ++r) {
    a[r] = r < n ? c.top[r * S + st] : 0;
    if (p == n && r < n && vec_key_expert(a[r]) == j) p = r;
  }
  if (p == n) return;
  VecTop top;
  const int32_t m = n - 1;
  uint64_t last = 0;
  for (int32_t r = 0; r < kVecTop; ++r) {
    top.key[r] = r < p ? a[r] : (r + 1 < kVecTop ? a[r + 1] : 0);
    if (r == m - 1) last = top.key[r];
  }
  const uint64_t kj = vec_key(vec_score(vec_load(ly, c, j, st), e0, j, c.cnt[j]), j);
  const bool back = en <= c.lt || (m > 0 && kj > last);
  if (back) top.add(kj);
  if (m + (int32_t)back < vec_list_need(en)) {
    c.tn[st] = m + (int32_t)back;
  } else {
    vec_store_step(ly, c, S, st, top);
  }
}

// Fills every step's list (picked < 0), or brings them up to date after
// expert `picked` got a replica and scans again the steps whose list ran
// short: by folds over the experts when steps are few (a lane per step
// would leave most lanes idle), else a lane per step, the steps to scan
// gathered first so that the scans fill whole warps.
template <typename Team, typename T>
EPLB_HD void vec_team_tops(const Team& team, const VecSteps<T>& ly, const VecTeamChunk& c,
                           int64_t S, int32_t e0, int32_t en, int32_t picked) {
  // S <= 2^31 - 1 (checked by the ops): steps fit the team's int32 indices.
  const int32_t need = vec_list_need(en);
  if (picked >= 0) {
    team.for_each((int32_t)S, [&](int32_t st) { vec_update_step(ly, c, S, e0, en, st, picked); });
    team.sync();
  }
  if (S * 64 <= en) {
    // tn was written before a barrier: every lane takes the same branches,
    // as the folds' barriers need.
    for (int64_t st = 0; st < S; ++st) {
      if (picked < 0 || c.tn[st] < need) vec_fill_step_team(team, ly, c, S, e0, en, st);
    }
    return;
  }
  int32_t m = (int32_t)S;
  if (picked >= 0) {
    m = team.compact((int32_t)S, [&](int32_t st) { return c.tn[st] < need; }, c.redo);
  }
  team.for_each(m, [&](int32_t i) {
    const int64_t st = picked >= 0 ? c.redo[i] : i;
    vec_store_step(ly, c, S, st, vec_step_keys(ly, c, e0, en, st));
  });
  team.sync();
}

// The pick: every chunk expert's values summed s = 0, 1, ... in float32 on
// one lane each (SPEC's order); the smallest total, first index on ties, by
// unique keys. An expert that leads no step sums the step maxima, the CPU's
// `common`, so the minimum over all experts is the CPU's pick. Values are
// scores and reliefs of loads >= 0, so each total is >= 0 or +inf, which
// nonneg_bits orders (loads the ops reject only make the order meaningless;
// the index stays in range). Without lists (lt = 0: fewer than 7 experts)
// each lane finds every step's first keys itself, the same values.
template <typename Team, typename T>
EPLB_HD int32_t vec_team_pick(const Team& team, const VecSteps<T>& ly, const VecTeamChunk& c,
                              int64_t S, int32_t e0, int32_t en) {
  const uint64_t key = team.min_key(en, [&](int32_t j) {
    float v = 0.0f;
    for (int64_t st = 0; st < S; ++st) {
      uint64_t k1;
      float valt;
      if (c.lt > 0) {
        k1 = c.top[st];
        valt = c.valt[st];
      } else {
        const VecTop top = vec_step_keys(ly, c, e0, en, st);
        k1 = top.key[0];
        valt = vec_valt(ly, c, st, top);
      }
      v = v + (vec_key_expert(k1) == j ? valt : vec_key_score(k1));
    }
    return ((uint64_t)nonneg_bits(v) << 32) | (uint32_t)j;
  });
  return (int32_t)(uint32_t)key;
}

// Spreads the chunk's slots over its GPUs (SPEC: sort by load descending,
// stable, then deal in snake order) and writes the layer's outputs for the
// chunk's experts. The sort keys are unique, so the bitonic network gives
// the stable order on any team.
template <typename Team, typename P2L, typename OutT>
EPLB_HD void vec_team_deal(const Team& team, VecDims d, const VecLayer& ly, VecTeamChunk s,
                           int32_t c, P2L* phy2log, OutT* log2phy, OutT* logcnt) {
  const int32_t en = d.E / d.N, pn = d.P / d.N, p0 = c * pn;
  const int64_t X = (int64_t)d.P - d.E + 1;
  if (d.k > 1) {
    const int32_t n2 = next_pow2(pn), gpus = pn / d.k;
    team.for_each(n2, [&](int32_t x) {
      if (x >= pn) {
        s.keys[x] = ~(uint64_t)0;
        return;
      }
      const int32_t j = s.p2l[x];
      s.keys[x] = desc_key(div_f32(ly.expert_sum[s.orig[j]], (float)s.cnt[j]), x);
    });
    team.sync();
    team.sort(s.keys, n2);
    team.for_each(pn, [&](int32_t r) {
      const int32_t q = r / gpus, j = r % gpus;  // round q runs forwards when even
      const int32_t g = q % 2 == 0 ? j : gpus - 1 - j;
      s.newpos[(int32_t)(uint32_t)s.keys[r]] = g * d.k + q;
    });
  } else {
    team.for_each(pn, [&](int32_t x) { s.newpos[x] = x; });
  }
  team.for_each(en, [&](int32_t j) {
    OutT* row = log2phy + (int64_t)s.orig[j] * X;
    for (int64_t r = 0; r < X; ++r) row[r] = (OutT)-1;
    logcnt[s.orig[j]] = (OutT)s.cnt[j];
  });
  team.sync();
  team.for_each(pn, [&](int32_t x) {
    const int32_t slot = p0 + s.newpos[x], expert = s.orig[s.p2l[x]];
    phy2log[slot] = (P2L)expert;
    log2phy[(int64_t)expert * X + s.prank[x]] = (OutT)slot;
  });
}

// Phase 2, per chunk c, after phase 1: the replicas, then the dealing over
// the chunk's GPUs and the outputs in original ids (log2phy rows [E, X] of
// the layer).
template <typename Team, typename T, typename P2L, typename OutT>
EPLB_HD void vec_team_chunk(const Team& team, VecDims d, const VecLayer& ly,
                            const VecSteps<T>& steps, VecTeamChunk s, int32_t c, P2L* phy2log,
                            OutT* log2phy, OutT* logcnt) {
  const int32_t en = d.E / d.N, pn = d.P / d.N, rn = (d.P - d.E) / d.N;
  const int32_t e0 = c * en;
  const int64_t S = d.S;
  team.for_each(pn, [&](int32_t x) {
    if (x < en) {
      s.cnt[x] = 1;
      s.orig[x] = ly.orig[e0 + x];
    }
    s.p2l[x] = x < en ? x : 0;
    s.prank[x] = 0;
  });
  team.sync();
  if (rn > 0 && s.lt > 0) vec_team_tops(team, steps, s, S, e0, en, -1);
  for (int32_t i = 0; i < rn; ++i) {
    const int32_t j = vec_team_pick(team, steps, s, S, e0, en);
    team.single([&] {
      s.p2l[en + i] = j;
      s.prank[en + i] = s.cnt[j];
      s.cnt[j] += 1;
    });
    if (i + 1 == rn || s.lt == 0) continue;
    vec_team_tops(team, steps, s, S, e0, en, j);
  }
  vec_team_deal(team, d, ly, s, c, phy2log, log2phy, logcnt);
}

}  // namespace eplb
