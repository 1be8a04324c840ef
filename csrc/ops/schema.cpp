// Operator schemas of the eplb_ext namespace. Kernels register per device in
// cpu/ and cuda/; fake (meta) kernels live in eplb_ext/_ops.py.
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY(eplb_ext, m) {
  m.def("balanced_packing(Tensor weight, int num_packs) -> (Tensor, Tensor)");
  m.def("replicate_experts(Tensor weight, int num_phy) -> (Tensor, Tensor, Tensor)");
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
}
