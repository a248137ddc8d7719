// CPU inner loops of relative_error over raw pointers (no torch types), so that the
// C++ unit tests exercise them directly.
//
// Vectorisation without -march=native: the loops keep kLanes independent
// accumulators, which GCC turns into SSE2 vector code for the x86-64 baseline (no
// reassociation of one serial sum is needed), and relative_error.cpp builds them a
// second time with target("avx2,fma") and picks that copy at run time when the
// processor has AVX2 (function multiversioning by hand).
#pragma once

#include <cstdint>

#include "../common/cm_math.h"

namespace lsa_fast {
namespace cpu {

constexpr int kLanes = 16;

// out[0] += sum (a - b)^2, out[1] += sum a^2 over n elements, in acc_t.
template <typename scalar_t, typename acc_t>
inline __attribute__((always_inline)) void sum_squares(
    const scalar_t* a, const scalar_t* b, int64_t n, acc_t* out) {
  acc_t diff[kLanes] = {};
  acc_t clean[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      acc_t x = static_cast<acc_t>(a[i + j]);
      acc_t t = x - static_cast<acc_t>(b[i + j]);
      diff[j] += t * t;
      clean[j] += x * x;
    }
  }
  for (int j = 0; i < n; ++i, ++j) {
    acc_t x = static_cast<acc_t>(a[i]);
    acc_t t = x - static_cast<acc_t>(b[i]);
    diff[j] += t * t;
    clean[j] += x * x;
  }
  // Fixed pairwise order: the same input gives the same bits.
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int j = 0; j < width; ++j) {
      diff[j] += diff[j + width];
      clean[j] += clean[j + width];
    }
  }
  out[0] += diff[0];
  out[1] += clean[0];
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
