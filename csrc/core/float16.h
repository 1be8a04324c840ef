// The 16-bit float formats, converted bit-exactly by hand so that the core
// needs neither torch's Half/BFloat16 types nor CUDA's.
#pragma once

#include "hd.h"

namespace eplb {

// Bit-exact conversions for the 16-bit float formats, written by hand so
// the core does not need torch's Half/BFloat16 types.
EPLB_HD float half_bits_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalise into float's range
      int e = -1;
      do {
        ++e;
        man <<= 1;
      } while ((man & 0x400u) == 0);
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + (127 - 15)) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
}

EPLB_HD float bf16_bits_to_float(uint16_t h) {
  const uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
}

// Tags for the 16-bit formats (their storage is uint16_t).
struct Half16 {
  uint16_t x;
};
struct BFloat16 {
  uint16_t x;
};

// Converts one stored load to float32. Integers convert with round to
// nearest, as torch's .float() does.
template <typename T>
EPLB_HD float to_f32(T v) {
  return (float)v;
}
template <>
EPLB_HD float to_f32<Half16>(Half16 v) {
  return half_bits_to_float(v.x);
}
template <>
EPLB_HD float to_f32<BFloat16>(BFloat16 v) {
  return bf16_bits_to_float(v.x);
}

}  // namespace eplb
