// CUDA kernel of deepseek_vec (deepseek, logical_to_physical and the
// packing and replication ops are in deepseek_cuda.cu): the same core
// functions as the CPU kernels, one thread block per layer. Within a block,
// threads split the work that is independent (experts for the sums, steps
// for the vec trees) and one thread runs what is sequential by definition
// (sorting, packing, the pick of each replica), so results are
// bit-identical to the CPU. Kernels run on the current stream; nothing is
// copied to the host and nothing synchronises. Load values are not checked
// here (that would need a read on the host): the Python layer checks them,
// and the kernels stay in bounds for any values.
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>

#include "../../core/deepseek.h"
#include "../../core/vec.h"
#include "../tensor_utils.h"
#include "cuda_check.cuh"

namespace eplb {
namespace {

using torch::stable::Tensor;

constexpr int kThreads = 256;

cudaStream_t current_stream(const Tensor& t) {
  void* stream = nullptr;
  if (aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream) != AOTI_TORCH_SUCCESS) {
    fail("RuntimeError", "could not get the current CUDA stream");
  }
  return static_cast<cudaStream_t>(stream);
}

// Per-unit scratch in device memory from torch's caching allocator (so the
// calls can be captured in a CUDA graph). Units are 256-byte aligned.
struct Scratch {
  Tensor buf;
  int64_t stride;
  char* unit(int64_t i) const { return static_cast<char*>(buf.mutable_data_ptr()) + i * stride; }
};

Scratch new_scratch(const Tensor& like, int64_t units, int64_t bytes) {
  const int64_t stride = (bytes + 255) / 256 * 256;
  const int64_t total = checked_mul_add(units, stride);
  EPLB_CHECK_MEMORY(total >= 0, "could not allocate ", units, " x ", stride,
                    " bytes of GPU scratch: more than 2**63 bytes");
  Tensor buf = new_index(like, {std::max<int64_t>(1, total)}, ScalarType::Byte);
  return Scratch{buf, stride};
}

// ---------------------------------------------------------------- kernels

template <typename T>
__global__ void deepseek_vec_kernel(Loads<T> t, VecDims d, char* scratch, int64_t stride,
                                    int32_t* phy2log, int32_t* log2phy, int32_t* logcnt) {
  __shared__ int32_t picked;
  const int64_t l = blockIdx.x;
  const int32_t tid = threadIdx.x, nt = blockDim.x;
  const int32_t en = d.E / d.N, rn = (d.P - d.E) / d.N;
  const int64_t S = d.S, X = (int64_t)d.P - d.E + 1;
  VecScratch s;
  vec_scratch(d, scratch + l * stride, &s);
  for (int32_t e = tid; e < d.E; e += nt) {
    s.expert_sum[e] = sum_over_steps_one(t, l, e);
    for (int64_t st = 0; st < S; ++st) s.tt[(int64_t)e * S + st] = t.at(st, l, e);
  }
  int32_t* l2p = log2phy + l * d.E * X;
  for (int64_t i = tid; i < (int64_t)d.E * X; i += nt) l2p[i] = -1;
  __syncthreads();
  if (tid == 0) vec_renumber(d, s);
  __syncthreads();
  for (int32_t c = 0; c < d.N; ++c) {
    VecChunk ch{s, S, c * en, en, next_pow2(en)};
    for (int32_t j = tid; j < en; j += nt) vec_init_expert(d, s, c, j);
    __syncthreads();
    if (rn > 0 && S > 0) vec_build_trees(ch, tid, nt);
    for (int32_t i = 0; i < rn; ++i) {
      if (S > 0) ch.step_values(tid, S, nt);
      __syncthreads();
      if (tid == 0) {
        const int32_t j = S > 0 ? vec_pick(ch) : 0;
        vec_add_replica(d, s, c, i, j);
        picked = j;
      }
      __syncthreads();
      if (i + 1 < rn && S > 0) vec_refresh_trees(ch, picked, tid, nt);
    }
    __syncthreads();
    if (tid == 0) vec_deal_chunk(d, s, c, phy2log + l * d.P, l2p, logcnt + l * d.E);
    __syncthreads();
  }
}

// ---------------------------------------------------------------- ops

std::tuple<Tensor, Tensor, Tensor> deepseek_vec_cuda(Tensor tokens, int64_t P, int64_t k,
                                                    int64_t C, int64_t N) {
  const Placement a = check_placement_args(tokens, P, k, C, N);
  check_device(tokens, "tokens_per_expert", true);
  check_vec_scratch(a);
  torch::stable::accelerator::DeviceGuard guard(tokens.get_device_index());
  Tensor phy2log = new_index(tokens, {a.L, a.P}, ScalarType::Int);
  Tensor log2phy = new_index(tokens, {a.L, a.E, a.X}, ScalarType::Int);
  Tensor logcnt = new_index(tokens, {a.L, a.E}, ScalarType::Int);
  if (a.L == 0) return {phy2log, log2phy, logcnt};
  const VecDims d{a.S, (int32_t)a.E, (int32_t)a.P, (int32_t)a.k, (int32_t)a.C, (int32_t)a.N};
  const Scratch sc = new_scratch(tokens, a.L, vec_scratch(d, nullptr, nullptr));
  dispatch_loads(tokens, "tokens_per_expert", [&](auto tag) {
    using T = decltype(tag);
    deepseek_vec_kernel<T><<<(unsigned)a.L, kThreads, 0, current_stream(tokens)>>>(
        make_loads<T>(tokens), d, sc.unit(0), sc.stride, ptr<int32_t>(phy2log),
        ptr<int32_t>(log2phy), ptr<int32_t>(logcnt));
    EPLB_CUDA_CHECK_LAUNCH();
  });
  return {phy2log, log2phy, logcnt};
}

}  // namespace
}  // namespace eplb

STABLE_TORCH_LIBRARY_IMPL(eplb_ext, CUDA, m) {
  m.impl("deepseek_vec", TORCH_BOX(&eplb::deepseek_vec_cuda));
}
