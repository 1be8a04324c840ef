// Device teams for the lane-parallel code of csrc/core (see team.h there):
// BlockTeam is every thread of the block, WarpTeam one warp. Reductions
// combine per-thread partial keys with __shfl_xor_sync (the butterfly that
// LaneTeam<32> emulates on the host), then, for a block, across warps
// through shared memory.
#pragma once

#include "../../core/team.h"

namespace eplb {

// A trivially copyable value exchanged between the lanes of a warp, a
// 32-bit word at a time; shuffle(word) is one __shfl*_sync of the full warp.
template <typename T, typename Shuffle>
__device__ __forceinline__ T shuffle_words(const T& v, const Shuffle& shuffle) {
  static_assert(sizeof(T) % 4 == 0, "shuffled values are whole 32-bit words");
  uint32_t w[sizeof(T) / 4];
  memcpy(w, &v, sizeof(T));
  for (int j = 0; j < (int)(sizeof(T) / 4); ++j) w[j] = shuffle(w[j]);
  T r;
  memcpy(&r, w, sizeof(T));
  return r;
}

template <typename T>
__device__ __forceinline__ T shfl_xor_obj(const T& v, int o) {
  return shuffle_words(v, [o](uint32_t w) { return __shfl_xor_sync(0xffffffffu, w, o); });
}

template <typename T>
__device__ __forceinline__ T shfl_from(const T& v, int src) {
  return shuffle_words(v, [src](uint32_t w) { return __shfl_sync(0xffffffffu, w, src); });
}

template <typename T, typename Merge>
__device__ __forceinline__ T warp_merge(T v, const Merge& merge) {
  for (int o = 1; o < 32; o *= 2) v = merge(v, shfl_xor_obj(v, o));
  return v;
}

template <bool kLargest>
__device__ __forceinline__ uint64_t pick_key(uint64_t a, uint64_t b) {
  return (kLargest ? b > a : b < a) ? b : a;
}

template <bool kLargest>
__device__ __forceinline__ uint64_t warp_reduce(uint64_t v) {
  return warp_merge(v, [](uint64_t a, uint64_t b) { return pick_key<kLargest>(a, b); });
}

// This lane's extreme key over i = first, first + step, ... < n.
template <bool kLargest, typename F>
__device__ __forceinline__ uint64_t lane_extreme(int32_t first, int32_t step, int32_t n,
                                                 const F& key) {
  uint64_t v = kLargest ? 0 : ~(uint64_t)0;
  for (int32_t i = first; i < n; i += step) v = pick_key<kLargest>(v, key(i));
  return v;
}

// This lane's extreme 32-bit key over i = first, first + step, ... < n and
// the index of its first occurrence (~0u for a lane without items).
template <bool kLargest, typename F>
__device__ __forceinline__ void lane_arg(int32_t first, int32_t step, int32_t n, const F& key,
                                         uint32_t& best, uint32_t& idx) {
  best = kLargest ? 0u : ~0u, idx = ~0u;
  for (int32_t i = first; i < n; i += step) {
    const uint32_t k = key(i);
    if (idx == ~0u || (kLargest ? k > best : k < best)) best = k, idx = (uint32_t)i;
  }
}

// The warp's extreme key among lanes with items, then the lowest index that
// has it: ties go to the lowest index, as with packed 64-bit keys. Every lane
// gets the result.
template <bool kLargest>
__device__ __forceinline__ uint32_t warp_arg(uint32_t best, uint32_t idx) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  // Lanes without items stand aside: 0 never exceeds a largest key, ~0u
  // never undercuts a smallest one, and their index ~0u never wins.
  const uint32_t m = kLargest ? __reduce_max_sync(0xffffffffu, idx == ~0u ? 0u : best)
                              : __reduce_min_sync(0xffffffffu, best);
  return __reduce_min_sync(0xffffffffu, idx != ~0u && best == m ? idx : ~0u);
#else
  // Packed (key, index) keys in one 64-bit butterfly; lanes without items
  // hold the neutral key.
  uint64_t v;
  if (kLargest) {
    v = idx == ~0u ? 0 : ((uint64_t)best << 32) | ~idx;
    return ~(uint32_t)warp_reduce<true>(v);
  }
  v = idx == ~0u ? ~(uint64_t)0 : ((uint64_t)best << 32) | idx;
  return (uint32_t)warp_reduce<false>(v);
#endif
}

// Compare-exchanges of keys r and r + JR of every lane (a bitonic stage
// whose distance j = 32 JR spans whole rounds of the warp): the smaller key
// goes first where the block of `size` keys sorts ascending. Indices are
// fixed at compile time, so the keys stay in registers.
template <int R, int JR>
__device__ __forceinline__ void regs_exchange(uint64_t (&k)[R], int32_t size) {
  if constexpr (JR < R) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if ((r & JR) != 0) continue;
      const bool up = ((r * 32) & size) == 0;
      const uint64_t a = k[r], b = k[r + JR];
      const bool swap = (a > b) == up;
      k[r] = swap ? b : a;
      k[r + JR] = swap ? a : b;
    }
  }
}

// bitonic_sort (team.h) of n2 = 32 R keys on one warp, key i = r * 32 +
// lane in register k[r] of its lane: the same network, stages of distance
// j < 32 by shuffles, longer ones inside each lane. Keys are unique, so it
// gives the only order.
template <int R>
__device__ __forceinline__ void warp_sort_regs(uint64_t* key) {
  const int32_t lane = (int32_t)(threadIdx.x & 31);
  uint64_t k[R];
#pragma unroll
  for (int r = 0; r < R; ++r) k[r] = key[r * 32 + lane];
  for (int32_t size = 2; size <= 32 * R; size *= 2) {
    for (int32_t j = size / 2; j > 0; j /= 2) {
      if (j < 32) {
        // This lane keeps the smaller of its key and its partner's when it
        // is the pair's lower index of an ascending block, or the upper of
        // a descending one.
        const bool lower = (lane & j) == 0;
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const uint64_t o = shfl_xor_obj(k[r], j);
          const bool up = ((r * 32 + lane) & size) == 0;
          const bool smaller = o < k[r];
          k[r] = (lower == up) == smaller ? o : k[r];
        }
        continue;
      }
      switch (j / 32) {
        case 1: regs_exchange<R, 1>(k, size); break;
        case 2: regs_exchange<R, 2>(k, size); break;
        case 4: regs_exchange<R, 4>(k, size); break;
        default: regs_exchange<R, 8>(k, size); break;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) key[r * 32 + lane] = k[r];
  __syncwarp();
}

// One warp. Every lane of the warp must call each member (they use the full
// mask).
struct WarpTeam {
  __device__ int32_t lane() const { return threadIdx.x & 31; }

  template <typename F>
  __device__ void for_each(int32_t n, const F& f) const {
    for (int32_t i = lane(); i < n; i += 32) f(i);
  }
  __device__ void sync() const { __syncwarp(); }
  // Up to 512 keys in registers (32 per round of the warp), more through
  // memory.
  __device__ __forceinline__ void sort(uint64_t* key, int32_t n2) const {
    switch (n2) {
      case 32: warp_sort_regs<1>(key); break;
      case 64: warp_sort_regs<2>(key); break;
      case 128: warp_sort_regs<4>(key); break;
      case 256: warp_sort_regs<8>(key); break;
      case 512: warp_sort_regs<16>(key); break;
      default: bitonic_sort(*this, key, n2);
    }
  }
  template <typename F>
  __device__ void single(const F& f) const {
    if (lane() == 0) f();
    __syncwarp();
  }
  template <typename F>
  __device__ auto single_result(const F& f) const -> decltype(f()) {
    decltype(f()) v{};
    if (lane() == 0) v = f();
    return shfl_from(v, 0);
  }
  template <typename T, typename Visit, typename Merge>
  __device__ T fold(int32_t n, const T& init, const Visit& visit, const Merge& merge) const {
    T acc = init;
    for (int32_t i = lane(); i < n; i += 32) visit(i, acc);
    return warp_merge(acc, merge);
  }
  template <typename F>
  __device__ uint64_t max_key(int32_t n, const F& key) const {
    return warp_reduce<true>(lane_extreme<true>(lane(), 32, n, key));
  }
  template <typename F>
  __device__ uint64_t min_key(int32_t n, const F& key) const {
    return warp_reduce<false>(lane_extreme<false>(lane(), 32, n, key));
  }
  template <typename F>
  __device__ int32_t arg_min(int32_t n, const F& key) const {
    uint32_t best, idx;
    lane_arg<false>(lane(), 32, n, key, best, idx);
    return (int32_t)warp_arg<false>(best, idx);
  }
  template <typename F>
  __device__ int32_t arg_max(int32_t n, const F& key) const {
    uint32_t best, idx;
    lane_arg<true>(lane(), 32, n, key, best, idx);
    return (int32_t)warp_arg<true>(best, idx);
  }
  // Up to 32 packs: lane p keeps pack p's weight and count in registers, so
  // a pick is the key, the reduction and the winner's addition, with the
  // next item read ahead; no shared-memory round trip between picks. The
  // same keys, reduction and float additions as generic_pack_picks.
  template <typename Item, typename Weight, typename Place>
  __device__ __forceinline__ void pack_picks(int32_t n, int32_t m, int32_t cap,
                                             const Item& item, const Weight& weight,
                                             float* pack_w, int32_t* pack_n,
                                             const Place& place) const {
    if (m > 32) {
      generic_pack_picks(*this, n, m, cap, item, weight, pack_w, pack_n, place);
      return;
    }
    const int32_t me = lane();
    const bool mine = me < m;
    float w = mine ? pack_w[me] : 0.0f;
    int32_t count = mine ? pack_n[me] : cap;
    int32_t it = n > 0 ? item(0) : 0;
    float wt = n > 0 ? weight(it) : 0.0f;
    for (int32_t r = 0; r < n; ++r) {
      const int32_t it_next = r + 1 < n ? item(r + 1) : 0;
      const float wt_next = r + 1 < n ? weight(it_next) : 0.0f;
      const uint32_t best = warp_arg<false>(mine ? open_pack_key(w, count, cap) : ~0u,
                                            mine ? (uint32_t)me : ~0u);
      if ((uint32_t)me == best) {
        place(it, me, count);
        w = w + wt;
        count += 1;
      }
      it = it_next;
      wt = wt_next;
    }
    if (mine) pack_w[me] = w, pack_n[me] = count;
    __syncwarp();
  }
};

// Every thread of the block (blockDim.x a multiple of 32, at most 1024).
// `red` is shared memory of 33 words, used by the reductions; `wide`, for
// fold and single_result only, shared memory of kWideBytes (values of at
// most 64 bytes).
struct BlockTeam {
  static constexpr int kWideBytes = 33 * 64;
  uint64_t* red;
  char* wide = nullptr;
  __device__ int32_t lane() const { return threadIdx.x; }

  template <typename F>
  __device__ auto single_result(const F& f) const -> decltype(f()) {
    using T = decltype(f());
    static_assert(sizeof(T) <= 64, "single_result values fit in 64 bytes");
    if (threadIdx.x == 0) {
      const T v = f();
      memcpy(wide, &v, sizeof(T));
    }
    __syncthreads();
    T r;
    memcpy(&r, wide, sizeof(T));
    __syncthreads();  // wide may be reused at once
    return r;
  }
  // Per-thread accumulators, merged within each warp by shuffles and then
  // across warps by warp 0, through `wide`.
  template <typename T, typename Visit, typename Merge>
  __device__ T fold(int32_t n, const T& init, const Visit& visit, const Merge& merge) const {
    static_assert(sizeof(T) <= 64, "folded values fit in 64 bytes");
    T acc = init;
    for (int32_t i = threadIdx.x; i < n; i += blockDim.x) visit(i, acc);
    acc = warp_merge(acc, merge);
    const int32_t warps = (int32_t)(blockDim.x >> 5);
    if ((threadIdx.x & 31) == 0) memcpy(wide + (threadIdx.x >> 5) * 64, &acc, sizeof(T));
    __syncthreads();
    if (threadIdx.x < 32) {
      T v = init;
      if ((int32_t)threadIdx.x < warps) memcpy(&v, wide + threadIdx.x * 64, sizeof(T));
      v = warp_merge(v, merge);
      if (threadIdx.x == 0) memcpy(wide + 32 * 64, &v, sizeof(T));
    }
    __syncthreads();
    T r;
    memcpy(&r, wide + 32 * 64, sizeof(T));
    __syncthreads();
    return r;
  }

  template <typename F>
  __device__ void for_each(int32_t n, const F& f) const {
    for (int32_t i = threadIdx.x; i < n; i += blockDim.x) f(i);
  }
  __device__ void sync() const { __syncthreads(); }
  __device__ void sort(uint64_t* key, int32_t n2) const { bitonic_sort(*this, key, n2); }
  template <typename F>
  __device__ void single(const F& f) const {
    if (threadIdx.x == 0) f();
    __syncthreads();
  }
  // One round per blockDim indices: a ballot per warp, the warps' counts
  // through `red`, each index written at its rank.
  template <typename F>
  __device__ __forceinline__ int32_t compact(int32_t n, const F& pred, int32_t* out) const {
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    int32_t total = 0;
    for (int32_t base = 0; base < n; base += (int32_t)blockDim.x) {
      const int32_t i = base + (int32_t)threadIdx.x;
      const bool p = i < n && pred(i);
      const uint32_t votes = __ballot_sync(0xffffffffu, p);
      if (lane == 0) red[warp] = (uint64_t)__popc(votes);
      __syncthreads();
      int32_t before = total;
      for (uint32_t w = 0; w < warps; ++w) {
        const int32_t c = (int32_t)red[w];
        before += w < warp ? c : 0;
        total += c;
      }
      if (p) out[before + __popc(votes & ((1u << lane) - 1u))] = i;
      __syncthreads();  // red is reused; out is complete after the last round
    }
    return total;
  }
  template <typename F>
  __device__ uint64_t max_key(int32_t n, const F& key) const {
    const uint64_t v = lane_extreme<true>(threadIdx.x, blockDim.x, n, key);
    return across_warps<true>(warp_reduce<true>(v));
  }
  template <typename F>
  __device__ uint64_t min_key(int32_t n, const F& key) const {
    const uint64_t v = lane_extreme<false>(threadIdx.x, blockDim.x, n, key);
    return across_warps<false>(warp_reduce<false>(v));
  }
  template <typename F>
  __device__ int32_t arg_min(int32_t n, const F& key) const {
    return packed_arg_min(*this, n, key);
  }
  template <typename F>
  __device__ int32_t arg_max(int32_t n, const F& key) const {
    return packed_arg_max(*this, n, key);
  }
  template <typename Item, typename Weight, typename Place>
  __device__ __forceinline__ void pack_picks(int32_t n, int32_t m, int32_t cap,
                                             const Item& item, const Weight& weight,
                                             float* pack_w, int32_t* pack_n,
                                             const Place& place) const {
    generic_pack_picks(*this, n, m, cap, item, weight, pack_w, pack_n, place);
  }

 private:
  template <bool kLargest>
  __device__ uint64_t across_warps(uint64_t v) const {
    const int32_t warps = (int32_t)(blockDim.x >> 5);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
      uint64_t x = (int32_t)threadIdx.x < warps ? red[threadIdx.x] : (kLargest ? 0 : ~(uint64_t)0);
      x = warp_reduce<kLargest>(x);
      if (threadIdx.x == 0) red[32] = x;
    }
    __syncthreads();
    const uint64_t r = red[32];
    __syncthreads();  // red may be reused by the next reduction
    return r;
  }
};

}  // namespace eplb
