// CPU kernel of the migrate op (SPEC "Keeping experts where they are"): the
// previous placement's values and every load are checked before any work,
// then each layer runs csrc/core/migrate.h on its own scratch.
#include <torch/csrc/stable/library.h>

#include <vector>

#include "../../core/migrate.h"
#include "../migrate_args.h"
#include "../tensor_utils.h"
#include "parallel.h"

namespace eplb {
namespace {

using torch::stable::Tensor;

// Values of the maps: ids of Q in [-1, E), of F in [0, E), ranks in [-1, P),
// active flags in {0, 1}; the first bad entry in index order is reported.
void check_map_values(const Tensor& t, const char* name, int64_t lo, int64_t hi, int64_t P) {
  const int64_t* v = ptr<int64_t>(t);
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) {
    if (v[i] < lo || v[i] >= hi) {
      fail("ValueError", name, "[", i / P, ", ", i % P, "] = ", v[i], " is outside [", lo, ", ",
           hi, ")");
    }
  }
}

// The op on a team of W emulated lanes: W = 1 without blocks is the CPU
// kernel. _lanes_migrate runs the CUDA kernel's layout on the host (blocks:
// a block per search pass, in an arrival order that turns with the layer,
// so that each pass is last somewhere; W = 32: its lane-parallel scans),
// which must give the same bits.
template <int W>
std::tuple<Tensor, Tensor, Tensor, Tensor> migrate_team(Tensor tokens, Tensor phy2log, Tensor rank,
                                                        Tensor previous, Tensor active, int64_t k,
                                                        int64_t C, int64_t N, int64_t max_moves,
                                                        double min_improvement, bool blocks) {
  Placement a;
  const MigrateDims d = check_migrate_args(tokens, phy2log, rank, previous, active, k, C, N,
                                           max_moves, min_improvement, &a);
  check_device(tokens, "tokens_per_expert", false);
  check_map_values(previous, "previous_physical_to_logical_map", -1, a.E, a.P);
  check_map_values(phy2log, "physical_to_logical_map", 0, a.E, a.P);
  check_map_values(rank, "physical_rank", -1, a.P, a.P);
  const uint8_t* act = active.numel() > 0 ? ptr<uint8_t>(active) : nullptr;
  for (int64_t g = 0; act && g < a.G; ++g) {
    EPLB_CHECK_VALUE(act[g] <= 1, "active[", g, "] = ", (int)act[g], " must be 0 or 1");
  }
  const MigrateOutputs out = new_migrate_outputs(tokens, a);
  dispatch_loads(tokens, "tokens_per_expert", [&](auto tag) {
    using T = decltype(tag);
    const Loads<T> t = make_loads<T>(tokens);
    check_every_load(t, "tokens_per_expert", tokens.dim() == 3);
    const int64_t core = migrate_scratch(d, nullptr, nullptr);
    const int64_t board = blocks ? pass_board(d, nullptr, nullptr) : 0;
    const int64_t bytes = core + board + (int64_t)(sizeof(float) + sizeof(Sum128)) * (a.E + 1);
    const int64_t work = a.P * (a.G + 2 * a.k) * (d.max_moves > 0 ? d.max_moves : 1);  // clamped to P
    for_each_layer(a.L, grain_for(work), bytes, [&](int64_t l, void* buf) {
      MigrateScratch s;
      migrate_scratch(d, buf, &s);
      Carver c{static_cast<char*>(buf), core};
      PassBoard pb;
      pass_board(d, c.take<char>(board), &pb);
      float* w = c.take<float>(a.E);
      Sum128* acc = c.take<Sum128>(a.E);
      load_layer(t, l, w, acc, nullptr);
      const int64_t lp = l * a.P;
      MigrateIO io{w, ptr<int64_t>(phy2log) + lp, ptr<int64_t>(rank) + lp,
                   ptr<int64_t>(previous) + lp, act, ptr<int64_t>(out.p2l) + lp,
                   ptr<int64_t>(out.rank) + lp, ptr<int64_t>(out.cnt) + l * a.E,
                   ptr<int64_t>(out.info) + l * 3};
      if (!blocks) return migrate_layer(LaneTeam<W>{}, d, s, io);
      const int32_t n = migrate_blocks(d);
      int32_t order[kSearchPasses];
      for (int32_t i = 0; i < n; ++i) order[i] = (int32_t)((l + i) % n);
      migrate_layer_blocks(LaneTeam<W>{}, d, s, io, pb, order);
    });
  });
  return out.tuple();
}

std::tuple<Tensor, Tensor, Tensor, Tensor> migrate_cpu(Tensor tokens, Tensor phy2log, Tensor rank,
                                                       Tensor previous, Tensor active, int64_t k,
                                                       int64_t C, int64_t N, int64_t max_moves,
                                                       double min_improvement) {
  return migrate_team<1>(tokens, phy2log, rank, previous, active, k, C, N, max_moves,
                         min_improvement, false);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lanes_migrate_cpu(Tensor tokens, Tensor phy2log,
                                                             Tensor rank, Tensor previous,
                                                             Tensor active, int64_t k, int64_t C,
                                                             int64_t N, int64_t max_moves,
                                                             double min_improvement,
                                                             int64_t width) {
  EPLB_CHECK_VALUE(width == 1 || width == 32, "width = ", width, " must be 1 or 32");
  if (width == 1) {
    return migrate_team<1>(tokens, phy2log, rank, previous, active, k, C, N, max_moves,
                           min_improvement, true);
  }
  return migrate_team<32>(tokens, phy2log, rank, previous, active, k, C, N, max_moves,
                          min_improvement, true);
}

}  // namespace
}  // namespace eplb

STABLE_TORCH_LIBRARY_IMPL(eplb_ext, CPU, m) {
  m.impl("migrate", TORCH_BOX(&eplb::migrate_cpu));
  m.impl("_lanes_migrate", TORCH_BOX(&eplb::lanes_migrate_cpu));
}
