// The step-aware variants (SPEC "deepseek_vec, deepseek_vec_hierarchical")
// as lane-parallel phases on a team (team.h): the CUDA kernels' code, which
// the CPU tests run through LaneTeam. The CPU op keeps the sequential core
// (vec.h); both give the same bits.
//
// Per step the chunk keeps only its top score, that expert, the second
// score (and an expert holding it) and the top expert's own value (valt).
// A pick lowers one expert's scores; at a step where that expert was neither
// top nor holder of the second score, the top, the second score and valt
// are unchanged, so only the other steps are rescanned.
#pragma once

#include "team.h"
#include "vec.h"

namespace eplb {

// One layer, shared by its chunks: the loads as float32, expert-major
// (tt[e * S + s], original ids), the sums over steps and the renumbering.
struct VecLayer {
  float* tt;            // E * S
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
  s.tt = c.take<float>((int64_t)d.E * d.S);
  s.expert_sum = c.take<float>(d.E);
  s.orig = c.take<int32_t>(d.E);
  s.group_w = c.take<float>(d.C);
  s.group_pack = c.take<int32_t>(d.C);
  s.group_rank = c.take<int32_t>(d.C);
  s.pack = take_pack_scratch(c, d.C, d.N);
  if (out) *out = s;
  return c.off;
}

// One chunk's state: small enough for shared memory at realistic S.
struct VecTeamChunk {
  int32_t* cnt;     // Ec
  int32_t* orig;    // Ec  original id of each chunk expert
  int32_t* p2l;     // Pc  chunk expert of each slot, before dealing
  int32_t* prank;   // Pc
  int32_t* newpos;  // Pc
  uint64_t* keys;   // next_pow2(Pc)  slot sort keys
  float* v1;        // S   top score
  int32_t* i1;      // S   its expert (first on ties)
  float* v2;        // S   largest score of the other experts
  int32_t* i2;      // S   an expert with score v2
  float* valt;      // S   the top expert's value: max(its relief, v2)
};

EPLB_HD int64_t vec_chunk_scratch(VecDims d, void* buf, VecTeamChunk* out) {
  const int32_t en = d.E / d.N, pn = d.P / d.N;
  Carver c{(char*)buf, 0};
  VecTeamChunk s;
  s.keys = c.take<uint64_t>(next_pow2(pn));
  s.cnt = c.take<int32_t>(en);
  s.orig = c.take<int32_t>(en);
  s.p2l = c.take<int32_t>(pn);
  s.prank = c.take<int32_t>(pn);
  s.newpos = c.take<int32_t>(pn);
  s.v1 = c.take<float>(d.S);
  s.i1 = c.take<int32_t>(d.S);
  s.v2 = c.take<float>(d.S);
  s.i2 = c.take<int32_t>(d.S);
  s.valt = c.take<float>(d.S);
  if (out) *out = s;
  return c.off;
}

// Sum over steps of expert e (the additions of sum_over_steps_one, so the
// same float32), storing its float32 loads on the way. Loads are read a
// block ahead of the additions, which keeps several reads of a GPU thread
// in flight; the additions stay in step order.
template <typename T>
EPLB_HD float vec_load_expert(const Loads<T>& t, int64_t l, int64_t e, float* row) {
  constexpr int kAhead = 8;
  constexpr bool kInt = std::is_integral<T>::value;
  Sum128 acc{0, 0};
  float sum = 0.0f;
  for (int64_t s0 = 0; s0 < t.S; s0 += kAhead) {
    T v[kAhead];
    for (int i = 0; i < kAhead; ++i) v[i] = s0 + i < t.S ? t.raw(s0 + i, l, e) : T{};
    for (int i = 0; i < kAhead; ++i) {
      if (s0 + i >= t.S) break;
      const float f = to_f32<T>(v[i]);
      row[s0 + i] = f;
      if constexpr (kInt) {
        acc.add((uint64_t)v[i]);
      } else {
        sum = sum + f;
      }
    }
  }
  return kInt ? acc.to_f32() : sum;
}

// Phase 1, per layer: loads, sums, and the group renumbering (one lane: a
// packing is sequential by definition).
template <typename Team, typename T>
EPLB_HD void vec_team_prepare(const Team& team, const Loads<T>& t, int64_t l, VecDims d,
                              VecLayer s) {
  team.for_each(d.E, [&](int32_t e) {
    s.expert_sum[e] = vec_load_expert(t, l, e, s.tt + (int64_t)e * d.S);
  });
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

// score = (t + e * 1e-4) / count and relief = t / (count + 1), each
// operation rounded to float32, for chunk expert j at step st.
EPLB_HD float vec_score(const VecLayer& ly, const VecTeamChunk& c, int64_t S, int32_t e0,
                        int32_t j, int64_t st) {
  const float num = ly.tt[(int64_t)c.orig[j] * S + st] + (float)(e0 + j) * 0.0001f;
  return div_f32(num, (float)c.cnt[j]);
}

EPLB_HD void vec_store_tops(const VecLayer& ly, const VecTeamChunk& c, int64_t S, int64_t st,
                            float v1, int32_t i1, float v2, int32_t i2) {
  const float relief = div_f32(ly.tt[(int64_t)c.orig[i1] * S + st], (float)(c.cnt[i1] + 1));
  c.v1[st] = v1;
  c.i1[st] = i1;
  c.v2[st] = v2;
  c.i2[st] = i2;
  c.valt[st] = relief > v2 ? relief : v2;
}

// Step st's tops on one lane, experts scanned in index order with strict
// comparisons: the first expert wins equal scores, as in the CPU's trees.
EPLB_HD void vec_step_tops(const VecLayer& ly, const VecTeamChunk& c, int64_t S, int32_t e0,
                           int32_t en, int64_t st) {
  float v1 = vec_score(ly, c, S, e0, 0, st), v2 = neg_inf();
  int32_t i1 = 0, i2 = 0;
  for (int32_t j = 1; j < en; ++j) {
    const float x = vec_score(ly, c, S, e0, j, st);
    if (x > v1) {
      v2 = v1, i2 = i1, v1 = x, i1 = j;
    } else if (x > v2) {
      v2 = x, i2 = j;
    }
  }
  vec_store_tops(ly, c, S, st, v1, i1, v2, i2);
}

// The same tops by two reductions over the experts (for few steps, where a
// lane per step would leave most lanes idle): keys pack (score, ~index), so
// the largest is the first top, whatever the reduction order; the second is
// the largest key among the other experts. Scores of loads >= 0 are >= +0,
// which nonneg_bits orders; key 0 is no expert's.
template <typename Team>
EPLB_HD void vec_step_tops_team(const Team& team, const VecLayer& ly, const VecTeamChunk& c,
                                int64_t S, int32_t e0, int32_t en, int64_t st) {
  auto key = [&](int32_t j) {
    return ((uint64_t)nonneg_bits(vec_score(ly, c, S, e0, j, st)) << 32) | (uint32_t)~(uint32_t)j;
  };
  const int32_t i1 = (int32_t)~(uint32_t)team.max_key(en, key);
  const uint64_t k2 = team.max_key(en, [&](int32_t j) { return j == i1 ? 0 : key(j); });
  team.single([&] {
    const int32_t i2 = en > 1 ? (int32_t)~(uint32_t)k2 : 0;
    const float v2 = en > 1 ? vec_score(ly, c, S, e0, i2, st) : neg_inf();
    vec_store_tops(ly, c, S, st, vec_score(ly, c, S, e0, i1, st), i1, v2, i2);
  });
}

// Recomputes the tops of every step (picked < 0), or after expert `picked`
// got a replica, of the steps where it was top or held the second score.
// Both ways give the same values; the reductions run for few steps per
// expert, where the scans of a lane per step would take longer.
template <typename Team>
EPLB_HD void vec_team_tops(const Team& team, const VecLayer& ly, const VecTeamChunk& c,
                           int64_t S, int32_t e0, int32_t en, int32_t picked) {
  auto dirty = [&](int64_t st) { return picked < 0 || c.i1[st] == picked || c.i2[st] == picked; };
  if (S * 64 <= en) {
    // dirty(st) reads state written before the last barrier: every lane
    // takes the same branch, as the reductions' barriers need.
    for (int64_t st = 0; st < S; ++st) {
      if (dirty(st)) vec_step_tops_team(team, ly, c, S, e0, en, st);
    }
  } else {
    // S <= 2^31 - 1 (checked by the ops): steps fit the team's int32 indices.
    team.for_each((int32_t)S, [&](int32_t st) {
      if (dirty(st)) vec_step_tops(ly, c, S, e0, en, st);
    });
    team.sync();
  }
}

// The pick: every chunk expert's values summed s = 0, 1, ... in float32 on
// one lane each (SPEC's order); the smallest total, first index on ties, by
// unique keys. An expert that leads no step sums the step maxima, the CPU's
// `common`, so the minimum over all experts is the CPU's pick. Values are
// scores and reliefs of loads >= 0, so each total is >= 0 or +inf, which
// nonneg_bits orders (loads the ops reject only make the order meaningless;
// the index stays in range).
template <typename Team>
EPLB_HD int32_t vec_team_pick(const Team& team, const VecTeamChunk& c, int64_t S, int32_t en) {
  const uint64_t key = team.min_key(en, [&](int32_t j) {
    float v = 0.0f;
    for (int64_t st = 0; st < S; ++st) v = v + (c.i1[st] == j ? c.valt[st] : c.v1[st]);
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
    bitonic_sort(team, s.keys, n2);
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

// Phase 2, per chunk c: the replicas, then the dealing over the chunk's GPUs
// and the outputs in original ids (log2phy rows [E, X] of the layer).
template <typename Team, typename P2L, typename OutT>
EPLB_HD void vec_team_chunk(const Team& team, VecDims d, const VecLayer& ly, VecTeamChunk s,
                            int32_t c, P2L* phy2log, OutT* log2phy, OutT* logcnt) {
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
  if (rn > 0) vec_team_tops(team, ly, s, S, e0, en, -1);
  for (int32_t i = 0; i < rn; ++i) {
    const int32_t j = vec_team_pick(team, s, S, en);
    team.single([&] {
      s.p2l[en + i] = j;
      s.prank[en + i] = s.cnt[j];
      s.cnt[j] += 1;
    });
    if (i + 1 == rn) break;
    vec_team_tops(team, ly, s, S, e0, en, j);
  }
  vec_team_deal(team, d, ly, s, c, phy2log, log2phy, logcnt);
}

}  // namespace eplb
