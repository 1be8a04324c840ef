// _lanes_vec: the CUDA kernels' code for the step-aware variants (vec_team.h)
// run on the host through LaneTeam<width>, for the tests; a GPU is not
// needed to check that it gives the CPU op's bits. Same arguments, checks
// and outputs as deepseek_vec, plus the emulated team width (1 or 32) and
// the layout of the per-step lists: global_state takes the lengths the
// kernel uses when the state lives in global scratch (vec_list_len).
#include <torch/csrc/stable/library.h>

#include <algorithm>
#include <vector>

#include "../../core/vec_team.h"
#include "../tensor_utils.h"
#include "../vec_args.h"

namespace eplb {
namespace {

using torch::stable::Tensor;

template <int W, typename T>
void lanes_vec_layers(const Loads<T>& t, VecDims d, bool global, int32_t* p2l, int32_t* l2p,
                      int32_t* cnt, BadLoads& bad) {
  const LaneTeam<W> team;
  const int64_t X = (int64_t)d.P - d.E + 1;
  std::vector<uint64_t> layer_buf(vec_layer_scratch(d, nullptr, nullptr) / 8 + 1);
  const int32_t lt = vec_list_len(d, global);
  std::vector<uint64_t> chunk_buf(vec_chunk_scratch(d, lt, nullptr, nullptr) / 8 + 1);
  VecLayer ly;
  VecTeamChunk ch;
  vec_layer_scratch(d, layer_buf.data(), &ly);
  vec_chunk_scratch(d, lt, chunk_buf.data(), &ch);
  for (int64_t l = 0; l < t.L; ++l) {
    // The CUDA kernels trust the Python layer's check of the loads; this op
    // checks them itself, like deepseek_vec.
    if (!bad.ok(l, first_bad_load(t, l))) continue;
    vec_team_prepare(team, t, l, d, ly);
    const VecSteps<T> steps{t, l};
    for (int32_t c = 0; c < d.N; ++c) {
      vec_team_chunk(team, d, ly, steps, ch, c, p2l + l * d.P, l2p + l * d.E * X, cnt + l * d.E);
    }
  }
}

std::tuple<Tensor, Tensor, Tensor> lanes_vec_cpu(Tensor tokens, int64_t P, int64_t k, int64_t C,
                                                 int64_t N, int64_t width, bool global_state) {
  const Placement a = check_placement_args(tokens, P, k, C, N);
  check_device(tokens, "tokens_per_expert", false);
  check_vec_scratch(a, true);
  EPLB_CHECK_VALUE(width == 1 || width == 32, "width=", width, " must be 1 or 32");
  const VecOutputs out = new_vec_outputs(tokens, a);
  dispatch_loads(tokens, "tokens_per_expert", [&](auto tag) {
    using T = decltype(tag);
    const Loads<T> t = make_loads<T>(tokens);
    const VecDims d = vec_dims(a);
    BadLoads bad(a.L);
    auto run = width == 1 ? &lanes_vec_layers<1, T> : &lanes_vec_layers<32, T>;
    run(t, d, global_state, ptr<int32_t>(out.phy2log), ptr<int32_t>(out.log2phy),
        ptr<int32_t>(out.logcnt), bad);
    bad.report(t, "tokens_per_expert", tokens.dim() == 3);
  });
  return out.tuple();
}

}  // namespace
}  // namespace eplb

STABLE_TORCH_LIBRARY_IMPL(eplb_ext, CPU, m) {
  m.impl("_lanes_vec", TORCH_BOX(&eplb::lanes_vec_cpu));
}
