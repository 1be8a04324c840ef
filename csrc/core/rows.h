// The building-block ops on one row of a [rows, n] weight: DeepSeek's
// balanced_packing and replicate_experts, with their int64 outputs. Shared by
// the CPU kernel (a task per range of rows) and the CUDA kernel (a thread per
// row).
#pragma once

#include "packing.h"

namespace eplb {

struct PackingRow {
  float* w;
  int32_t* pack;
  int32_t* rank;
  PackScratch ps;
};

// Carves from buf (nullptr: only counts); returns the bytes needed.
EPLB_HD int64_t packing_row_scratch(int64_t n, int64_t m, void* buf, PackingRow* out) {
  Carver c{(char*)buf, 0};
  PackingRow r;
  r.w = c.take<float>(n);
  r.pack = c.take<int32_t>(n);
  r.rank = c.take<int32_t>(n);
  r.ps = take_pack_scratch(c, n, m);
  if (out) *out = r;
  return c.off;
}

template <typename T>
EPLB_HD void packing_row(const Loads<T>& w, int64_t l, int32_t m, void* buf, int64_t* pack,
                         int64_t* rank) {
  const int32_t n = (int32_t)w.E;
  PackingRow r;
  packing_row_scratch(n, m, buf, &r);
  for (int32_t i = 0; i < n; ++i) r.w[i] = w.at(0, l, i);
  balanced_pack(r.w, n, m, true, r.pack, r.rank, r.ps);
  for (int32_t i = 0; i < n; ++i) {
    pack[l * n + i] = r.pack[i];
    rank[l * n + i] = r.rank[i];
  }
}

struct ReplicateRow {
  float* w;
  float* ratio;
  int32_t* cnt;
  int32_t* phy2log;
  int32_t* rank;
  int32_t* win;
};

EPLB_HD int64_t replicate_row_scratch(int64_t n, int64_t p, void* buf, ReplicateRow* out) {
  Carver c{(char*)buf, 0};
  ReplicateRow r;
  r.w = c.take<float>(n);
  r.ratio = c.take<float>(n);
  r.cnt = c.take<int32_t>(n);
  r.phy2log = c.take<int32_t>(p);
  r.rank = c.take<int32_t>(p);
  r.win = c.take<int32_t>(next_pow2((int32_t)n));
  if (out) *out = r;
  return c.off;
}

template <typename T>
EPLB_HD void replicate_row(const Loads<T>& w, int64_t l, int32_t p, void* buf, int64_t* phy2log,
                           int64_t* rank, int64_t* logcnt) {
  const int32_t n = (int32_t)w.E;
  ReplicateRow r;
  replicate_row_scratch(n, p, buf, &r);
  for (int32_t i = 0; i < n; ++i) r.w[i] = w.at(0, l, i);
  replicate(r.w, n, p, r.phy2log, r.rank, r.cnt, r.ratio, r.win);
  for (int32_t i = 0; i < p; ++i) {
    phy2log[l * p + i] = r.phy2log[i];
    rank[l * p + i] = r.rank[i];
  }
  for (int32_t i = 0; i < n; ++i) logcnt[l * n + i] = r.cnt[i];
}

}  // namespace eplb
