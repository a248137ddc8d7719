// CUDA kernels of cm_statistics. Stage 1: a grid of blocks, one per (layer, chunk of
// samples), each computing its chunk's count, mean, centred sum of squares (two
// passes over the chunk: no cancellation), min and max in fp64. Stage 2: one block
// merges each layer's chunks in order with Chan's formula and runs Algorithm 1
// (shared with the CPU kernel through common/cm_math.h). Fixed-order reductions
// throughout: the same bits on every run.
#include <algorithm>
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
constexpr int64_t kSamplesPerChunk = 8192;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) chunk_moments_kernel(const scalar_t* cm, int64_t samples, int64_t layers,
                                                                 ChunkMoments* moments) {
  const int64_t l = blockIdx.x;
  const int64_t chunk = blockIdx.y;
  const int64_t begin = chunk * kSamplesPerChunk;
  const int64_t end = min(samples, begin + kSamplesPerChunk);
  __shared__ double chunk_mean;
  double sum = 0.0, low = INFINITY, high = -INFINITY;
  for (int64_t m = begin + threadIdx.x; m < end; m += kThreads) {
    const double x = static_cast<double>(cm[m * layers + l]);
    sum += x;
    low = min_or_nan(low, x);
    high = max_or_nan(high, x);
  }
  sum = block_reduce(sum, Sum(), 0.0);
  low = block_reduce(low, Min(), static_cast<double>(INFINITY));
  high = block_reduce(high, Max(), static_cast<double>(-INFINITY));
  if (threadIdx.x == 0) chunk_mean = sum / static_cast<double>(end - begin);
  __syncthreads();
  double centred = 0.0;  // second pass over the chunk (cached): no cancellation
  for (int64_t m = begin + threadIdx.x; m < end; m += kThreads) {
    const double offset = static_cast<double>(cm[m * layers + l]) - chunk_mean;
    centred += offset * offset;
  }
  centred = block_reduce(centred, Sum(), 0.0);
  if (threadIdx.x == 0) {
    moments[l * gridDim.y + chunk] = {static_cast<double>(end - begin), chunk_mean, centred, low, high};
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) merge_and_finalize_kernel(
    const ChunkMoments* moments, int64_t chunks, int64_t samples, int64_t layers, double eta, double* mean,
    double* m2, scalar_t* mu, scalar_t* sigma, scalar_t* mean_out, scalar_t* m2_out, scalar_t* min_out,
    scalar_t* max_out, bool* mvl) {
  for (int64_t l = threadIdx.x; l < layers; l += kThreads) {  // a thread per layer, chunks in order
    ChunkMoments total = moments[l * chunks];
    for (int64_t c = 1; c < chunks; ++c) {
      total = merge_moments(total, moments[l * chunks + c]);
    }
    mean[l] = total.mean;
    m2[l] = total.m2;
    mean_out[l] = static_cast<scalar_t>(total.mean);
    m2_out[l] = static_cast<scalar_t>(total.m2);
    min_out[l] = static_cast<scalar_t>(total.low);
    max_out[l] = static_cast<scalar_t>(total.high);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double mu_value = 0.0, sigma_value = 0.0;
    cm_statistics_finalize(mean, m2, layers, samples, eta, &mu_value, &sigma_value, mvl);
    *mu = static_cast<scalar_t>(mu_value);
    *sigma = static_cast<scalar_t>(sigma_value);
  }
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> cm_statistics_cuda(Tensor cm, double eta) {
  torch::stable::accelerator::DeviceGuard guard(cm.get_device_index());
  CMStatisticsOutputs out = prepare_cm_statistics(cm);
  const int64_t chunks = (out.samples + kSamplesPerChunk - 1) / kSamplesPerChunk;
  STD_TORCH_CHECK(chunks < 65536 && out.layers < (int64_t(1) << 31), "cm_statistics: cm is too large ([",
                  out.samples, ", ", out.layers, "])");
  constexpr int64_t kMomentDoubles = sizeof(ChunkMoments) / sizeof(double);
  Tensor moments = torch::stable::new_empty(out.cm, {out.layers * chunks * kMomentDoubles},
                                            torch::headeronly::ScalarType::Double);
  Tensor scratch = torch::stable::new_empty(out.cm, {2, out.layers}, torch::headeronly::ScalarType::Double);
  const cudaStream_t stream = current_stream(out.cm);
  dispatch_floating(out.cm.scalar_type(), "cm_statistics", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    auto ptr = [](Tensor& t) { return static_cast<scalar_t*>(t.mutable_data_ptr()); };
    ChunkMoments* moment_ptr = static_cast<ChunkMoments*>(moments.mutable_data_ptr());
    double* scratch_ptr = static_cast<double*>(scratch.mutable_data_ptr());
    chunk_moments_kernel<scalar_t><<<dim3(out.layers, chunks), kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(out.cm.const_data_ptr()), out.samples, out.layers, moment_ptr);
    check_launch("cm_statistics");
    merge_and_finalize_kernel<scalar_t><<<1, kThreads, 0, stream>>>(
        moment_ptr, chunks, out.samples, out.layers, eta, scratch_ptr, scratch_ptr + out.layers, ptr(out.mu),
        ptr(out.sigma), ptr(out.mean), ptr(out.m2), ptr(out.low), ptr(out.high),
        static_cast<bool*>(out.mvl.mutable_data_ptr()));
    check_launch("cm_statistics");
  });
  return out.as_tuple();
}

STABLE_TORCH_LIBRARY_IMPL(lsa_fast, CUDA, m) {
  m.impl("cm_statistics", TORCH_BOX(&cm_statistics_cuda));
}

}  // namespace cuda
}  // namespace lsa_fast
