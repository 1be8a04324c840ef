// Device teams for the lane-parallel code of csrc/core (see team.h there):
// BlockTeam is every thread of the block, WarpTeam one warp. Reductions
// combine per-thread partial keys with __shfl_xor_sync (the butterfly that
// LaneTeam<32> emulates on the host), then, for a block, across warps
// through shared memory.
#pragma once

#include "../../core/team.h"

namespace eplb {

__device__ __forceinline__ uint64_t shfl_xor_u64(uint64_t v, int o) {
  const uint32_t lo = __shfl_xor_sync(0xffffffffu, (uint32_t)v, o);
  const uint32_t hi = __shfl_xor_sync(0xffffffffu, (uint32_t)(v >> 32), o);
  return ((uint64_t)hi << 32) | lo;
}

template <bool kLargest>
__device__ __forceinline__ uint64_t warp_reduce(uint64_t v) {
  for (int o = 1; o < 32; o *= 2) {
    const uint64_t b = shfl_xor_u64(v, o);
    v = (kLargest ? b > v : b < v) ? b : v;
  }
  return v;
}

// One warp. Every lane of the warp must call each member (they use the full
// mask).
struct WarpTeam {
  static constexpr int kWidth = 32;
  __device__ int32_t lane() const { return threadIdx.x & 31; }

  template <typename F>
  __device__ void for_each(int32_t n, const F& f) const {
    for (int32_t i = lane(); i < n; i += 32) f(i);
  }
  __device__ void sync() const { __syncwarp(); }
  template <typename F>
  __device__ void single(const F& f) const {
    if (lane() == 0) f();
    __syncwarp();
  }
  template <typename F>
  __device__ uint64_t max_key(int32_t n, const F& key) const {
    uint64_t v = 0;
    for (int32_t i = lane(); i < n; i += 32) {
      const uint64_t x = key(i);
      v = x > v ? x : v;
    }
    return warp_reduce<true>(v);
  }
  template <typename F>
  __device__ uint64_t min_key(int32_t n, const F& key) const {
    uint64_t v = ~(uint64_t)0;
    for (int32_t i = lane(); i < n; i += 32) {
      const uint64_t x = key(i);
      v = x < v ? x : v;
    }
    return warp_reduce<false>(v);
  }
};

// Every thread of the block (blockDim.x a multiple of 32, at most 1024).
// `red` is shared memory of 33 words, used by the reductions.
struct BlockTeam {
  uint64_t* red;
  __device__ int32_t lane() const { return threadIdx.x; }

  template <typename F>
  __device__ void for_each(int32_t n, const F& f) const {
    for (int32_t i = threadIdx.x; i < n; i += blockDim.x) f(i);
  }
  __device__ void sync() const { __syncthreads(); }
  template <typename F>
  __device__ void single(const F& f) const {
    if (threadIdx.x == 0) f();
    __syncthreads();
  }
  template <typename F>
  __device__ uint64_t max_key(int32_t n, const F& key) const {
    uint64_t v = 0;
    for (int32_t i = threadIdx.x; i < n; i += blockDim.x) {
      const uint64_t x = key(i);
      v = x > v ? x : v;
    }
    return across_warps<true>(warp_reduce<true>(v));
  }
  template <typename F>
  __device__ uint64_t min_key(int32_t n, const F& key) const {
    uint64_t v = ~(uint64_t)0;
    for (int32_t i = threadIdx.x; i < n; i += blockDim.x) {
      const uint64_t x = key(i);
      v = x < v ? x : v;
    }
    return across_warps<false>(warp_reduce<false>(v));
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
