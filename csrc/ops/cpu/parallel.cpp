// The helper threads behind for_each_layer (parallel.h).
#include "parallel.h"

#include <pthread.h>

#include <condition_variable>
#include <mutex>
#include <thread>

namespace eplb {
namespace detail {
namespace {

// One job at a time; a second caller meanwhile works alone. Helpers sleep
// on a condition variable rather than spin, so that on a busy machine they
// take no time from the caller or from other processes.
class Pool {
 public:
  void run(Job& job, int helpers) {
    {
      std::unique_lock<std::mutex> lock(mu_, std::try_to_lock);
      if (!lock.owns_lock() || job_ != nullptr) {
        lock = {};
        work_on(job);
        return;
      }
      grow(helpers);
      job_ = &job;
      joined_ = 0;
      wanted_ = helpers;
      ++epoch_;
    }
    wake_.notify_all();
    work_on(job);
    // Withdraw the job: a helper that has not joined yet never will, so the
    // caller waits only for chunks that helpers have claimed.
    std::unique_lock<std::mutex> lock(mu_);
    job_ = nullptr;
    done_.wait(lock, [&] { return active_ == 0; });
  }

 private:
  void grow(int n) {
    for (; started_ < n; ++started_) {
      try {
        std::thread([this] { loop(); }).detach();
      } catch (...) {
        return;  // fewer helpers; the caller does the rest
      }
    }
  }

  void loop() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      wake_.wait(lock, [&] { return job_ != nullptr && epoch_ != seen; });
      seen = epoch_;
      if (joined_ >= wanted_) continue;
      ++joined_;
      ++active_;
      Job& job = *job_;
      lock.unlock();
      work_on(job);
      lock.lock();
      if (--active_ == 0) done_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable wake_, done_;
  Job* job_ = nullptr;
  uint64_t epoch_ = 0;
  int started_ = 0, joined_ = 0, wanted_ = 0, active_ = 0;
};

// Never destroyed: helpers may still be asleep in it when the process exits.
Pool* g_pool = nullptr;
std::once_flag g_once;

// A forked child has none of the parent's helper threads: give it a fresh
// pool (the old one, perhaps with a mutex held by a thread that no longer
// exists, is abandoned).
void reset_after_fork() { g_pool = new Pool(); }

Pool& pool() {
  std::call_once(g_once, [] {
    g_pool = new Pool();
    pthread_atfork(nullptr, nullptr, reset_after_fork);
  });
  return *g_pool;
}

}  // namespace

void run_shared(Job& job, int helpers) { pool().run(job, helpers); }

}  // namespace detail
}  // namespace eplb
