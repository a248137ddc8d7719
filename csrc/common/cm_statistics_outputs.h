// Input checks and outputs of cm_statistics, shared by the CPU and CUDA launchers.
#pragma once

#include <cstdint>
#include <tuple>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/Exception.h>

namespace lsa_fast {

using torch::stable::Tensor;

struct CMStatisticsOutputs {
  Tensor cm;  // the input, contiguous
  int64_t samples = 0, layers = 0;
  Tensor mu, sigma;                    // scalars, in cm's dtype
  Tensor mean, m2, low, high;          // [L], in cm's dtype
  Tensor mvl;                          // [L] bool

  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> as_tuple() const {
    return {mu, sigma, mean, m2, low, high, mvl};
  }
};

inline CMStatisticsOutputs prepare_cm_statistics(const Tensor& cm) {
  STD_TORCH_CHECK(cm.dim() == 1 || cm.dim() == 2, "cm_statistics: cm must be [M, L] or [L]");
  STD_TORCH_CHECK(cm.numel() > 0, "cm_statistics: cm is empty");
  CMStatisticsOutputs out;
  out.cm = torch::stable::contiguous(cm);
  out.layers = cm.size(cm.dim() - 1);
  out.samples = cm.numel() / out.layers;
  const auto dtype = cm.scalar_type();
  out.mu = torch::stable::new_empty(cm, {}, dtype);
  out.sigma = torch::stable::new_empty(cm, {}, dtype);
  out.mean = torch::stable::new_empty(cm, {out.layers}, dtype);
  out.m2 = torch::stable::new_empty(cm, {out.layers}, dtype);
  out.low = torch::stable::new_empty(cm, {out.layers}, dtype);
  out.high = torch::stable::new_empty(cm, {out.layers}, dtype);
  out.mvl = torch::stable::new_empty(cm, {out.layers}, torch::headeronly::ScalarType::Bool);
  return out;
}

}  // namespace lsa_fast
