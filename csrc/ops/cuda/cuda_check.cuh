// Host-side checks around CUDA launches. They stay in release builds: a
// failed launch must surface as a Python error, never as silently missing
// results.
#pragma once

#include <cuda_runtime.h>

#include "../check.h"

#define EPLB_CUDA_CHECK(expr)                                                        \
  do {                                                                               \
    const cudaError_t eplb_err_ = (expr);                                            \
    if (eplb_err_ != cudaSuccess) {                                                  \
      ::eplb::fail("RuntimeError", "CUDA error ", cudaGetErrorName(eplb_err_), " (", \
                   cudaGetErrorString(eplb_err_), ") at ", __FILE__, ":", __LINE__);  \
    }                                                                                \
  } while (0)

// Checks the launch just made (configuration errors are reported at once;
// execution errors surface at the next synchronising call, as for any op).
#define EPLB_CUDA_CHECK_LAUNCH() EPLB_CUDA_CHECK(cudaGetLastError())
