// Host-side checks and layout of pgd_step's inputs, shared by the CPU and CUDA launchers.
#pragma once

#include <cstdint>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/Exception.h>

#include "layout.h"

namespace lsa_fast {

using torch::stable::Tensor;

// True when the elements fill one block of memory, [ptr, ptr + numel), each once
// (contiguous, channels_last and any permutation of a dense tensor qualify).
inline bool is_dense(const Tensor& t) {
  int64_t extent = 0;
  return dims_are_dense(t, 0, &extent);
}

// The step's tensors, all dense with one layout: memory position i of each holds the
// same element, so the kernels run over flat memory. `out` has x_adv's memory format
// (empty_like: the fake kernel's answer too); an input with another layout is copied
// into that layout once (the attack loops pass matching layouts: no copy).
struct PgdTensors {
  Tensor x_adv, grad, x_orig, out;
};

inline void check_same_device(const char* op, const Tensor& t, const char* name, const Tensor& x_adv) {
  STD_TORCH_CHECK(t.device().type() == x_adv.device().type() && t.get_device_index() == x_adv.get_device_index(), op,
                  ": ", name, " is on a different device from x_adv");
}

inline PgdTensors prepare_pgd_inputs(const char* op, const Tensor& x_adv, const Tensor& grad, const Tensor& x_orig,
                                     double alpha, double eps) {
  STD_TORCH_CHECK(x_adv.dim() >= 1, op, ": x_adv must have a batch dimension");
  STD_TORCH_CHECK(grad.sizes().equals(x_adv.sizes()) && x_orig.sizes().equals(x_adv.sizes()), op,
                  ": x_adv, grad and x_orig must have the same shape");
  STD_TORCH_CHECK(grad.scalar_type() == x_adv.scalar_type() && x_orig.scalar_type() == x_adv.scalar_type(), op,
                  ": x_adv, grad and x_orig must have the same dtype");
  check_same_device(op, grad, "grad", x_adv);
  check_same_device(op, x_orig, "x_orig", x_adv);
  STD_TORCH_CHECK(alpha >= 0 && eps >= 0, op, ": alpha and eps must be >= 0");
  PgdTensors t;
  t.out = torch::stable::empty_like(x_adv);  // dense, in x_adv's memory format
  auto in_out_layout = [&](const Tensor& input) {
    if (is_dense(input) && same_layout(input, t.out)) return input;
    Tensor copy = torch::stable::empty_like(t.out);
    torch::stable::copy_(copy, input);
    return copy;
  };
  t.x_adv = in_out_layout(x_adv);
  t.grad = in_out_layout(grad);
  t.x_orig = in_out_layout(x_orig);
  return t;
}

// True when every sample of the dense `t` is one block [m*S, (m+1)*S) of memory (the
// batch dimension outermost), as the L2 step's per-sample sums need.
inline bool batch_is_outermost(const Tensor& t) {
  const int64_t batch = t.size(0);
  return batch == 1 || t.numel() == 0 || t.stride(0) * batch == t.numel();
}

}  // namespace lsa_fast
