// Reading tokens_per_expert: a strided view of the input, the check of every
// stored load (SPEC "Bad input") and the sums over steps (SPEC "sum over
// steps": float32, exact for integers).
#pragma once

#include "float16.h"

namespace eplb {

// A strided view of tokens_per_expert[S, L, E] (strides in elements).
template <typename T>
struct Loads {
  const T* data;
  int64_t S, L, E;
  int64_t ss, sl, se;

  EPLB_HD T raw(int64_t s, int64_t l, int64_t e) const {
    return data[s * ss + l * sl + e * se];
  }
  EPLB_HD float at(int64_t s, int64_t l, int64_t e) const {
    return to_f32<T>(raw(s, l, e));
  }
};

// An exact sum of non-negative integer loads in 128 bits (no realistic
// number of int64 loads overflows it), converted to float32 with one
// round-to-nearest-even, as the exact integer sum converted once.
struct Sum128 {
  uint64_t lo, hi;

  EPLB_HD void add(uint64_t v) {
    lo += v;
    hi += (uint64_t)(lo < v);
  }
  EPLB_HD float to_f32() const {
    if (hi == 0) return (float)lo;
    int32_t k = 0;  // significant bits in hi
    for (uint64_t x = hi; x != 0; x >>= 1) ++k;
    // Keep the top 64 bits and fold the rest into bit 0 (sticky): with 40
    // bits below float's 24, one conversion still rounds to nearest-even.
    const uint64_t top = k == 64 ? hi : (hi << (64 - k)) | (lo >> k);
    const uint64_t rest = k == 64 ? lo : lo << (64 - k);
    float scale = 1.0f;  // 2^k, exact
    for (int32_t i = 0; i < k; ++i) scale *= 2.0f;
    return (float)(top | (uint64_t)(rest != 0)) * scale;
  }
};

// Why a stored load is rejected (SPEC "Bad input"); 0 means it is fine.
enum LoadFault : int32_t { kLoadOk = 0, kLoadNegative = 1, kLoadNaN = 2, kLoadInf = 3 };

template <typename T>
EPLB_HD int32_t load_fault(T v) {
  if constexpr (std::is_integral<T>::value) {
    if constexpr (std::is_signed<T>::value) return v < 0 ? kLoadNegative : kLoadOk;
    return kLoadOk;
  } else {
    const float f = to_f32<T>(v);
    if (f != f) return kLoadNaN;
    // A finite double beyond float32's range is infinite once converted.
    if (!f32_is_finite(f)) return kLoadInf;
    if constexpr (std::is_floating_point<T>::value) {
      return v < 0 ? kLoadNegative : kLoadOk;  // -1e-300 is negative too
    } else {
      return f < 0.0f ? kLoadNegative : kLoadOk;
    }
  }
}

// 1 when load_fault(v) != kLoadOk, else 0, without branches, so that the
// sums' loop vectorises: NaN fails every comparison, a value infinite in
// float32 fails the bound, a negative one (-1e-300 in float64 too) fails
// v >= 0, and -0 passes.
template <typename T>
EPLB_HD uint32_t load_is_bad(T v) {
  if constexpr (std::is_integral<T>::value) {
    if constexpr (std::is_signed<T>::value) return (uint32_t)(v < 0);
    return 0u;
  } else {
    const float f = to_f32<T>(v);
    bool nonneg;
    if constexpr (std::is_floating_point<T>::value) {
      nonneg = v >= 0;
    } else {
      nonneg = f >= 0.0f;
    }
    return (uint32_t)!(nonneg & (f <= 3.40282347e+38f));
  }
}

// First faulty load of layer l in (step, expert) order, as s * E + e; -1 if
// none.
template <typename T>
EPLB_HD int64_t first_bad_load(const Loads<T>& t, int64_t l) {
  for (int64_t s = 0; s < t.S; ++s) {
    // Branch-free scan of the row first (it vectorises); locate only if bad.
    const T* row = t.data + s * t.ss + l * t.sl;
    int32_t any = 0;
    if (t.se == 1) {
      for (int64_t e = 0; e < t.E; ++e) any |= load_is_bad(row[e]);
    } else {
      for (int64_t e = 0; e < t.E; ++e) any |= load_is_bad(row[e * t.se]);
    }
    if (any == 0) continue;
    for (int64_t e = 0; e < t.E; ++e) {
      if (load_fault(row[e * t.se]) != kLoadOk) return s * t.E + e;
    }
  }
  return -1;
}

// One step's row into the running sums. Integers are added as uint64 (a
// negative value wraps, but it also sets bit 63 of `bits`, the OR of every
// value, which then rejects the layer); floats are converted and added in
// float32, and `bits` collects their faults.
template <typename T>
EPLB_HD void add_row(const T* row, int64_t se, int64_t E, float* out, uint64_t* sum,
                     uint64_t& bits) {
  uint64_t b = 0;
  if constexpr (std::is_integral<T>::value) {
    for (int64_t e = 0; e < E; ++e) {
      const uint64_t v = (uint64_t)row[e * se];
      sum[e] += v;
      b |= v;
    }
  } else {
    for (int64_t e = 0; e < E; ++e) {
      out[e] = out[e] + to_f32<T>(row[e * se]);
      b |= load_is_bad(row[e * se]);
    }
  }
  bits |= b;
}

// Sums over steps of every expert of layer l into out[E] (SPEC "sum over
// steps") and checks every load of the layer on the way, in one read of
// the input. Returns -1, or the first faulty load as first_bad_load does
// (out is then meaningless). Integer loads are summed exactly: in plain
// uint64 when the OR of the values bounds the sum below 2^64 (every value
// <= OR, so the sum <= S * OR), else again in 128 bits (acc, Sum128); either
// way converted to float32 once. Floating loads are converted first and
// added s = 0, 1, ... in float32. If tt is given, also stores the layer's
// loads as float32, expert-major: tt[e * S + s]. Steps are read in blocks so
// that both the rows read and the columns written stay in cache. acc
// (E Sum128) also holds the plain uint64 sums.
template <typename T>
EPLB_HD int64_t load_layer(const Loads<T>& t, int64_t l, float* out, Sum128* acc, float* tt) {
  constexpr int64_t kBlock = 16;
  const int64_t E = t.E, S = t.S;
  uint64_t* sum = (uint64_t*)acc;
  for (int64_t e = 0; e < E; ++e) {
    sum[e] = 0;
    out[e] = 0.0f;
  }
  uint64_t bits = 0;
  for (int64_t s0 = 0; s0 < S; s0 += kBlock) {
    const int64_t s1 = s0 + kBlock < S ? s0 + kBlock : S;
    for (int64_t s = s0; s < s1; ++s) {
      const T* row = t.data + s * t.ss + l * t.sl;
      if (t.se == 1) {
        add_row(row, 1, E, out, sum, bits);
      } else {
        add_row(row, t.se, E, out, sum, bits);
      }
    }
    if (tt) {
      for (int64_t s = s0; s < s1; ++s) {
        const T* row = t.data + s * t.ss + l * t.sl;
        for (int64_t e = 0; e < E; ++e) tt[e * S + s] = to_f32<T>(row[e * t.se]);
      }
    }
  }
  if constexpr (std::is_integral<T>::value) {
    if (std::is_signed<T>::value && (bits >> 63) != 0) return first_bad_load(t, l);
    if (S <= 1 || bits <= ~(uint64_t)0 / (uint64_t)S) {
      for (int64_t e = 0; e < E; ++e) out[e] = (float)sum[e];
      return -1;
    }
    for (int64_t e = 0; e < E; ++e) acc[e] = Sum128{0, 0};
    for (int64_t s = 0; s < S; ++s) {
      const T* row = t.data + s * t.ss + l * t.sl;
      for (int64_t e = 0; e < E; ++e) acc[e].add((uint64_t)row[e * t.se]);
    }
    for (int64_t e = 0; e < E; ++e) out[e] = acc[e].to_f32();
    return -1;
  } else {
    return bits != 0 ? first_bad_load(t, l) : -1;
  }
}

// The same sum for one expert, for a thread that owns expert e (the CUDA
// kernels): the same additions in the same order as load_layer. Loads are
// read a block of steps ahead of the additions, which keeps several reads
// of a GPU thread in flight.
template <typename T>
EPLB_HD float sum_over_steps_one(const Loads<T>& t, int64_t l, int64_t e) {
  constexpr int kAhead = 8;
  constexpr bool kInt = std::is_integral<T>::value;
  Sum128 acc{0, 0};
  float sum = 0.0f;
  for (int64_t s0 = 0; s0 < t.S; s0 += kAhead) {
    T v[kAhead];
    for (int i = 0; i < kAhead; ++i) v[i] = s0 + i < t.S ? t.raw(s0 + i, l, e) : T{};
    for (int i = 0; i < kAhead && s0 + i < t.S; ++i) {
      if constexpr (kInt) {
        acc.add((uint64_t)v[i]);
      } else {
        sum = sum + to_f32<T>(v[i]);
      }
    }
  }
  return kInt ? acc.to_f32() : sum;
}

}  // namespace eplb
