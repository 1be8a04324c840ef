// CUDA kernel of the migrate op: one thread block per layer, a BlockTeam
// running csrc/core/migrate.h. The block sums the loads over steps (one
// expert per thread, as the other kernels); the relabeling's assignment and
// each greedy step's change are sequential by nature and run on one thread,
// while the candidate scans of every step are spread over the block. The
// CPU test suite runs the same code on 32 emulated lanes (_lanes_migrate),
// which must give the CPU op's bits.
// A block's state (the core's scratch and the summed loads) sits in dynamic
// shared memory where it fits (115 KB at DeepSeek-V3 shape): the
// sequential parts read it one value at a time, each read a global-memory
// latency otherwise. Larger shapes get global scratch from torch's caching
// allocator (launch.cuh). The kernel runs on the current stream and nothing
// is read on the host: the call can be captured in a CUDA graph. Values are
// not checked here (the Python layer does it); the core reads out-of-range
// ids as empty slots and stays in bounds.
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>

#include "../../core/migrate.h"
#include "../migrate_args.h"
#include "../tensor_utils.h"
#include "launch.cuh"
#include "team.cuh"

namespace eplb {
namespace {

using torch::stable::Tensor;

template <typename T>
__global__ void migrate_kernel(char* global, int64_t stride, Loads<T> t, MigrateDims d,
                               int64_t core, const int64_t* phy2log, const int64_t* rank,
                               const int64_t* prev, const uint8_t* active, int64_t* out_p2l,
                               int64_t* out_rank, int64_t* out_cnt, int64_t* info) {
  extern __shared__ uint64_t smem[];
  __shared__ uint64_t red[33];
  __shared__ alignas(16) char wide[BlockTeam::kWideBytes];
  const BlockTeam team{red, wide};
  const int64_t l = blockIdx.x;
  char* buf = global ? global + l * stride : reinterpret_cast<char*>(smem);
  float* w = reinterpret_cast<float*>(buf + core);
  team.for_each(d.E, [&](int32_t e) { w[e] = sum_over_steps_one(t, l, e); });
  team.sync();
  MigrateScratch s;
  migrate_scratch(d, buf, &s);
  const int64_t lp = l * d.P;
  MigrateIO io{w, phy2log + lp, rank + lp, prev + lp, active, out_p2l + lp, out_rank + lp,
               out_cnt + l * d.E, info + l * 3};
  migrate_layer(team, d, s, io);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> migrate_cuda(Tensor tokens, Tensor phy2log, Tensor rank,
                                                        Tensor previous, Tensor active, int64_t k,
                                                        int64_t C, int64_t N, int64_t max_moves,
                                                        double min_improvement) {
  Placement a;
  const MigrateDims d = check_migrate_args(tokens, phy2log, rank, previous, active, k, C, N,
                                           max_moves, min_improvement, &a);
  check_device(tokens, "tokens_per_expert", true);
  EPLB_CHECK_VALUE(active.numel() == 0 || active.get_device_index() == tokens.get_device_index(),
                   "active must be on the same device as tokens_per_expert");
  torch::stable::accelerator::DeviceGuard guard(tokens.get_device_index());
  const MigrateOutputs out = new_migrate_outputs(tokens, a);
  if (a.L == 0) return out.tuple();
  const int64_t core = (migrate_scratch(d, nullptr, nullptr) + 255) / 256 * 256;
  const int64_t bytes = core + (int64_t)sizeof(float) * a.E;
  const uint8_t* act = active.numel() > 0 ? ptr<uint8_t>(active) : nullptr;
  dispatch_loads(tokens, "tokens_per_expert", [&](auto tag) {
    using T = decltype(tag);
    launch_with_state(&migrate_kernel<T>, tokens, (unsigned)a.L, 128, bytes, make_loads<T>(tokens), d,
                      core, ptr<int64_t>(phy2log), ptr<int64_t>(rank), ptr<int64_t>(previous), act,
                      ptr<int64_t>(out.p2l), ptr<int64_t>(out.rank), ptr<int64_t>(out.cnt),
                      ptr<int64_t>(out.info));
  });
  return out.tuple();
}

}  // namespace
}  // namespace eplb

STABLE_TORCH_LIBRARY_IMPL(eplb_ext, CUDA, m) {
  m.impl("migrate", TORCH_BOX(&eplb::migrate_cuda));
}
