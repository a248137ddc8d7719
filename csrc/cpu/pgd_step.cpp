// CPU kernels of the fused PGD step (L-inf and L2): one pass writes x_adv' (two for
// L2: per-sample sums, then the write), instead of the six to ten elementwise
// passes of the eager sequence.
#include <cstdint>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "../common/dispatch.h"
#include "../common/pgd_inputs.h"
#include "../common/pgd_math.h"
#include "sum_squares.h"

namespace lsa_fast {
namespace cpu {
namespace {

constexpr int64_t kGrain = 32768;

template <typename scalar_t>
void linf_kernel(const scalar_t* x_adv, const scalar_t* grad, const scalar_t* x, scalar_t* out, int64_t n,
                 double alpha, double eps) {
  using acc_t = acc_type<scalar_t>;
  torch::stable::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      out[i] = static_cast<scalar_t>(linf_step<acc_t>(x_adv[i], grad[i], x[i], alpha, eps));
    }
  });
}

// ||g||^2, <x_adv - x, g> and ||x_adv - x||^2 of one sample, in 16-byte vector lanes
// (sum_squares.h) so that the three sums vectorise.
template <typename scalar_t, typename acc_t>
void l2_sums(const scalar_t* x_adv, const scalar_t* grad, const scalar_t* x, int64_t n, acc_t& grad_sq, acc_t& dot,
             acc_t& delta0_sq) {
  constexpr int kWidth = 16 / sizeof(acc_t);
  Native<acc_t> gg = {}, dg = {}, dd = {};
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) {
    Native<acc_t> g, a, b;
    load_native<scalar_t, acc_t>(grad + i, g);
    load_native<scalar_t, acc_t>(x_adv + i, a);
    load_native<scalar_t, acc_t>(x + i, b);
    const Native<acc_t> d0 = a - b;
    gg += g * g;
    dg += d0 * g;
    dd += d0 * d0;
  }
  for (int j = 0; j < kWidth; ++j) {  // fixed order
    grad_sq += gg[j];
    dot += dg[j];
    delta0_sq += dd[j];
  }
  for (; i < n; ++i) {
    const acc_t g = static_cast<acc_t>(grad[i]);
    const acc_t d0 = static_cast<acc_t>(x_adv[i]) - static_cast<acc_t>(x[i]);
    grad_sq += g * g;
    dot += d0 * g;
    delta0_sq += d0 * d0;
  }
}

template <typename scalar_t>
void l2_kernel(const scalar_t* x_adv, const scalar_t* grad, const scalar_t* x, scalar_t* out, int64_t batch,
               int64_t per_sample, double alpha, double eps) {
  using acc_t = acc_type<scalar_t>;
  const int64_t grain = per_sample >= kGrain ? 1 : kGrain / (per_sample + 1) + 1;
  torch::stable::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const int64_t offset = m * per_sample;
      acc_t grad_sq = 0, dot = 0, delta0_sq = 0;
      l2_sums<scalar_t, acc_t>(x_adv + offset, grad + offset, x + offset, per_sample, grad_sq, dot, delta0_sq);
      const auto k = l2_step_coefficients<acc_t>(grad_sq, dot, delta0_sq, alpha, eps);
      for (int64_t i = offset; i < offset + per_sample; ++i) {
        out[i] = static_cast<scalar_t>(l2_step<acc_t>(x_adv[i], grad[i], x[i], k));
      }
    }
  });
}

// Runs `kernel` over flat memory (prepare_pgd_inputs gives every tensor one dense
// layout); the result has x_adv's memory format.
template <typename Kernel>
Tensor run_step(const char* op, const PgdTensors& t, Kernel kernel) {
  dispatch_floating(t.out.scalar_type(), op, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    kernel(tag, static_cast<const scalar_t*>(t.x_adv.const_data_ptr()),
           static_cast<const scalar_t*>(t.grad.const_data_ptr()), static_cast<const scalar_t*>(t.x_orig.const_data_ptr()),
           static_cast<scalar_t*>(t.out.mutable_data_ptr()));
  });
  return t.out;
}

}  // namespace

Tensor pgd_step_linf_cpu(Tensor x_adv, Tensor grad, Tensor x_orig, double alpha, double eps) {
  PgdTensors t = prepare_pgd_inputs("pgd_step_linf", x_adv, grad, x_orig, alpha, eps);
  const int64_t n = x_adv.numel();
  return run_step("pgd_step_linf", t, [&](auto tag, auto a, auto g, auto x, auto out) {
    using scalar_t = typename decltype(tag)::type;
    linf_kernel<scalar_t>(a, g, x, out, n, alpha, eps);
  });
}

Tensor pgd_step_l2_cpu(Tensor x_adv, Tensor grad, Tensor x_orig, double alpha, double eps) {
  PgdTensors t = prepare_pgd_inputs("pgd_step_l2", x_adv, grad, x_orig, alpha, eps);
  if (x_adv.numel() == 0) return t.out;
  if (!batch_is_outermost(t.out)) {  // the per-sample sums need each sample in one block
    Tensor flat = pgd_step_l2_cpu(torch::stable::contiguous(x_adv), torch::stable::contiguous(grad),
                                  torch::stable::contiguous(x_orig), alpha, eps);
    torch::stable::copy_(t.out, flat);
    return t.out;
  }
  const int64_t batch = x_adv.size(0);
  const int64_t per_sample = x_adv.numel() / batch;
  return run_step("pgd_step_l2", t, [&](auto tag, auto a, auto g, auto x, auto out) {
    using scalar_t = typename decltype(tag)::type;
    l2_kernel<scalar_t>(a, g, x, out, batch, per_sample, alpha, eps);
  });
}

STABLE_TORCH_LIBRARY_IMPL(lsa_fast, CPU, m) {
  m.impl("pgd_step_linf", TORCH_BOX(&pgd_step_linf_cpu));
  m.impl("pgd_step_l2", TORCH_BOX(&pgd_step_l2_cpu));
}

}  // namespace cpu
}  // namespace lsa_fast
