// Operator schemas of the eplb_ext namespace. Kernels register per device in
// cpu/ and cuda/; fake (meta) kernels live in eplb_ext/_ops.py.
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY(eplb_ext, m) {
  m.def("balanced_packing(Tensor weight, int num_packs) -> (Tensor, Tensor)");
  m.def("replicate_experts(Tensor weight, int num_phy) -> (Tensor, Tensor, Tensor)");
  // CPU only: the flat index of the first negative, NaN or (as float32)
  // infinite load of [S, L, E] or [L, E] loads in index order, or -1.
  m.def("first_bad_load(Tensor loads) -> int");
  // CPU only: the float32 [L, E] sums over steps the placement ops place,
  // and first_bad_load's index (the sums are then meaningless).
  m.def("sum_steps(Tensor loads) -> (Tensor, int)");
  // Returns (physical_to_logical_map, physical_rank, logical_count); the map
  // from experts to slots is built by logical_to_physical at a chosen width.
  m.def(
      "deepseek(Tensor tokens_per_expert, int num_physical_experts, "
      "int num_local_physical_experts, int num_groups, int num_nodes) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "logical_to_physical(Tensor physical_to_logical_map, Tensor physical_rank, "
      "int num_logical_experts, int width) -> Tensor");
  m.def(
      "deepseek_vec(Tensor tokens_per_expert, int num_physical_experts, "
      "int num_local_physical_experts, int num_groups, int num_nodes) "
      "-> (Tensor, Tensor, Tensor)");
  // Places a fresh placement (physical_to_logical_map, physical_rank) against
  // the previous one: relabeling, incremental search with max_moves >= 0
  // (-1: none), keeping layers below min_improvement. active: uint8 [G], or
  // empty for all active. Returns (physical_to_logical_map, physical_rank,
  // logical_count, info [L, 3] = (outcome, moves relabeled, moves)), int64.
  m.def(
      "migrate(Tensor tokens_per_expert, Tensor physical_to_logical_map, Tensor physical_rank, "
      "Tensor previous, Tensor active, int num_local_physical_experts, int num_groups, "
      "int num_nodes, int max_moves, float min_improvement) -> (Tensor, Tensor, Tensor, Tensor)");
  // deepseek with logical_to_physical at width P - E + 1 in the same call
  // (one kernel on CUDA): (physical_to_logical_map, logical_to_physical_map,
  // logical_count, physical_rank), int64.
  m.def(
      "deepseek_mapped(Tensor tokens_per_expert, int num_physical_experts, "
      "int num_local_physical_experts, int num_groups, int num_nodes) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // Test path: deepseek's CUDA code on the host with `width` emulated lanes
  // (1 or 32). Returns (physical_to_logical_map, logical_to_physical_map at
  // width P - E + 1, logical_count), int64.
  m.def(
      "_lanes_deepseek(Tensor tokens_per_expert, int num_physical_experts, "
      "int num_local_physical_experts, int num_groups, int num_nodes, int width) "
      "-> (Tensor, Tensor, Tensor)");
  // Test only, CPU: migrate with the CUDA kernel's lane-parallel scans run on
  // `width` (1 or 32) emulated lanes.
  m.def(
      "_lanes_migrate(Tensor tokens_per_expert, Tensor physical_to_logical_map, "
      "Tensor physical_rank, Tensor previous, Tensor active, int num_local_physical_experts, "
      "int num_groups, int num_nodes, int max_moves, float min_improvement, int width) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // The CUDA kernels' step-aware code run on the host with `width` emulated
  // lanes (1 or 32), its per-step lists laid out as in shared memory or, with
  // global_state, as in global scratch: the same outputs as deepseek_vec.
  m.def(
      "_lanes_vec(Tensor tokens, SymInt P, int k, int C, int N, int width, "
      "bool global_state=False) "
      "-> (Tensor, Tensor, Tensor)");
}
