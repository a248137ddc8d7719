// CUDA kernels of relative_error and relative_error_backward.
//
// All layers go in one launch: a small table of the layers (addresses, sizes, the
// first work item of each) travels by value as a kernel argument, and every block
// finds its (layer, sample, chunk) from its index (the multi-tensor work list of
// apex's multi_tensor_apply). Stage 1 writes one partial pair per chunk; stage 2
// adds the partials of each (layer, sample) in a fixed order: deterministic, no
// atomics. Loads are 16 bytes wide when the addresses allow it.
#include <algorithm>
#include <cstdint>
#include <vector>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "../common/cm_math.h"
#include "../common/dispatch.h"
#include "../common/layer_pairs.h"
#include "block_reduce.cuh"
#include "launch.cuh"

namespace lsa_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 16384;  // elements per block of stage 1 and of the backward
constexpr int kMaxLayers = 64;     // per launch: keeps the table under 4 KB of parameters

struct LayerTable {
  const void* clean[kMaxLayers];
  const void* perturbed[kMaxLayers];
  void* grad_clean[kMaxLayers];
  void* grad_perturbed[kMaxLayers];
  int64_t sample_numel[kMaxLayers];
  int64_t first_item[kMaxLayers + 1];
  int num_layers;
  int first_layer;  // index of table entry 0 among all layers (output column)
};

struct ItemSpan {
  int layer;  // table entry
  int64_t sample;
  int64_t begin;   // element offset in the layer's memory
  int64_t length;  // elements
};

__device__ inline ItemSpan locate(const LayerTable& table, int64_t item) {
  int lo = 0, hi = table.num_layers - 1;
  while (lo < hi) {  // last layer whose first item is <= item
    const int mid = (lo + hi + 1) / 2;
    if (table.first_item[mid] <= item) lo = mid; else hi = mid - 1;
  }
  const int64_t numel = table.sample_numel[lo];
  const int64_t chunks = numel > 0 ? (numel + kChunk - 1) / kChunk : 1;
  const int64_t local = item - table.first_item[lo];
  ItemSpan span;
  span.layer = lo;
  span.sample = local / chunks;
  const int64_t chunk = local - span.sample * chunks;
  span.begin = span.sample * numel + chunk * kChunk;
  span.length = max(int64_t(0), min(kChunk, numel - chunk * kChunk));
  return span;
}

template <typename scalar_t>
constexpr int vector_width() { return 16 / sizeof(scalar_t); }

template <typename... Ptrs>
__device__ inline bool aligned16(const Ptrs*... ptrs) {
  return ((reinterpret_cast<uintptr_t>(ptrs) % 16 == 0) && ...);
}

template <typename scalar_t, typename acc_t>
__device__ inline void accumulate(scalar_t a, scalar_t b, acc_t& diff, acc_t& clean) {
  const acc_t x = static_cast<acc_t>(a);
  const acc_t t = x - static_cast<acc_t>(b);
  diff += t * t;
  clean += x * x;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) sum_squares_kernel(LayerTable table, acc_t* partials) {
  const int64_t item = blockIdx.x;
  const ItemSpan span = locate(table, item);
  const scalar_t* __restrict__ a = static_cast<const scalar_t*>(table.clean[span.layer]) + span.begin;
  const scalar_t* __restrict__ b = static_cast<const scalar_t*>(table.perturbed[span.layer]) + span.begin;
  acc_t diff = 0, clean = 0;
  constexpr int V = vector_width<scalar_t>();
  int64_t scalar_from = 0;
  if (aligned16(a, b)) {
    const int64_t vectors = span.length / V;
    for (int64_t v = threadIdx.x; v < vectors; v += kThreads) {
      uint4 raw_a = reinterpret_cast<const uint4*>(a)[v];
      uint4 raw_b = reinterpret_cast<const uint4*>(b)[v];
      const scalar_t* xa = reinterpret_cast<const scalar_t*>(&raw_a);
      const scalar_t* xb = reinterpret_cast<const scalar_t*>(&raw_b);
#pragma unroll
      for (int j = 0; j < V; ++j) accumulate(xa[j], xb[j], diff, clean);
    }
    scalar_from = vectors * V;
  }
  for (int64_t i = scalar_from + threadIdx.x; i < span.length; i += kThreads) accumulate(a[i], b[i], diff, clean);
  diff = block_reduce(diff, Sum(), acc_t(0));
  clean = block_reduce(clean, Sum(), acc_t(0));
  if (threadIdx.x == 0) {
    partials[2 * item] = diff;
    partials[2 * item + 1] = clean;
  }
}

// One block per layer: each thread adds the chunk partials of its samples in chunk
// order; batch mode then sums the samples with a fixed-order block reduction.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads) finalize_kernel(
    LayerTable table, const acc_t* partials, int64_t batch, int64_t total_layers, bool batch_mode, acc_t eps,
    acc_t* cm, acc_t* norms) {
  const int layer = blockIdx.x;
  const int64_t column = table.first_layer + layer;
  const int64_t numel = table.sample_numel[layer];
  const int64_t chunks = numel > 0 ? (numel + kChunk - 1) / kChunk : 1;
  const int64_t plane = batch_mode ? total_layers : batch * total_layers;
  acc_t layer_diff = 0, layer_clean = 0;
  for (int64_t m = threadIdx.x; m < batch; m += kThreads) {
    const acc_t* p = partials + 2 * (table.first_item[layer] + m * chunks);
    acc_t diff = 0, clean = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      diff += p[2 * c];
      clean += p[2 * c + 1];
    }
    if (batch_mode) {
      layer_diff += diff;
      layer_clean += clean;
    } else {
      const int64_t slot = m * total_layers + column;
      norms[slot] = diff;
      norms[plane + slot] = clean;
      cm[slot] = relative_error_value<acc_t>(diff, clean, eps);
    }
  }
  if (batch_mode) {
    layer_diff = block_reduce(layer_diff, Sum(), acc_t(0));
    layer_clean = block_reduce(layer_clean, Sum(), acc_t(0));
    if (threadIdx.x == 0) {
      norms[column] = layer_diff;
      norms[plane + column] = layer_clean;
      cm[column] = relative_error_value<acc_t>(layer_diff, layer_clean, eps);
    }
  }
}

template <typename scalar_t, typename acc_t>
__device__ inline void write_grads(scalar_t a, scalar_t b, GradCoefficients<acc_t> k, scalar_t& ga, scalar_t& gb) {
  const acc_t x = static_cast<acc_t>(a), y = static_cast<acc_t>(b);
  ga = static_cast<scalar_t>(grad_clean_element<scalar_t>(x, y, k));
  gb = static_cast<scalar_t>(grad_perturbed_element<scalar_t>(x, y, k));
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) backward_kernel(
    LayerTable table, const acc_t* grad_cm, const acc_t* norms, int64_t batch, int64_t total_layers,
    bool batch_mode, acc_t eps) {
  const ItemSpan span = locate(table, blockIdx.x);
  const int64_t column = table.first_layer + span.layer;
  const int64_t slot = batch_mode ? column : span.sample * total_layers + column;
  const int64_t plane = batch_mode ? total_layers : batch * total_layers;
  const auto k = relative_error_grad_coefficients<acc_t>(grad_cm[slot], norms[slot], norms[plane + slot], eps);
  const scalar_t* __restrict__ a = static_cast<const scalar_t*>(table.clean[span.layer]) + span.begin;
  const scalar_t* __restrict__ b = static_cast<const scalar_t*>(table.perturbed[span.layer]) + span.begin;
  scalar_t* __restrict__ ga = static_cast<scalar_t*>(table.grad_clean[span.layer]) + span.begin;
  scalar_t* __restrict__ gb = static_cast<scalar_t*>(table.grad_perturbed[span.layer]) + span.begin;
  constexpr int V = vector_width<scalar_t>();
  int64_t scalar_from = 0;
  if (aligned16(a, b, ga, gb)) {
    const int64_t vectors = span.length / V;
    for (int64_t v = threadIdx.x; v < vectors; v += kThreads) {
      uint4 raw_a = reinterpret_cast<const uint4*>(a)[v];
      uint4 raw_b = reinterpret_cast<const uint4*>(b)[v];
      uint4 out_a, out_b;
      const scalar_t* xa = reinterpret_cast<const scalar_t*>(&raw_a);
      const scalar_t* xb = reinterpret_cast<const scalar_t*>(&raw_b);
      scalar_t* ya = reinterpret_cast<scalar_t*>(&out_a);
      scalar_t* yb = reinterpret_cast<scalar_t*>(&out_b);
#pragma unroll
      for (int j = 0; j < V; ++j) write_grads(xa[j], xb[j], k, ya[j], yb[j]);
      reinterpret_cast<uint4*>(ga)[v] = out_a;
      reinterpret_cast<uint4*>(gb)[v] = out_b;
    }
    scalar_from = vectors * V;
  }
  for (int64_t i = scalar_from + threadIdx.x; i < span.length; i += kThreads) write_grads(a[i], b[i], k, ga[i], gb[i]);
}

// Splits the layers into tables of at most kMaxLayers and calls launch(table,
// items) for each; nearly every network fits in one.
template <typename Launch>
void for_each_table(const LayerPairs& pairs, std::vector<Tensor>* grad_clean, std::vector<Tensor>* grad_perturbed,
                    const Launch& launch) {
  const int layers = static_cast<int>(pairs.layers.size());
  for (int first = 0; first < layers; first += kMaxLayers) {
    LayerTable table{};
    table.first_layer = first;
    table.num_layers = std::min(kMaxLayers, layers - first);
    int64_t items = 0;
    for (int i = 0; i < table.num_layers; ++i) {
      const LayerPair& pair = pairs.layers[first + i];
      table.clean[i] = pair.clean.const_data_ptr();
      table.perturbed[i] = pair.perturbed.const_data_ptr();
      if (grad_clean) {
        table.grad_clean[i] = (*grad_clean)[first + i].mutable_data_ptr();
        table.grad_perturbed[i] = (*grad_perturbed)[first + i].mutable_data_ptr();
      }
      table.sample_numel[i] = pair.sample_numel;
      table.first_item[i] = items;
      items += pairs.batch * chunks_per_sample(pair.sample_numel, kChunk);
    }
    table.first_item[table.num_layers] = items;
    STD_TORCH_CHECK(items < (int64_t(1) << 31), "relative_error: too many work items for one launch");
    launch(table, items);
  }
}

}  // namespace

std::tuple<Tensor, Tensor> relative_error_cuda(
    std::vector<Tensor> clean, std::vector<Tensor> perturbed, bool batch_mode, double eps) {
  LayerPairs pairs = prepare_layer_pairs("relative_error", clean, perturbed);
  torch::stable::accelerator::DeviceGuard guard(clean[0].get_device_index());
  const cudaStream_t stream = current_stream(clean[0]);
  auto outputs = allocate_forward_outputs(pairs, clean[0], batch_mode);
  Tensor cm = outputs.first, norms = outputs.second;
  const int64_t layers = static_cast<int64_t>(pairs.layers.size());
  const auto acc = accumulation_dtype(pairs.dtype);
  dispatch_floating(pairs.dtype, "relative_error", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    using acc_t = acc_type<scalar_t>;
    for_each_table(pairs, nullptr, nullptr, [&](const LayerTable& table, int64_t items) {
      Tensor partials = torch::stable::new_empty(clean[0], {2 * items}, acc);
      acc_t* partial_ptr = static_cast<acc_t*>(partials.mutable_data_ptr());
      sum_squares_kernel<scalar_t, acc_t><<<items, kThreads, 0, stream>>>(table, partial_ptr);
      check_launch("relative_error");
      finalize_kernel<acc_t><<<table.num_layers, kThreads, 0, stream>>>(
          table, partial_ptr, pairs.batch, layers, batch_mode, static_cast<acc_t>(eps),
          static_cast<acc_t*>(cm.mutable_data_ptr()), static_cast<acc_t*>(norms.mutable_data_ptr()));
      check_launch("relative_error");
    });
  });
  return {cm, norms};
}

std::vector<Tensor> relative_error_backward_cuda(
    Tensor grad_cm, std::vector<Tensor> clean, std::vector<Tensor> perturbed, Tensor norms, bool batch_mode,
    double eps) {
  LayerPairs pairs = prepare_layer_pairs("relative_error_backward", clean, perturbed);
  torch::stable::accelerator::DeviceGuard guard(clean[0].get_device_index());
  const cudaStream_t stream = current_stream(clean[0]);
  const int64_t layers = static_cast<int64_t>(pairs.layers.size());
  prepare_backward_inputs(pairs, batch_mode, grad_cm, norms);
  std::vector<Tensor> grad_clean, grad_perturbed;
  allocate_grads(pairs, grad_clean, grad_perturbed);
  dispatch_floating(pairs.dtype, "relative_error_backward", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    using acc_t = acc_type<scalar_t>;
    for_each_table(pairs, &grad_clean, &grad_perturbed, [&](const LayerTable& table, int64_t items) {
      backward_kernel<scalar_t, acc_t><<<items, kThreads, 0, stream>>>(
          table, static_cast<const acc_t*>(grad_cm.const_data_ptr()), static_cast<const acc_t*>(norms.const_data_ptr()),
          pairs.batch, layers, batch_mode, static_cast<acc_t>(eps));
      check_launch("relative_error_backward");
    });
  });
  return collect_grads(pairs, clean, perturbed, grad_clean, grad_perturbed);
}

STABLE_TORCH_LIBRARY_IMPL(lsa_fast, CUDA, m) {
  m.impl("relative_error", TORCH_BOX(&relative_error_cuda));
  m.impl("relative_error_backward", TORCH_BOX(&relative_error_backward_cuda));
}

}  // namespace cuda
}  // namespace lsa_fast
