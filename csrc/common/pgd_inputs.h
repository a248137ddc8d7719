// Host-side checks of pgd_step's inputs, shared by the CPU and CUDA launchers.
#pragma once

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/Exception.h>

namespace lsa_fast {

using torch::stable::Tensor;

// Returns contiguous (x_adv, grad, x_orig); the attack loops pass contiguous
// tensors, so this copies nothing in practice.
inline void prepare_pgd_inputs(const char* op, Tensor& x_adv, Tensor& grad, Tensor& x_orig, double alpha, double eps) {
  STD_TORCH_CHECK(x_adv.dim() >= 1, op, ": x_adv must have a batch dimension");
  STD_TORCH_CHECK(grad.sizes().equals(x_adv.sizes()) && x_orig.sizes().equals(x_adv.sizes()), op,
                  ": x_adv, grad and x_orig must have the same shape");
  STD_TORCH_CHECK(grad.scalar_type() == x_adv.scalar_type() && x_orig.scalar_type() == x_adv.scalar_type(), op,
                  ": x_adv, grad and x_orig must have the same dtype");
  STD_TORCH_CHECK(alpha >= 0 && eps >= 0, op, ": alpha and eps must be >= 0");
  x_adv = torch::stable::contiguous(x_adv);
  grad = torch::stable::contiguous(grad);
  x_orig = torch::stable::contiguous(x_orig);
}

}  // namespace lsa_fast
