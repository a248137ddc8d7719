// C++ unit tests of the maths in csrc/common and csrc/cpu/sum_squares.h, run by
// ctest. The Python tests cover the ops end to end; these pin the formulas.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "common/cm_math.h"
#include "common/pgd_math.h"
#include "cpu/sum_squares.h"

using namespace lsa_fast;

static int failures = 0;
#define CHECK(cond)                                                  \
  do {                                                               \
    if (!(cond)) {                                                   \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                    \
    }                                                                \
  } while (0)

static bool close(double a, double b, double tol) { return std::fabs(a - b) <= tol * (1 + std::fabs(b)); }

static void sum_squares_matches_naive_sums() {
  std::mt19937 rng(7);
  std::normal_distribution<double> normal;
  for (int n : {0, 1, 15, 16, 17, 1000, 4099}) {
    std::vector<double> a(n), b(n);
    double diff = 0, clean = 0;
    for (int i = 0; i < n; ++i) {
      a[i] = normal(rng);
      b[i] = a[i] + 0.1 * normal(rng);
      diff += (a[i] - b[i]) * (a[i] - b[i]);
      clean += a[i] * a[i];
    }
    double out[2] = {0, 0};
    cpu::sum_squares<double, double>(a.data(), b.data(), n, out);
    CHECK(close(out[0], diff, 1e-12));
    CHECK(close(out[1], clean, 1e-12));
    std::vector<float> af(a.begin(), a.end()), bf(b.begin(), b.end());
    float outf[2] = {0, 0};
    cpu::sum_squares<float, float>(af.data(), bf.data(), n, outf);
    CHECK(close(outf[0], diff, 1e-4));
    CHECK(close(outf[1], clean, 1e-4));
  }
}

static void relative_error_value_and_edges() {
  CHECK(close(relative_error_value<double>(4.0, 16.0, 1e-12), 0.5, 1e-15));  // 2 / 4
  CHECK(relative_error_value<double>(0.0, 0.0, 1e-12) == 0.0);                // unmoved dead layer
  CHECK(std::isfinite(relative_error_value<float>(1.0f, 0.0f, 1e-12f)));       // dead clean layer
  CHECK(close(relative_error_value<double>(1.0, 0.0, 1e-6), 1e6, 1e-12));      // ||diff|| / eps
}

// The chunking that the CPU and CUDA kernels share: boundaries depend only on the row.
static void chunks_split_rows_at_fixed_boundaries() {
  CHECK(chunks_per_sample(0) == 1);  // an empty row still writes its zero
  CHECK(chunks_per_sample(1) == 1);
  CHECK(chunks_per_sample(kChunkElements) == 1);
  CHECK(chunks_per_sample(kChunkElements + 1) == 2);
  CHECK(chunks_per_sample(3 * kChunkElements) == 3);
}

// dCM/da and dCM/db from the coefficients equal central finite differences.
static void gradient_coefficients_match_finite_differences() {
  const std::vector<double> a = {0.3, -1.2, 0.8, 2.0}, b = {0.1, -1.0, 1.1, 1.7};
  auto cm = [](const std::vector<double>& x, const std::vector<double>& y) {
    double d = 0, n = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      d += (x[i] - y[i]) * (x[i] - y[i]);
      n += x[i] * x[i];
    }
    return relative_error_value<double>(d, n, 1e-12);
  };
  double d = 0, n = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d += (a[i] - b[i]) * (a[i] - b[i]);
    n += a[i] * a[i];
  }
  const auto k = relative_error_grad_coefficients<double>(1.0, d, n, 1e-12);
  const double h = 1e-6;
  for (size_t i = 0; i < a.size(); ++i) {
    auto ap = a, am = a, bp = b, bm = b;
    ap[i] += h; am[i] -= h; bp[i] += h; bm[i] -= h;
    const double grad_a = grad_clean_element<double>(a[i], b[i], k);
    const double grad_b = grad_perturbed_element<double>(a[i], b[i], k);
    CHECK(close(grad_a, (cm(ap, b) - cm(am, b)) / (2 * h), 1e-6));
    CHECK(close(grad_b, (cm(a, bp) - cm(a, bm)) / (2 * h), 1e-6));
  }
  const auto zero = relative_error_grad_coefficients<double>(1.0, 0.0, n, 1e-12);  // subgradient 0
  CHECK(zero.c1 == 0.0 && zero.c2 == 0.0);
  const auto dead = relative_error_grad_coefficients<float>(1.0f, 1.0f, 0.0f, 1e-12f);
  CHECK(std::isfinite(dead.c1) && dead.c2 == 0.0f);
  // clean norm just above eps, a large difference (fp32): the fp64 gradient is
  // finite (about -1.8e27, 0, -8.9e26), so the fp32 one must be too (the textbook
  // g d / n^3 overflowed to inf, and inf - inf to NaN)
  const float ca[3] = {2e-12f, 0.0f, 1e-12f}, cb[3] = {1e4f, 0.0f, 0.0f};
  float diff_sq = 0, clean_sq = 0;
  for (int i = 0; i < 3; ++i) {
    diff_sq += (ca[i] - cb[i]) * (ca[i] - cb[i]);
    clean_sq += ca[i] * ca[i];
  }
  const auto big = relative_error_grad_coefficients<float>(1.0f, diff_sq, clean_sq, 1e-12f);
  for (int i = 0; i < 3; ++i) {
    CHECK(std::isfinite(grad_clean_element<float>(ca[i], cb[i], big)));
    CHECK(std::isfinite(grad_perturbed_element<float>(ca[i], cb[i], big)));
  }
  CHECK(close(grad_clean_element<float>(ca[0], cb[0], big), -1.7888543819998317e27, 1e-5));
}

// One NaN policy for cm_statistics' min and max on CPU and CUDA: propagate.
static void nan_propagating_min_max() {
  const double nan = std::nan("");
  CHECK(std::isnan(min_or_nan(1.0, nan)) && std::isnan(min_or_nan(nan, 1.0)));
  CHECK(std::isnan(max_or_nan(1.0, nan)) && std::isnan(max_or_nan(nan, 1.0)));
  CHECK(min_or_nan(1.0, 2.0) == 1.0 && max_or_nan(1.0, 2.0) == 2.0);
}

// Chan's merge of two sets' moments equals the moments of their union.
static void merged_moments_equal_two_pass() {
  const std::vector<double> x = {0.3, 1.7, 0.2, 0.9, 2.5, 0.4, 1.1};
  auto moments = [&](size_t begin, size_t end) {
    ChunkMoments m{double(end - begin), 0, 0, x[begin], x[begin]};
    for (size_t i = begin; i < end; ++i) m.mean += x[i] / m.count;
    for (size_t i = begin; i < end; ++i) {
      m.m2 += (x[i] - m.mean) * (x[i] - m.mean);
      m.low = min_or_nan(m.low, x[i]);
      m.high = max_or_nan(m.high, x[i]);
    }
    return m;
  };
  const ChunkMoments whole = moments(0, x.size());
  const ChunkMoments merged = merge_moments(moments(0, 3), moments(3, x.size()));
  CHECK(merged.count == whole.count && close(merged.mean, whole.mean, 1e-14) && close(merged.m2, whole.m2, 1e-13));
  CHECK(merged.low == 0.2 && merged.high == 2.5);
}

static void statistics_finalize() {
  // two layers, two samples: CM = [[1, 3], [1, 3]] -> mu 2, sigma 1
  const double mean[2] = {1.0, 3.0}, m2[2] = {0.0, 0.0};
  double mu = 0, sigma = 0;
  bool mvl[2];
  cm_statistics_finalize(mean, m2, 2, 2, 0.5, &mu, &sigma, mvl);
  CHECK(close(mu, 2.0, 1e-15) && close(sigma, 1.0, 1e-15));
  CHECK(!mvl[0] && mvl[1]);
}

static void pgd_steps() {
  // L-inf: step, projection onto [x - eps, x + eps], clip to [0, 1]
  CHECK(close(linf_step<double>(0.5, 2.0, 0.5, 0.1, 0.05), 0.55, 1e-15));
  CHECK(close(linf_step<double>(0.98, 1.0, 0.98, 0.1, 0.5), 1.0, 1e-15));
  CHECK(linf_step<double>(0.3, 0.0, 0.3, 0.1, 0.5) == 0.3);  // sign(0) = 0
  // L2 on one 2-d sample: g = (3, 4), alpha = 1 -> step (0.6, 0.8), then onto radius 0.5
  const auto k = l2_step_coefficients<double>(25.0, 0.0, 0.0, 1.0, 0.5);
  CHECK(close(l2_step<double>(0.5, 3.0, 0.5, k), 0.5 + 0.3, 1e-9));
  CHECK(close(l2_step<double>(0.5, 4.0, 0.5, k), 0.5 + 0.4, 1e-9));
}

int main() {
  sum_squares_matches_naive_sums();
  relative_error_value_and_edges();
  chunks_split_rows_at_fixed_boundaries();
  gradient_coefficients_match_finite_differences();
  nan_propagating_min_max();
  merged_moments_equal_two_pass();
  statistics_finalize();
  pgd_steps();
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all kernel maths checks passed\n");
  return 0;
}
