// Lane-parallel building blocks shared by the CUDA kernels and the CPU tests.
//
// A team is the set of lanes that works on one unit (a layer, a node). The
// parallel parts of a kernel are written once, as templates on the team
// type, out of three things:
//  * team.for_each(n, f): f(i) for every i in [0, n); the calls of one loop
//    must be independent of each other (they run at once on the GPU);
//  * team.sync(): every lane has finished the loops before it;
//  * team.max_key(n, key) / min_key: the largest / smallest key(i) over
//    [0, n), the same value on every lane. Keys are unique uint64 values
//    that pack (value, index), so the extreme key names the first best
//    element: the tie rule of SPEC.md, whatever the reduction order.
//  * team.arg_min(n, key) / arg_max: the index i in [0, n) of the smallest
//    / largest 32-bit key(i), the lowest index on ties, the same on every
//    lane (n >= 1): the same pick as min_key / max_key on keys that pack
//    (key, index), which a warp makes with two 32-bit reductions instead of
//    a 64-bit butterfly;
//  * team.single(f): f() on one lane (sequential steps such as one pick);
//    team.single_result(f) also hands f()'s value to every lane;
//  * team.fold(n, init, visit, merge): per-lane accumulators merged into
//    one, for picks whose order is not one packed key (see LaneTeam::fold).
//  * team.compact(n, pred, out) (LaneTeam, BlockTeam): the i in [0, n)
//    with pred(i), written to out in ascending order; returns their number,
//    the same on every lane. pred must read only what a barrier made
//    visible to every lane.
//  * team.sort(key, n2): bitonic_sort (below) of n2 unique keys, n2 a power
//    of two; a warp keeps up to 512 of them in registers;
//  * team.pack_picks(n, m, cap, item, weight, pack_w, pack_n, place): the
//    picks of a balanced packing (see pack_picks below); a warp keeps the
//    packs in registers.
//
// Two teams run the same code:
//  * LaneTeam<W> (host, here): W emulated lanes, each loop run lane by lane
//    in lane order (lane j takes i = j, j + W, ...), reductions computed per
//    lane and combined in the butterfly order of a warp shuffle. The CPU test
//    suite runs the kernels' code through it, with W = 32 and W = 1.
//  * BlockTeam / WarpTeam (device, csrc/ops/cuda/team.cuh): thread j of the
//    block or warp takes the same indices; sync() is a barrier.
// Because the loops' calls are independent and the keys unique, every team
// gives bit-identical results; a race on the GPU is what compute-sanitizer's
// racecheck looks for.
#pragma once

#include "hd.h"

namespace eplb {

// arg_min / arg_max made of a team's 64-bit key reductions: keys pack
// (key, index) for the smallest and (key, ~index) for the largest, so ties
// go to the lowest index. LaneTeam and BlockTeam use them; a warp has its
// own (team.cuh).
template <typename Team, typename F>
EPLB_HD int32_t packed_arg_min(const Team& team, int32_t n, const F& key) {
  return (int32_t)(uint32_t)team.min_key(n, [&](int32_t i) { return ((uint64_t)key(i) << 32) | (uint32_t)i; });
}
template <typename Team, typename F>
EPLB_HD int32_t packed_arg_max(const Team& team, int32_t n, const F& key) {
  return (int32_t)~(uint32_t)team.max_key(n, [&](int32_t i) { return ((uint64_t)key(i) << 32) | ~(uint32_t)i; });
}

// A pack's key in a balanced packing: an open pack before a full one, then
// the lighter (the order of packing.h's keys). Open packs stay below ~0u
// even for weights the ops reject (negative, NaN), so the pick is never a
// full pack.
EPLB_HD uint32_t open_pack_key(float w, int32_t count, int32_t cap) {
  const uint32_t bits = nonneg_bits(w);
  return count >= cap ? ~0u : (bits < ~0u ? bits : ~0u - 1);
}

// The picks of a balanced packing of n = m * cap items into m packs: for r
// = 0, 1, ..., item(r) goes to the first lightest open pack p, which
// place(item, p, rank in p) receives on one lane; pack_w and pack_n (m
// each, as they start) end as the packs' weights and counts. One pick
// after another: each depends on the last.
template <typename Team, typename Item, typename Weight, typename Place>
EPLB_HD void generic_pack_picks(const Team& team, int32_t n, int32_t m, int32_t cap,
                                const Item& item, const Weight& weight, float* pack_w,
                                int32_t* pack_n, const Place& place) {
  for (int32_t r = 0; r < n; ++r) {
    const int32_t it = item(r);
    const int32_t best =
        team.arg_min(m, [&](int32_t p) { return open_pack_key(pack_w[p], pack_n[p], cap); });
    team.single([&] {
      place(it, best, pack_n[best]);
      pack_w[best] = pack_w[best] + weight(it);
      pack_n[best] += 1;
    });
  }
  team.sync();
}

template <int W>
struct LaneTeam {
  static_assert(W >= 1 && (W & (W - 1)) == 0, "W must be a power of two");

  template <typename F>
  void for_each(int32_t n, const F& f) const {
    for (int32_t lane = 0; lane < W; ++lane) {
      for (int32_t i = lane; i < n; i += W) f(i);
    }
  }
  void sync() const {}
  void sort(uint64_t* key, int32_t n2) const { bitonic_sort(*this, key, n2); }
  template <typename F>
  void single(const F& f) const {
    f();
  }
  // f()'s result, computed on one lane, on every lane.
  template <typename F>
  auto single_result(const F& f) const -> decltype(f()) {
    return f();
  }
  // Folds [0, n) into per-lane accumulators that start at init (visit(i,
  // acc) adds item i; each lane visits its items in ascending order), then
  // merges them in the butterfly order of __shfl_xor_sync: after the round
  // with offset o, every lane holds the result of its group of 2 o lanes.
  // merge must pick by a total order (ties broken by an index the
  // accumulator carries), so the result does not depend on which lane held
  // what.
  template <typename T, typename Visit, typename Merge>
  T fold(int32_t n, const T& init, const Visit& visit, const Merge& merge) const {
    T part[W];
    for (int32_t lane = 0; lane < W; ++lane) {
      part[lane] = init;
      for (int32_t i = lane; i < n; i += W) visit(i, part[lane]);
    }
    for (int32_t o = 1; o < W; o *= 2) {
      T next[W];
      for (int32_t lane = 0; lane < W; ++lane) next[lane] = merge(part[lane], part[lane ^ o]);
      for (int32_t lane = 0; lane < W; ++lane) part[lane] = next[lane];
    }
    return part[0];
  }
  template <typename F>
  int32_t compact(int32_t n, const F& pred, int32_t* out) const {
    int32_t m = 0;
    for (int32_t i = 0; i < n; ++i) {
      if (pred(i)) out[m++] = i;
    }
    return m;
  }
  template <typename F>
  uint64_t max_key(int32_t n, const F& key) const {
    return extreme(n, key, true);
  }
  template <typename F>
  uint64_t min_key(int32_t n, const F& key) const {
    return extreme(n, key, false);
  }
  template <typename F>
  int32_t arg_min(int32_t n, const F& key) const {
    return packed_arg_min(*this, n, key);
  }
  template <typename Item, typename Weight, typename Place>
  void pack_picks(int32_t n, int32_t m, int32_t cap, const Item& item, const Weight& weight,
                  float* pack_w, int32_t* pack_n, const Place& place) const {
    generic_pack_picks(*this, n, m, cap, item, weight, pack_w, pack_n, place);
  }
  template <typename F>
  int32_t arg_max(int32_t n, const F& key) const {
    return packed_arg_max(*this, n, key);
  }

 private:
  // Keys are unique, so the extreme names one element whatever the order.
  template <typename F>
  uint64_t extreme(int32_t n, const F& key, bool largest) const {
    auto pick = [largest](uint64_t a, uint64_t b) { return (largest ? b > a : b < a) ? b : a; };
    return fold(
        n, largest ? uint64_t{0} : ~uint64_t{0},
        [&](int32_t i, uint64_t& acc) { acc = pick(acc, key(i)); }, pick);
  }
};

// Sorts n2 unique keys (n2 a power of two; pad with ~0 to sort n < n2 keys
// ascending and keep them first) by a bitonic network. Every pass is one
// parallel loop over disjoint pairs, so any team gives the same order: the
// only order of unique keys.
template <typename Team>
EPLB_HD void bitonic_sort(const Team& team, uint64_t* key, int32_t n2) {
  for (int32_t size = 2; size <= n2; size *= 2) {
    for (int32_t j = size / 2; j > 0; j /= 2) {
      team.for_each(n2, [&](int32_t i) {
        const int32_t o = i ^ j;
        if (o <= i) return;
        const bool up = (i & size) == 0;
        const uint64_t a = key[i], b = key[o];
        if ((a > b) == up) key[i] = b, key[o] = a;
      });
      team.sync();
    }
  }
}

}  // namespace eplb
