// CUDA kernel of the migrate op: one thread block per (layer, search pass),
// a BlockTeam running csrc/core/migrate.h. Each block sums the loads over
// steps (one expert per thread, as the other kernels) and makes the
// relabeling; with a budget of moves, each then runs one pass of the
// search from Q, and the layer's last block to finish picks the passes'
// best (migrate_layer_pass), so the passes take the time of one. The
// relabeling's assignment and each greedy step's change are sequential by
// nature and run on one thread, while the candidate scans of every step are
// spread over the block. The CPU test suite runs the same code, blocks
// and 32 emulated lanes (_lanes_migrate), which must give the CPU op's bits.
// A block's state (the core's scratch and the summed loads) sits in dynamic
// shared memory where it fits (97 KB at DeepSeek-V3 shape, two blocks per
// SM on an H100/H200): the sequential parts read it one value at a time,
// each read a global-memory latency otherwise. Larger shapes get global
// scratch from torch's caching allocator (launch.cuh), as do the passes'
// boards. The kernel runs on the current stream and nothing is read on the
// host: the call can be captured in a CUDA graph. Values are not checked
// here (the Python layer does it); the core reads out-of-range ids as empty
// slots and stays in bounds.
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
                               int64_t* out_rank, int64_t* out_cnt, int64_t* info, char* boards,
                               int64_t board_stride, unsigned* arrivals) {
  extern __shared__ uint64_t smem[];
  __shared__ uint64_t red[33];
  __shared__ alignas(16) char wide[BlockTeam::kWideBytes];
  const BlockTeam team{red, wide};
  const int64_t l = blockIdx.x;
  const int32_t pass = (int32_t)blockIdx.y;
  char* buf = global ? global + ((int64_t)pass * gridDim.x + l) * stride
                     : reinterpret_cast<char*>(smem);
  float* w = reinterpret_cast<float*>(buf + core);
  team.for_each(d.E, [&](int32_t e) { w[e] = sum_over_steps_one(t, l, e); });
  team.sync();
  MigrateScratch s;
  migrate_scratch(d, buf, &s);
  PassBoard board{nullptr, nullptr};
  if (boards) pass_board(d, boards + l * board_stride, &board);
  const int64_t lp = l * d.P;
  MigrateIO io{w, phy2log + lp, rank + lp, prev + lp, active, out_p2l + lp, out_rank + lp,
               out_cnt + l * d.E, info + l * 3};
  migrate_layer_pass(team, d, s, io, pass, board, [&] {
    // Each thread's board writes, then one arrival per block; the block
    // that sees the others' arrivals sees their writes after its fence.
    __threadfence();
    team.sync();
    return team.single_result([&] {
      const bool last = atomicAdd(arrivals + l, 1u) == gridDim.y - 1;
      __threadfence();
      return last;
    });
  });
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
  // With passes in blocks of their own: per layer an arrival count (zeroed
  // here, on the stream) and a board.
  const int32_t passes = migrate_blocks(d);
  char* boards = nullptr;
  unsigned* arrivals = nullptr;
  const int64_t board_stride = (pass_board(d, nullptr, nullptr) + 255) / 256 * 256;
  const int64_t counts = (a.L * (int64_t)sizeof(unsigned) + 255) / 256 * 256;
  Tensor scratch;
  if (passes > 1) {
    const int64_t total = checked_mul_add(a.L, board_stride, counts);
    EPLB_CHECK_MEMORY(total >= 0, "could not allocate the search's boards: more than 2**63 bytes");
    scratch = new_index(tokens, {total}, ScalarType::Byte);
    arrivals = static_cast<unsigned*>(scratch.mutable_data_ptr());
    boards = static_cast<char*>(scratch.mutable_data_ptr()) + counts;
    EPLB_CUDA_CHECK(cudaMemsetAsync(arrivals, 0, (size_t)counts, cuda_stream(tokens)));
  }
  dispatch_loads(tokens, "tokens_per_expert", [&](auto tag) {
    using T = decltype(tag);
    launch_with_state<true>(&migrate_kernel<T>, tokens, dim3((unsigned)a.L, (unsigned)passes), 128,
                            bytes, make_loads<T>(tokens), d, core, ptr<int64_t>(phy2log),
                            ptr<int64_t>(rank), ptr<int64_t>(previous), act, ptr<int64_t>(out.p2l),
                            ptr<int64_t>(out.rank), ptr<int64_t>(out.cnt), ptr<int64_t>(out.info),
                            boards, board_stride, arrivals);
  });
  return out.tuple();
}

}  // namespace
}  // namespace eplb

STABLE_TORCH_LIBRARY_IMPL(eplb_ext, CUDA, m) {
  m.impl("migrate", TORCH_BOX(&eplb::migrate_cuda));
}
