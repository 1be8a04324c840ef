// CUDA kernels of the step-aware variants (deepseek_vec op): the team code
// of csrc/core/vec_team.h on a block of threads, which the CPU tests run
// through emulated lanes (_lanes_vec), so the results are the CPU op's bits.
//
// Two launches on the current stream, nothing read on the host (the call
// can be captured in a CUDA graph):
//  * one block per layer: sums over steps and the group renumbering, into
//    global scratch (O(E) per layer);
//  * one block per (layer, chunk), reading the loads where they are: the
//    chunk's per-step lists live in shared memory when they fit the
//    device's per-block limit, else in global scratch (the same code through
//    generic pointers), with lists short enough that they take no more than
//    the chunk's loads as float32 would (vec_list_len). The scratch is then
//    at most one float32 copy of the input plus O(L * P), whatever S.
// Load values are not checked here (the Python layer does it); the kernels
// stay in bounds for any values.
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>

#include "../../core/vec_team.h"
#include "../vec_args.h"
#include "launch.cuh"
#include "team.cuh"

namespace eplb {
namespace {

using torch::stable::Tensor;

// Steps are spread over the threads, and so are experts in the picks (one
// each up to 256: DeepSeek-V3's chunk).
constexpr int kVecThreads = 256;

int64_t round256(int64_t bytes) { return (bytes + 255) / 256 * 256; }

template <typename T>
__global__ void __launch_bounds__(kVecThreads)
    vec_prepare_kernel(Loads<T> t, VecDims d, char* layers, int64_t layer_stride) {
  __shared__ uint64_t red[33];
  const BlockTeam team{red};
  VecLayer ly;
  vec_layer_scratch(d, layers + (int64_t)blockIdx.x * layer_stride, &ly);
  vec_team_prepare(team, t, (int64_t)blockIdx.x, d, ly);
}

// Block b = l * N + c: chunk c of layer l; its state is at global + b *
// stride, or in dynamic shared memory when global == nullptr (launch.cuh).
template <typename T>
__global__ void __launch_bounds__(kVecThreads)
    vec_chunk_kernel(char* global, int64_t stride, Loads<T> t, VecDims d, const char* layers,
                     int64_t layer_stride, int32_t* phy2log, int32_t* log2phy, int32_t* logcnt) {
  extern __shared__ uint64_t vec_smem[];
  __shared__ uint64_t red[33];
  const BlockTeam team{red};
  const int64_t l = blockIdx.x / d.N;
  const int32_t c = (int32_t)(blockIdx.x % d.N);
  const int64_t X = (int64_t)d.P - d.E + 1;
  VecLayer ly;
  vec_layer_scratch(d, const_cast<char*>(layers) + l * layer_stride, &ly);
  VecTeamChunk ch;
  vec_chunk_scratch(d, vec_list_len(d, global != nullptr),
                    global ? global + (int64_t)blockIdx.x * stride : (char*)vec_smem, &ch);
  const VecSteps<T> steps{t, l};
  vec_team_chunk(team, d, ly, steps, ch, c, phy2log + l * d.P, log2phy + l * d.E * X,
                 logcnt + l * d.E);
}

std::tuple<Tensor, Tensor, Tensor> deepseek_vec_cuda(Tensor tokens, int64_t P, int64_t k,
                                                    int64_t C, int64_t N) {
  const Placement a = check_placement_args(tokens, P, k, C, N);
  check_device(tokens, "tokens_per_expert", true);
  check_vec_scratch(a, true);
  torch::stable::accelerator::DeviceGuard guard(tokens.get_device_index());
  const VecOutputs out = new_vec_outputs(tokens, a);
  if (a.L == 0) return out.tuple();
  EPLB_CHECK_VALUE(a.L <= ((int64_t{1} << 31) - 1) / a.N, "tokens_per_expert has ", a.L,
                   " layers; at most 2**31 - 1 layers x nodes are supported on CUDA");
  const VecDims d = vec_dims(a);
  const int64_t layer_bytes = round256(vec_layer_scratch(d, nullptr, nullptr));
  const int64_t total = checked_mul_add(a.L, layer_bytes);
  EPLB_CHECK_MEMORY(total >= 0, "could not allocate ", a.L, " x ", layer_bytes,
                    " bytes of GPU scratch: more than 2**63 bytes");
  // Read by the second launch: the caching allocator reuses it only in
  // stream order, after both.
  Tensor layers = new_index(tokens, {total}, ScalarType::Byte);
  const StateBytes state{vec_chunk_scratch(d, vec_list_len(d, false), nullptr, nullptr),
                         vec_chunk_scratch(d, vec_list_len(d, true), nullptr, nullptr)};
  dispatch_loads(tokens, "tokens_per_expert", [&](auto tag) {
    using T = decltype(tag);
    const Loads<T> t = make_loads<T>(tokens);
    vec_prepare_kernel<T><<<(unsigned)a.L, kVecThreads, 0, cuda_stream(tokens)>>>(
        t, d, ptr<char>(layers), layer_bytes);
    EPLB_CUDA_CHECK_LAUNCH();
    launch_with_state(&vec_chunk_kernel<T>, tokens, (unsigned)(a.L * a.N), kVecThreads, state, t,
                      d, (const char*)ptr<char>(layers), layer_bytes, ptr<int32_t>(out.phy2log),
                      ptr<int32_t>(out.log2phy), ptr<int32_t>(out.logcnt));
  });
  return out.tuple();
}

}  // namespace
}  // namespace eplb

STABLE_TORCH_LIBRARY_IMPL(eplb_ext, CUDA, m) {
  m.impl("deepseek_vec", TORCH_BOX(&eplb::deepseek_vec_cuda));
}
