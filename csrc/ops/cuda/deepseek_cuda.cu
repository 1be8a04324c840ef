// CUDA kernels of deepseek / deepseek_hierarchical, logical_to_physical and
// the building-block ops balanced_packing and replicate_experts: the code of
// csrc/core/deepseek_team.h on device teams (team.cuh), one block per layer
// (or row), its state in shared memory. The CPU tests run the same code
// through LaneTeam (_lanes_deepseek), and every pick is a reduction over
// unique keys, so results equal the sequential CPU core bit for bit. Kernels
// run on the current stream and nothing is read on the host (CUDA-graph
// capturable). Load values are not checked here (the Python layer does);
// the kernels stay in bounds for any values.
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>

#include "../../core/deepseek_team.h"
#include "launch.cuh"
#include "team.cuh"

namespace eplb {
namespace {

using torch::stable::Tensor;

// Nodes go to warps, not to the whole block: each node is a chain of small
// picks (a few replicas among E/N experts, then P/N slots into G/N GPUs, 8
// GPUs at DeepSeek-V3's shape), and a warp's reduction is a few shuffles
// where the block's needs three barriers; nodes are independent, so up to
// kWarps of them run at once. The sums over steps, the group packing and
// the writing of the outputs use the whole block.
constexpr int kWarps = kDeepseekNodeTeams;

template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
    deepseek_kernel(char* global, int64_t stride, Loads<T> t, DeepseekDims d, int32_t teams,
                    DeepseekTeamOut out) {
  extern __shared__ uint64_t smem[];
  __shared__ uint64_t red[33];
  const int64_t l = blockIdx.x;
  DeepseekTeamState s;
  deepseek_team_state(d, teams, global ? global + l * stride : (char*)smem, &s);
  const BlockTeam block{red};
  deepseek_team_renumber(block, t, l, d, s);
  const int32_t warp = (int32_t)(threadIdx.x >> 5);
  for (int32_t n = warp; n < d.N && warp < teams; n += teams) {
    deepseek_team_node(WarpTeam{}, d, s, warp, n);
  }
  block.sync();
  const int64_t lp = l * d.P, le = l * d.E;
  deepseek_team_write(block, d, s,
                      DeepseekTeamOut{out.phy2log + lp, out.rank + lp, out.logcnt + le,
                                      out.log2phy ? out.log2phy + le * out.X : nullptr, out.X});
}

// One warp per row: packing and replication are sequences of picks among a
// row's items, which a warp's shuffles serve best.
template <typename T>
__global__ void __launch_bounds__(32)
    balanced_packing_kernel(char* global, int64_t stride, Loads<T> w, int32_t m, int64_t* pack,
                            int64_t* rank) {
  extern __shared__ uint64_t smem[];
  const int64_t l = blockIdx.x;
  const int32_t n = (int32_t)w.E;
  Carver c{global ? global + l * stride : (char*)smem, 0};
  uint64_t* keys = c.take<uint64_t>(next_pow2(n));
  float* pack_w = c.take<float>(m);
  int32_t* pack_n = c.take<int32_t>(m);
  int64_t* pk = pack + l * n;
  int64_t* rk = rank + l * n;
  team_balanced_pack(
      WarpTeam{}, n, m, true, [&](int32_t i) { return w.at(0, l, i); }, keys, pack_w, pack_n,
      [&](int32_t i, int32_t p, int32_t r) {
        pk[i] = p;
        rk[i] = r;
      });
}

int64_t packing_state_bytes(int64_t n, int64_t m) {
  Carver c{nullptr, 0};
  c.take<uint64_t>(next_pow2((int32_t)n));
  c.take<float>(m);
  c.take<int32_t>(m);
  return c.off;
}

int64_t replicate_state_bytes(int64_t n) {
  Carver c{nullptr, 0};
  c.take<int32_t>(n);
  c.take<float>(n);
  return c.off;
}

template <typename T>
__global__ void __launch_bounds__(32)
    replicate_kernel(char* global, int64_t stride, Loads<T> w, int32_t p, int64_t* phy2log,
                     int64_t* rank, int64_t* logcnt) {
  extern __shared__ uint64_t smem[];
  const int64_t l = blockIdx.x;
  const int32_t n = (int32_t)w.E;
  Carver c{global ? global + l * stride : (char*)smem, 0};
  int32_t* cnt = c.take<int32_t>(n);
  float* ratio = c.take<float>(n);
  const WarpTeam team;
  team_replicate(team, n, p, [&](int32_t e) { return w.at(0, l, e); }, cnt, ratio,
                 phy2log + l * p, rank + l * p);
  team.for_each(n, [&](int32_t e) { logcnt[l * n + e] = cnt[e]; });
}

// One block per layer. Two slots claim one (expert, rank) entry only in
// malformed input; the sequential scatter (scatter_log2phy) then keeps the
// later slot, and so does atomicMax, whatever the order of the threads.
__global__ void __launch_bounds__(256)
    logical_to_physical_kernel(const int64_t* phy2log, const int64_t* rank, int64_t P, int64_t E,
                               int64_t X, int64_t* out) {
  const int64_t l = blockIdx.x;
  int64_t* row = out + l * E * X;
  for (int64_t i = threadIdx.x; i < E * X; i += blockDim.x) row[i] = -1;
  __syncthreads();
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    const int64_t e = phy2log[l * P + p], r = rank[l * P + p];
    if (e >= 0 && e < E && r >= 0 && r < X) {
      atomicMax(reinterpret_cast<long long*>(row + e * X + r), (long long)p);
    }
  }
}

Tensor logical_to_physical_cuda(Tensor phy2log, Tensor rank, int64_t E, int64_t width) {
  const Placement a = check_log2phy_args(phy2log, rank, E, width);
  check_device(phy2log, "physical_to_logical_map", true);
  check_device(rank, "physical_rank", true);
  EPLB_CHECK_VALUE(phy2log.get_device_index() == rank.get_device_index(),
                   "physical_to_logical_map and physical_rank must be on the same device");
  torch::stable::accelerator::DeviceGuard guard(phy2log.get_device_index());
  Tensor out = new_index(phy2log, {a.L, a.E, a.X}, ScalarType::Long);
  if (a.L == 0) return out;
  logical_to_physical_kernel<<<(unsigned)a.L, 256, 0, cuda_stream(phy2log)>>>(
      ptr<int64_t>(phy2log), ptr<int64_t>(rank), a.P, a.E, a.X, ptr<int64_t>(out));
  EPLB_CUDA_CHECK_LAUNCH();
  return out;
}

std::tuple<Tensor, Tensor> balanced_packing_cuda(Tensor weight, int64_t num_packs) {
  check_packing_args(weight, num_packs);
  check_device(weight, "weight", true);
  const int64_t L = weight.size(0), n = weight.size(1);
  torch::stable::accelerator::DeviceGuard guard(weight.get_device_index());
  Tensor pack = new_index(weight, {L, n}, ScalarType::Long);
  Tensor rank = new_index(weight, {L, n}, ScalarType::Long);
  if (L == 0 || n == 0) return {pack, rank};
  dispatch_loads(weight, "weight", [&](auto tag) {
    using T = decltype(tag);
    launch_with_state(&balanced_packing_kernel<T>, weight, (unsigned)L, 32,
                      packing_state_bytes(n, num_packs), make_loads<T>(weight),
                      (int32_t)num_packs, ptr<int64_t>(pack), ptr<int64_t>(rank));
  });
  return {pack, rank};
}

std::tuple<Tensor, Tensor, Tensor> replicate_experts_cuda(Tensor weight, int64_t num_phy) {
  check_replicate_args(weight, num_phy);
  check_device(weight, "weight", true);
  const int64_t L = weight.size(0), n = weight.size(1);
  torch::stable::accelerator::DeviceGuard guard(weight.get_device_index());
  Tensor phy2log = new_index(weight, {L, num_phy}, ScalarType::Long);
  Tensor rank = new_index(weight, {L, num_phy}, ScalarType::Long);
  Tensor logcnt = new_index(weight, {L, n}, ScalarType::Long);
  if (L == 0) return {phy2log, rank, logcnt};
  dispatch_loads(weight, "weight", [&](auto tag) {
    using T = decltype(tag);
    launch_with_state(&replicate_kernel<T>, weight, (unsigned)L, 32, replicate_state_bytes(n),
                      make_loads<T>(weight), (int32_t)num_phy, ptr<int64_t>(phy2log),
                      ptr<int64_t>(rank), ptr<int64_t>(logcnt));
  });
  return {phy2log, rank, logcnt};
}

// The deepseek op, and with log2phy != nullptr also its map at width X.
void deepseek_launch(const Tensor& tokens, const Placement& a, DeepseekTeamOut out) {
  const DeepseekDims d{(int32_t)a.E, (int32_t)a.P, (int32_t)a.C, (int32_t)a.N, (int32_t)a.G};
  const int32_t teams = deepseek_node_teams(d);
  const int64_t bytes = deepseek_team_state(d, teams, nullptr, nullptr);
  dispatch_loads(tokens, "tokens_per_expert", [&](auto tag) {
    using T = decltype(tag);
    launch_with_state(&deepseek_kernel<T>, tokens, (unsigned)a.L, kWarps * 32, bytes,
                      make_loads<T>(tokens), d, teams, out);
  });
}

std::tuple<Tensor, Tensor, Tensor> deepseek_cuda(Tensor tokens, int64_t P, int64_t k, int64_t C,
                                                int64_t N) {
  const Placement a = check_placement_args(tokens, P, k, C, N);
  check_device(tokens, "tokens_per_expert", true);
  torch::stable::accelerator::DeviceGuard guard(tokens.get_device_index());
  Tensor phy2log = new_index(tokens, {a.L, a.P}, ScalarType::Long);
  Tensor rank = new_index(tokens, {a.L, a.P}, ScalarType::Long);
  Tensor logcnt = new_index(tokens, {a.L, a.E}, ScalarType::Long);
  if (a.L == 0) return {phy2log, rank, logcnt};
  deepseek_launch(tokens, a,
                  DeepseekTeamOut{ptr<int64_t>(phy2log), ptr<int64_t>(rank), ptr<int64_t>(logcnt),
                                  nullptr, 0});
  return {phy2log, rank, logcnt};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> deepseek_mapped_cuda(Tensor tokens, int64_t P,
                                                                int64_t k, int64_t C, int64_t N) {
  const Placement a = check_placement_args(tokens, P, k, C, N);
  check_device(tokens, "tokens_per_expert", true);
  torch::stable::accelerator::DeviceGuard guard(tokens.get_device_index());
  const int64_t X = a.P - a.E + 1;
  EPLB_CHECK_MEMORY(checked_mul_add(checked_mul_add(a.L, a.E), X) >= 0,
                    "logical_to_physical_map of shape [", a.L, ", ", a.E, ", ", X,
                    "] is too large to allocate");
  Tensor phy2log = new_index(tokens, {a.L, a.P}, ScalarType::Long);
  Tensor log2phy = new_index(tokens, {a.L, a.E, X}, ScalarType::Long);
  Tensor logcnt = new_index(tokens, {a.L, a.E}, ScalarType::Long);
  Tensor rank = new_index(tokens, {a.L, a.P}, ScalarType::Long);
  if (a.L == 0) return {phy2log, log2phy, logcnt, rank};
  deepseek_launch(tokens, a,
                  DeepseekTeamOut{ptr<int64_t>(phy2log), ptr<int64_t>(rank), ptr<int64_t>(logcnt),
                                  ptr<int64_t>(log2phy), X});
  return {phy2log, log2phy, logcnt, rank};
}

}  // namespace
}  // namespace eplb

STABLE_TORCH_LIBRARY_IMPL(eplb_ext, CUDA, m) {
  m.impl("balanced_packing", TORCH_BOX(&eplb::balanced_packing_cuda));
  m.impl("replicate_experts", TORCH_BOX(&eplb::replicate_experts_cuda));
  m.impl("deepseek", TORCH_BOX(&eplb::deepseek_cuda));
  m.impl("logical_to_physical", TORCH_BOX(&eplb::logical_to_physical_cuda));
  m.impl("deepseek_mapped", TORCH_BOX(&eplb::deepseek_mapped_cuda));
}
