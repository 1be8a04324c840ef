// Balanced packing and greedy replication (SPEC "Building blocks") on one
// row of weights. Index arrays are int32: sizes are checked to fit before
// any core function runs.
#pragma once

#include "loads.h"
#include "winner_tree.h"

namespace eplb {

// Sort key of item i: descending weight, then ascending index (the tie
// rule), as one unsigned integer (nonneg_bits: the two zeros tie).
EPLB_HD uint64_t desc_key(float w, int32_t i) {
  return ((uint64_t)(~nonneg_bits(w)) << 32) | (uint32_t)i;
}

// Pack p's key: an open pack before a full one, then the smaller weight
// (weights >= 0, whose bits order like their values; +0 turns -0 into +0),
// then the lower index (p < 2^30). Keys are unique, so the smallest is the
// first lightest open pack.
EPLB_HD uint64_t pack_key(float w, bool full, int32_t p) {
  return ((uint64_t)full << 62) | ((uint64_t)nonneg_bits(w) << 30) | (uint32_t)p;
}

// Host only: least-significant-digit radix sort of the keys on their weight
// half, a byte per pass; each pass is stable and the keys start in index
// order, so ties stay in index order. Passes over a byte that every key
// shares are skipped. About half the instructions of the merge sort for a
// few hundred keys.
inline void radix_sort_keys(int32_t n, uint64_t* keys, uint64_t* tmp, int32_t* idx) {
  uint32_t count[4][256] = {};
  for (int32_t i = 0; i < n; ++i) {
    const uint64_t k = keys[i];
    for (int p = 0; p < 4; ++p) ++count[p][(k >> (32 + 8 * p)) & 255u];
  }
  uint64_t* src = keys;
  uint64_t* dst = tmp;
  for (int p = 0; p < 4; ++p) {
    const int shift = 32 + 8 * p;
    uint32_t* c = count[p];
    if (c[(src[0] >> shift) & 255u] == (uint32_t)n) continue;
    uint32_t total = 0;
    for (int b = 0; b < 256; ++b) {
      const uint32_t x = c[b];
      c[b] = total;
      total += x;
    }
    for (int32_t i = 0; i < n; ++i) dst[c[(src[i] >> shift) & 255u]++] = src[i];
    uint64_t* t = src;
    src = dst;
    dst = t;
  }
  for (int32_t i = 0; i < n; ++i) idx[i] = (int32_t)(uint32_t)src[i];
}

// Stable argsort by weight, descending, into idx[0..n); keys and tmp are
// scratch of n. Keys are unique, so the order is fully determined whatever
// the algorithm: a radix sort on the host for larger n, else a bottom-up
// merge sort of the keys: O(n log n), no recursion, so it also runs inside
// a CUDA thread.
EPLB_HD void argsort_desc_stable(const float* w, int32_t n, int32_t* idx, uint64_t* keys,
                                 uint64_t* tmp) {
  for (int32_t i = 0; i < n; ++i) keys[i] = desc_key(w[i], i);
#if !defined(__CUDA_ARCH__)
  if (n >= 128) {
    radix_sort_keys(n, keys, tmp, idx);
    return;
  }
#endif
  uint64_t* src = keys;
  uint64_t* dst = tmp;
  for (int32_t width = 1; width < n; width *= 2) {
    for (int32_t lo = 0; lo < n; lo += 2 * width) {
      const int32_t mid = lo + width < n ? lo + width : n;
      const int32_t hi = lo + 2 * width < n ? lo + 2 * width : n;
      int32_t a = lo, b = mid, o = lo;
      while (a < mid && b < hi) {
        // Branch-free: which run wins is data-dependent and unpredictable.
        const uint64_t ka = src[a], kb = src[b];
        const bool take_b = kb < ka;
        dst[o++] = take_b ? kb : ka;
        b += take_b;
        a += !take_b;
      }
      while (a < mid) dst[o++] = src[a++];
      while (b < hi) dst[o++] = src[b++];
    }
    uint64_t* t = src;
    src = dst;
    dst = t;
  }
  for (int32_t i = 0; i < n; ++i) idx[i] = (int32_t)(uint32_t)src[i];
}

struct PackScratch {
  int32_t* order;  // n
  uint64_t* keys;  // max(n, 2 next_pow2(m))
  uint64_t* tmp;   // n
  float* pack_w;   // m
  int32_t* pack_n; // m
  int32_t* win;    // next_pow2(m) (also used by replicate, with n entries)
};

// Scratch for packing up to n items into up to m packs.
EPLB_HD PackScratch take_pack_scratch(Carver& c, int64_t n, int64_t m) {
  PackScratch s;
  s.order = c.take<int32_t>(n);
  s.keys = c.take<uint64_t>(n > 2 * next_pow2((int32_t)m) ? n : 2 * next_pow2((int32_t)m));
  s.tmp = c.take<uint64_t>(n);
  s.pack_w = c.take<float>(m);
  s.pack_n = c.take<int32_t>(m);
  s.win = c.take<int32_t>(next_pow2((int32_t)m));
  return s;
}

// Packs n items into m packs of n/m items each. With `shortcut`, n == m
// maps item i to pack i unsorted (DeepSeek's balanced_packing);
// SGLang's pack_groups always sorts, which can only differ in which pack
// gets which item when n == m.
EPLB_HD void balanced_pack(const float* w, int32_t n, int32_t m, bool shortcut,
                           int32_t* pack, int32_t* rank, PackScratch s) {
  const int32_t cap = n / m;
  if (shortcut && cap == 1) {
    for (int32_t i = 0; i < n; ++i) {
      pack[i] = i;
      rank[i] = 0;
    }
    return;
  }
  argsort_desc_stable(w, n, s.order, s.keys, s.tmp);
  for (int32_t p = 0; p < m; ++p) {
    s.pack_w[p] = 0.0f;
    s.pack_n[p] = 0;
  }
  // The lightest open pack: a tree of minima over the packs' keys, t[1] the
  // root, leaves at t[m2 + p]; padding leaves hold the largest key.
  const int32_t m2 = next_pow2(m);
  uint64_t* t = s.keys;  // the sort is done with them
  for (int32_t p = 0; p < m2; ++p) t[m2 + p] = p < m ? pack_key(0.0f, false, p) : ~(uint64_t)0;
  for (int32_t x = m2 - 1; x >= 1; --x) t[x] = t[2 * x] < t[2 * x + 1] ? t[2 * x] : t[2 * x + 1];
  const uint64_t kIndex = (uint64_t{1} << 30) - 1;
  for (int32_t r = 0; r < n; ++r) {
    const int32_t item = s.order[r];
    const int32_t best = (int32_t)(t[1] & kIndex);
    pack[item] = best;
    rank[item] = s.pack_n[best];
    s.pack_w[best] = s.pack_w[best] + w[item];
    s.pack_n[best] += 1;
    int32_t x = m2 + best;
    t[x] = pack_key(s.pack_w[best], s.pack_n[best] >= cap, best);
    for (x >>= 1; x >= 1; x >>= 1) t[x] = t[2 * x] < t[2 * x + 1] ? t[2 * x] : t[2 * x + 1];
  }
}

// Greedy replication of n experts into p >= n slots. ratio (n floats) caches
// w[e] / count[e]; only the chosen expert's entry changes per slot, and it is
// recomputed with the same single division, so the cache is bit-exact. win
// holds next_pow2(n) ints.
EPLB_HD void replicate(const float* w, int32_t n, int32_t p, int32_t* phy2log,
                       int32_t* rank, int32_t* cnt, float* ratio, int32_t* win) {
  for (int32_t e = 0; e < n; ++e) {
    phy2log[e] = e;
    rank[e] = 0;
    cnt[e] = 1;
    ratio[e] = w[e];  // w / 1 is exact
  }
  if (p == n) return;
  auto tree = make_winner_tree(win, n, [=](int32_t r, int32_t l) {
    return r < n && ratio[r] > ratio[l];
  });
  tree.build();
  for (int32_t i = n; i < p; ++i) {
    const int32_t best = tree.top();
    phy2log[i] = best;
    rank[i] = cnt[best];
    cnt[best] += 1;
    ratio[best] = div_f32(w[best], (float)cnt[best]);
    tree.update(best);
  }
}

}  // namespace eplb
