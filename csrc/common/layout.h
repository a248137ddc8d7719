// Memory-layout tests shared by the launchers: which tensors the kernels can read
// as flat memory without a copy.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include <torch/csrc/stable/tensor.h>

namespace lsa_fast {

// True when dims [first, rank) of t, over any order of their strides, fill one
// block of memory with each element once; *extent is then that block's size.
inline bool dims_are_dense(const torch::stable::Tensor& t, int64_t first, int64_t* extent) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size)
  for (int64_t d = first; d < t.dim(); ++d) {
    if (t.size(d) != 1) dims.emplace_back(t.stride(d), t.size(d));
  }
  std::sort(dims.begin(), dims.end());
  int64_t expected = 1;
  for (const auto& [stride, size] : dims) {
    if (stride != expected) return false;
    expected *= size;
  }
  *extent = expected;
  return true;
}

// Whether a and b (same sizes) lay out their elements the same way.
inline bool same_layout(const torch::stable::Tensor& a, const torch::stable::Tensor& b) {
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) != 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

}  // namespace lsa_fast
