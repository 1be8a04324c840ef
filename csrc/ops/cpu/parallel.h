// How the CPU kernels spread layers over threads. Every layer writes only its
// own rows, so the result never depends on how the layers are split.
//
// A call runs on the calling thread and is never made to wait for a thread
// that has not started: helpers (at most torch's thread count minus one, our
// own, since a parallel region of torch's OpenMP pool ends in a barrier that
// waits for every member, even one the OS has not scheduled yet) claim chunks
// of layers from a shared counter, and the caller, which claims too, waits
// only for chunks a helper has already claimed. Work too small to pay for
// waking a thread runs on the caller alone.
#pragma once

#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <new>

#include "../check.h"
#include "fp_env.h"

namespace eplb {

// Element operations (about 2 ns each) below which a chunk of layers stays
// on one thread: a chunk of at least this much work (roughly 0.2 ms) pays for
// a thread wake-up even when the machine is busy and wake-ups are slow.
constexpr int64_t kGrainWork = int64_t{1} << 17;

// Layers per chunk for a layer of `work_per_layer` element operations.
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

namespace detail {

// A range of chunks being worked on; lives on the caller's stack.
struct Job {
  void (*run)(void* ctx, int64_t chunk, void* scratch);
  void* ctx;
  int64_t chunks;
  size_t scratch_words;
  std::atomic<int64_t> next{0};
  std::atomic<bool> out_of_memory{false};
};

// Claims and runs chunks until none is left, with one scratch buffer for all
// of them, in a known floating-point environment.
inline void work_on(Job& job) {
  std::unique_ptr<uint64_t[]> buf;
  FpEnvGuard fp;
  for (int64_t c; (c = job.next.fetch_add(1, std::memory_order_relaxed)) < job.chunks;) {
    if (!buf) {
      // Uninitialised on purpose: every core function writes before it reads.
      buf.reset(new (std::nothrow) uint64_t[job.scratch_words]);
      if (!buf) {
        job.out_of_memory = true;
        return;
      }
    }
    job.run(job.ctx, c, buf.get());
  }
}

// Offers `job` to up to `helpers` helper threads, works on it on the calling
// thread, and returns once every claimed chunk is done (parallel.cpp).
void run_shared(Job& job, int helpers);

}  // namespace detail

// Runs body(l, scratch) for every layer, in chunks of `grain` layers; each
// participating thread owns one scratch buffer of scratch_bytes. body must
// not throw. A failed scratch allocation is reported after the other chunks
// are done.
template <typename F>
void for_each_layer(int64_t L, int64_t grain, int64_t scratch_bytes, const F& body) {
  if (L <= 0) return;
  grain = std::max<int64_t>(1, grain);
  struct Ctx {
    const F& body;
    int64_t L, grain;
  } ctx{body, L, grain};
  auto run = [](void* p, int64_t chunk, void* scratch) {
    const Ctx& c = *static_cast<const Ctx*>(p);
    const int64_t b = chunk * c.grain, e = std::min(c.L, b + c.grain);
    for (int64_t l = b; l < e; ++l) c.body(l, scratch);
  };
  detail::Job job{run, &ctx, (L + grain - 1) / grain, static_cast<size_t>(scratch_bytes / 8 + 1)};
  const int64_t threads = std::min<int64_t>(job.chunks, torch::stable::get_num_threads());
  if (threads <= 1) {
    detail::work_on(job);
  } else {
    detail::run_shared(job, static_cast<int>(threads - 1));
  }
  EPLB_CHECK_MEMORY(!job.out_of_memory, "could not allocate ", scratch_bytes,
                    " bytes of host scratch for a worker thread (out of memory)");
}

}  // namespace eplb
