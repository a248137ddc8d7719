// CPU inner loops of relative_error over raw pointers (no torch types), so that the
// C++ unit tests exercise them directly.
//
// Vectorisation without -march=native: the sums keep 16 (fp32) or 8 (fp64)
// independent lanes in GCC vector types, which compile to SSE2 for the x86-64
// baseline (no reassociation of a serial sum is needed), and relative_error.cpp
// builds the loops a second time with target("avx2,fma") and picks that copy at run
// time when the processor has AVX2 (function multiversioning by hand).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../common/cm_math.h"

namespace lsa_fast {
namespace cpu {

// 64 bytes of accumulators per sum: 16 fp32 or 8 fp64 lanes, in GCC vector types
// (4 SSE2 or 2 AVX registers each), added in a fixed order at the end.
template <typename acc_t>
struct LanesOf;
template <>
struct LanesOf<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct LanesOf<double> {
  typedef double type __attribute__((vector_size(64)));
};
template <typename acc_t>
using Lanes = typename LanesOf<acc_t>::type;

template <typename scalar_t, typename acc_t>
inline __attribute__((always_inline)) void load_lanes(const scalar_t* p, Lanes<acc_t>& v) {
  constexpr int kLanes = 64 / sizeof(acc_t);
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::memcpy(&v, p, sizeof v);  // unaligned load
  } else {  // fp16/bf16: widen element by element
    acc_t wide[kLanes];
    for (int j = 0; j < kLanes; ++j) wide[j] = static_cast<acc_t>(p[j]);
    std::memcpy(&v, wide, sizeof v);
  }
}

// out[0] += sum (a - b)^2, out[1] += sum a^2 over n elements, in acc_t.
template <typename scalar_t, typename acc_t>
inline __attribute__((always_inline)) void sum_squares(
    const scalar_t* a, const scalar_t* b, int64_t n, acc_t* out) {
  constexpr int kLanes = 64 / sizeof(acc_t);
  Lanes<acc_t> diff = {}, clean = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    Lanes<acc_t> x, y;
    load_lanes<scalar_t, acc_t>(a + i, x);
    load_lanes<scalar_t, acc_t>(b + i, y);
    const Lanes<acc_t> t = x - y;
    diff += t * t;
    clean += x * x;
  }
  for (int j = 0; i < n; ++i, ++j) {
    const acc_t x = static_cast<acc_t>(a[i]);
    const acc_t t = x - static_cast<acc_t>(b[i]);
    diff[j] += t * t;
    clean[j] += x * x;
  }
  acc_t diff_total = 0, clean_total = 0;
  for (int j = 0; j < kLanes; ++j) {  // fixed order: the same input gives the same bits
    diff_total += diff[j];
    clean_total += clean[j];
  }
  out[0] += diff_total;
  out[1] += clean_total;
}

// grad_a = c1 (a - b) - c2 a, grad_b = -c1 (a - b) over n elements.
template <typename scalar_t, typename acc_t>
inline __attribute__((always_inline)) void relative_error_grads(
    const scalar_t* a, const scalar_t* b, int64_t n, GradCoefficients<acc_t> k,
    scalar_t* grad_a, scalar_t* grad_b) {
  for (int64_t i = 0; i < n; ++i) {
    acc_t x = static_cast<acc_t>(a[i]);
    acc_t t = x - static_cast<acc_t>(b[i]);
    grad_a[i] = static_cast<scalar_t>(k.c1 * t - k.c2 * x);
    grad_b[i] = static_cast<scalar_t>(-k.c1 * t);
  }
}

}  // namespace cpu
}  // namespace lsa_fast
