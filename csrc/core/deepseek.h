// DeepSeek's hierarchical policy for one layer (SPEC "deepseek_hierarchical,
// deepseek"). The global policy is the same function with C = N = 1.
#pragma once

#include "packing.h"

namespace eplb {

struct DeepseekDims {
  int32_t E, P, C, N, G;  // experts, slots, groups, nodes, GPUs
};

// Scratch for one layer, carved from a caller-provided buffer.
struct DeepseekScratch {
  float* group_w;      // C
  int32_t* group_pack; // C
  int32_t* group_rank; // C
  int32_t* log2mlog;   // E
  int32_t* mlog2log;   // E
  float* mlog_w;       // E   load in node-major order
  int32_t* mlog_cnt;   // E
  int32_t* phy2mlog;   // P   per node, node-local expert index
  int32_t* phy_rank;   // P
  float* slot_w;       // P/N
  int32_t* slot_pack;  // P/N
  int32_t* slot_rank;  // P/N
  float* ratio;        // E/N
  PackScratch pack;    // sorts max(C, P/N) items into max(N, G/N, E/N) leaves
};

// Carves the scratch from buf (nullptr: only counts); returns its bytes.
EPLB_HD int64_t deepseek_scratch(DeepseekDims d, void* buf, DeepseekScratch* out) {
  const int64_t pn = d.P / d.N, en = d.E / d.N, gn = d.G / d.N;
  const int64_t n_sort = d.C > pn ? d.C : pn;
  int64_t n_leaves = d.N > gn ? d.N : gn;
  n_leaves = n_leaves > en ? n_leaves : en;
  Carver c{(char*)buf, 0};
  DeepseekScratch s;
  s.group_w = c.take<float>(d.C);
  s.group_pack = c.take<int32_t>(d.C);
  s.group_rank = c.take<int32_t>(d.C);
  s.log2mlog = c.take<int32_t>(d.E);
  s.mlog2log = c.take<int32_t>(d.E);
  s.mlog_w = c.take<float>(d.E);
  s.mlog_cnt = c.take<int32_t>(d.E);
  s.phy2mlog = c.take<int32_t>(d.P);
  s.phy_rank = c.take<int32_t>(d.P);
  s.slot_w = c.take<float>(pn);
  s.slot_pack = c.take<int32_t>(pn);
  s.slot_rank = c.take<int32_t>(pn);
  s.ratio = c.take<float>(en);
  s.pack = take_pack_scratch(c, n_sort, n_leaves);
  if (out) *out = s;
  return c.off;
}

// Steps 1 and 2 of SPEC for one layer: renumber experts node-major
// (log2mlog / mlog2log) and replicate each node's experts into its slots
// (phy2mlog, phy_rank, mlog_cnt, all node-local).
EPLB_HD void deepseek_replicate_layer(const float* w, DeepseekDims d,
                                      DeepseekScratch s) {
  const int32_t m = d.E / d.C;
  const int32_t groups_per_node = d.C / d.N;
  for (int32_t c = 0; c < d.C; ++c) {
    float acc = 0.0f;
    for (int32_t j = 0; j < m; ++j) acc = acc + w[c * m + j];
    s.group_w[c] = acc;
  }
  balanced_pack(s.group_w, d.C, d.N, true, s.group_pack, s.group_rank, s.pack);
  for (int32_t c = 0; c < d.C; ++c) {
    const int32_t base = (s.group_pack[c] * groups_per_node + s.group_rank[c]) * m;
    for (int32_t j = 0; j < m; ++j) {
      s.log2mlog[c * m + j] = base + j;
      s.mlog2log[base + j] = c * m + j;
    }
  }
  for (int32_t i = 0; i < d.E; ++i) s.mlog_w[i] = w[s.mlog2log[i]];
  const int32_t en = d.E / d.N, pn = d.P / d.N;
  for (int32_t n = 0; n < d.N; ++n) {
    replicate(s.mlog_w + n * en, en, pn, s.phy2mlog + n * pn,
              s.phy_rank + n * pn, s.mlog_cnt + n * en, s.ratio, s.pack.win);
  }
}

// Step 3 for one layer, then the outputs phy2log / phy_rank [P] and
// logcnt [E].
template <typename OutT>
EPLB_HD void deepseek_place_layer(DeepseekDims d, DeepseekScratch s, OutT* phy2log,
                                  OutT* phy_rank, OutT* logcnt) {
  const int32_t en = d.E / d.N, pn = d.P / d.N, gn = d.G / d.N;
  const int32_t k = d.P / d.G;
  for (int32_t n = 0; n < d.N; ++n) {
    const int32_t* p2m = s.phy2mlog + n * pn;
    const float* mw = s.mlog_w + n * en;
    const int32_t* mc = s.mlog_cnt + n * en;
    for (int32_t j = 0; j < pn; ++j) {
      s.slot_w[j] = div_f32(mw[p2m[j]], (float)mc[p2m[j]]);
    }
    balanced_pack(s.slot_w, pn, gn, true, s.slot_pack, s.slot_rank, s.pack);
    for (int32_t j = 0; j < pn; ++j) {
      const int64_t slot = (int64_t)n * pn + (int64_t)s.slot_pack[j] * k + s.slot_rank[j];
      const int32_t expert = s.mlog2log[n * en + p2m[j]];
      const int32_t r = s.phy_rank[n * pn + j];
      phy2log[slot] = (OutT)expert;
      phy_rank[slot] = (OutT)r;
    }
  }
  for (int32_t e = 0; e < d.E; ++e) logcnt[e] = (OutT)s.mlog_cnt[s.log2mlog[e]];
}

// logical_to_physical_map of one layer: out[e * X + r] = the slot holding
// replica r of expert e. out must be pre-filled with -1. Entries outside
// [0, E) x [0, X) are skipped, so no input can write out of bounds.
template <typename InT, typename OutT>
EPLB_HD void scatter_log2phy(const InT* phy2log, const InT* phy_rank, int64_t P, int64_t E,
                             int64_t X, OutT* out) {
  for (int64_t p = 0; p < P; ++p) {
    const int64_t e = (int64_t)phy2log[p], r = (int64_t)phy_rank[p];
    if (e >= 0 && e < E && r >= 0 && r < X) out[e * X + r] = (OutT)p;
  }
}

}  // namespace eplb
