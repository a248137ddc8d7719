// CUDA kernels of the fused PGD step. L-inf: one elementwise pass. L2: one block
// per sample (grid-stride over the batch) gathers the three per-sample sums (fixed-order reduction), then the
// same block writes the sample (its second read mostly hits L2 cache): one launch.
#include <algorithm>
#include <cstdint>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "../common/dispatch.h"
#include "../common/pgd_inputs.h"
#include "../common/pgd_math.h"
#include "block_reduce.cuh"
#include "launch.cuh"

namespace lsa_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) linf_kernel(const scalar_t* __restrict__ x_adv,
                                                        const scalar_t* __restrict__ grad,
                                                        const scalar_t* __restrict__ x, scalar_t* __restrict__ out,
                                                        int64_t n, acc_t alpha, acc_t eps) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    out[i] = static_cast<scalar_t>(linf_step<acc_t>(x_adv[i], grad[i], x[i], alpha, eps));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) l2_kernel(const scalar_t* __restrict__ x_adv,
                                                      const scalar_t* __restrict__ grad,
                                                      const scalar_t* __restrict__ x, scalar_t* __restrict__ out,
                                                      int64_t batch, int64_t per_sample, acc_t alpha, acc_t eps) {
  __shared__ L2Step<acc_t> k;
  for (int64_t m = blockIdx.x; m < batch; m += gridDim.x) {  // grid-stride: any batch size
    const int64_t offset = m * per_sample;
    acc_t grad_sq = 0, dot = 0, delta0_sq = 0;
    for (int64_t i = offset + threadIdx.x; i < offset + per_sample; i += kThreads) {
      const acc_t g = static_cast<acc_t>(grad[i]);
      const acc_t d0 = static_cast<acc_t>(x_adv[i]) - static_cast<acc_t>(x[i]);
      grad_sq += g * g;
      dot += d0 * g;
      delta0_sq += d0 * d0;
    }
    grad_sq = block_reduce(grad_sq, Sum(), acc_t(0));
    dot = block_reduce(dot, Sum(), acc_t(0));
    delta0_sq = block_reduce(delta0_sq, Sum(), acc_t(0));
    if (threadIdx.x == 0) k = l2_step_coefficients<acc_t>(grad_sq, dot, delta0_sq, alpha, eps);
    __syncthreads();
    for (int64_t i = offset + threadIdx.x; i < offset + per_sample; i += kThreads) {
      out[i] = static_cast<scalar_t>(l2_step<acc_t>(x_adv[i], grad[i], x[i], k));
    }
    __syncthreads();  // k is rewritten for the next sample
  }
}

}  // namespace

// prepare_pgd_inputs gives every tensor one dense layout: the kernels run over flat
// memory, and the result has x_adv's memory format.
template <typename Launch>
Tensor run_step(const char* op, const PgdTensors& t, Launch launch) {
  dispatch_floating(t.out.scalar_type(), op, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    launch(tag, static_cast<const scalar_t*>(t.x_adv.const_data_ptr()),
           static_cast<const scalar_t*>(t.grad.const_data_ptr()), static_cast<const scalar_t*>(t.x_orig.const_data_ptr()),
           static_cast<scalar_t*>(t.out.mutable_data_ptr()));
    check_launch(op);
  });
  return t.out;
}

Tensor pgd_step_linf_cuda(Tensor x_adv, Tensor grad, Tensor x_orig, double alpha, double eps) {
  torch::stable::accelerator::DeviceGuard guard(x_adv.get_device_index());
  PgdTensors t = prepare_pgd_inputs("pgd_step_linf", x_adv, grad, x_orig, alpha, eps);
  const int64_t n = x_adv.numel();
  if (n == 0) return t.out;
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, 65536);
  const cudaStream_t stream = current_stream(x_adv);
  return run_step("pgd_step_linf", t, [&](auto tag, auto a, auto g, auto x, auto out) {
    using scalar_t = typename decltype(tag)::type;
    using acc_t = acc_type<scalar_t>;
    linf_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(a, g, x, out, n, static_cast<acc_t>(alpha),
                                                                    static_cast<acc_t>(eps));
  });
}

Tensor pgd_step_l2_cuda(Tensor x_adv, Tensor grad, Tensor x_orig, double alpha, double eps) {
  torch::stable::accelerator::DeviceGuard guard(x_adv.get_device_index());
  PgdTensors t = prepare_pgd_inputs("pgd_step_l2", x_adv, grad, x_orig, alpha, eps);
  if (x_adv.numel() == 0) return t.out;
  if (!batch_is_outermost(t.out)) {  // the per-sample sums need each sample in one block
    Tensor flat = pgd_step_l2_cuda(torch::stable::contiguous(x_adv), torch::stable::contiguous(grad),
                                   torch::stable::contiguous(x_orig), alpha, eps);
    torch::stable::copy_(t.out, flat);
    return t.out;
  }
  const int64_t batch = x_adv.size(0);
  const int64_t per_sample = x_adv.numel() / batch;
  const int64_t blocks = std::min<int64_t>(batch, 1 << 20);
  const cudaStream_t stream = current_stream(x_adv);
  return run_step("pgd_step_l2", t, [&](auto tag, auto a, auto g, auto x, auto out) {
    using scalar_t = typename decltype(tag)::type;
    using acc_t = acc_type<scalar_t>;
    l2_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(a, g, x, out, batch, per_sample,
                                                                  static_cast<acc_t>(alpha), static_cast<acc_t>(eps));
  });
}

STABLE_TORCH_LIBRARY_IMPL(lsa_fast, CUDA, m) {
  m.impl("pgd_step_linf", TORCH_BOX(&pgd_step_linf_cuda));
  m.impl("pgd_step_l2", TORCH_BOX(&pgd_step_l2_cuda));
}

}  // namespace cuda
}  // namespace lsa_fast
