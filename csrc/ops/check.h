// Argument checks shared by the CPU and CUDA bindings. They run in release
// builds too. The stable ABI carries only std::runtime_error across the
// library boundary, so each message starts with a tag naming the Python
// exception class; eplb_ext/_ops.py (call) turns the tag back into that class.
#pragma once

#include <cstdint>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

namespace eplb {

template <typename... Args>
[[noreturn]] inline void fail(const char* kind, const Args&... args) {
  std::ostringstream oss;
  oss << "[eplb_ext " << kind << "] ";
  ((oss << args), ...);
  throw std::runtime_error(oss.str());
}

}  // namespace eplb

#define EPLB_CHECK_VALUE(cond, ...) \
  do {                              \
    if (!(cond)) ::eplb::fail("ValueError", __VA_ARGS__); \
  } while (0)

// Allocation failures: the message says what could not be allocated, how
// large it was and why; Python sees a MemoryError.
#define EPLB_CHECK_MEMORY(cond, ...) \
  do {                               \
    if (!(cond)) ::eplb::fail("MemoryError", __VA_ARGS__); \
  } while (0)

#define EPLB_CHECK_TYPE(cond, ...) \
  do {                             \
    if (!(cond)) ::eplb::fail("TypeError", __VA_ARGS__); \
  } while (0)

namespace eplb {

// The largest count of experts, slots or items: indices are int32 inside the
// core, and trees over them have up to twice as many nodes.
constexpr int64_t kMaxIndex = int64_t{1} << 30;
// The largest number of steps: the step-aware core indexes steps with int32.
constexpr int64_t kMaxSteps = (int64_t{1} << 31) - 1;

// a * b + c for sizes >= 0, or -1 when it does not fit in int64: every size
// derived from the input's shape is computed this way before anything is
// allocated or read.
inline int64_t checked_mul_add(int64_t a, int64_t b, int64_t c = 0) {
  int64_t r;
  if (a < 0 || b < 0 || c < 0 || __builtin_mul_overflow(a, b, &r) || __builtin_add_overflow(r, c, &r)) {
    return -1;
  }
  return r;
}

// a * b for sizes >= 0, saturated at INT64_MAX: for cost estimates that only
// steer scheduling, where "huge" is all that matters.
inline int64_t saturating_mul(int64_t a, int64_t b) {
  const int64_t r = checked_mul_add(a, b);
  return r < 0 ? std::numeric_limits<int64_t>::max() : r;
}

// The placement arguments shared by every variant (SPEC "Bad input").
struct Placement {
  int64_t S, L, E, P, k, C, N, G, X;
};

inline Placement check_placement(int64_t S, int64_t L, int64_t E, int64_t P, int64_t k,
                                 int64_t C, int64_t N) {
  EPLB_CHECK_VALUE(E >= 1, "tokens_per_expert has ", E,
                   " logical experts (last dimension); at least 1 is required");
  EPLB_CHECK_VALUE(P >= E, "num_physical_experts=", P,
                   " is smaller than the number of logical experts ", E,
                   "; every expert needs at least one slot");
  EPLB_CHECK_VALUE(P <= kMaxIndex, "num_physical_experts=", P, " exceeds ", kMaxIndex,
                   ", the largest number of slots supported (int32 indices)");
  EPLB_CHECK_VALUE(k >= 1, "num_local_physical_experts=", k, " must be a positive integer");
  EPLB_CHECK_VALUE(P % k == 0, "num_local_physical_experts=", k,
                   " must divide num_physical_experts=", P);
  EPLB_CHECK_VALUE(C >= 1, "num_groups=", C, " must be a positive integer");
  EPLB_CHECK_VALUE(N >= 1, "num_nodes=", N, " must be a positive integer");
  EPLB_CHECK_VALUE(E % C == 0, "num_groups=", C, " must divide the number of logical experts ", E);
  EPLB_CHECK_VALUE(C % N == 0, "num_nodes=", N, " must divide num_groups=", C);
  const int64_t G = P / k;
  EPLB_CHECK_VALUE(G % N == 0, "num_nodes=", N, " must divide the number of GPUs ", G,
                   " (num_physical_experts / num_local_physical_experts)");
  EPLB_CHECK_VALUE(S >= 0 && L >= 0, "tokens_per_expert has a negative size");
  EPLB_CHECK_VALUE(S <= kMaxSteps, "tokens_per_expert has ", S, " steps (first dimension); at most ",
                   kMaxSteps, " are supported");
  const int64_t X = P - E + 1;
  // Every output must be addressable with int64 element offsets.
  EPLB_CHECK_VALUE(L == 0 || E <= std::numeric_limits<int64_t>::max() / X / L,
                   "logical_to_physical_map of shape [", L, ", ", E, ", ", X,
                   "] is too large to allocate");
  return Placement{S, L, E, P, k, C, N, G, X};
}

}  // namespace eplb
