// Host/device basics every core header uses. No torch types in csrc/core:
// the same functions are compiled by the host compiler for the CPU kernels
// and by nvcc for the CUDA kernels, so the CPU tests exercise the GPU's logic.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__)
#define EPLB_HD __host__ __device__ __forceinline__
#else
#define EPLB_HD inline
#endif

namespace eplb {

// Division and addition are kept as separate statements on purpose: the
// build passes -ffp-contract=off / --fmad=false so that no FMA is formed and
// every device rounds each operation the same way.
EPLB_HD float div_f32(float a, float b) { return a / b; }

EPLB_HD float neg_inf() {
  const uint32_t bits = 0xff800000u;
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
}

EPLB_HD bool f32_is_finite(float x) {
  uint32_t bits;
  memcpy(&bits, &x, sizeof(bits));
  return (bits & 0x7f800000u) != 0x7f800000u;
}

// Ordered bits of a float that is >= 0 or -0: +0 and -0 give the same key,
// and larger values give larger keys.
EPLB_HD uint32_t nonneg_bits(float w) {
  const float z = w + 0.0f;
  uint32_t bits;
  memcpy(&bits, &z, sizeof(bits));
  return bits;
}

// Callers pass n <= 2^30 (checked by every op); the cap keeps the loop
// finite and free of overflow for any n.
EPLB_HD int32_t next_pow2(int32_t n) {
  int32_t p = 1;
  while (p < n && p < (int32_t{1} << 30)) p *= 2;
  return p;
}

// Carves typed arrays, 8-byte aligned, out of one caller-provided buffer.
// With base == nullptr it only counts: `off` is then the bytes needed.
struct Carver {
  char* base;
  int64_t off;

  template <typename T>
  EPLB_HD T* take(int64_t n) {
    T* p = base ? (T*)(base + off) : nullptr;
    off += (n * (int64_t)sizeof(T) + 7) / 8 * 8;
    return p;
  }
};

// Branch-free selects on a lane mask (all ones or zero): the compiler turns
// these into vector blends, where `c ? a : b` on mixed types stops GCC from
// vectorising the loop. Exact: only bits are moved.
EPLB_HD uint32_t lane_mask(bool c) { return 0u - (uint32_t)c; }
EPLB_HD float select_f32(uint32_t m, float a, float b) {
  uint32_t x, y;
  memcpy(&x, &a, 4);
  memcpy(&y, &b, 4);
  const uint32_t r = (x & m) | (y & ~m);
  float f;
  memcpy(&f, &r, 4);
  return f;
}
EPLB_HD int32_t select_i32(uint32_t m, int32_t a, int32_t b) {
  return (int32_t)(((uint32_t)a & m) | ((uint32_t)b & ~m));
}

// Runs f(s) for s = s0, s0 + ds, ... < s1. Callers pass ds = 1 on the CPU
// (one thread walks every step, and the loop vectorises: the step loops here
// carry no dependence from one step to the next) and the thread count on the
// GPU (threads take interleaved steps, so reads coalesce).
template <typename F>
EPLB_HD void for_steps(int64_t s0, int64_t s1, int64_t ds, const F& f) {
  if (ds == 1) {
#if !defined(__CUDA_ARCH__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC ivdep
#endif
    for (int64_t s = s0; s < s1; ++s) f(s);
  } else {
    for (int64_t s = s0; s < s1; s += ds) f(s);
  }
}

}  // namespace eplb
