// Launching a kernel whose blocks keep their state in dynamic shared memory:
// the current stream, and the switch to global scratch (torch's caching
// allocator, so the launch can be captured in a CUDA graph) when the state
// does not fit. The kernel receives (global, stride, ...): global == nullptr
// means its state is the dynamic shared memory, else block b's state is at
// global + b * stride. The code is the same either way; only the pointer
// differs.
#pragma once

#include <torch/csrc/inductor/aoti_torch/c/shim.h>

#include <algorithm>
#include <atomic>
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
// device (none of these calls touches a stream), then cached, so later
// calls, graph captures included, make no query at all.
template <typename... Args>
int64_t dynamic_smem_limit(void (*kernel)(Args...)) {
  constexpr int kDevices = 64;
  static std::atomic<int64_t> cache[kDevices];  // 0: not read yet
  int device = 0;
  EPLB_CUDA_CHECK(cudaGetDevice(&device));
  if (device >= 0 && device < kDevices) {
    const int64_t known = cache[device].load(std::memory_order_relaxed);
    if (known != 0) return known;
  }
  int optin = 0;
  EPLB_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  cudaFuncAttributes fa;
  EPLB_CUDA_CHECK(cudaFuncGetAttributes(&fa, kernel));
  // At least 1, so that 0 keeps meaning "not read".
  const int64_t limit = std::max<int64_t>(1, (int64_t)optin - (int64_t)fa.sharedSizeBytes);
  // Launches above 48 KB need the opt-in: granted once, up to the limit,
  // with the largest shared-memory carveout (a hint), so that blocks of such
  // states still fit two to an SM where they can (the migrate kernel's
  // ~97 KB at DeepSeek-V3 shape).
  if (limit > 48 * 1024) {
    EPLB_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)limit));
    EPLB_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                         (int)cudaSharedmemCarveoutMaxShared));
  }
  if (device >= 0 && device < kDevices) cache[device].store(limit, std::memory_order_relaxed);
  return limit;
}

template <typename... Args, typename... Given>
void launch_with_state(void (*kernel)(char*, int64_t, Args...), const torch::stable::Tensor& like,
                       dim3 grid, unsigned threads, int64_t bytes, Given&&... args) {
  const cudaStream_t stream = cuda_stream(like);
  if (bytes <= dynamic_smem_limit(kernel)) {
    kernel<<<grid, threads, (size_t)bytes, stream>>>(nullptr, 0, std::forward<Given>(args)...);
    EPLB_CUDA_CHECK_LAUNCH();
    return;
  }
  // Blocks 256-byte aligned, block (x, y) at x + y * grid.x. The tensor may
  // be freed once the launch is queued: the caching allocator reuses it
  // only in stream order.
  const int64_t stride = (bytes + 255) / 256 * 256;
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
