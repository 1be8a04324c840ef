// Argument checks of the migrate op, shared by its CPU and CUDA kernels.
// They run in release builds too; value checks that need to read tensor
// data are the CPU kernel's (the Python layer checks CUDA tensors).
#pragma once

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "../core/relabel.h"
#include "tensor_utils.h"

namespace eplb {

// The placement tensors: int64 [L, P], contiguous, on the loads' device.
inline void check_slot_map(const Tensor& t, const char* name, int64_t L, int64_t P,
                           const Tensor& like) {
  EPLB_CHECK_TYPE(t.defined(), name, " must be a tensor, got None");
  EPLB_CHECK_VALUE(t.dim() == 2, name, " must be 2-D [L, P], got ", t.dim(), " dimensions");
  EPLB_CHECK_TYPE(t.scalar_type() == ScalarType::Long, name, " must be int64");
  EPLB_CHECK_VALUE(t.size(0) == L && t.size(1) == P, name, " has shape [", t.size(0), ", ",
                   t.size(1), "]; expected [", L, ", ", P, "]");
  EPLB_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
  EPLB_CHECK_VALUE(t.is_cuda() == like.is_cuda() && t.get_device_index() == like.get_device_index(),
                   name, " must be on the same device as tokens_per_expert");
}

// Returns the dims for the core; max_moves is clamped to P (no layer can
// need more moves than it has slots).
inline MigrateDims check_migrate_args(const Tensor& tokens, const Tensor& phy2log,
                                      const Tensor& rank, const Tensor& previous,
                                      const Tensor& active, int64_t k, int64_t C, int64_t N,
                                      int64_t max_moves, double min_improvement, Placement* out) {
  EPLB_CHECK_TYPE(phy2log.defined(), "physical_to_logical_map must be a tensor, got None");
  EPLB_CHECK_VALUE(phy2log.dim() == 2, "physical_to_logical_map must be 2-D [L, P], got ",
                   phy2log.dim(), " dimensions");
  const Placement a = check_placement_args(tokens, phy2log.size(1), k, C, N);
  const int64_t L = a.L, P = a.P;
  check_slot_map(phy2log, "physical_to_logical_map", L, P, tokens);
  check_slot_map(rank, "physical_rank", L, P, tokens);
  check_slot_map(previous, "previous_physical_to_logical_map", L, P, tokens);
  EPLB_CHECK_TYPE(active.defined(), "active must be a tensor, got None");
  EPLB_CHECK_TYPE(active.scalar_type() == ScalarType::Byte, "active must be uint8");
  EPLB_CHECK_VALUE(active.dim() == 1 && (active.size(0) == 0 || active.size(0) == a.G),
                   "active must be 1-D with 0 (all active) or ", a.G, " entries");
  EPLB_CHECK_VALUE(active.is_contiguous(), "active must be contiguous");
  EPLB_CHECK_VALUE(active.is_cuda() == tokens.is_cuda(),
                   "active must be on the same device as tokens_per_expert");
  EPLB_CHECK_VALUE(max_moves >= -1, "max_moves=", max_moves, " must be >= 0 (or -1: none)");
  EPLB_CHECK_VALUE(min_improvement >= 0.0 && min_improvement <= 1.0, "min_improvement=",
                   min_improvement, " must be a real number in [0, 1]");
  // The per-layer scratch holds G x E and G x G tables.
  EPLB_CHECK_VALUE(a.G * (a.E + a.G) <= kMaxIndex, "num_gpus x (experts + num_gpus) = ",
                   a.G * (a.E + a.G), " exceeds ", kMaxIndex, ", the largest table supported");
  if (out) *out = a;
  return MigrateDims{(int32_t)a.E, (int32_t)a.P, (int32_t)a.k, (int32_t)a.G, (int32_t)a.C,
                     (int32_t)a.N, (int32_t)std::min<int64_t>(max_moves, a.P), min_improvement};
}

// The op's outputs, int64: physical_to_logical_map [L, P], physical_rank
// [L, P], logical_count [L, E] and info [L, 3].
struct MigrateOutputs {
  Tensor p2l, rank, cnt, info;
  std::tuple<Tensor, Tensor, Tensor, Tensor> tuple() const { return {p2l, rank, cnt, info}; }
};

inline MigrateOutputs new_migrate_outputs(const Tensor& tokens, const Placement& a) {
  return MigrateOutputs{new_index(tokens, {a.L, a.P}, ScalarType::Long),
                        new_index(tokens, {a.L, a.P}, ScalarType::Long),
                        new_index(tokens, {a.L, a.E}, ScalarType::Long),
                        new_index(tokens, {a.L, 3}, ScalarType::Long)};
}

}  // namespace eplb
