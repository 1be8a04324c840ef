// _lanes_deepseek: the CUDA kernel's lane-parallel code (deepseek_team.h) run
// on the host through LaneTeam<1> or LaneTeam<32>, so that the tests compare
// the GPU's logic with the sequential CPU op without a GPU. Returns
// (physical_to_logical_map, logical_to_physical_map at width P - E + 1,
// logical_count), int64, as the fused kernel writes them.
#include <torch/csrc/stable/library.h>

#include <vector>

#include "../../core/deepseek_team.h"
#include "../tensor_utils.h"

namespace eplb {
namespace {

using torch::stable::Tensor;

template <int W, typename T>
void lanes_layers(const Loads<T>& t, DeepseekDims d, int64_t X, int64_t* p2l, int64_t* rk,
                  int64_t* cnt, int64_t* l2p) {
  const LaneTeam<W> team;
  const int32_t teams = deepseek_node_teams(d);
  const int64_t bytes = deepseek_team_state(d, teams, nullptr, nullptr);
  std::vector<uint64_t> buf(static_cast<size_t>(bytes / 8 + 1));
  for (int64_t l = 0; l < t.L; ++l) {
    DeepseekTeamState s;
    deepseek_team_state(d, teams, buf.data(), &s);
    deepseek_team_renumber(team, t, l, d, s);
    const DeepseekTeamOut out{p2l + l * d.P, rk + l * d.P, cnt + l * d.E, l2p + l * d.E * X, X};
    for (int32_t n = 0; n < d.N; ++n) deepseek_team_node(team, d, s, n % teams, n);
    deepseek_team_write(team, d, s, out);
  }
}

std::tuple<Tensor, Tensor, Tensor> lanes_deepseek_cpu(Tensor tokens, int64_t P, int64_t k,
                                                      int64_t C, int64_t N, int64_t width) {
  const Placement a = check_placement_args(tokens, P, k, C, N);
  check_device(tokens, "tokens_per_expert", false);
  EPLB_CHECK_VALUE(width == 1 || width == 32, "width=", width, " must be 1 or 32");
  const int64_t X = a.P - a.E + 1;
  EPLB_CHECK_MEMORY(checked_mul_add(checked_mul_add(a.L, a.E), X) >= 0,
                    "logical_to_physical_map of shape [", a.L, ", ", a.E, ", ", X,
                    "] is too large to allocate");
  Tensor phy2log = new_index(tokens, {a.L, a.P}, ScalarType::Long);
  Tensor rank = new_index(tokens, {a.L, a.P}, ScalarType::Long);
  Tensor log2phy = new_index(tokens, {a.L, a.E, X}, ScalarType::Long);
  Tensor logcnt = new_index(tokens, {a.L, a.E}, ScalarType::Long);
  dispatch_loads(tokens, "tokens_per_expert", [&](auto tag) {
    using T = decltype(tag);
    const Loads<T> t = make_loads<T>(tokens);
    check_every_load(t, "tokens_per_expert", tokens.dim() == 3);
    const DeepseekDims d{(int32_t)a.E, (int32_t)a.P, (int32_t)a.C, (int32_t)a.N, (int32_t)a.G};
    auto run = width == 1 ? &lanes_layers<1, T> : &lanes_layers<32, T>;
    run(t, d, X, ptr<int64_t>(phy2log), ptr<int64_t>(rank), ptr<int64_t>(logcnt),
        ptr<int64_t>(log2phy));
  });
  return {phy2log, log2phy, logcnt};
}

}  // namespace
}  // namespace eplb

STABLE_TORCH_LIBRARY_IMPL(eplb_ext, CPU, m) {
  m.impl("_lanes_deepseek", TORCH_BOX(&eplb::lanes_deepseek_cpu));
}
