// CPU kernel of cm_statistics: per-layer moments of a [M, L] CM matrix and
// Algorithm 1 (mu, population sigma, MVL mask), accumulated in fp64.
#include <algorithm>
#include <cstdint>
#include <vector>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "../common/cm_math.h"
#include "../common/cm_statistics_outputs.h"
#include "../common/dispatch.h"

namespace lsa_fast {
namespace cpu {
namespace {

using torch::stable::Tensor;

template <typename scalar_t>
void statistics_kernel(const scalar_t* cm, int64_t samples, int64_t layers, double eta,
                       scalar_t* mu, scalar_t* sigma, scalar_t* mean_out, scalar_t* m2_out,
                       scalar_t* min_out, scalar_t* max_out, bool* mvl) {
  std::vector<double> mean(layers, 0.0), m2(layers, 0.0), low(layers), high(layers);
  for (int64_t l = 0; l < layers; ++l) {
    low[l] = high[l] = static_cast<double>(cm[l]);
  }
  for (int64_t m = 0; m < samples; ++m) {
    for (int64_t l = 0; l < layers; ++l) {
      const double x = static_cast<double>(cm[m * layers + l]);
      mean[l] += x;
      low[l] = min_or_nan(low[l], x);
      high[l] = max_or_nan(high[l], x);
    }
  }
  for (int64_t l = 0; l < layers; ++l) mean[l] /= static_cast<double>(samples);
  for (int64_t m = 0; m < samples; ++m) {  // second pass: centred, no cancellation
    for (int64_t l = 0; l < layers; ++l) {
      const double offset = static_cast<double>(cm[m * layers + l]) - mean[l];
      m2[l] += offset * offset;
    }
  }
  double mu_value = 0.0, sigma_value = 0.0;
  cm_statistics_finalize(mean.data(), m2.data(), layers, samples, eta, &mu_value, &sigma_value, mvl);
  *mu = static_cast<scalar_t>(mu_value);
  *sigma = static_cast<scalar_t>(sigma_value);
  for (int64_t l = 0; l < layers; ++l) {
    mean_out[l] = static_cast<scalar_t>(mean[l]);
    m2_out[l] = static_cast<scalar_t>(m2[l]);
    min_out[l] = static_cast<scalar_t>(low[l]);
    max_out[l] = static_cast<scalar_t>(high[l]);
  }
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> cm_statistics_cpu(Tensor cm, double eta) {
  CMStatisticsOutputs out = prepare_cm_statistics(cm);
  dispatch_floating(out.cm.scalar_type(), "cm_statistics", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    auto ptr = [](Tensor& t) { return static_cast<scalar_t*>(t.mutable_data_ptr()); };
    statistics_kernel<scalar_t>(static_cast<const scalar_t*>(out.cm.const_data_ptr()), out.samples, out.layers, eta,
                                ptr(out.mu), ptr(out.sigma), ptr(out.mean), ptr(out.m2), ptr(out.low), ptr(out.high),
                                static_cast<bool*>(out.mvl.mutable_data_ptr()));
  });
  return out.as_tuple();
}

STABLE_TORCH_LIBRARY_IMPL(lsa_fast, CPU, m) {
  m.impl("cm_statistics", TORCH_BOX(&cm_statistics_cpu));
}

}  // namespace cpu
}  // namespace lsa_fast
