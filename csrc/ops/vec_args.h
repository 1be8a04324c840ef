// Dims and outputs of the deepseek_vec op, shared by its CPU kernel, its
// host run of the CUDA code (_lanes_vec) and its CUDA kernel.
#pragma once

#include <tuple>

#include "../core/vec_team.h"
#include "tensor_utils.h"

namespace eplb {

// The step-aware variants keep per-step state in scratch. The CPU core
// (vec.h) keeps every step's loads and a tree per step: about
// S * (4 E + 24 next_pow2(E / N)) bytes per layer. The team code of the
// CUDA kernels (vec_team.h, `team`) reads the loads in place and keeps per
// step and chunk 8 lt + 12 bytes, at most 4 E / N in global scratch
// (vec_list_len) and 8 kVecTop + 12 in the host run's one chunk: at most
// S * (4 E + 76) per layer. Checked before anything is read, so an absurd S
// fails at once instead of after a scan.
inline void check_vec_scratch(const Placement& a, bool team = false) {
  int64_t n2 = 1;
  while (n2 < a.E / a.N) n2 *= 2;
  const int64_t per_step = team ? checked_mul_add(4, a.E, 8 * kVecTop + 12)
                                : checked_mul_add(4, a.E, checked_mul_add(24, n2, 64));
  const int64_t bytes = checked_mul_add(a.S, per_step, checked_mul_add(64, a.E + a.P, 4096));
  EPLB_CHECK_MEMORY(per_step >= 0 && bytes >= 0 && bytes <= (int64_t{1} << 50),
                    "the step-aware variants need about ", a.S, " x ", per_step,
                    " bytes of scratch per layer for tokens_per_expert with ", a.S,
                    " steps and ", a.E, " experts, more than can be allocated");
}

inline VecDims vec_dims(const Placement& a) {
  return VecDims{a.S, (int32_t)a.E, (int32_t)a.P, (int32_t)a.k, (int32_t)a.C, (int32_t)a.N};
}

// int32, as SGLang returns them: physical_to_logical_map [L, P],
// logical_to_physical_map [L, E, X], logical_count [L, E].
struct VecOutputs {
  Tensor phy2log, log2phy, logcnt;
  std::tuple<Tensor, Tensor, Tensor> tuple() const { return {phy2log, log2phy, logcnt}; }
};

inline VecOutputs new_vec_outputs(const Tensor& tokens, const Placement& a) {
  return VecOutputs{new_index(tokens, {a.L, a.P}, ScalarType::Int),
                    new_index(tokens, {a.L, a.E, a.X}, ScalarType::Int),
                    new_index(tokens, {a.L, a.E}, ScalarType::Int)};
}

}  // namespace eplb
