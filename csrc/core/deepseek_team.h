// DeepSeek's policy for one layer (SPEC "deepseek_hierarchical, deepseek")
// as lane-parallel phases on a team (team.h): the CUDA kernel's code, run on
// the host by the CPU tests through LaneTeam. Results are bit-identical to
// the sequential core (deepseek.h): every float is computed by the same
// operations in the same order, and every pick that the sequential code
// makes with a tree or a stable sort is made here by a reduction or a sort
// over unique keys, which name the same element whatever the lane order.
#pragma once

#include "deepseek.h"
#include "team.h"

namespace eplb {

// Packs n items into m packs of n/m each (SPEC "Balanced packing");
// place(item, pack, rank) receives each decision, on one lane. keys holds
// next_pow2(n) entries, pack_w and pack_n m each.
template <typename Team, typename Weight, typename Place>
EPLB_HD void team_balanced_pack(const Team& team, int32_t n, int32_t m, bool shortcut,
                                const Weight& weight, uint64_t* keys, float* pack_w,
                                int32_t* pack_n, const Place& place) {
  const int32_t cap = n / m;
  if (shortcut && cap == 1) {
    team.for_each(n, [&](int32_t i) { place(i, i, 0); });
    team.sync();
    return;
  }
  const int32_t n2 = next_pow2(n);
  // desc_key is unique per item, so the sorted order is the stable
  // descending order whatever network sorts it; padding sorts last.
  team.for_each(n2, [&](int32_t i) { keys[i] = i < n ? desc_key(weight(i), i) : ~(uint64_t)0; });
  team.for_each(m, [&](int32_t p) {
    pack_w[p] = 0.0f;
    pack_n[p] = 0;
  });
  team.sync();
  team.sort(keys, n2);
  team.pack_picks(
      n, m, cap, [&](int32_t r) { return (int32_t)(uint32_t)keys[r]; }, weight, pack_w, pack_n,
      place);
}

// Greedy replication of n experts into p slots (SPEC "Greedy replication"),
// as replicate() in packing.h: ratio caches weight(e) / cnt[e], recomputed
// by the one division of the sequential code.
template <typename Team, typename Weight, typename Idx>
EPLB_HD void team_replicate(const Team& team, int32_t n, int32_t p, const Weight& weight,
                            int32_t* cnt, float* ratio, Idx* phy2log, Idx* rank) {
  team.for_each(n, [&](int32_t e) {
    cnt[e] = 1;
    ratio[e] = weight(e);
    phy2log[e] = (Idx)e;
    rank[e] = 0;
  });
  team.sync();
  for (int32_t i = n; i < p; ++i) {
    // The larger w / count first, then the lower index, as replicate()'s
    // tree, whose right child wins only when strictly larger; +0 and -0
    // compare equal there and give one key here.
    const int32_t best = team.arg_max(n, [&](int32_t e) { return nonneg_bits(ratio[e]); });
    team.single([&] {
      phy2log[i] = (Idx)best;
      rank[i] = (Idx)cnt[best];
      cnt[best] += 1;
      ratio[best] = div_f32(weight(best), (float)cnt[best]);
    });
  }
  team.sync();
}

// State of one layer. Arrays of E and P are split by node (nodes write
// disjoint parts); the sort keys and GPU loads exist once per node team,
// since a team places its nodes one after another.
struct DeepseekTeamState {
  float* w;            // E   sum over steps
  float* group_w;      // C
  uint64_t* group_keys;// next_pow2(C)
  float* node_w;       // N   accumulated group loads
  int32_t* node_n;     // N
  int32_t* group_pos;  // C   position of group c in node-major order
  int32_t* mlog2log;   // E
  int32_t* cnt;        // E   node-major order
  float* ratio;        // E   node-major order
  int32_t* phy2mlog;   // P   per node: node-local expert of node-local slot
  int32_t* phy_rank;   // P
  float* slot_w;       // P
  int32_t* slot_pos;   // P   per node: g * k + q
  uint64_t* keys;      // teams * next_pow2(P / N)
  float* pack_w;       // teams * G / N
  int32_t* pack_n;     // teams * G / N
};

// Node teams of a layer: up to kDeepseekNodeTeams (the CUDA kernel's warps);
// team i places nodes i, i + teams, ... The CPU tests use the same count, so
// they index the per-team buffers as the kernel does.
constexpr int32_t kDeepseekNodeTeams = 8;
EPLB_HD int32_t deepseek_node_teams(DeepseekDims d) {
  return d.N < kDeepseekNodeTeams ? d.N : kDeepseekNodeTeams;
}

// Carves the state from buf (nullptr: only counts); returns the bytes.
EPLB_HD int64_t deepseek_team_state(DeepseekDims d, int32_t teams, void* buf,
                                    DeepseekTeamState* out) {
  Carver c{(char*)buf, 0};
  DeepseekTeamState s;
  const int64_t pn2 = next_pow2(d.P / d.N), gn = d.G / d.N;
  s.w = c.take<float>(d.E);
  s.group_w = c.take<float>(d.C);
  s.group_keys = c.take<uint64_t>(next_pow2(d.C));
  s.node_w = c.take<float>(d.N);
  s.node_n = c.take<int32_t>(d.N);
  s.group_pos = c.take<int32_t>(d.C);
  s.mlog2log = c.take<int32_t>(d.E);
  s.cnt = c.take<int32_t>(d.E);
  s.ratio = c.take<float>(d.E);
  s.phy2mlog = c.take<int32_t>(d.P);
  s.phy_rank = c.take<int32_t>(d.P);
  s.slot_w = c.take<float>(d.P);
  s.slot_pos = c.take<int32_t>(d.P);
  s.keys = c.take<uint64_t>(teams * pn2);
  s.pack_w = c.take<float>(teams * gn);
  s.pack_n = c.take<int32_t>(teams * gn);
  if (out) *out = s;
  return c.off;
}

// Sums over steps, group loads, groups packed into nodes, node-major
// renumbering. One team (the whole block on the GPU).
template <typename Team, typename T>
EPLB_HD void deepseek_team_renumber(const Team& team, const Loads<T>& t, int64_t l,
                                    DeepseekDims d, DeepseekTeamState s) {
  // sum_over_steps_one adds in the order of load_layer: the same bits.
  team.for_each(d.E, [&](int32_t e) { s.w[e] = sum_over_steps_one(t, l, e); });
  team.sync();
  const int32_t m = d.E / d.C, per_node = d.C / d.N;
  // One group per node (the global variant: C = N = 1) is placed without
  // reading the group loads (the packing's shortcut), so they are not summed.
  if (d.C != d.N) {
    team.for_each(d.C, [&](int32_t c) {
      float acc = 0.0f;  // in expert order, as deepseek_renumber
      for (int32_t j = 0; j < m; ++j) acc = acc + s.w[c * m + j];
      s.group_w[c] = acc;
    });
    team.sync();
  }
  team_balanced_pack(
      team, d.C, d.N, true, [&](int32_t c) { return s.group_w[c]; }, s.group_keys, s.node_w,
      s.node_n, [&](int32_t c, int32_t node, int32_t r) { s.group_pos[c] = node * per_node + r; });
  team.for_each(d.E, [&](int32_t e) { s.mlog2log[s.group_pos[e / m] * m + e % m] = e; });
  team.sync();
}

// The layer's outputs, already offset to it. log2phy ([E, X]) may be null.
struct DeepseekTeamOut {
  int64_t* phy2log;
  int64_t* rank;
  int64_t* logcnt;
  int64_t* log2phy;
  int64_t X;
};

// Node n on one team, using that team's keys and GPU loads (index `slot`):
// replication, slot loads, and the slots packed into the node's GPUs, into
// the layer's state (deepseek_team_write turns it into the outputs).
template <typename Team>
EPLB_HD void deepseek_team_node(const Team& team, DeepseekDims d, DeepseekTeamState s,
                                int32_t slot, int32_t n) {
  const int32_t en = d.E / d.N, pn = d.P / d.N, gn = d.G / d.N, k = d.P / d.G;
  const int32_t* m2l = s.mlog2log + n * en;
  int32_t* cnt = s.cnt + n * en;
  int32_t* p2m = s.phy2mlog + n * pn;
  int32_t* rk = s.phy_rank + n * pn;
  float* sw = s.slot_w + n * pn;
  int32_t* pos = s.slot_pos + n * pn;
  const float* w = s.w;
  auto mw = [&](int32_t j) { return w[m2l[j]]; };
  team_replicate(team, en, pn, mw, cnt, s.ratio + n * en, p2m, rk);
  team.for_each(pn, [&](int32_t j) { sw[j] = div_f32(mw(p2m[j]), (float)cnt[p2m[j]]); });
  team.sync();
  team_balanced_pack(
      team, pn, gn, true, [&](int32_t j) { return sw[j]; },
      s.keys + (int64_t)slot * next_pow2(pn), s.pack_w + (int64_t)slot * gn,
      s.pack_n + (int64_t)slot * gn, [&](int32_t j, int32_t g, int32_t q) { pos[j] = g * k + q; });
}

// The layer's outputs from the placed nodes, on any team (the whole block
// on the GPU: the map's padding is most of the writes).
template <typename Team>
EPLB_HD void deepseek_team_write(const Team& team, DeepseekDims d, DeepseekTeamState s,
                                 DeepseekTeamOut out) {
  const int32_t en = d.E / d.N, pn = d.P / d.N;
  team.for_each(d.P, [&](int32_t x) {
    const int32_t n = x / pn, r = s.phy_rank[x];
    const int64_t e = s.mlog2log[n * en + s.phy2mlog[x]], p = (int64_t)n * pn + s.slot_pos[x];
    out.phy2log[p] = e;
    out.rank[p] = r;
    if (out.log2phy && r < out.X) out.log2phy[e * out.X + r] = p;
  });
  team.for_each(d.E, [&](int32_t x) {
    const int64_t e = s.mlog2log[x];
    const int32_t c = s.cnt[x];
    out.logcnt[e] = c;
    if (out.log2phy) {
      for (int64_t r = c; r < out.X; ++r) out.log2phy[e * out.X + r] = -1;
    }
  });
  team.sync();
}

}  // namespace eplb
