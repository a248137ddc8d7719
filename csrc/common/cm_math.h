// The per-element and per-(layer, sample) maths of the comparison measure, shared
// by the CPU and CUDA kernels so that the CPU tests cover the CUDA arithmetic too.
// shared/DESIGN.md section 1: CM = ||a - b|| / max(||a||, eps).
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define LSA_HOST_DEVICE __host__ __device__
#else
#define LSA_HOST_DEVICE
#endif

namespace lsa_fast {

// Accumulation type: fp64 for fp64 inputs, fp32 for fp32/fp16/bf16.
template <typename scalar_t>
struct Accumulate {
  using type = float;
};
template <>
struct Accumulate<double> {
  using type = double;
};
template <typename scalar_t>
using acc_type = typename Accumulate<scalar_t>::type;

LSA_HOST_DEVICE inline float square_root(float x) { return sqrtf(x); }
LSA_HOST_DEVICE inline double square_root(double x) { return sqrt(x); }

// CM from the two sums of squares of one (layer, sample) or one whole layer.
template <typename acc_t>
LSA_HOST_DEVICE inline acc_t relative_error_value(acc_t diff_sq, acc_t clean_sq, acc_t eps) {
  acc_t norm = square_root(clean_sq);
  return square_root(diff_sq) / (norm > eps ? norm : eps);
}

// dL/da = c1 (a - b) - c2 a and dL/db = -c1 (a - b), with, for d = ||a-b||,
// n = ||a|| and g = dL/dCM: c1 = g / (d max(n, eps)) and c2 = g d / n^3.
// At d = 0 the subgradient 0 is taken (c1 = 0, and c2 = 0 since d = 0); below the
// eps floor the denominator is a constant, so c2 = 0 there too. Never NaN or Inf
// for finite g.
template <typename acc_t>
struct GradCoefficients {
  acc_t c1;
  acc_t c2;
};

template <typename acc_t>
LSA_HOST_DEVICE inline GradCoefficients<acc_t> relative_error_grad_coefficients(
    acc_t grad, acc_t diff_sq, acc_t clean_sq, acc_t eps) {
  acc_t d = square_root(diff_sq);
  acc_t n = square_root(clean_sq);
  GradCoefficients<acc_t> out;
  if (d > acc_t(0)) {
    acc_t floor_n = n > eps ? n : eps;
    out.c1 = grad / (d * floor_n);
    // (g * (d / n)) / n^2 keeps the intermediate inside the float range.
    out.c2 = n > eps ? (grad * (d / n)) / (n * n) : acc_t(0);
  } else {
    out.c1 = acc_t(0);
    out.c2 = acc_t(0);
  }
  return out;
}

// Algorithm 1 from per-layer means and centred sums of squares (M samples per
// layer): mu, population sigma over all M x L entries, and the MVL mask.
LSA_HOST_DEVICE inline void cm_statistics_finalize(
    const double* layer_mean, const double* layer_m2, int64_t layers, int64_t samples,
    double eta, double* mu_out, double* sigma_out, bool* mvl) {
  double mu = 0.0;
  for (int64_t l = 0; l < layers; ++l) mu += layer_mean[l];
  mu /= static_cast<double>(layers);
  double m2 = 0.0;
  for (int64_t l = 0; l < layers; ++l) {
    double offset = layer_mean[l] - mu;
    m2 += layer_m2[l] + static_cast<double>(samples) * offset * offset;
  }
  double sigma = sqrt(m2 / static_cast<double>(layers * samples));
  for (int64_t l = 0; l < layers; ++l) mvl[l] = layer_mean[l] - mu > eta * sigma;
  *mu_out = mu;
  *sigma_out = sigma;
}

}  // namespace lsa_fast
