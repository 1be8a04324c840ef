// Tests of the torch-free core (csrc/core), compiled on its own:
//   g++ -std=c++17 -O2 -ffp-contract=off -I<repo> tests/cpp/core_test.cpp
// Hand-checked examples of every building block, bit patterns of the 16-bit
// float conversions, and randomised comparisons of the optimised layer
// functions (winner trees, vec_pick's pruning) against naive
// implementations written straight from SPEC.md. Prints
// "<n> passed, <m> failed" and exits non-zero on any failure.
#include "csrc/core/loads.h"
#include "csrc/core/winner_tree.h"
#include "csrc/core/deepseek.h"
#include "csrc/core/migrate.h"
#include "csrc/core/packing.h"
#include "csrc/core/rows.h"
#include "csrc/core/vec.h"
#include "csrc/core/vec_team.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

using namespace eplb;

static int g_pass = 0, g_fail = 0;

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (cond) {                                                              \
      ++g_pass;                                                              \
    } else {                                                                 \
      ++g_fail;                                                              \
      std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);            \
    }                                                                        \
  } while (0)

template <typename A, typename B>
static bool same(const std::vector<A>& a, const std::vector<B>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if ((int64_t)a[i] != (int64_t)b[i]) return false;
  return true;
}

template <typename A, typename B>
static void check_eq(const char* what, const std::vector<A>& a, const std::vector<B>& b) {
  if (same(a, b)) {
    ++g_pass;
    return;
  }
  ++g_fail;
  std::printf("FAIL %s:\n  got     ", what);
  for (auto x : a) std::printf("%lld ", (long long)x);
  std::printf("\n  expected ");
  for (auto x : b) std::printf("%lld ", (long long)x);
  std::printf("\n");
}

static uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}
static float float_of(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// xorshift64*: a deterministic generator for the randomised checks.
struct Rng {
  uint64_t s;
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 2685821657736338717ull;
  }
  int32_t below(int32_t n) { return (int32_t)(next() % (uint64_t)n); }
  float unit() { return (float)(next() >> 40) / (float)(1ull << 24); }
};

// --------------------------------------------------------------------------
// thin wrappers over the core
// --------------------------------------------------------------------------

struct PackOut {
  std::vector<int32_t> pack, rank;
};

static PackOut core_pack(const std::vector<float>& w, int32_t m, bool shortcut) {
  const int32_t n = (int32_t)w.size();
  Carver count{nullptr, 0};
  take_pack_scratch(count, n, m);
  std::vector<uint64_t> buf(count.off / 8 + 1);
  Carver c{(char*)buf.data(), 0};
  PackScratch s = take_pack_scratch(c, n, m);
  PackOut o{std::vector<int32_t>(n, -7), std::vector<int32_t>(n, -7)};
  balanced_pack(w.data(), n, m, shortcut, o.pack.data(), o.rank.data(), s);
  return o;
}

struct RepOut {
  std::vector<int32_t> phy2log, rank, cnt;
};

static RepOut core_replicate(const std::vector<float>& w, int32_t p) {
  const int32_t n = (int32_t)w.size();
  RepOut o{std::vector<int32_t>(p), std::vector<int32_t>(p), std::vector<int32_t>(n)};
  std::vector<float> ratio(n);
  std::vector<int32_t> win(next_pow2(n) + 1);
  replicate(w.data(), n, p, o.phy2log.data(), o.rank.data(), o.cnt.data(), ratio.data(), win.data());
  return o;
}

static std::vector<int32_t> core_argsort(const std::vector<float>& w) {
  const int32_t n = (int32_t)w.size();
  std::vector<int32_t> idx(n);
  std::vector<uint64_t> keys(n + 1), tmp(n + 1);
  argsort_desc_stable(w.data(), n, idx.data(), keys.data(), tmp.data());
  return idx;
}

struct Placement3 {
  std::vector<int64_t> phy2log, rank_or_log2phy, cnt;
};

// One layer of the deepseek op, as the CPU kernel runs it (loads [S, 1, E]).
template <typename T>
static Placement3 core_deepseek(const std::vector<T>& t, int64_t S, int32_t E, int32_t P, int32_t C,
                                int32_t N, int32_t G) {
  Loads<T> loads{t.data(), S, 1, E, (int64_t)E, (int64_t)E, 1};
  DeepseekDims d{E, P, C, N, G};
  std::vector<uint64_t> buf(deepseek_scratch(d, nullptr, nullptr) / 8 + 1);
  DeepseekScratch s;
  deepseek_scratch(d, buf.data(), &s);
  Placement3 o{std::vector<int64_t>(P, -7), std::vector<int64_t>(P, -7), std::vector<int64_t>(E, -7)};
  load_layer(loads, 0, s.w, s.acc, nullptr);
  deepseek_renumber(d, s, deepseek_pack(d, buf.data(), d.N));
  for (int32_t n = 0; n < N; ++n) deepseek_node(d, s, deepseek_pack(d, buf.data(), n), n, o.phy2log.data(), o.rank_or_log2phy.data());
  for (int32_t e = 0; e < E; ++e) deepseek_count(s, e, o.cnt.data());
  return o;
}

// One layer of the deepseek_vec op (C = N = 1 is deepseek_vec).
template <typename T>
static Placement3 core_vec(const std::vector<T>& t, int64_t S, int32_t E, int32_t P, int32_t k, int32_t C,
                           int32_t N) {
  Loads<T> loads{t.data(), S, 1, E, (int64_t)E, (int64_t)E, 1};
  VecDims d{S, E, P, k, C, N};
  std::vector<uint64_t> buf(vec_scratch(d, nullptr, nullptr) / 8 + 1);
  VecScratch s;
  vec_scratch(d, buf.data(), &s);
  const int64_t X = P - E + 1;
  std::vector<int64_t> p2l(P, -7);
  std::vector<int32_t> l2p(E * X, -1), cnt(E, -7);
  vec_layer(loads, 0, d, s, p2l.data(), l2p.data(), cnt.data());
  return Placement3{p2l, std::vector<int64_t>(l2p.begin(), l2p.end()), std::vector<int64_t>(cnt.begin(), cnt.end())};
}

// --------------------------------------------------------------------------
// naive implementations, straight from SPEC.md
// --------------------------------------------------------------------------

static std::vector<int32_t> naive_order(const std::vector<float>& w) {
  std::vector<int32_t> idx(w.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return w[a] > w[b]; });
  return idx;
}

static PackOut naive_pack(const std::vector<float>& w, int32_t m, bool shortcut) {
  const int32_t n = (int32_t)w.size(), cap = n / m;
  PackOut o{std::vector<int32_t>(n), std::vector<int32_t>(n)};
  if (shortcut && cap == 1) {
    for (int32_t i = 0; i < n; ++i) o.pack[i] = i, o.rank[i] = 0;
    return o;
  }
  std::vector<float> pw(m, 0.0f);
  std::vector<int32_t> pn(m, 0);
  for (int32_t item : naive_order(w)) {
    int32_t best = -1;
    for (int32_t p = 0; p < m; ++p)
      if (pn[p] < cap && (best < 0 || pw[p] < pw[best])) best = p;
    o.pack[item] = best;
    o.rank[item] = pn[best]++;
    pw[best] = pw[best] + w[item];
  }
  return o;
}

static RepOut naive_replicate(const std::vector<float>& w, int32_t p) {
  const int32_t n = (int32_t)w.size();
  RepOut o{std::vector<int32_t>(p), std::vector<int32_t>(p), std::vector<int32_t>(n, 1)};
  for (int32_t i = 0; i < n; ++i) o.phy2log[i] = i, o.rank[i] = 0;
  for (int32_t i = n; i < p; ++i) {
    int32_t best = 0;
    for (int32_t e = 1; e < n; ++e)
      if (w[e] / (float)o.cnt[e] > w[best] / (float)o.cnt[best]) best = e;
    o.phy2log[i] = best;
    o.rank[i] = o.cnt[best]++;
  }
  return o;
}

static std::vector<float> naive_sum(const std::vector<float>& t, int64_t S, int32_t E) {
  std::vector<float> w(E, 0.0f);
  for (int64_t s = 0; s < S; ++s)
    for (int32_t e = 0; e < E; ++e) w[e] = w[e] + t[s * E + e];
  return w;
}

// Group loads, groups into nodes, node-major renumbering: orig[new] = old.
static std::vector<int32_t> naive_renumber(const std::vector<float>& w, int32_t C, int32_t N, bool shortcut) {
  const int32_t E = (int32_t)w.size(), m = E / C;
  std::vector<float> gw(C);
  for (int32_t c = 0; c < C; ++c) {
    float a = 0.0f;
    for (int32_t j = 0; j < m; ++j) a = a + w[c * m + j];
    gw[c] = a;
  }
  PackOut g = naive_pack(gw, N, shortcut);
  std::vector<int32_t> orig(E);
  for (int32_t c = 0; c < C; ++c)
    for (int32_t j = 0; j < m; ++j) orig[(g.pack[c] * (C / N) + g.rank[c]) * m + j] = c * m + j;
  return orig;
}

static Placement3 naive_deepseek(const std::vector<float>& t, int64_t S, int32_t E, int32_t P, int32_t C,
                                 int32_t N, int32_t G) {
  const std::vector<float> w = naive_sum(t, S, E);
  const std::vector<int32_t> orig = naive_renumber(w, C, N, true);
  const int32_t en = E / N, pn = P / N, gn = G / N, k = P / G;
  Placement3 o{std::vector<int64_t>(P), std::vector<int64_t>(P), std::vector<int64_t>(E)};
  for (int32_t n = 0; n < N; ++n) {
    std::vector<float> nw(en);
    for (int32_t j = 0; j < en; ++j) nw[j] = w[orig[n * en + j]];
    RepOut r = naive_replicate(nw, pn);
    std::vector<float> sw(pn);
    for (int32_t x = 0; x < pn; ++x) sw[x] = nw[r.phy2log[x]] / (float)r.cnt[r.phy2log[x]];
    PackOut g = naive_pack(sw, gn, true);
    for (int32_t x = 0; x < pn; ++x) {
      const int32_t slot = n * pn + g.pack[x] * k + g.rank[x];
      o.phy2log[slot] = orig[n * en + r.phy2log[x]];
      o.rank_or_log2phy[slot] = r.rank[x];
    }
    for (int32_t j = 0; j < en; ++j) o.cnt[orig[n * en + j]] = r.cnt[j];
  }
  return o;
}

static Placement3 naive_vec(const std::vector<float>& t, int64_t S, int32_t E, int32_t P, int32_t k, int32_t C,
                            int32_t N) {
  const std::vector<float> wsum = naive_sum(t, S, E);
  const std::vector<int32_t> orig = naive_renumber(wsum, C, N, false);
  const int32_t Nc = N, Pc = P / Nc, Ec = E / Nc, Rc = (P - E) / Nc;
  const int64_t X = P - E + 1;
  // load of renumbered expert e at step s
  auto load = [&](int64_t s, int32_t e) { return t[s * E + orig[e]]; };
  std::vector<int32_t> p2e(P), prank(P), cnt(E, 1);
  for (int32_t c = 0; c < Nc; ++c)
    for (int32_t j = 0; j < Ec; ++j) p2e[c * Pc + j] = c * Ec + j, prank[c * Pc + j] = 0;
  for (int32_t i = 0; i < Rc; ++i) {
    for (int32_t c = 0; c < Nc; ++c) {
      std::vector<float> total(Ec, 0.0f);
      for (int64_t s = 0; s < S; ++s) {
        std::vector<float> score(Ec);
        for (int32_t j = 0; j < Ec; ++j) {
          const int32_t e = c * Ec + j;
          score[j] = (load(s, e) + (float)e * 0.0001f) / (float)cnt[e];
        }
        int32_t a = 0;
        for (int32_t j = 1; j < Ec; ++j)
          if (score[j] > score[a]) a = j;
        const float relief = load(s, c * Ec + a) / (float)(cnt[c * Ec + a] + 1);
        float va = relief;
        for (int32_t j = 0; j < Ec; ++j)
          if (j != a && score[j] > va) va = score[j];
        for (int32_t j = 0; j < Ec; ++j) total[j] = total[j] + (j == a ? va : score[a]);
      }
      int32_t pick = 0;
      for (int32_t j = 1; j < Ec; ++j)
        if (total[j] < total[pick]) pick = j;
      const int32_t e = c * Ec + pick, slot = c * Pc + Ec + i;
      p2e[slot] = e;
      prank[slot] = cnt[e]++;
    }
  }
  std::vector<int32_t> newpos(P);
  for (int32_t c = 0; c < Nc; ++c) {
    if (k > 1) {
      std::vector<float> sw(Pc);
      for (int32_t x = 0; x < Pc; ++x) {
        const int32_t e = p2e[c * Pc + x];
        sw[x] = wsum[orig[e]] / (float)cnt[e];
      }
      const std::vector<int32_t> ord = naive_order(sw);
      const int32_t gpus = Pc / k;
      for (int32_t r = 0; r < Pc; ++r) {
        const int32_t q = r / gpus, j = r % gpus, g = q % 2 == 0 ? j : gpus - 1 - j;
        newpos[c * Pc + ord[r]] = c * Pc + g * k + q;
      }
    } else {
      for (int32_t x = 0; x < Pc; ++x) newpos[c * Pc + x] = c * Pc + x;
    }
  }
  Placement3 o{std::vector<int64_t>(P), std::vector<int64_t>(E * X, -1), std::vector<int64_t>(E)};
  for (int32_t x = 0; x < P; ++x) {
    const int32_t ex = orig[p2e[x]];
    o.phy2log[newpos[x]] = ex;
    o.rank_or_log2phy[ex * X + prank[x]] = newpos[x];
  }
  for (int32_t e = 0; e < E; ++e) o.cnt[orig[e]] = cnt[e];
  return o;
}

// --------------------------------------------------------------------------
// tests
// --------------------------------------------------------------------------

static void test_half_and_bf16() {
  struct Case {
    uint16_t h;
    uint32_t f;
  };
  const Case halves[] = {
      {0x0000, 0x00000000},  // +0
      {0x8000, 0x80000000},  // -0
      {0x3C00, 0x3F800000},  // 1
      {0xC000, 0xC0000000},  // -2
      {0x3555, 0x3EAAA000},  // 0.333251953125
      {0x7BFF, 0x477FE000},  // 65504, the largest half
      {0x0400, 0x38800000},  // 2**-14, the smallest normal
      {0x0001, 0x33800000},  // 2**-24, the smallest subnormal
      {0x03FF, 0x387FC000},  // the largest subnormal
      {0x0200, 0x38000000},  // 2**-15
      {0x8001, 0xB3800000},  // -2**-24
      {0x7C00, 0x7F800000},  // +inf
      {0xFC00, 0xFF800000},  // -inf
  };
  for (const Case& c : halves) CHECK(bits_of(half_bits_to_float(c.h)) == c.f);
  CHECK(std::isnan(half_bits_to_float(0x7E00)));
  CHECK(std::isnan(half_bits_to_float(0xFC01)));
  CHECK(std::isnan(half_bits_to_float(0x7C01)));

  // Every finite half against ldexp in double (exact in float).
  int bad = 0;
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) continue;
    double v = exp == 0 ? std::ldexp((double)man, -24) : std::ldexp((double)(1024 + man), (int)exp - 25);
    if (h & 0x8000) v = -v;
    const float got = half_bits_to_float((uint16_t)h);
    if (bits_of(got) != bits_of((float)v)) ++bad;
  }
  CHECK(bad == 0);

  const Case bfs[] = {
      {0x0000, 0x00000000}, {0x8000, 0x80000000}, {0x3F80, 0x3F800000}, {0x4049, 0x40490000},
      {0xC2F7, 0xC2F70000}, {0x0001, 0x00010000}, {0x7F7F, 0x7F7F0000}, {0x7F80, 0x7F800000},
      {0xFF80, 0xFF800000},
  };
  for (const Case& c : bfs) CHECK(bits_of(bf16_bits_to_float(c.h)) == c.f);
  CHECK(bf16_bits_to_float(0x4049) == 3.140625f);
  CHECK(std::isnan(bf16_bits_to_float(0x7FC0)));
  CHECK(to_f32(Half16{0x3C00}) == 1.0f);
  CHECK(to_f32(BFloat16{0x4000}) == 2.0f);
}

static void test_load_faults() {
  CHECK(load_fault(0.0f) == kLoadOk);
  CHECK(load_fault(-0.0f) == kLoadOk);
  CHECK(load_fault(-0.0) == kLoadOk);
  CHECK(load_fault(-1.0f) == kLoadNegative);
  CHECK(load_fault(-1e-300) == kLoadNegative);
  CHECK(load_fault(1e300) == kLoadInf);  // finite double, infinite float
  CHECK(load_fault(-1e300) == kLoadInf);
  CHECK(load_fault(std::numeric_limits<float>::infinity()) == kLoadInf);
  CHECK(load_fault(std::numeric_limits<double>::quiet_NaN()) == kLoadNaN);
  CHECK(load_fault(3.4e38) == kLoadOk);
  CHECK(load_fault((int64_t)-1) == kLoadNegative);
  CHECK(load_fault((int8_t)-128) == kLoadNegative);
  CHECK(load_fault((uint8_t)255) == kLoadOk);
  CHECK(load_fault((uint64_t)~0ull) == kLoadOk);
  CHECK(load_fault(Half16{0x7C00}) == kLoadInf);
  CHECK(load_fault(Half16{0x7E00}) == kLoadNaN);
  CHECK(load_fault(Half16{0x8001}) == kLoadNegative);
  CHECK(load_fault(Half16{0x8000}) == kLoadOk);
  CHECK(load_fault(BFloat16{0xBF80}) == kLoadNegative);
  CHECK(f32_is_finite(3.4e38f) && !f32_is_finite(float_of(0x7F800000)) && !f32_is_finite(float_of(0x7FC00000)));
  // The branch-free test the sums use agrees with load_fault everywhere:
  // every half and bfloat16, and floats and doubles around each boundary.
  int32_t disagree = 0;
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    disagree += load_is_bad(Half16{(uint16_t)h}) != (uint32_t)(load_fault(Half16{(uint16_t)h}) != kLoadOk);
    disagree += load_is_bad(BFloat16{(uint16_t)h}) != (uint32_t)(load_fault(BFloat16{(uint16_t)h}) != kLoadOk);
  }
  const double inf = std::numeric_limits<double>::infinity();
  for (double v : {0.0, -0.0, 1.0, -1.0, -1e-300, 1e-300, 1e300, -1e300, 3.4e38, 3.4028235e38, 3.4028236e38,
                   3.5e38, inf, -inf, std::numeric_limits<double>::quiet_NaN(), -std::numeric_limits<double>::quiet_NaN()}) {
    disagree += load_is_bad(v) != (uint32_t)(load_fault(v) != kLoadOk);
    disagree += load_is_bad((float)v) != (uint32_t)(load_fault((float)v) != kLoadOk);
  }
  for (int64_t v : {int64_t{0}, int64_t{-1}, int64_t{5}, std::numeric_limits<int64_t>::min()}) {
    disagree += load_is_bad(v) != (uint32_t)(load_fault(v) != kLoadOk);
    disagree += load_is_bad((int8_t)v) != (uint32_t)(load_fault((int8_t)v) != kLoadOk);
    disagree += load_is_bad((uint64_t)v) != 0u;
  }
  CHECK(disagree == 0);
  CHECK(bits_of(neg_inf()) == 0xFF800000u);

  // first_bad_load: (step, expert) order within a layer, strided view.
  std::vector<float> t(2 * 3 * 4, 1.0f);  // [S=2, L=3, E=4]
  t[1 * 12 + 2 * 4 + 3] = -1.0f;
  t[1 * 12 + 2 * 4 + 1] = std::numeric_limits<float>::quiet_NaN();
  Loads<float> v{t.data(), 2, 3, 4, 12, 4, 1};
  CHECK(first_bad_load(v, 0) == -1);
  CHECK(first_bad_load(v, 2) == 1 * 4 + 1);
  // Transposed strides: [E, L, S] storage.
  std::vector<int32_t> u(4 * 3 * 2, 5);
  u[3 * 6 + 1 * 2 + 0] = -5;  // e=3, l=1, s=0
  Loads<int32_t> w{u.data(), 2, 3, 4, 1, 2, 6};
  CHECK(first_bad_load(w, 1) == 0 * 4 + 3);
  CHECK(first_bad_load(w, 0) == -1);
}

static void test_sums() {
  // Integers: the exact sum, converted to float32 once.
  std::vector<int32_t> t = {16777217, 3, 1, 5};  // [S=2, L=1, E=2]
  Loads<int32_t> v{t.data(), 2, 1, 2, 2, 2, 1};
  float out[2];
  Sum128 acc[2];
  load_layer(v, 0, out, acc, nullptr);
  CHECK(out[0] == 16777218.0f);  // float additions would give 16777216
  CHECK(out[1] == 8.0f);
  CHECK(sum_over_steps_one(v, 0, 0) == 16777218.0f);
  // Unsigned 64-bit loads beyond int64.
  std::vector<uint64_t> big = {1ull << 63, 1ull << 62};
  Loads<uint64_t> vb{big.data(), 2, 1, 1, 1, 1, 1};
  load_layer(vb, 0, out, acc, nullptr);
  CHECK(out[0] == 13835058055282163712.0f);
  // Sums past 2**64 stay exact until the one rounding to float32.
  std::vector<uint64_t> huge = {1ull << 63, 1ull << 63, 1ull << 63, 1};  // [S=4, L=1, E=1]
  Loads<uint64_t> vh{huge.data(), 4, 1, 1, 1, 1, 1};
  load_layer(vh, 0, out, acc, nullptr);
  CHECK(out[0] == 3.0f * 9223372036854775808.0f);  // 3 * 2**63 + 1 rounds down
  CHECK(sum_over_steps_one(vh, 0, 0) == out[0]);
  Sum128 half_up{(1ull << 40) | 1, 1};  // 2**64 + 2**40 + 1: just above a tie
  CHECK(half_up.to_f32() == 18446746272732807168.0f);  // rounds up to 2**64 + 2**41
  // Floats: float32 additions in step order.
  std::vector<float> f = {16777216.0f, 1.0f, 1.0f, 16777216.0f};  // [S=4, L=1, E=1]
  Loads<float> vf{f.data(), 4, 1, 1, 1, 1, 1};
  float tt[4];
  load_layer(vf, 0, out, acc, tt);
  CHECK(out[0] == 33554432.0f);  // ((2^24 + 1) + 1) + 2^24, each rounded
  CHECK(sum_over_steps_one(vf, 0, 0) == out[0]);
  CHECK(tt[0] == 16777216.0f && tt[1] == 1.0f && tt[3] == 16777216.0f);
  // Doubles are converted to float32 before adding.
  std::vector<double> d = {0.1, 0.2};
  Loads<double> vd{d.data(), 2, 1, 1, 1, 1, 1};
  load_layer(vd, 0, out, acc, nullptr);
  CHECK(out[0] == (float)0.1 + (float)0.2);
  // A long run of steps (crosses the 16-step blocks), strided experts.
  std::vector<float> g(40 * 3);
  for (int i = 0; i < 120; ++i) g[i] = (float)(i % 7) * 0.1f;
  Loads<float> vg{g.data(), 40, 1, 2, 3, 3, 2};  // experts at offsets 0 and 2
  float tt2[80];
  load_layer(vg, 0, out, acc, tt2);
  float e0 = 0.0f, e1 = 0.0f;
  for (int s = 0; s < 40; ++s) e0 = e0 + g[s * 3], e1 = e1 + g[s * 3 + 2];
  CHECK(out[0] == e0 && out[1] == e1);
  CHECK(tt2[1 * 40 + 17] == g[17 * 3 + 2]);
  // One expert's sum reads 8 steps ahead: 40 steps end inside a block.
  CHECK(sum_over_steps_one(vg, 0, 0) == e0 && sum_over_steps_one(vg, 0, 1) == e1);
  std::vector<int64_t> gi(13);
  for (int i = 0; i < 13; ++i) gi[i] = (int64_t{1} << 40) + i;
  Loads<int64_t> vgi{gi.data(), 13, 1, 1, 1, 1, 1};
  load_layer(vgi, 0, out, acc, nullptr);
  CHECK(sum_over_steps_one(vgi, 0, 0) == out[0]);
}

static void test_argsort() {
  check_eq("argsort ties", core_argsort({1, 3, 3, 2, 3, 1}), std::vector<int>{1, 2, 4, 3, 0, 5});
  check_eq("argsort zeros", core_argsort({0.0f, -0.0f, 1.0f, -0.0f, 0.0f}), std::vector<int>{2, 0, 1, 3, 4});
  check_eq("argsort one", core_argsort({5.0f}), std::vector<int>{0});
  check_eq("argsort subnormal", core_argsort({float_of(1), 0.0f, float_of(2), float_of(0x00800000)}),
           std::vector<int>{3, 2, 0, 1});
  Rng rng{12345};
  int bad = 0;
  for (int n = 1; n <= 70; ++n) {
    for (int rep = 0; rep < 5; ++rep) {
      std::vector<float> w(n);
      const int distinct = 1 + rng.below(4);
      for (auto& x : w) x = rep % 2 ? (float)rng.below(distinct) : rng.unit() * 10.0f;
      if (!same(core_argsort(w), naive_order(w))) ++bad;
    }
  }
  CHECK(bad == 0);
}

static void test_balanced_pack() {
  PackOut o = core_pack({3, 1, 2, 2}, 2, true);
  check_eq("pack 3122", o.pack, std::vector<int>{0, 0, 1, 1});
  check_eq("rank 3122", o.rank, std::vector<int>{0, 1, 0, 1});
  o = core_pack({5, 5, 5, 5, 5, 5}, 3, true);  // all tied: round robin
  check_eq("pack equal", o.pack, std::vector<int>{0, 1, 2, 0, 1, 2});
  check_eq("rank equal", o.rank, std::vector<int>{0, 0, 0, 1, 1, 1});
  o = core_pack({10, 1, 1, 1, 1, 6}, 2, true);
  check_eq("pack greedy", o.pack, std::vector<int>{0, 1, 1, 0, 0, 1});
  check_eq("rank greedy", o.rank, std::vector<int>{0, 1, 2, 1, 2, 0});
  o = core_pack({1, 1, 1, 1, 100, 100}, 3, true);  // full packs are skipped
  check_eq("pack full", o.pack, std::vector<int>{2, 2, 0, 1, 0, 1});
  check_eq("rank full", o.rank, std::vector<int>{0, 1, 1, 1, 0, 0});
  o = core_pack({0.0f, -0.0f, 0.0f, -0.0f}, 2, true);  // -0 ties with +0
  check_eq("pack zeros", o.pack, std::vector<int>{0, 0, 1, 1});
  check_eq("rank zeros", o.rank, std::vector<int>{0, 1, 0, 1});
  // n == m: the shortcut keeps item i in pack i; without it the items sort.
  o = core_pack({1, 9, 3}, 3, true);
  check_eq("pack shortcut", o.pack, std::vector<int>{0, 1, 2});
  check_eq("rank shortcut", o.rank, std::vector<int>{0, 0, 0});
  o = core_pack({1, 9, 3}, 3, false);
  check_eq("pack sorted", o.pack, std::vector<int>{2, 0, 1});
  check_eq("rank sorted", o.rank, std::vector<int>{0, 0, 0});
  o = core_pack({4, 4, 4}, 1, true);  // one pack
  check_eq("pack one", o.pack, std::vector<int>{0, 0, 0});
  check_eq("rank one", o.rank, std::vector<int>{0, 1, 2});

  // Random against the naive O(n m) packing, many ties, odd pack counts.
  Rng rng{777};
  int bad = 0, runs = 0;
  for (int m = 1; m <= 9; ++m) {
    for (int cap = 1; cap <= 6; ++cap) {
      for (int rep = 0; rep < 4; ++rep) {
        std::vector<float> w(m * cap);
        for (auto& x : w) x = rep % 2 ? (float)rng.below(3) : rng.unit() * 100.0f;
        for (bool sc : {true, false}) {
          PackOut a = core_pack(w, m, sc), b = naive_pack(w, m, sc);
          ++runs;
          if (!same(a.pack, b.pack) || !same(a.rank, b.rank)) ++bad;
        }
      }
    }
  }
  CHECK(runs == 9 * 6 * 4 * 2 && bad == 0);
}

static void test_replicate() {
  RepOut o = core_replicate({4, 4, 1}, 6);
  check_eq("rep 441 phy2log", o.phy2log, std::vector<int>{0, 1, 2, 0, 1, 0});
  check_eq("rep 441 rank", o.rank, std::vector<int>{0, 0, 0, 1, 1, 2});
  check_eq("rep 441 cnt", o.cnt, std::vector<int>{3, 2, 1});
  o = core_replicate({1, 2, 3, 4, 5}, 8);  // n not a power of two
  check_eq("rep 12345 phy2log", o.phy2log, std::vector<int>{0, 1, 2, 3, 4, 4, 3, 2});
  check_eq("rep 12345 cnt", o.cnt, std::vector<int>{1, 1, 2, 2, 2});
  o = core_replicate({0, 0, 0}, 5);  // all zero: ratios stay tied, the first wins
  check_eq("rep zeros phy2log", o.phy2log, std::vector<int>{0, 1, 2, 0, 0});
  check_eq("rep zeros rank", o.rank, std::vector<int>{0, 0, 0, 1, 2});
  o = core_replicate({7}, 4);  // a single expert
  check_eq("rep one", o.phy2log, std::vector<int>{0, 0, 0, 0});
  check_eq("rep one rank", o.rank, std::vector<int>{0, 1, 2, 3});
  o = core_replicate({2, 9}, 2);  // p == n
  check_eq("rep none", o.phy2log, std::vector<int>{0, 1});
  check_eq("rep none cnt", o.cnt, std::vector<int>{1, 1});
  // 3 / 3 == 1 == 2 / 2 ... ratios compared after float32 division.
  o = core_replicate({3, 1, 2}, 6);
  // ratios: 3,1,2 -> e0 (1.5); 1.5,1,2 -> e2 (1); 1.5,1,1 -> e0 (1); 1,1,1 -> e0
  check_eq("rep 312", o.phy2log, std::vector<int>{0, 1, 2, 0, 2, 0});

  Rng rng{4242};
  int bad = 0;
  for (int n = 1; n <= 33; ++n) {
    for (int rep = 0; rep < 4; ++rep) {
      std::vector<float> w(n);
      for (auto& x : w) x = rep % 2 ? (float)rng.below(4) : rng.unit() * 1000.0f;
      const int p = n + rng.below(3 * n + 2);
      RepOut a = core_replicate(w, p), b = naive_replicate(w, p);
      if (!same(a.phy2log, b.phy2log) || !same(a.rank, b.rank) || !same(a.cnt, b.cnt)) ++bad;
    }
  }
  CHECK(bad == 0);
}

static void test_rows() {
  // packing_row / replicate_row on a strided [L=2, n=4] view, int64 outputs.
  std::vector<float> w = {9, 3, 1, 2, 1, 2, 0, 0, 0, 0};  // row l at offset 5*l
  Loads<float> v{w.data(), 1, 2, 4, 0, 5, 1};
  std::vector<uint64_t> buf(packing_row_scratch(4, 2, nullptr, nullptr) / 8 + 1);
  std::vector<int64_t> pack(8, -7), rank(8, -7);
  packing_row(v, 0, 2, buf.data(), pack.data(), rank.data());
  packing_row(v, 1, 2, buf.data(), pack.data(), rank.data());
  // row 0: 9 -> p0; 3 -> p1; 2 -> p1; 1 -> p0.   row 1 = [1,2,1,2]... see below
  check_eq("packing_row 0", std::vector<int64_t>(pack.begin(), pack.begin() + 4), std::vector<int>{0, 1, 0, 1});
  check_eq("packing_row 0 rank", std::vector<int64_t>(rank.begin(), rank.begin() + 4), std::vector<int>{0, 0, 1, 1});
  // row 1 = [2, 0, 0, 0]: 2 -> p0; then zeros to p1, p1, p0.
  check_eq("packing_row 1", std::vector<int64_t>(pack.begin() + 4, pack.end()), std::vector<int>{0, 1, 1, 0});
  check_eq("packing_row 1 rank", std::vector<int64_t>(rank.begin() + 4, rank.end()), std::vector<int>{0, 0, 1, 1});

  std::vector<uint64_t> rbuf(replicate_row_scratch(4, 6, nullptr, nullptr) / 8 + 1);
  std::vector<int64_t> p2l(12, -7), rk(12, -7), cnt(8, -7);
  replicate_row(v, 1, 6, rbuf.data(), p2l.data(), rk.data(), cnt.data());
  check_eq("replicate_row", std::vector<int64_t>(p2l.begin() + 6, p2l.end()), std::vector<int>{0, 1, 2, 3, 0, 0});
  check_eq("replicate_row cnt", std::vector<int64_t>(cnt.begin() + 4, cnt.end()), std::vector<int>{3, 1, 1, 1});
  CHECK(p2l[0] == -7);  // only layer 1's rows are written

  // scatter_log2phy skips entries out of range.
  std::vector<int64_t> sp = {0, 1, 0, 5, -1, 1}, sr = {0, 0, 1, 0, 0, 7};
  std::vector<int64_t> out(2 * 2, -1);
  scatter_log2phy(sp.data(), sr.data(), 6, 2, 2, out.data());
  check_eq("scatter_log2phy", out, std::vector<int>{0, 2, 1, -1});
}

static void test_deepseek_layer() {
  // E=8, C=4 groups of 2, N=2 nodes, P=10, G=2 (k=5); worked out by hand:
  // groups {2, 18, 4, 10} -> node 0 gets groups 1, 0; node 1 gets 3, 2.
  std::vector<float> w = {1, 1, 9, 9, 2, 2, 5, 5};
  Placement3 o = core_deepseek(w, 1, 8, 10, 4, 2, 2);
  check_eq("deepseek phy2log", o.phy2log, std::vector<int>{3, 2, 2, 0, 1, 7, 6, 6, 4, 5});
  check_eq("deepseek rank", o.rank_or_log2phy, std::vector<int>{0, 0, 1, 0, 0, 0, 0, 1, 0, 0});
  check_eq("deepseek cnt", o.cnt, std::vector<int>{1, 1, 2, 1, 1, 1, 2, 1});
  // Two steps of int64 loads sum to the same layer.
  std::vector<int64_t> t2 = {1, 0, 4, 9, 2, 0, 5, 1, 0, 1, 5, 0, 0, 2, 0, 4};
  Placement3 o2 = core_deepseek(t2, 2, 8, 10, 4, 2, 2);
  check_eq("deepseek 2 steps", o2.phy2log, o.phy2log);
  // The global policy (C = N = 1) with E=4, P=6, G=3.
  std::vector<float> g = {1, 2, 10, 3};
  Placement3 q = core_deepseek(g, 1, 4, 6, 1, 1, 3);
  // Replicas: e2 (10 > 3), e2 again (10/2 = 5 > 3). Slot loads
  // {1, 2, 10/3, 3, 10/3, 10/3}, visited 2,4,5,3,1,0: GPUs get {2,3}, {4,1}, {5,0}.
  check_eq("deepseek global cnt", q.cnt, std::vector<int>{1, 1, 3, 1});
  Placement3 qn = naive_deepseek(g, 1, 4, 6, 1, 1, 3);
  check_eq("deepseek global vs naive", q.phy2log, qn.phy2log);
  check_eq("deepseek global rank vs naive", q.rank_or_log2phy, qn.rank_or_log2phy);
  check_eq("deepseek global slots", q.phy2log, std::vector<int>{2, 3, 2, 1, 2, 0});
  check_eq("deepseek global ranks", q.rank_or_log2phy, std::vector<int>{0, 0, 1, 0, 2, 0});
}

static void test_vec_layer() {
  // S=1, E=2, P=3, k=1, loads {10, 4}: candidate e0 scores max(5, 4.0001),
  // e1 scores 10 -> e0 gets the replica.
  Placement3 o = core_vec(std::vector<float>{10, 4}, 1, 2, 3, 1, 1, 1);
  check_eq("vec small phy2log", o.phy2log, std::vector<int>{0, 1, 0});
  check_eq("vec small log2phy", o.rank_or_log2phy, std::vector<int>{0, 2, 1, -1});
  check_eq("vec small cnt", o.cnt, std::vector<int>{2, 1});
  // E=4, P=6, k=2, loads {8, 1, 6, 2}: replicas e0 then e2; the slots,
  // sorted by load {4,4,3,3,2,1}, are dealt in snake order over 3 GPUs.
  o = core_vec(std::vector<float>{8, 1, 6, 2}, 1, 4, 6, 2, 1, 1);
  check_eq("vec deal phy2log", o.phy2log, std::vector<int>{0, 1, 0, 3, 2, 2});
  check_eq("vec deal log2phy", o.rank_or_log2phy, std::vector<int>{0, 2, -1, 1, -1, -1, 4, 5, -1, 3, -1, -1});
  check_eq("vec deal cnt", o.cnt, std::vector<int>{2, 1, 2, 1});
  // Hierarchical: S=2, E=8, C=4, N=2, P=12, k=3 (checked against the
  // pure-PyTorch reference).
  std::vector<float> t = {1, 1, 9, 9, 2, 2, 5, 5, 3, 0, 0, 4, 1, 7, 0, 2};
  o = core_vec(t, 2, 8, 12, 3, 4, 2);
  check_eq("vec hier phy2log", o.phy2log, std::vector<int>{3, 2, 0, 3, 2, 1, 7, 5, 5, 6, 4, 5});
  check_eq("vec hier cnt", o.cnt, std::vector<int>{1, 1, 2, 2, 1, 3, 1, 1});
  check_eq("vec hier log2phy e5", std::vector<int64_t>(o.rank_or_log2phy.begin() + 5 * 5, o.rank_or_log2phy.begin() + 6 * 5),
           std::vector<int>{7, 8, 11, -1, -1});
  // Step-aware: loads hot at different steps (per-step values decide).
  o = core_vec(std::vector<float>{10, 0, 0, 9}, 2, 2, 3, 1, 1, 1);
  check_eq("vec steps", o.phy2log, naive_vec({10, 0, 0, 9}, 2, 2, 3, 1, 1, 1).phy2log);
  // S = 0: every total is 0, the first expert of each chunk wins.
  o = core_vec(std::vector<float>{}, 0, 3, 5, 1, 1, 1);
  check_eq("vec no steps", o.phy2log, std::vector<int>{0, 1, 2, 0, 0});
  // P == E: nothing to add.
  o = core_vec(std::vector<float>{3, 1, 2, 5}, 1, 4, 4, 2, 2, 2);
  check_eq("vec no replicas cnt", o.cnt, std::vector<int>{1, 1, 1, 1});
}

// The GPU scratch of the step-aware kernels (vec_cuda.cu), per layer: the
// sums and renumbering, plus N chunk states with the lists of global
// scratch when the state does not fit shared memory, each block rounded to
// 256 bytes. What grows with S stays within one float32 copy of the
// layer's loads (4 S E bytes), and the lists are the longest that do.
static void test_vec_scratch_bound() {
  auto r256 = [](int64_t b) { return (b + 255) / 256 * 256; };
  auto layer = [&](VecDims d) {
    return r256(vec_layer_scratch(d, nullptr, nullptr)) +
           d.N * r256(vec_chunk_scratch(d, vec_list_len(d, true), nullptr, nullptr));
  };
  int32_t lengths_seen = 0;  // bit lt: a shape with that length
  for (int32_t E : {1, 2, 4, 5, 6, 7, 8, 12, 16, 19, 24, 64, 256, 1024}) {
    for (int32_t N : {1, 2, 4, 8, 16, 64}) {
      if (E % N != 0) continue;
      for (int32_t extra : {0, 1, 3}) {
        const int32_t P = E + extra * N, en = E / N;
        const int32_t full = en < kVecTop ? en : kVecTop;
        const int64_t base = layer(VecDims{0, E, P, 1, N, N});
        for (int64_t S : {1, 7, 1000, 100000}) {
          const VecDims d{S, E, P, 1, N, N};
          const int32_t lt = vec_list_len(d, true);
          lengths_seen |= 1 << lt;
          CHECK(vec_list_len(d, false) == full);
          // Lists long enough for a pick's two entries, or none.
          CHECK(lt == 0 || (lt >= 2 && lt <= full));
          CHECK(8 * (int64_t)lt + 12 <= 4 * (int64_t)en || lt == 0);
          // One entry more would not fit (or the list is full already).
          CHECK(lt == full || 8 * (int64_t)(lt == 0 ? 2 : lt + 1) + 12 > 4 * (int64_t)en);
          CHECK(layer(d) - base <= 4 * S * E + 256 * (int64_t)N);
        }
      }
    }
  }
  CHECK(lengths_seen == (1 << 0 | 1 << 2 | 1 << 4 | 1 << 6 | 1 << 8));
}

// Randomised: the optimised layers against the naive ones.
static void test_layers_random() {
  Rng rng{99};
  int bad_vec = 0, bad_ds = 0, runs = 0;
  const int64_t steps[] = {0, 1, 2, 3, 7, 17, 40, 130};
  for (int rep = 0; rep < 2500; ++rep) {
    const int32_t N = 1 + rng.below(3), gpn = 1 + rng.below(3), m = 1 + rng.below(4);
    const int32_t C = N * gpn, E = C * m;
    const int32_t G = N * (1 + rng.below(3));
    const int32_t kmin = (E + G - 1) / G, k = kmin + rng.below(3);
    const int32_t P = G * k;
    const int64_t S = steps[rng.below(8)];
    std::vector<float> t((size_t)(S * E));
    const int kind = rng.below(5);
    for (auto& x : t) {
      switch (kind) {
        case 0: x = (float)rng.below(3); break;  // ties
        case 1: x = rng.unit() * rng.unit() * 1000.0f; break;
        case 2: x = 100.0f + (float)rng.below(3) * 1e-5f; break;  // near-ties
        case 3: x = 5.0f; break;
        default: {
          const float u = rng.unit();
          x = std::floor(u * u * u * u * 5000.0f);
        }
      }
    }
    const int32_t Cv = rep % 2 ? C : 1, Nv = rep % 2 ? N : 1;
    Placement3 a = core_vec(t, S, E, P, k, Cv, Nv), b = naive_vec(t, S, E, P, k, Cv, Nv);
    if (!same(a.phy2log, b.phy2log) || !same(a.rank_or_log2phy, b.rank_or_log2phy) || !same(a.cnt, b.cnt)) {
      if (bad_vec++ < 3)
        std::printf("vec mismatch: S=%lld E=%d P=%d k=%d C=%d N=%d kind=%d\n", (long long)S, E, P, k, Cv, Nv, kind);
    }
    Placement3 c = core_deepseek(t, S, E, P, Cv, Nv, G), d = naive_deepseek(t, S, E, P, Cv, Nv, G);
    if (!same(c.phy2log, d.phy2log) || !same(c.rank_or_log2phy, d.rank_or_log2phy) || !same(c.cnt, d.cnt)) {
      if (bad_ds++ < 3)
        std::printf("deepseek mismatch: S=%lld E=%d P=%d G=%d C=%d N=%d kind=%d\n", (long long)S, E, P, G, Cv, Nv, kind);
    }
    ++runs;
  }
  CHECK(runs == 2500);
  CHECK(bad_vec == 0);
  CHECK(bad_ds == 0);
}

// vec_pick's pruning must never change the pick: many steps, values that
// differ in the last bits, and a few experts that are each the argmax at
// some steps.
static void test_vec_pick_near_ties() {
  Rng rng{2024};
  int bad = 0;
  for (int rep = 0; rep < 600; ++rep) {
    const int32_t E = 2 + rng.below(6);
    const int32_t P = E + 1 + rng.below(2 * E);
    const int64_t S = 50 + rng.below(400);
    std::vector<float> t((size_t)(S * E));
    for (int64_t s = 0; s < S; ++s) {
      const int32_t hot = rng.below(E);
      for (int32_t e = 0; e < E; ++e) {
        const float base = e == hot ? 1000.0f : 999.0f;
        t[s * E + e] = float_of(bits_of(base) + (uint32_t)rng.below(4));
      }
    }
    Placement3 a = core_vec(t, S, E, P, 1, 1, 1), b = naive_vec(t, S, E, P, 1, 1, 1);
    if (!same(a.phy2log, b.phy2log) || !same(a.cnt, b.cnt)) ++bad;
  }
  CHECK(bad == 0);
}

// team.arg_min / arg_max: the first index of the extreme 32-bit key, on
// any number of lanes, including keys at the ends of the range and more
// items than lanes.
template <int W>
static void check_arg_extremes(const std::vector<uint32_t>& keys) {
  const int32_t n = (int32_t)keys.size();
  int32_t lo = 0, hi = 0;
  for (int32_t i = 1; i < n; ++i) {
    if (keys[i] < keys[lo]) lo = i;
    if (keys[i] > keys[hi]) hi = i;
  }
  const LaneTeam<W> team;
  CHECK(team.arg_min(n, [&](int32_t i) { return keys[i]; }) == lo);
  CHECK(team.arg_max(n, [&](int32_t i) { return keys[i]; }) == hi);
}

static void test_arg_extremes() {
  uint64_t x = 88172645463325252ull;
  for (int32_t n : {1, 2, 7, 31, 32, 33, 100, 288}) {
    for (uint32_t range : {2u, 5u, 1000u, 0u}) {
      std::vector<uint32_t> keys(n);
      for (uint32_t& k : keys) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        k = range == 0 ? (uint32_t)x : (uint32_t)(x % range);
        if (range == 2) k = k ? ~0u : 0u;  // only the extreme values, many ties
      }
      check_arg_extremes<1>(keys);
      check_arg_extremes<32>(keys);
    }
  }
}

static void test_winner_tree() {
  // First index wins ties; updates keep the winner right.
  float v[5] = {1, 7, 7, 3, 7};
  int32_t win[8];
  auto tree = make_winner_tree(win, 5, [&](int32_t r, int32_t l) { return r < 5 && v[r] > v[l]; });
  tree.build();
  CHECK(tree.top() == 1);
  v[1] = 0;
  tree.update(1);
  CHECK(tree.top() == 2);
  v[4] = 8;
  tree.update(4);
  CHECK(tree.top() == 4);
  int32_t w1[1];
  float one[1] = {2};
  auto t1 = make_winner_tree(w1, 1, [&](int32_t r, int32_t l) { return one[r] > one[l]; });
  t1.build();
  CHECK(t1.top() == 0);
  CHECK(next_pow2(1) == 1 && next_pow2(5) == 8 && next_pow2(8) == 8 && next_pow2(9) == 16);
}

// The assignment solver against enumeration of every permutation.
static void test_assignment_brute() {
  Rng rng{12345};
  for (int trial = 0; trial < 200; ++trial) {
    const int32_t n = 1 + rng.below(6);
    std::vector<int64_t> cost(n * n);
    for (auto& c : cost) c = rng.below(trial % 2 ? 3 : 50);  // many ties on odd trials
    std::vector<uint64_t> buf(4096);
    Carver c{(char*)buf.data(), 0};
    AssignScratch s = take_assign_scratch(c, n);
    std::vector<int32_t> col(n, -1);
    const int64_t got = assign_min_cost(cost.data(), n, col.data(), s);
    std::vector<int32_t> perm(n);
    std::iota(perm.begin(), perm.end(), 0);
    int64_t best = std::numeric_limits<int64_t>::max();
    do {
      int64_t t = 0;
      for (int32_t i = 0; i < n; ++i) t += cost[i * n + perm[i]];
      best = std::min(best, t);
    } while (std::next_permutation(perm.begin(), perm.end()));
    std::vector<int32_t> sorted = col;
    std::sort(sorted.begin(), sorted.end());
    bool is_perm = true;
    for (int32_t i = 0; i < n; ++i) is_perm = is_perm && sorted[i] == i;
    int64_t total = 0;
    for (int32_t i = 0; i < n; ++i) total += cost[i * n + col[i]];
    CHECK(is_perm && got == best && total == best);
  }
}

// The CUDA kernel's layout, a block per search pass, run on 32 lanes in
// every arrival order: each must write migrate_layer's outputs (p2l, rank,
// cnt, info) through io. Returns the passes' balancedness from the board.
static std::vector<double> check_block_orders(MigrateDims d, MigrateScratch& s, MigrateIO io,
                                              const std::vector<int64_t>& p2l, const std::vector<int64_t>& rank,
                                              const std::vector<int64_t>& cnt, const std::vector<int64_t>& info) {
  std::vector<uint64_t> buf(pass_board(d, nullptr, nullptr) / 8 + 1);
  PassBoard board;
  pass_board(d, buf.data(), &board);
  auto got = [](const int64_t* v, int32_t n) { return std::vector<int64_t>(v, v + n); };
  int32_t order[kSearchPasses] = {0, 1, 2};
  do {
    std::fill(io.out_p2l, io.out_p2l + d.P, -7);
    migrate_layer_blocks(LaneTeam<32>{}, d, s, io, board, order);
    CHECK(same(p2l, got(io.out_p2l, d.P)) && same(rank, got(io.out_rank, d.P)) &&
          same(cnt, got(io.out_cnt, d.E)) && same(info, got(io.info, 3)));
  } while (migrate_blocks(d) > 1 && std::next_permutation(order, order + kSearchPasses));
  return std::vector<double>(board.bal, board.bal + kSearchPasses);
}

// migrate_layer on random layers, in and out of range, active or not: the
// result is a placement of valid experts within the move budget, the same
// on 1 and 32 lanes (under the sanitizers, scratch stays in bounds).
static void test_migrate_layers() {
  Rng rng{777};
  for (int trial = 0; trial < 60; ++trial) {
    const int32_t N = 1 + rng.below(2), G = N * (1 + rng.below(4)), k = 1 + rng.below(4);
    const int32_t P = G * k, C = N, E = C * (1 + rng.below(P / C));
    const int32_t M = rng.below(6) - 1;
    MigrateDims d{E, P, k, G, C, N, M, trial % 3 == 0 ? 0.01 : 0.0};
    std::vector<float> w(E);
    for (auto& x : w) x = (float)rng.below(1000);
    // Fresh: deepseek with groups on nodes.
    std::vector<int64_t> f(P, -1), r(P, -1), q(P);
    std::vector<uint64_t> dbuf(deepseek_scratch(DeepseekDims{E, P, C, N, G}, nullptr, nullptr) / 8 + 1);
    DeepseekDims dd{E, P, C, N, G};
    DeepseekScratch ds;
    deepseek_scratch(dd, dbuf.data(), &ds);
    for (int32_t e = 0; e < E; ++e) ds.w[e] = w[e];
    deepseek_renumber(dd, ds, deepseek_pack(dd, dbuf.data(), N));
    for (int32_t n = 0; n < N; ++n) deepseek_node(dd, ds, deepseek_pack(dd, dbuf.data(), n), n, f.data(), r.data());
    for (auto& x : q) x = trial % 5 == 0 ? (int64_t)rng.below(E + 3) - 1 : (int64_t)rng.below(E);
    if (trial % 4 == 1) q = f;
    std::vector<uint8_t> act(G, 1);
    if (trial % 7 == 2) act[rng.below(G)] = 0;
    std::vector<uint64_t> buf(migrate_scratch(d, nullptr, nullptr) / 8 + 1);
    MigrateScratch s;
    migrate_scratch(d, buf.data(), &s);
    std::vector<int64_t> op(P), orank(P), ocnt(E), info(3);
    MigrateIO io{w.data(), f.data(), r.data(), q.data(), act.data(), op.data(), orank.data(), ocnt.data(), info.data()};
    migrate_layer(LaneTeam<1>{}, d, s, io);
    // The same layer on 32 emulated lanes (the CUDA kernel's scans) gives
    // the same bits, even from out-of-range previous maps.
    std::vector<int64_t> op32(P), orank32(P), ocnt32(E), info32(3);
    MigrateIO io32{w.data(), f.data(), r.data(), q.data(), act.data(), op32.data(), orank32.data(), ocnt32.data(), info32.data()};
    migrate_layer(LaneTeam<32>{}, d, s, io32);
    CHECK(same(op, op32) && same(orank, orank32) && same(ocnt, ocnt32) && same(info, info32));
    check_block_orders(d, s, io32, op, orank, ocnt, info);
    bool ok = true;
    for (int32_t p = 0; p < P; ++p) ok = ok && op[p] >= 0 && op[p] < E;
    CHECK(ok);
    CHECK(info[0] >= 0 && info[0] <= 2 && info[2] >= 0);
    if (info[0] == kSearched) CHECK(info[2] <= M);
    if (info[0] == kKept) CHECK(info[2] == 0);
    if (trial % 4 == 1 && trial % 7 != 2) CHECK(info[1] == 0);
  }
}

// A search's starting state on scratch carved from buf: loads (small
// integers with ties when ties is set, else spread reals) and a random Q
// that holds every expert once and random experts in its other slots.
static MigrateScratch search_case(Rng& rng, MigrateDims d, bool ties, std::vector<uint64_t>& buf) {
  buf.assign(migrate_scratch(d, nullptr, nullptr) / 8 + 1, 0);
  MigrateScratch s;
  migrate_scratch(d, buf.data(), &s);
  s.tag = 0;
  for (int32_t e = 0; e < d.E; ++e) {
    s.stamp[e] = -1;
    s.w[e] = ties ? (double)rng.below(4) : (double)(rng.unit() * rng.unit() * 1000.0f);
  }
  std::vector<int32_t> q(d.P);
  for (int32_t p = 0; p < d.P; ++p) q[p] = p < d.E ? p : rng.below(d.E);
  for (int32_t p = d.P - 1; p > 0; --p) std::swap(q[p], q[rng.below(p + 1)]);
  for (int32_t g = 0; g < d.G; ++g) s.act[g] = g, s.on[g] = 1;
  for (int32_t p = 0; p < d.P; ++p) s.q[p] = q[p];
  gpu_counts(d, s.q, s.qcnt);
  return s;
}

// The search keeps its state (lists, first-copy flags, counts, replica and
// GPU loads) up to date change by change; at its end that state must equal,
// bit for bit, what refresh() recomputes from scratch for the same placement.
static void test_search_bookkeeping() {
  Rng rng{31337};
  std::vector<uint64_t> buf;
  for (int trial = 0; trial < 40; ++trial) {
    const int32_t G = 2 + rng.below(6), k = 1 + rng.below(5), P = G * k;
    const int32_t E = 1 + rng.below(P), M = 1 + rng.below(8);
    const MigrateDims d{E, P, k, G, 1, 1, M, 0.0};
    MigrateScratch s = search_case(rng, d, trial % 3 == 0, buf);
    incremental_search(LaneTeam<1>{}, d, s, false, M);
    const std::vector<double> load(s.load, s.load + G), rep(s.rep, s.rep + E);
    const std::vector<int32_t> cnt(s.cnt, s.cnt + E), head(s.head, s.head + E), nxt(s.nxt, s.nxt + P);
    const std::vector<uint8_t> uniq(s.uniq, s.uniq + P);
    Search z{d, s, false, G, 0, 0.0, 0.0, 0.0};
    z.refresh();
    CHECK(std::memcmp(load.data(), s.load, sizeof(double) * G) == 0);
    CHECK(std::memcmp(rep.data(), s.rep, sizeof(double) * E) == 0);
    CHECK(same(cnt, std::vector<int32_t>(s.cnt, s.cnt + E)));
    CHECK(same(head, std::vector<int32_t>(s.head, s.head + E)));
    bool lists = true;  // nxt is defined only along the lists
    for (int32_t e = 0; e < E; ++e) {
      for (int32_t p = head[e]; p >= 0; p = nxt[p]) lists = lists && nxt[p] == s.nxt[p];
    }
    CHECK(lists);
    CHECK(same(uniq, std::vector<uint8_t>(s.uniq, s.uniq + P)));
  }
}

// The search keeps the most balanced placement of its passes, the earliest
// pass on ties: its result must equal the best of the passes run alone, and
// its balancedness must be that of the placement it leaves in s.best.
static void test_search_passes() {
  Rng rng{4242};
  std::vector<uint64_t> buf;
  int improved = 0;
  for (int trial = 0; trial < 60; ++trial) {
    const int32_t G = 4 + rng.below(12), k = 2 + rng.below(4), P = G * k;
    const int32_t E = P - rng.below(G + 1), M = 2 + rng.below(10);
    const MigrateDims d{E, P, k, G, 1, 1, M, 0.0};
    MigrateScratch s = search_case(rng, d, false, buf);
    double alone = -1.0;
    int32_t winner = -1;
    std::vector<int32_t> best;
    for (int32_t i = 0; i < kSearchPasses; ++i) {
      const double b = search_pass(LaneTeam<1>{}, d, s, false, M, search_floor(i), -1.0);
      if (b > alone) alone = b, winner = i, best.assign(s.best, s.best + P);
      if (alone >= 1.0) break;
    }
    improved += winner > 0;
    const double all = incremental_search(LaneTeam<1>{}, d, s, false, M);
    CHECK(all == alone);
    CHECK(same(best, std::vector<int32_t>(s.best, s.best + P)));
    CHECK(balancedness_of(d, s, s.best, G) == all);
    CHECK(count_moves(d, s, s.best, G) <= M);
  }
  // Otherwise the later passes are never exercised.
  CHECK(improved > 0);
}

// A block per pass (the CUDA kernel's layout) on layers large enough for the
// later passes to win: every arrival order gives migrate_layer's bits.
static void test_migrate_blocks() {
  Rng rng{9090};
  int later = 0;
  for (int trial = 0; trial < 40; ++trial) {
    const int32_t G = 4 + rng.below(12), k = 2 + rng.below(4), P = G * k;
    const int32_t E = P - rng.below(G + 1), M = 2 + rng.below(10);
    const MigrateDims d{E, P, k, G, 1, 1, M, 0.0};
    std::vector<float> w(E);
    for (auto& x : w) x = rng.unit() * rng.unit() * 1000.0f;
    // F and Q: every expert once, the other slots random, shuffled.
    std::vector<int64_t> f(P), q(P), fr(P, 0);
    for (auto* a : {&f, &q}) {
      for (int32_t p = 0; p < P; ++p) (*a)[p] = p < E ? p : rng.below(E);
      for (int32_t p = P - 1; p > 0; --p) std::swap((*a)[p], (*a)[rng.below(p + 1)]);
    }
    std::vector<uint64_t> buf(migrate_scratch(d, nullptr, nullptr) / 8 + 1);
    MigrateScratch s;
    migrate_scratch(d, buf.data(), &s);
    std::vector<int64_t> op(P), orank(P), ocnt(E), info(3), op2(P), orank2(P), ocnt2(E), info2(3);
    MigrateIO io{w.data(), f.data(), fr.data(), q.data(), nullptr, op.data(), orank.data(), ocnt.data(), info.data()};
    MigrateIO io2{w.data(), f.data(), fr.data(), q.data(), nullptr, op2.data(), orank2.data(), ocnt2.data(), info2.data()};
    migrate_layer(LaneTeam<1>{}, d, s, io);
    const std::vector<double> bal = check_block_orders(d, s, io2, op, orank, ocnt, info);
    later += info[0] == kSearched && bal[0] < 1.0 && (bal[1] > bal[0] || bal[2] > bal[0]);
  }
  // Otherwise the combination's choice of a later pass is never exercised.
  CHECK(later > 0);
}

int main() {
  test_assignment_brute();
  test_migrate_layers();
  test_search_bookkeeping();
  test_search_passes();
  test_migrate_blocks();
  test_half_and_bf16();
  test_load_faults();
  test_sums();
  test_argsort();
  test_balanced_pack();
  test_replicate();
  test_rows();
  test_winner_tree();
  test_arg_extremes();
  test_deepseek_layer();
  test_vec_layer();
  test_vec_scratch_bound();
  test_layers_random();
  test_vec_pick_near_ties();
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail == 0 ? 0 : 1;
}
