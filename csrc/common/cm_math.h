// The per-element and per-(layer, sample) maths of the comparison measure, shared
// by the CPU and CUDA kernels so that the CPU tests cover the CUDA arithmetic too.
// docs/DESIGN.md section 1: CM = ||a - b|| / max(||a||, eps).
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

// Elements per chunk of one (layer, sample) row: the CPU's work items and the CUDA
// kernels' blocks split a row at the same boundaries, which depend only on the
// shapes (never on the thread count), so the two-stage sums give the same bits on
// every run.
constexpr int64_t kChunkElements = 16384;

// Chunks of a row of sample_numel elements; an empty row still has one (it writes 0).
LSA_HOST_DEVICE inline int64_t chunks_per_sample(int64_t sample_numel) {
  return sample_numel > 0 ? (sample_numel + kChunkElements - 1) / kChunkElements : 1;
}

LSA_HOST_DEVICE inline float square_root(float x) { return sqrtf(x); }
LSA_HOST_DEVICE inline double square_root(double x) { return sqrt(x); }

// CM from the two sums of squares of one (layer, sample) or one whole layer.
template <typename acc_t>
LSA_HOST_DEVICE inline acc_t relative_error_value(acc_t diff_sq, acc_t clean_sq, acc_t eps) {
  acc_t norm = square_root(clean_sq);
  return square_root(diff_sq) / (norm > eps ? norm : eps);
}

// dL/da = c1 (a - b)/d - c2 a/n and dL/db = -c1 (a - b)/d, with, for d = ||a-b||,
// n = ||a|| and g = dL/dCM: c1 = g / max(n, eps) and c2 = g (d/n) / n.
// Each element is scaled by 1/d or 1/n before it meets a coefficient (|a - b|/d <= 1,
// |a|/n <= 1): no intermediate overflows where the result itself is finite (the
// textbook g d / n^3 overflows fp32 for n just above eps and a large d).
// At d = 0 the subgradient 0 is taken (c1 = c2 = 0); below the eps floor the
// denominator is a constant, so c2 = 0 there too. Never NaN or Inf for finite g.
template <typename acc_t>
struct GradCoefficients {
  acc_t c1, inv_d;  // for the (a - b) terms
  acc_t c2, inv_n;  // for the a term of dL/da
};

template <typename acc_t>
LSA_HOST_DEVICE inline GradCoefficients<acc_t> relative_error_grad_coefficients(
    acc_t grad, acc_t diff_sq, acc_t clean_sq, acc_t eps) {
  const acc_t d = square_root(diff_sq);
  const acc_t n = square_root(clean_sq);
  GradCoefficients<acc_t> out = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  if (d > acc_t(0)) {
    out.c1 = grad / (n > eps ? n : eps);
    out.inv_d = acc_t(1) / d;
    if (n > eps) {
      out.c2 = grad * (d / n) / n;
      out.inv_n = acc_t(1) / n;
    }
  }
  return out;
}

// Gradients are stored saturated to the largest finite value of their dtype. Only
// fp16 needs it (the accumulator's range is bf16's and fp32's): a dead clean layer
// (n = 0) gives elements up to g / eps = 1e12 g, which fp16 would store as inf, and a
// GradScaler would then skip every step while such a sample is probed.
template <typename scalar_t>
struct StorageLimit {
  static constexpr float value = 0.0f;  // 0: no narrower than the accumulator
};

template <typename scalar_t, typename acc_t>
LSA_HOST_DEVICE inline acc_t saturate(acc_t v) {
  constexpr acc_t limit = StorageLimit<scalar_t>::value;
  if constexpr (limit > 0) {
    v = v > limit ? limit : v;  // NaN stays NaN
    return v < -limit ? -limit : v;
  } else {
    return v;
  }
}

// The two gradient elements of one (a, b) pair, ready to store as scalar_t.
template <typename scalar_t, typename acc_t>
LSA_HOST_DEVICE inline acc_t grad_clean_element(acc_t a, acc_t b, const GradCoefficients<acc_t>& k) {
  return saturate<scalar_t>(k.c1 * ((a - b) * k.inv_d) - k.c2 * (a * k.inv_n));
}
template <typename scalar_t, typename acc_t>
LSA_HOST_DEVICE inline acc_t grad_perturbed_element(acc_t a, acc_t b, const GradCoefficients<acc_t>& k) {
  return saturate<scalar_t>(-(k.c1 * ((a - b) * k.inv_d)));
}

// min and max that propagate NaN (as torch.amin/amax): one policy for the CPU and
// CUDA kernels of cm_statistics (fmin/fmax and std::min would drop it, or not).
template <typename T>
LSA_HOST_DEVICE inline T min_or_nan(T a, T b) {
  return a != a ? a : (b != b || b < a ? b : a);
}
template <typename T>
LSA_HOST_DEVICE inline T max_or_nan(T a, T b) {
  return a != a ? a : (b != b || b > a ? b : a);
}

// Count, mean, centred sum of squares, min and max of a set of CM values; two sets
// merge exactly with Chan et al.'s formula (the CUDA kernel's chunks, as the Python
// CMAccumulator's batches).
struct ChunkMoments {
  double count, mean, m2, low, high;
};

LSA_HOST_DEVICE inline ChunkMoments merge_moments(const ChunkMoments& a, const ChunkMoments& b) {
  const double count = a.count + b.count;
  const double delta = b.mean - a.mean;
  ChunkMoments out;
  out.count = count;
  out.mean = a.mean + delta * b.count / count;
  out.m2 = a.m2 + b.m2 + delta * delta * a.count * b.count / count;
  out.low = min_or_nan(a.low, b.low);
  out.high = max_or_nan(a.high, b.high);
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
