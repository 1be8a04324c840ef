// CPU kernels: each op checks its arguments, then runs the torch-free core
// per layer (for_each_layer). Each layer's loads are checked in the same read
// that sums them, and a bad load raises once every layer is done, before any
// output is returned. Layers are independent and each writes only its own
// rows, so the result does not depend on the thread count.
#include <torch/csrc/stable/library.h>

#include <algorithm>
#include <vector>

#include "../../core/deepseek.h"
#include "../../core/rows.h"
#include "../../core/vec.h"
#include "../tensor_utils.h"
#include "../vec_args.h"
#include "parallel.h"

namespace eplb {
namespace {

using torch::stable::Tensor;

// Every layer's sums over steps (load_layer) into sums[L * E]. When the layers of a
// step are adjacent in memory, B of them are summed as one row of B * E
// loads: each step then reads one long contiguous run instead of B short
// ones, which the hardware prefetchers follow much better.
template <typename T>
void sum_steps(const Loads<T>& t, BadLoads& bad, float* sums) {
  // Runs of up to 64 KB (4 KB runs measured 1.6 times slower at DeepSeek-V3
  // shape, S = 1000), but no fewer runs than threads. The sums do not depend
  // on B: every layer's loads are added in step order whatever the run.
  const int64_t threads = std::max<int64_t>(1, torch::stable::get_num_threads());
  // E = 0 leaves nothing to sum (and no run length to divide by).
  const int64_t B = t.E == 0 || t.sl != t.E * t.se
                        ? 1
                        : std::max<int64_t>(1, std::min<int64_t>(65536 / (t.E * (int64_t)sizeof(T)),
                                                                 (t.L + threads - 1) / threads));
  const int64_t blocks = (t.L + B - 1) / B;
  const int64_t bytes = B * t.E * (int64_t)sizeof(Sum128);
  for_each_layer(blocks, grain_for(t.S * t.E * B), bytes, [&](int64_t b, void* buf) {
    const int64_t l0 = b * B, nl = std::min(B, t.L - l0);
    const Loads<T> run{t.data + l0 * t.sl, t.S, 1, nl * t.E, t.ss, 0, t.se};
    const int64_t first = load_layer(run, 0, sums + l0 * t.E, static_cast<Sum128*>(buf), nullptr);
    for (int64_t l = l0; l < l0 + nl; ++l) bad.ok(l, -1);
    if (first >= 0) {
      // (step, expert of the run) order is (step, layer, expert) order.
      const int64_t s = first / run.E, x = first % run.E;
      bad.ok(l0 + x / t.E, s * t.E + x % t.E);
    }
  });
}

std::tuple<Tensor, Tensor> balanced_packing_cpu(Tensor weight, int64_t num_packs) {
  check_packing_args(weight, num_packs);
  check_device(weight, "weight", false);
  const int64_t L = weight.size(0), n = weight.size(1);
  Tensor pack = new_index(weight, {L, n}, ScalarType::Long);
  Tensor rank = new_index(weight, {L, n}, ScalarType::Long);
  dispatch_loads(weight, "weight", [&](auto tag) {
    using T = decltype(tag);
    const Loads<T> w = make_loads<T>(weight);
    BadLoads bad(L);
    int64_t* pk = ptr<int64_t>(pack);
    int64_t* rk = ptr<int64_t>(rank);
    const int64_t bytes = packing_row_scratch(n, num_packs, nullptr, nullptr);
    for_each_layer(L, grain_for(n * 8), bytes, [&](int64_t l, void* buf) {
      if (bad.ok(l, first_bad_load(w, l))) {
        packing_row(w, l, (int32_t)num_packs, buf, pk, rk);
      }
    });
    bad.report(w, "weight", false);
  });
  return {pack, rank};
}

std::tuple<Tensor, Tensor, Tensor> replicate_experts_cpu(Tensor weight, int64_t num_phy) {
  check_replicate_args(weight, num_phy);
  check_device(weight, "weight", false);
  const int64_t L = weight.size(0), n = weight.size(1);
  Tensor phy2log = new_index(weight, {L, num_phy}, ScalarType::Long);
  Tensor rank = new_index(weight, {L, num_phy}, ScalarType::Long);
  Tensor logcnt = new_index(weight, {L, n}, ScalarType::Long);
  dispatch_loads(weight, "weight", [&](auto tag) {
    using T = decltype(tag);
    const Loads<T> w = make_loads<T>(weight);
    BadLoads bad(L);
    int64_t* p2l = ptr<int64_t>(phy2log);
    int64_t* rk = ptr<int64_t>(rank);
    int64_t* cnt = ptr<int64_t>(logcnt);
    const int64_t bytes = replicate_row_scratch(n, num_phy, nullptr, nullptr);
    for_each_layer(L, grain_for(n + num_phy * 8), bytes, [&](int64_t l, void* buf) {
      if (bad.ok(l, first_bad_load(w, l))) {
        replicate_row(w, l, (int32_t)num_phy, buf, p2l, rk, cnt);
      }
    });
    bad.report(w, "weight", false);
  });
  return {phy2log, rank, logcnt};
}

std::tuple<Tensor, Tensor, Tensor> deepseek_cpu(Tensor tokens, int64_t P, int64_t k, int64_t C,
                                               int64_t N) {
  const Placement a = check_placement_args(tokens, P, k, C, N);
  check_device(tokens, "tokens_per_expert", false);
  Tensor phy2log = new_index(tokens, {a.L, a.P}, ScalarType::Long);
  Tensor rank = new_index(tokens, {a.L, a.P}, ScalarType::Long);
  Tensor logcnt = new_index(tokens, {a.L, a.E}, ScalarType::Long);
  dispatch_loads(tokens, "tokens_per_expert", [&](auto tag) {
    using T = decltype(tag);
    const Loads<T> t = make_loads<T>(tokens);
    BadLoads bad(a.L);
    // With many steps the sums come first, in a pass of their own that reads
    // whole rows of several layers at a time (sum_steps).
    std::vector<float> sums;
    if (a.S > 1) {
      sums.resize(static_cast<size_t>(a.L * a.E));
      sum_steps(t, bad, sums.data());
    }
    bad.report(t, "tokens_per_expert", tokens.dim() == 3);
    const DeepseekDims d{(int32_t)a.E, (int32_t)a.P, (int32_t)a.C, (int32_t)a.N, (int32_t)a.G};
    const int64_t bytes = deepseek_scratch(d, nullptr, nullptr);
    const int64_t work = (sums.empty() ? a.S * a.E : a.E) + 16 * a.P + 8 * a.E;
    // Data pointers are fetched once: each fetch is a call into torch.
    int64_t* const p2l_all = ptr<int64_t>(phy2log);
    int64_t* const rk_all = ptr<int64_t>(rank);
    int64_t* const cnt_all = ptr<int64_t>(logcnt);
    for_each_layer(a.L, grain_for(work), bytes, [&](int64_t l, void* buf) {
      DeepseekScratch s;
      deepseek_scratch(d, buf, &s);
      if (!sums.empty()) {
        std::copy(sums.data() + l * a.E, sums.data() + (l + 1) * a.E, s.w);
      } else if (!bad.ok(l, load_layer(t, l, s.w, s.acc, nullptr))) {
        return;
      }
      deepseek_renumber(d, s, deepseek_pack(d, buf, d.N));
      int64_t* p2l = p2l_all + l * a.P;
      int64_t* rk = rk_all + l * a.P;
      for (int32_t n = 0; n < d.N; ++n) deepseek_node(d, s, deepseek_pack(d, buf, n), n, p2l, rk);
      for (int32_t e = 0; e < d.E; ++e) deepseek_count(s, e, cnt_all + l * a.E);
    });
    bad.report(t, "tokens_per_expert", tokens.dim() == 3);
  });
  return {phy2log, rank, logcnt};
}

Tensor logical_to_physical_cpu(Tensor phy2log, Tensor rank, int64_t E, int64_t width) {
  const Placement a = check_log2phy_args(phy2log, rank, E, width);
  check_device(phy2log, "physical_to_logical_map", false);
  check_device(rank, "physical_rank", false);
  Tensor out = new_index(phy2log, {a.L, a.E, a.X}, ScalarType::Long);
  const int64_t* p2l = ptr<int64_t>(phy2log);
  const int64_t* rk = ptr<int64_t>(rank);
  int64_t* o = ptr<int64_t>(out);
  for_each_layer(a.L, grain_for(a.E * a.X + a.P), 0, [&](int64_t l, void*) {
    std::fill(o + l * a.E * a.X, o + (l + 1) * a.E * a.X, int64_t{-1});
    scatter_log2phy(p2l + l * a.P, rk + l * a.P, a.P, a.E, a.X, o + l * a.E * a.X);
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> deepseek_mapped_cpu(Tensor tokens, int64_t P,
                                                               int64_t k, int64_t C, int64_t N) {
  auto [phy2log, rank, logcnt] = deepseek_cpu(tokens, P, k, C, N);
  Tensor log2phy = logical_to_physical_cpu(phy2log, rank, logcnt.size(1), P - logcnt.size(1) + 1);
  return {phy2log, log2phy, logcnt, rank};
}

std::tuple<Tensor, Tensor, Tensor> deepseek_vec_cpu(Tensor tokens, int64_t P, int64_t k,
                                                   int64_t C, int64_t N) {
  const Placement a = check_placement_args(tokens, P, k, C, N);
  check_device(tokens, "tokens_per_expert", false);
  check_vec_scratch(a);
  const VecOutputs out = new_vec_outputs(tokens, a);
  dispatch_loads(tokens, "tokens_per_expert", [&](auto tag) {
    using T = decltype(tag);
    const Loads<T> t = make_loads<T>(tokens);
    BadLoads bad(a.L);
    const VecDims d = vec_dims(a);
    const int64_t bytes = vec_scratch(d, nullptr, nullptr);
    reserve_host_scratch(bytes);
    const int64_t work = saturating_mul(a.S + 1, 3 * a.E + (a.P - a.E) * 64);
    // Bound the scratch in flight to about one float32 copy of the input.
    const int64_t input_f32 = saturating_mul(saturating_mul(a.S, a.L), 4 * a.E);
    const int64_t max_tasks = std::max<int64_t>(1, input_f32 / std::max<int64_t>(1, bytes));
    const int64_t grain = std::max(grain_for(work), (a.L + max_tasks - 1) / max_tasks);
    int32_t* const p2l_all = ptr<int32_t>(out.phy2log);
    int32_t* const l2p_all = ptr<int32_t>(out.log2phy);
    int32_t* const cnt_all = ptr<int32_t>(out.logcnt);
    for_each_layer(a.L, grain, bytes, [&](int64_t l, void* buf) {
      int32_t* l2p = l2p_all + l * a.E * a.X;
      std::fill(l2p, l2p + a.E * a.X, int32_t{-1});
      VecScratch s;
      vec_scratch(d, buf, &s);
      bad.ok(l, vec_layer(t, l, d, s, p2l_all + l * a.P, l2p, cnt_all + l * a.E));
    });
    bad.report(t, "tokens_per_expert", tokens.dim() == 3);
  });
  return out.tuple();
}

// The first bad load of `loads` ([S, L, E] or [L, E]) in index order, as a
// flat index into the tensor's shape, or -1. Unlike the placement ops it
// reports a bad value instead of raising, so that Python can raise its own
// ValueError before any op runs: an error that never has to cross the
// library boundary as a C++ exception.
int64_t first_bad_load_cpu(Tensor loads) {
  check_load_tensor(loads, "loads", 3);
  check_device(loads, "loads", false);
  int64_t flat = -1;
  dispatch_loads(loads, "loads", [&](auto tag) {
    using T = decltype(tag);
    const Loads<T> t = make_loads<T>(loads);
    if (t.se == 1 && t.sl == t.E && (t.S == 1 || t.ss == t.L * t.E)) {
      // Row-major and dense: memory order is index order, so the scan runs
      // straight through memory in chunks, the first bad chunk winning.
      constexpr int64_t kChunk = int64_t{1} << 16;
      const int64_t n = t.S * t.L * t.E, chunks = (n + kChunk - 1) / kChunk;
      std::vector<int64_t> first(static_cast<size_t>(chunks), -1);
      for_each_layer(chunks, grain_for(kChunk), 0, [&](int64_t c, void*) {
        const int64_t begin = c * kChunk;
        const Loads<T> run{t.data + begin, 1, 1, std::min(kChunk, n - begin), 0, 0, 1};
        const int64_t f = first_bad_load(run, 0);
        if (f >= 0) first[static_cast<size_t>(c)] = begin + f;
      });
      for (int64_t f : first) {
        if (f >= 0) {
          flat = f;
          break;
        }
      }
      return;
    }
    BadLoads bad(t.L);
    for_each_layer(t.L, grain_for(t.S * t.E), 0, [&](int64_t l, void*) { bad.ok(l, first_bad_load(t, l)); });
    flat = bad.first(t);
  });
  return flat;
}

// The per-layer sums over steps of [S, L, E] (or [L, E]) loads as the
// placement ops compute them (float32 [L, E]; SPEC's order: integers exact,
// floats added s = 0, 1, ... in float32), and the first bad load as
// first_bad_load gives it (the sums are then meaningless). Placing the sums
// (S = 1) gives the same placement as placing the steps: the Python API
// uses it to check the loads in the pass that sums them.
std::tuple<Tensor, int64_t> sum_steps_cpu(Tensor loads) {
  check_load_tensor(loads, "loads", 3);
  check_device(loads, "loads", false);
  const bool three_d = loads.dim() == 3;
  const int64_t L = loads.size(three_d ? 1 : 0), E = loads.size(three_d ? 2 : 1);
  Tensor out = new_index(loads, {L, E}, ScalarType::Float);
  int64_t flat = -1;
  dispatch_loads(loads, "loads", [&](auto tag) {
    using T = decltype(tag);
    const Loads<T> t = make_loads<T>(loads);
    BadLoads bad(t.L);
    sum_steps(t, bad, ptr<float>(out));
    flat = bad.first(t);
  });
  return {out, flat};
}

}  // namespace
}  // namespace eplb

STABLE_TORCH_LIBRARY_IMPL(eplb_ext, CPU, m) {
  m.impl("balanced_packing", TORCH_BOX(&eplb::balanced_packing_cpu));
  m.impl("replicate_experts", TORCH_BOX(&eplb::replicate_experts_cpu));
  m.impl("logical_to_physical", TORCH_BOX(&eplb::logical_to_physical_cpu));
  m.impl("deepseek", TORCH_BOX(&eplb::deepseek_cpu));
  m.impl("deepseek_mapped", TORCH_BOX(&eplb::deepseek_mapped_cpu));
  m.impl("deepseek_vec", TORCH_BOX(&eplb::deepseek_vec_cpu));
  m.impl("first_bad_load", TORCH_BOX(&eplb::first_bad_load_cpu));
  m.impl("sum_steps", TORCH_BOX(&eplb::sum_steps_cpu));
}
