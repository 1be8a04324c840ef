// A known floating-point environment for the CPU kernels. The results are
// specified with IEEE rounding and subnormals (SPEC "Tie rule"), but the
// control register is per thread and callers may change it (for example
// torch.set_flush_denormal(True) sets flush-to-zero and denormals-are-zero
// on the calling thread only), so every task sets it and restores the
// caller's afterwards.
#pragma once

#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace eplb {

class FpEnvGuard {
 public:
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
  // All exceptions masked, round to nearest, no flush-to-zero, no
  // denormals-are-zero, no flags raised.
  FpEnvGuard() : saved_(_mm_getcsr()) { _mm_setcsr(0x1f80u); }
  ~FpEnvGuard() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#elif defined(__aarch64__)
  // FPCR = 0: round to nearest, no flush-to-zero (FZ, FZ16), no default
  // NaN, no traps.
  FpEnvGuard() {
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(saved_));
    __asm__ __volatile__("msr fpcr, %0" : : "r"(uint64_t{0}) : "memory");
  }
  ~FpEnvGuard() { __asm__ __volatile__("msr fpcr, %0" : : "r"(saved_) : "memory"); }

 private:
  uint64_t saved_;
#else
  // Elsewhere the default environment is assumed.
  FpEnvGuard() {}
#endif
  FpEnvGuard(const FpEnvGuard&) = delete;
  FpEnvGuard& operator=(const FpEnvGuard&) = delete;
};

}  // namespace eplb
