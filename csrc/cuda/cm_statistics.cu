// CUDA kernel of cm_statistics: one block computes every layer's moments of the
// [M, L] CM matrix in fp64 with fixed-order reductions, then Algorithm 1 (shared
// with the CPU kernel through common/cm_math.h). The matrix is small: one launch.
#include <cstdint>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "../common/cm_math.h"
#include "../common/cm_statistics_outputs.h"
#include "../common/dispatch.h"
#include "block_reduce.cuh"
#include "launch.cuh"

namespace lsa_fast {
namespace cuda {
namespace {

using torch::stable::Tensor;
constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) cm_statistics_kernel(
    const scalar_t* cm, int64_t samples, int64_t layers, double eta, double* mean, double* m2, scalar_t* mu,
    scalar_t* sigma, scalar_t* mean_out, scalar_t* m2_out, scalar_t* min_out, scalar_t* max_out, bool* mvl) {
  __shared__ double layer_mean;
  for (int64_t l = 0; l < layers; ++l) {
    double sum = 0.0, low = INFINITY, high = -INFINITY;
    for (int64_t m = threadIdx.x; m < samples; m += kThreads) {
      const double x = static_cast<double>(cm[m * layers + l]);
      sum += x;
      low = min_or_nan(low, x);
      high = max_or_nan(high, x);
    }
    sum = block_reduce(sum, Sum(), 0.0);
    low = block_reduce(low, Min(), static_cast<double>(INFINITY));
    high = block_reduce(high, Max(), static_cast<double>(-INFINITY));
    if (threadIdx.x == 0) {
      layer_mean = sum / static_cast<double>(samples);
      mean[l] = layer_mean;
      min_out[l] = static_cast<scalar_t>(low);
      max_out[l] = static_cast<scalar_t>(high);
    }
    __syncthreads();
    double centred = 0.0;  // second pass: no cancellation
    for (int64_t m = threadIdx.x; m < samples; m += kThreads) {
      const double offset = static_cast<double>(cm[m * layers + l]) - layer_mean;
      centred += offset * offset;
    }
    centred = block_reduce(centred, Sum(), 0.0);
    if (threadIdx.x == 0) m2[l] = centred;
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    double mu_value = 0.0, sigma_value = 0.0;
    cm_statistics_finalize(mean, m2, layers, samples, eta, &mu_value, &sigma_value, mvl);
    *mu = static_cast<scalar_t>(mu_value);
    *sigma = static_cast<scalar_t>(sigma_value);
    for (int64_t l = 0; l < layers; ++l) {
      mean_out[l] = static_cast<scalar_t>(mean[l]);
      m2_out[l] = static_cast<scalar_t>(m2[l]);
    }
  }
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> cm_statistics_cuda(Tensor cm, double eta) {
  torch::stable::accelerator::DeviceGuard guard(cm.get_device_index());
  CMStatisticsOutputs out = prepare_cm_statistics(cm);
  Tensor scratch = torch::stable::new_empty(out.cm, {2, out.layers}, torch::headeronly::ScalarType::Double);
  dispatch_floating(out.cm.scalar_type(), "cm_statistics", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    auto ptr = [](Tensor& t) { return static_cast<scalar_t*>(t.mutable_data_ptr()); };
    double* scratch_ptr = static_cast<double*>(scratch.mutable_data_ptr());
    cm_statistics_kernel<scalar_t><<<1, kThreads, 0, current_stream(out.cm)>>>(
        static_cast<const scalar_t*>(out.cm.const_data_ptr()), out.samples, out.layers, eta, scratch_ptr,
        scratch_ptr + out.layers, ptr(out.mu), ptr(out.sigma), ptr(out.mean), ptr(out.m2), ptr(out.low),
        ptr(out.high), static_cast<bool*>(out.mvl.mutable_data_ptr()));
    check_launch("cm_statistics");
  });
  return out.as_tuple();
}

STABLE_TORCH_LIBRARY_IMPL(lsa_fast, CUDA, m) {
  m.impl("cm_statistics", TORCH_BOX(&cm_statistics_cuda));
}

}  // namespace cuda
}  // namespace lsa_fast
