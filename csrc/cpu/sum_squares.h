// CPU inner loops of relative_error over raw pointers (no torch types), so that the
// C++ unit tests exercise them directly.
//
// Vectorisation without -march=native: the sums keep independent lanes in 16-byte
// GCC vector types, which compile to SSE2 for the x86-64 baseline (no reassociation
// of a serial sum is needed), and relative_error.cpp builds the loops a second time
// with target("avx2,fma") and picks that copy at run time when the processor has
// AVX2 (function multiversioning by hand).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../common/cm_math.h"

namespace lsa_fast {
namespace cpu {

// 16-byte GCC vector types (one SSE2 register: 4 fp32 or 2 fp64 lanes), kUnroll of
// them per sum so that the additions do not wait on each other; wider generic
// vectors make GCC spill the accumulators to the stack.
template <typename acc_t>
struct NativeOf;
template <>
struct NativeOf<float> {
  typedef float type __attribute__((vector_size(16)));
};
template <>
struct NativeOf<double> {
  typedef double type __attribute__((vector_size(16)));
};
template <typename acc_t>
using Native = typename NativeOf<acc_t>::type;

constexpr int kUnroll = 4;

template <typename scalar_t, typename acc_t>
inline __attribute__((always_inline)) void load_native(const scalar_t* p, Native<acc_t>& v) {
  constexpr int kWidth = 16 / sizeof(acc_t);
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::memcpy(&v, p, sizeof v);  // unaligned load
  } else {  // fp16/bf16: widen element by element
    acc_t wide[kWidth];
    for (int j = 0; j < kWidth; ++j) wide[j] = static_cast<acc_t>(p[j]);
    std::memcpy(&v, wide, sizeof v);
  }
}

// out[0] += sum (a - b)^2, out[1] += sum a^2 over n elements, in acc_t.
template <typename scalar_t, typename acc_t>
inline __attribute__((always_inline)) void sum_squares(
    const scalar_t* a, const scalar_t* b, int64_t n, acc_t* out) {
  constexpr int kWidth = 16 / sizeof(acc_t);
  constexpr int kStep = kWidth * kUnroll;
  Native<acc_t> diff[kUnroll] = {}, clean[kUnroll] = {};
  int64_t i = 0;
  for (; i + kStep <= n; i += kStep) {
    for (int u = 0; u < kUnroll; ++u) {
      Native<acc_t> x, y;
      load_native<scalar_t, acc_t>(a + i + u * kWidth, x);
      load_native<scalar_t, acc_t>(b + i + u * kWidth, y);
      const Native<acc_t> t = x - y;
      diff[u] += t * t;
      clean[u] += x * x;
    }
  }
  acc_t diff_total = 0, clean_total = 0;  // fixed order: the same input gives the same bits
  for (int u = 0; u < kUnroll; ++u) {
    for (int j = 0; j < kWidth; ++j) {
      diff_total += diff[u][j];
      clean_total += clean[u][j];
    }
  }
  for (; i < n; ++i) {
    const acc_t x = static_cast<acc_t>(a[i]);
    const acc_t t = x - static_cast<acc_t>(b[i]);
    diff_total += t * t;
    clean_total += x * x;
  }
  out[0] += diff_total;
  out[1] += clean_total;
}

template <typename scalar_t, typename acc_t>
inline __attribute__((always_inline)) void store_native(const Native<acc_t>& v, scalar_t* p) {
  constexpr int kWidth = 16 / sizeof(acc_t);
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::memcpy(p, &v, sizeof v);  // unaligned store
  } else {  // fp16/bf16: narrow element by element
    for (int j = 0; j < kWidth; ++j) p[j] = static_cast<scalar_t>(saturate<scalar_t>(v[j]));
  }
}

// grad_a and grad_b (common/cm_math.h: grad_clean_element, grad_perturbed_element)
// over n elements, in the same 16-byte vectors as the sums.
template <typename scalar_t, typename acc_t>
inline __attribute__((always_inline)) void relative_error_grads(
    const scalar_t* a, const scalar_t* b, int64_t n, GradCoefficients<acc_t> k,
    scalar_t* grad_a, scalar_t* grad_b) {
  constexpr int kWidth = 16 / sizeof(acc_t);
  const Native<acc_t> c1 = Native<acc_t>{} + k.c1, c2 = Native<acc_t>{} + k.c2;
  const Native<acc_t> inv_d = Native<acc_t>{} + k.inv_d, inv_n = Native<acc_t>{} + k.inv_n;
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) {
    Native<acc_t> x, y;
    load_native<scalar_t, acc_t>(a + i, x);
    load_native<scalar_t, acc_t>(b + i, y);
    const Native<acc_t> t = c1 * ((x - y) * inv_d);
    store_native<scalar_t, acc_t>(t - c2 * (x * inv_n), grad_a + i);
    store_native<scalar_t, acc_t>(-t, grad_b + i);
  }
  for (; i < n; ++i) {
    const acc_t x = static_cast<acc_t>(a[i]), y = static_cast<acc_t>(b[i]);
    grad_a[i] = static_cast<scalar_t>(grad_clean_element<scalar_t>(x, y, k));
    grad_b[i] = static_cast<scalar_t>(grad_perturbed_element<scalar_t>(x, y, k));
  }
}

}  // namespace cpu
}  // namespace lsa_fast
