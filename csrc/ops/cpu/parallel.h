// How the CPU kernels spread layers over threads. Every layer writes only its
// own rows, so the result never depends on how the layers are split.
#pragma once

#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <new>

#include "../check.h"

namespace eplb {

// Roughly how many element operations make a parallel task worth waking a
// thread for (a few microseconds of work).
constexpr int64_t kGrainWork = 1 << 12;

inline int64_t grain_for(int64_t work_per_layer) {
  return std::max<int64_t>(1, kGrainWork / std::max<int64_t>(1, work_per_layer));
}

// Fails at once, before any load is read, when one task's scratch cannot be
// allocated at all.
inline void reserve_host_scratch(int64_t scratch_bytes) {
  std::unique_ptr<uint64_t[]> probe(new (std::nothrow) uint64_t[static_cast<size_t>(scratch_bytes / 8 + 1)]);
  EPLB_CHECK_MEMORY(probe != nullptr, "could not allocate ", scratch_bytes,
                    " bytes of host scratch per layer (out of memory)");
}

// Runs body(l, scratch) for every layer; each task owns one scratch buffer.
// No exception may cross the C boundary of torch's parallel_for, so a failed
// allocation is caught in the task and reported after it.
template <typename F>
void for_each_layer(int64_t L, int64_t grain, int64_t scratch_bytes, const F& body) {
  if (L == 0) return;
  std::atomic<bool> out_of_memory{false};
  torch::stable::parallel_for(0, L, grain, [&](int64_t begin, int64_t end) {
    // Uninitialised on purpose: every core function writes before it reads.
    std::unique_ptr<uint64_t[]> buf(new (std::nothrow) uint64_t[static_cast<size_t>(scratch_bytes / 8 + 1)]);
    if (!buf) {
      out_of_memory = true;
      return;
    }
    for (int64_t l = begin; l < end; ++l) body(l, static_cast<void*>(buf.get()));
  });
  EPLB_CHECK_MEMORY(!out_of_memory, "could not allocate ", scratch_bytes,
                    " bytes of host scratch for a worker thread (out of memory)");
}

}  // namespace eplb
