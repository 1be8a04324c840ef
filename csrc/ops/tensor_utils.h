// Stable-ABI glue shared by the CPU and CUDA bindings: dtype dispatch, the
// strided view of a load tensor, and argument checks on tensors.
#pragma once

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <algorithm>
#include <memory>
#include <new>
#include <sstream>
#include <string>
#include <type_traits>

#include "../core/loads.h"
#include "check.h"

namespace eplb {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

inline const char* dtype_name(ScalarType t) {
  switch (t) {
    case ScalarType::Bool: return "torch.bool";
    case ScalarType::ComplexHalf: return "torch.complex32";
    case ScalarType::ComplexFloat: return "torch.complex64";
    case ScalarType::ComplexDouble: return "torch.complex128";
    case ScalarType::Float8_e5m2: return "torch.float8_e5m2";
    case ScalarType::Float8_e4m3fn: return "torch.float8_e4m3fn";
    case ScalarType::Float8_e5m2fnuz: return "torch.float8_e5m2fnuz";
    case ScalarType::Float8_e4m3fnuz: return "torch.float8_e4m3fnuz";
    default: return "an unsupported dtype";
  }
}

// Calls f(T{}) with the C++ type that stores `t`'s elements.
template <typename F>
void dispatch_loads(const Tensor& t, const char* name, F&& f) {
  switch (t.scalar_type()) {
    case ScalarType::Byte: return f(uint8_t{});
    case ScalarType::Char: return f(int8_t{});
    case ScalarType::Short: return f(int16_t{});
    case ScalarType::Int: return f(int32_t{});
    case ScalarType::Long: return f(int64_t{});
    case ScalarType::UInt16: return f(uint16_t{});
    case ScalarType::UInt32: return f(uint32_t{});
    case ScalarType::UInt64: return f(uint64_t{});
    case ScalarType::Half: return f(Half16{});
    case ScalarType::BFloat16: return f(BFloat16{});
    case ScalarType::Float: return f(float{});
    case ScalarType::Double: return f(double{});
    default:
      fail("TypeError", name, " has dtype ", dtype_name(t.scalar_type()),
           "; the ops take integer, float16, bfloat16, float32 or float64 loads (not bool, complex "
           "or float8: rebalance_experts widens float8 to float32)");
  }
}

// tokens_per_expert [S, L, E], or a weight [L, E] seen as S = 1.
template <typename T>
Loads<T> make_loads(const Tensor& t) {
  Loads<T> v;
  v.data = static_cast<const T*>(t.const_data_ptr());
  if (t.dim() == 3) {
    v.S = t.size(0), v.L = t.size(1), v.E = t.size(2);
    v.ss = t.stride(0), v.sl = t.stride(1), v.se = t.stride(2);
  } else {
    v.S = 1, v.L = t.size(0), v.E = t.size(1);
    v.ss = 0, v.sl = t.stride(0), v.se = t.stride(1);
  }
  return v;
}

// dim 3 accepts [S, L, E] and [L, E] (S = 1); other values are exact.
inline void check_load_tensor(const Tensor& t, const char* name, int64_t dim) {
  EPLB_CHECK_TYPE(t.defined(), name, " must be a tensor, got None");
  if (dim == 3) {
    EPLB_CHECK_VALUE(t.dim() == 2 || t.dim() == 3, name, " must be [S, L, E] or [L, E], got ",
                     t.dim(), " dimensions");
  } else {
    EPLB_CHECK_VALUE(t.dim() == dim, name, " must be a ", dim, "-D tensor, got ", t.dim(),
                     " dimensions");
  }
  EPLB_CHECK_VALUE(t.layout() == torch::headeronly::Layout::Strided, name,
                   " must be a dense (strided) tensor");
  dispatch_loads(t, name, [](auto) {});
}

// An output or scratch tensor. Its size was checked to fit in int64; a
// failed allocation surfaces as a MemoryError that says what and how large.
inline Tensor new_index(const Tensor& like, std::initializer_list<int64_t> shape,
                        ScalarType dtype) {
  try {
    return torch::stable::empty(torch::headeronly::IntHeaderOnlyArrayRef(shape), dtype,
                                std::nullopt, like.device());
  } catch (const std::exception&) {
    // torch's own text names its C shim, not the tensor; say what failed.
    std::ostringstream dims;
    int64_t bytes = dtype == ScalarType::Byte ? 1 : dtype == ScalarType::Int || dtype == ScalarType::Float ? 4 : 8;
    const char* sep = "";
    for (int64_t n : shape) {
      dims << sep << n;
      sep = ", ";
      bytes = checked_mul_add(bytes, n);
    }
    fail("MemoryError", "could not allocate a tensor of shape [", dims.str(), "] (",
         bytes < 0 ? std::string("more than 2**63") : std::to_string(bytes), " bytes) on ",
         like.is_cuda() ? "the GPU" : "the host", ": out of memory");
  }
}

template <typename T>
T* ptr(const Tensor& t) {
  return static_cast<T*>(t.mutable_data_ptr());
}

// Each kernel file serves one device; the dispatcher only routes there.
inline void check_device(const Tensor& t, const char* name, bool cuda) {
  EPLB_CHECK_VALUE(t.is_cuda() == cuda, name, " must be a ", cuda ? "CUDA" : "CPU",
                   " tensor for this kernel");
}

// Checks of each op's arguments, shared by the CPU and CUDA kernels.
inline void check_packing_args(const Tensor& weight, int64_t num_packs) {
  check_load_tensor(weight, "weight", 2);
  const int64_t n = weight.size(1);
  EPLB_CHECK_VALUE(num_packs >= 1, "num_packs=", num_packs, " must be a positive integer");
  // Every pack takes n / num_packs >= 1 items (an empty row packs into one).
  EPLB_CHECK_VALUE(num_packs <= std::max<int64_t>(n, 1), "num_packs=", num_packs,
                   " exceeds the number of items ", n, "; every pack needs at least one item");
  EPLB_CHECK_VALUE(n % num_packs == 0, "num_packs=", num_packs,
                   " must divide the number of items ", n);
  EPLB_CHECK_VALUE(n <= kMaxIndex, "weight has ", n, " items; at most ", kMaxIndex,
                   " are supported");
}

inline void check_replicate_args(const Tensor& weight, int64_t num_phy) {
  check_load_tensor(weight, "weight", 2);
  const int64_t n = weight.size(1);
  EPLB_CHECK_VALUE(n >= 1, "weight has no experts; at least 1 is required");
  EPLB_CHECK_VALUE(num_phy >= n, "num_phy=", num_phy,
                   " is smaller than the number of experts ", n);
  EPLB_CHECK_VALUE(num_phy <= kMaxIndex, "num_phy=", num_phy, " exceeds ", kMaxIndex,
                   ", the largest number of slots supported");
}

inline Placement check_placement_args(const Tensor& tokens, int64_t P, int64_t k, int64_t C,
                                      int64_t N) {
  check_load_tensor(tokens, "tokens_per_expert", 3);
  const bool steps = tokens.dim() == 3;
  return check_placement(steps ? tokens.size(0) : 1, tokens.size(steps ? 1 : 0),
                         tokens.size(steps ? 2 : 1), P, k, C, N);
}

// physical_to_logical_map and physical_rank: int64 [L, P], contiguous.
inline Placement check_log2phy_args(const Tensor& phy2log, const Tensor& rank, int64_t E,
                                    int64_t width) {
  const char* names[2] = {"physical_to_logical_map", "physical_rank"};
  const Tensor* ts[2] = {&phy2log, &rank};
  for (int i = 0; i < 2; ++i) {
    EPLB_CHECK_TYPE(ts[i]->defined(), names[i], " must be a tensor, got None");
    EPLB_CHECK_VALUE(ts[i]->dim() == 2, names[i], " must be 2-D [L, P], got ", ts[i]->dim(),
                     " dimensions");
    EPLB_CHECK_TYPE(ts[i]->scalar_type() == ScalarType::Long, names[i], " must be int64");
    EPLB_CHECK_VALUE(ts[i]->is_contiguous(), names[i], " must be contiguous");
  }
  EPLB_CHECK_VALUE(phy2log.size(0) == rank.size(0) && phy2log.size(1) == rank.size(1),
                   "physical_to_logical_map and physical_rank must have the same shape");
  EPLB_CHECK_VALUE(E >= 1, "num_logical_experts=", E, " must be a positive integer");
  EPLB_CHECK_VALUE(width >= 0, "width=", width, " must be >= 0");
  const int64_t L = phy2log.size(0), P = phy2log.size(1);
  EPLB_CHECK_VALUE(L == 0 || width == 0 || E <= std::numeric_limits<int64_t>::max() / width / L,
                   "logical_to_physical_map of shape [", L, ", ", E, ", ", width,
                   "] is too large to allocate");
  return Placement{1, L, E, P, 1, 1, 1, P, width};
}

template <typename T>
double load_as_double(T v) {
  if constexpr (std::is_arithmetic<T>::value) {
    return static_cast<double>(v);
  } else {
    return static_cast<double>(to_f32<T>(v));
  }
}

// The first bad load in (step, layer, expert) order, which is the index
// order of [S, L, E] (and of [L, E]), as a flat index, or -1; given each
// layer's first bad (step, expert) as s * E + e (or -1).
template <typename T>
int64_t first_bad_flat(const Loads<T>& t, const int64_t* first_bad) {
  int64_t bs = -1, bl = -1, be = -1;
  for (int64_t l = 0; l < t.L; ++l) {
    if (first_bad[l] < 0) continue;
    const int64_t s = first_bad[l] / t.E, e = first_bad[l] % t.E;
    if (bs < 0 || s < bs) bs = s, bl = l, be = e;
  }
  return bs < 0 ? -1 : (bs * t.L + bl) * t.E + be;
}

// Raises for the first bad load (first_bad_flat).
template <typename T>
void report_bad_load(const Loads<T>& t, const int64_t* first_bad, const char* name,
                     bool three_d) {
  const int64_t flat = first_bad_flat(t, first_bad);
  if (flat < 0) return;
  const int64_t be = flat % t.E, bl = flat / t.E % t.L, bs = flat / t.E / t.L;
  const T v = t.raw(bs, bl, be);
  const int32_t fault = load_fault(v);
  const char* what = fault == kLoadNaN ? "NaN" : fault == kLoadInf ? "infinite in float32" : "negative";
  if (!three_d) {
    fail("ValueError", name, "[", bl, ", ", be, "] = ", load_as_double(v), " is ", what,
         "; loads must be finite and >= 0");
  }
  fail("ValueError", name, "[", bs, ", ", bl, ", ", be, "] = ", load_as_double(v), " is ",
       what, "; loads must be finite and >= 0");
}

// Each layer's first bad load (first_bad_load), -1 where none; raises for
// the first in (step, layer, expert) order.
class BadLoads {
 public:
  // L comes from the input's shape, which a strided view can make larger
  // than memory: a failed allocation is a MemoryError, not an abort.
  explicit BadLoads(int64_t L) : first_(new (std::nothrow) int64_t[static_cast<size_t>(L > 0 ? L : 1)]) {
    EPLB_CHECK_MEMORY(first_ != nullptr, "could not allocate the per-layer records of ", L,
                      " layers (", L, " x 8 bytes of host memory)");
    std::fill(first_.get(), first_.get() + L, int64_t{-1});
  }
  // Records layer l's result; true if the layer may be placed.
  bool ok(int64_t l, int64_t first_bad) {
    first_[static_cast<size_t>(l)] = first_bad;
    return first_bad < 0;
  }
  template <typename T>
  void report(const Loads<T>& t, const char* name, bool three_d) const {
    report_bad_load(t, first_.get(), name, three_d);
  }
  template <typename T>
  int64_t first(const Loads<T>& t) const {
    return first_bad_flat(t, first_.get());
  }

 private:
  std::unique_ptr<int64_t[]> first_;
};

// Raises for the first bad load of t, every layer scanned on this thread
// (the ops that do not check the loads in a pass they make anyway).
template <typename T>
void check_every_load(const Loads<T>& t, const char* name, bool three_d) {
  BadLoads bad(t.L);
  for (int64_t l = 0; l < t.L; ++l) bad.ok(l, first_bad_load(t, l));
  bad.report(t, name, three_d);
}

}  // namespace eplb
