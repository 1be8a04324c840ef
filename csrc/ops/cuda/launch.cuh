// Launching a kernel whose blocks keep their state in dynamic shared memory:
// the current stream, and the switch to global scratch (torch's caching
// allocator, so the launch can be captured in a CUDA graph) when the state
// does not fit. The kernel receives (global, stride, ...): global == nullptr
// means its state is the dynamic shared memory, else block b's state is at
// global + b * stride. The code is the same either way; only the pointer
// differs (and, for a kernel that lays its state out more tightly in
// global scratch, the sizes it derives from that: StateBytes).
#pragma once

#include <torch/csrc/inductor/aoti_torch/c/shim.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <utility>

#include "../tensor_utils.h"
#include "cuda_check.cuh"

namespace eplb {

inline cudaStream_t cuda_stream(const torch::stable::Tensor& t) {
  void* stream = nullptr;
  if (aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream) != AOTI_TORCH_SUCCESS) {
    fail("RuntimeError", "could not get the current CUDA stream");
  }
  return static_cast<cudaStream_t>(stream);
}

// Dynamic shared memory this kernel may use on the current device: the
// opt-in limit less its static shared memory. Read once per kernel and
// device (none of these calls touches a stream), then kept, so later calls,
// graph captures included, make no query at all. Kept by the kernel's
// address, so kernels of one signature are told apart.
template <bool kPreferShared, typename... Args>
int64_t dynamic_smem_limit(void (*kernel)(Args...)) {
  int device = 0;
  EPLB_CUDA_CHECK(cudaGetDevice(&device));
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, int64_t> known;
  const std::lock_guard<std::mutex> lock(mu);
  const std::pair<const void*, int> key{reinterpret_cast<const void*>(kernel), device};
  const auto it = known.find(key);
  if (it != known.end()) return it->second;
  int optin = 0;
  EPLB_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  cudaFuncAttributes fa;
  EPLB_CUDA_CHECK(cudaFuncGetAttributes(&fa, kernel));
  const int64_t limit = std::max<int64_t>(0, (int64_t)optin - (int64_t)fa.sharedSizeBytes);
  // Launches above 48 KB need the opt-in: granted once, up to the limit.
  // kPreferShared also asks for the largest shared-memory carveout (a hint),
  // so that blocks of such states still fit two to an SM where they can
  // (the migrate kernel's 97 KB at DeepSeek-V3 shape), at the cost of L1.
  if (limit > 48 * 1024) {
    EPLB_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)limit));
    if (kPreferShared) {
      EPLB_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                           (int)cudaSharedmemCarveoutMaxShared));
    }
  }
  known.emplace(key, limit);
  return limit;
}

// A block's state: its bytes in shared memory and, when those do not fit,
// in global scratch (the same unless the kernel picks another layout for
// global == nullptr and the rest).
struct StateBytes {
  int64_t shared, global;
  StateBytes(int64_t both) : shared(both), global(both) {}  // NOLINT: the common case
  StateBytes(int64_t in_shared, int64_t in_global) : shared(in_shared), global(in_global) {}
};

// kPreferShared: see dynamic_smem_limit.
template <bool kPreferShared = false, typename... Args, typename... Given>
void launch_with_state(void (*kernel)(char*, int64_t, Args...), const torch::stable::Tensor& like,
                       dim3 grid, unsigned threads, StateBytes bytes, Given&&... args) {
  const cudaStream_t stream = cuda_stream(like);
  if (bytes.shared <= dynamic_smem_limit<kPreferShared>(kernel)) {
    kernel<<<grid, threads, (size_t)bytes.shared, stream>>>(nullptr, 0,
                                                             std::forward<Given>(args)...);
    EPLB_CUDA_CHECK_LAUNCH();
    return;
  }
  // Blocks 256-byte aligned, block (x, y) at x + y * grid.x. The tensor may
  // be freed once the launch is queued: the caching allocator reuses it
  // only in stream order.
  const int64_t stride = (bytes.global + 255) / 256 * 256;
  const int64_t blocks = (int64_t)grid.x * grid.y * grid.z;
  const int64_t total = checked_mul_add(blocks, stride);
  EPLB_CHECK_MEMORY(total >= 0, "could not allocate ", blocks, " x ", stride,
                    " bytes of GPU scratch: more than 2**63 bytes");
  torch::stable::Tensor buf = new_index(like, {total}, ScalarType::Byte);
  kernel<<<grid, threads, 0, stream>>>(static_cast<char*>(buf.mutable_data_ptr()), stride,
                                         std::forward<Given>(args)...);
  EPLB_CUDA_CHECK_LAUNCH();
}

}  // namespace eplb
