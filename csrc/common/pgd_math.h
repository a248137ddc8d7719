// Per-element maths of the fused PGD projection step, shared by the CPU and CUDA
// kernels. The L-inf order of operations is torchattacks' PGD:
// stepped = x_adv + alpha * sign(g); delta = clamp(stepped - x, -eps, eps);
// x_adv' = clamp(x + delta, 0, 1).
#pragma once

#include "cm_math.h"

namespace lsa_fast {

template <typename T>
LSA_HOST_DEVICE inline T clamp_to(T value, T low, T high) {
  value = value < low ? low : value;
  return value > high ? high : value;
}

template <typename T>
LSA_HOST_DEVICE inline T sign_of(T g) {
  return static_cast<T>((g > T(0)) - (g < T(0)));
}

template <typename acc_t>
LSA_HOST_DEVICE inline acc_t linf_step(acc_t x_adv, acc_t grad, acc_t x, acc_t alpha, acc_t eps) {
  const acc_t stepped = x_adv + alpha * sign_of(grad);
  const acc_t delta = clamp_to(stepped - x, -eps, eps);
  return clamp_to(x + delta, acc_t(0), acc_t(1));
}

// L2 (torchattacks' PGDL2): step = alpha g / (||g|| + 1e-10); delta = x_adv + step - x;
// delta *= min(eps / ||delta||, 1); x_adv' = clamp(x + delta, 0, 1). One pass over a
// sample gathers ||g||^2, <d0, g> and ||d0||^2 (d0 = x_adv - x), from which
// ||delta||^2 = ||d0||^2 + 2 s <d0, g> + s^2 ||g||^2 follows; a second pass writes.
template <typename acc_t>
struct L2Step {
  acc_t scale;   // s = alpha / (||g|| + 1e-10)
  acc_t factor;  // min(eps / ||delta||, 1)
};

template <typename acc_t>
LSA_HOST_DEVICE inline L2Step<acc_t> l2_step_coefficients(acc_t grad_sq, acc_t dot, acc_t delta0_sq, acc_t alpha,
                                                           acc_t eps) {
  L2Step<acc_t> out;
  out.scale = alpha / (square_root(grad_sq) + acc_t(1e-10));
  acc_t delta_sq = delta0_sq + acc_t(2) * out.scale * dot + out.scale * out.scale * grad_sq;
  delta_sq = delta_sq > acc_t(0) ? delta_sq : acc_t(0);
  const acc_t norm = square_root(delta_sq);
  out.factor = norm > eps ? eps / norm : acc_t(1);
  return out;
}

template <typename acc_t>
LSA_HOST_DEVICE inline acc_t l2_step(acc_t x_adv, acc_t grad, acc_t x, L2Step<acc_t> k) {
  const acc_t delta = (x_adv - x + k.scale * grad) * k.factor;
  return clamp_to(x + delta, acc_t(0), acc_t(1));
}

}  // namespace lsa_fast
