// DeepSeek's hierarchical policy for one layer (SPEC "deepseek_hierarchical,
// deepseek"). The global policy is the same code with C = N = 1. The layer
// runs in phases: renumber (one thread), then replicate and place each node
// (nodes are independent, so the CUDA kernel gives each its own thread), then
// the counts.
#pragma once

#include "packing.h"

namespace eplb {

struct DeepseekDims {
  int32_t E, P, C, N, G;  // experts, slots, groups, nodes, GPUs
};

EPLB_HD int64_t deepseek_sort_size(DeepseekDims d) {
  return d.C > d.P / d.N ? d.C : d.P / d.N;
}
EPLB_HD int64_t deepseek_leaves(DeepseekDims d) {
  int64_t n = d.N > d.G / d.N ? d.N : d.G / d.N;
  return n > d.E / d.N ? n : d.E / d.N;
}
EPLB_HD int64_t deepseek_pack_bytes(DeepseekDims d) {
  Carver c{nullptr, 0};
  take_pack_scratch(c, deepseek_sort_size(d), deepseek_leaves(d));
  return c.off;
}

// Scratch for one layer, carved from a caller-provided buffer. Arrays marked
// "per node" hold one part per node, so that nodes can run concurrently.
struct DeepseekScratch {
  float* w;            // E   the layer's load (sum over steps)
  Sum128* acc;         // E   integer sums
  float* group_w;      // C
  int32_t* group_pack; // C
  int32_t* group_rank; // C
  int32_t* log2mlog;   // E
  int32_t* mlog2log;   // E
  float* mlog_w;       // E   load in node-major order
  int32_t* mlog_cnt;   // E
  int32_t* phy2mlog;   // P   per node, node-local expert index
  int32_t* phy_rank;   // P
  float* slot_w;       // P   per node
  int32_t* slot_pack;  // P   per node
  int32_t* slot_rank;  // P   per node
  float* ratio;        // E   per node
};

// Carves the arrays from buf (nullptr: only counts). After them come N + 1
// PackScratch areas (deepseek_pack): one per node and one (index N) for the
// groups, each sized for the largest sort and the widest tree. Returns the
// bytes needed in all.
EPLB_HD int64_t deepseek_scratch(DeepseekDims d, void* buf, DeepseekScratch* out) {
  Carver c{(char*)buf, 0};
  DeepseekScratch s;
  s.w = c.take<float>(d.E);
  s.acc = c.take<Sum128>(d.E);
  s.group_w = c.take<float>(d.C);
  s.group_pack = c.take<int32_t>(d.C);
  s.group_rank = c.take<int32_t>(d.C);
  s.log2mlog = c.take<int32_t>(d.E);
  s.mlog2log = c.take<int32_t>(d.E);
  s.mlog_w = c.take<float>(d.E);
  s.mlog_cnt = c.take<int32_t>(d.E);
  s.phy2mlog = c.take<int32_t>(d.P);
  s.phy_rank = c.take<int32_t>(d.P);
  s.slot_w = c.take<float>(d.P);
  s.slot_pack = c.take<int32_t>(d.P);
  s.slot_rank = c.take<int32_t>(d.P);
  s.ratio = c.take<float>(d.E);
  if (out) *out = s;
  return c.off + (int64_t)(d.N + 1) * deepseek_pack_bytes(d);
}

EPLB_HD PackScratch deepseek_pack(DeepseekDims d, void* buf, int32_t n) {
  const int64_t fixed = deepseek_scratch(d, nullptr, nullptr) - (int64_t)(d.N + 1) * deepseek_pack_bytes(d);
  Carver c{(char*)buf + fixed + n * deepseek_pack_bytes(d), 0};
  return take_pack_scratch(c, deepseek_sort_size(d), deepseek_leaves(d));
}

// Step 1: group loads, groups packed into nodes, node-major renumbering
// (log2mlog / mlog2log) and the renumbered loads. Uses pack scratch N.
EPLB_HD void deepseek_renumber(DeepseekDims d, DeepseekScratch s, PackScratch pack) {
  const int32_t m = d.E / d.C;
  const int32_t groups_per_node = d.C / d.N;
  for (int32_t c = 0; c < d.C; ++c) {
    float acc = 0.0f;
    for (int32_t j = 0; j < m; ++j) acc = acc + s.w[c * m + j];
    s.group_w[c] = acc;
  }
  balanced_pack(s.group_w, d.C, d.N, true, s.group_pack, s.group_rank, pack);
  for (int32_t c = 0; c < d.C; ++c) {
    const int32_t base = (s.group_pack[c] * groups_per_node + s.group_rank[c]) * m;
    for (int32_t j = 0; j < m; ++j) {
      s.log2mlog[c * m + j] = base + j;
      s.mlog2log[base + j] = c * m + j;
    }
  }
  for (int32_t i = 0; i < d.E; ++i) s.mlog_w[i] = s.w[s.mlog2log[i]];
}

// Steps 2 and 3 for node n: replicate its experts into its slots, pack the
// slots into its GPUs, and write phy2log / phy_rank [P] for its slots.
template <typename OutT>
EPLB_HD void deepseek_node(DeepseekDims d, DeepseekScratch s, PackScratch pack, int32_t n,
                           OutT* phy2log, OutT* phy_rank) {
  const int32_t en = d.E / d.N, pn = d.P / d.N, gn = d.G / d.N;
  const int32_t k = d.P / d.G;
  int32_t* p2m = s.phy2mlog + n * pn;
  int32_t* rk = s.phy_rank + n * pn;
  const float* mw = s.mlog_w + n * en;
  int32_t* mc = s.mlog_cnt + n * en;
  replicate(mw, en, pn, p2m, rk, mc, s.ratio + n * en, pack.win);
  float* slot_w = s.slot_w + n * pn;
  int32_t* slot_pack = s.slot_pack + n * pn;
  int32_t* slot_rank = s.slot_rank + n * pn;
  for (int32_t j = 0; j < pn; ++j) slot_w[j] = div_f32(mw[p2m[j]], (float)mc[p2m[j]]);
  balanced_pack(slot_w, pn, gn, true, slot_pack, slot_rank, pack);
  for (int32_t j = 0; j < pn; ++j) {
    const int64_t slot = (int64_t)n * pn + (int64_t)slot_pack[j] * k + slot_rank[j];
    phy2log[slot] = (OutT)s.mlog2log[n * en + p2m[j]];
    phy_rank[slot] = (OutT)rk[j];
  }
}

template <typename OutT>
EPLB_HD void deepseek_count(DeepseekScratch s, int32_t e, OutT* logcnt) {
  logcnt[e] = (OutT)s.mlog_cnt[s.log2mlog[e]];
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
