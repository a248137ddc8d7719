// Deterministic block-wide reductions: warp shuffles, then one warp over the warp
// results. The order of operations is fixed by the thread layout alone, so the
// same input gives the same bits on every run (no atomics).
#pragma once

#include <cuda_runtime.h>

#include "../common/cm_math.h"

namespace lsa_fast {
namespace cuda {

struct Sum {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
// NaN-propagating, as the CPU kernels (common/cm_math.h).
struct Min {
  template <typename T>
  __device__ T operator()(T a, T b) const { return min_or_nan(a, b); }
};
struct Max {
  template <typename T>
  __device__ T operator()(T a, T b) const { return max_or_nan(a, b); }
};

template <typename T, typename Op>
__device__ inline T warp_reduce(T value, Op op) {
  for (int offset = 16; offset > 0; offset /= 2) value = op(value, __shfl_down_sync(0xffffffffu, value, offset));
  return value;
}

// The result is valid in thread 0. blockDim.x must be a multiple of 32, <= 1024.
template <typename T, typename Op>
__device__ inline T block_reduce(T value, Op op, T identity) {
  __shared__ T partial[32];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  value = warp_reduce(value, op);
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  value = lane < static_cast<int>(blockDim.x / 32) ? partial[lane] : identity;
  if (warp == 0) value = warp_reduce(value, op);
  __syncthreads();  // partial[] may be reused by the next call
  return value;
}

}  // namespace cuda
}  // namespace lsa_fast
