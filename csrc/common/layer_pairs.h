// Host-side preparation shared by the CPU and CUDA launchers of relative_error:
// input checks that name the layer and the problem, the no-copy layout test, and
// the split of every (layer, sample) into fixed-size chunks ("work items").
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/Exception.h>

#include "dispatch.h"
#include "layout.h"

namespace lsa_fast {

using torch::stable::Tensor;

struct LayerPair {
  Tensor clean;      // the tensors the kernels read: the inputs, or a contiguous copy
  Tensor perturbed;  // of both when their layout does not allow reading in place
  int64_t sample_numel = 0;
  bool copied = false;
};

struct LayerPairs {
  std::vector<LayerPair> layers;
  int64_t batch = 0;
  torch::headeronly::ScalarType dtype;
};

// True when every sample occupies one dense block of memory, [m*S, (m+1)*S), in
// any order inside the block: contiguous and channels_last tensors qualify. The sum
// of squares does not depend on the order inside a sample, so such tensors are
// read without a copy as long as clean and perturbed share their strides.
inline bool samples_are_dense_blocks(const Tensor& t) {
  int64_t sample_extent = 0;
  if (!dims_are_dense(t, 1, &sample_extent)) return false;
  return t.size(0) == 1 || t.stride(0) == sample_extent;
}

inline const char* side_name(int side) { return side == 0 ? "clean" : "perturbed"; }

inline LayerPairs prepare_layer_pairs(
    const char* op, const std::vector<Tensor>& clean, const std::vector<Tensor>& perturbed) {
  STD_TORCH_CHECK(clean.size() == perturbed.size(), op, ": ", clean.size(), " clean layers but ",
                  perturbed.size(), " perturbed layers");
  STD_TORCH_CHECK(!clean.empty(), op, ": the layer lists are empty");
  LayerPairs pairs;
  const Tensor& first = clean[0];
  pairs.dtype = first.scalar_type();
  STD_TORCH_CHECK(first.dim() >= 1, op, ": layer 0 (clean) is a 0-d tensor; the first dimension must be the batch");
  pairs.batch = first.size(0);
  STD_TORCH_CHECK(pairs.batch > 0, op, ": the batch is empty (batch size 0)");
  for (size_t i = 0; i < clean.size(); ++i) {
    const Tensor* sides[2] = {&clean[i], &perturbed[i]};
    for (int s = 0; s < 2; ++s) {
      const Tensor& t = *sides[s];
      STD_TORCH_CHECK(t.dim() >= 1, op, ": layer ", i, " (", side_name(s), ") is a 0-d tensor");
      STD_TORCH_CHECK(t.scalar_type() == pairs.dtype, op, ": layer ", i, " (", side_name(s),
                      ") has a different dtype from layer 0");
      STD_TORCH_CHECK(t.device().type() == first.device().type() && t.get_device_index() == first.get_device_index(),
                      op, ": layer ", i, " (", side_name(s), ") is on a different device from layer 0");
    }
    const Tensor& a = clean[i];
    const Tensor& b = perturbed[i];
    STD_TORCH_CHECK(a.sizes().equals(b.sizes()), op, ": layer ", i,
                    " has different clean and perturbed shapes");
    STD_TORCH_CHECK(a.size(0) == pairs.batch, op, ": layer ", i, " has batch size ", a.size(0),
                    " but layer 0 has ", pairs.batch);
    LayerPair pair;
    pair.sample_numel = a.numel() / pairs.batch;
    if (samples_are_dense_blocks(a) && same_layout(a, b)) {
      pair.clean = a;
      pair.perturbed = b;
    } else {  // one copy of each, as the contract allows for other layouts
      pair.clean = torch::stable::contiguous(a);
      pair.perturbed = torch::stable::contiguous(b);
      pair.copied = true;
    }
    pairs.layers.push_back(pair);
  }
  return pairs;
}

// The forward's outputs: cm [M, L] (or [L]) and the sums of squares [2, M, L]
// (or [2, L]), in the accumulation dtype.
inline std::pair<Tensor, Tensor> allocate_forward_outputs(const LayerPairs& pairs, const Tensor& like, bool batch_mode) {
  const int64_t layers = static_cast<int64_t>(pairs.layers.size());
  const auto acc = accumulation_dtype(pairs.dtype);
  if (batch_mode) {
    return {torch::stable::new_empty(like, {layers}, acc), torch::stable::new_empty(like, {2, layers}, acc)};
  }
  return {torch::stable::new_empty(like, {pairs.batch, layers}, acc),
          torch::stable::new_empty(like, {2, pairs.batch, layers}, acc)};
}

// Checks grad_cm and norms against the layers and makes both contiguous (autograd
// often hands an expanded view of grad_cm).
inline void prepare_backward_inputs(const LayerPairs& pairs, bool batch_mode, Tensor& grad_cm, Tensor& norms) {
  const int64_t layers = static_cast<int64_t>(pairs.layers.size());
  const auto acc = accumulation_dtype(pairs.dtype);
  const int64_t slots = batch_mode ? layers : pairs.batch * layers;
  STD_TORCH_CHECK(grad_cm.numel() == slots && grad_cm.scalar_type() == acc,
                  "relative_error_backward: grad_cm must have the shape and dtype of the forward's output");
  STD_TORCH_CHECK(norms.numel() == 2 * slots && norms.scalar_type() == acc,
                  "relative_error_backward: norms must be the second output of relative_error");
  const Tensor& layer0 = pairs.layers[0].clean;
  for (const auto& [t, name] : {std::pair<const Tensor*, const char*>{&grad_cm, "grad_cm"}, {&norms, "norms"}}) {
    STD_TORCH_CHECK(t->device().type() == layer0.device().type() && t->get_device_index() == layer0.get_device_index(),
                    "relative_error_backward: ", name, " is on a different device from layer 0");
  }
  grad_cm = torch::stable::contiguous(grad_cm);
  norms = torch::stable::contiguous(norms);
}

// Gradient buffers laid out like the tensors the kernels read.
inline void allocate_grads(const LayerPairs& pairs, std::vector<Tensor>& grad_clean, std::vector<Tensor>& grad_perturbed) {
  for (const LayerPair& pair : pairs.layers) {
    grad_clean.push_back(torch::stable::empty_like(pair.clean));
    grad_perturbed.push_back(torch::stable::empty_like(pair.perturbed));
  }
}

// The backward's output: clean gradients then perturbed ones, each in its input's
// own layout (one more copy only for the layers that were copied on the way in).
inline std::vector<Tensor> collect_grads(const LayerPairs& pairs, const std::vector<Tensor>& clean,
                                         const std::vector<Tensor>& perturbed, const std::vector<Tensor>& grad_clean,
                                         const std::vector<Tensor>& grad_perturbed) {
  std::vector<Tensor> grads;
  for (int side = 0; side < 2; ++side) {
    for (size_t l = 0; l < pairs.layers.size(); ++l) {
      Tensor grad = side == 0 ? grad_clean[l] : grad_perturbed[l];
      if (pairs.layers[l].copied) {
        Tensor shaped = torch::stable::empty_like(side == 0 ? clean[l] : perturbed[l]);
        torch::stable::copy_(shaped, grad);
        grad = shaped;
      }
      grads.push_back(grad);
    }
  }
  return grads;
}

}  // namespace lsa_fast
