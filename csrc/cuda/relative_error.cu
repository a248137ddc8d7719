// CUDA kernels of relative_error and relative_error_backward.
//
// All layers go in one launch: a small table of the layers (addresses, sizes, the
// first work item of each) travels by value as a kernel argument, and every block
// finds its (layer, sample, chunk), or for short rows its group of samples, from its
// index (the multi-tensor work list of apex's multi_tensor_apply). Stage 1 writes one
// partial pair per chunk; stage 2 adds the partials of each (layer, sample) in a
// fixed order, in fp64: deterministic, no atomics. Loads are 16 bytes wide after a
// scalar head that reaches the 16-byte boundary, when the pointers share it.
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
constexpr int kWarps = kThreads / 32;
constexpr int64_t kShortRow = 2048;   // rows up to this long get a warp each, not a block
constexpr int kMaxLayers = 64;        // per launch: keeps the table under 4 KB of parameters

// The layers of one launch. Long rows: a work item (a block) is one chunk of one
// sample. Short rows (sample_numel <= kShortRow, one chunk): a work item is kWarps
// samples, a warp each, so that 100-element rows do not leave 7/8 of a block idle.
// Partial sums are indexed by slot = first_partial + sample * chunks + chunk.
struct LayerTable {
  const void* clean[kMaxLayers];
  const void* perturbed[kMaxLayers];
  void* grad_clean[kMaxLayers];
  void* grad_perturbed[kMaxLayers];
  int64_t sample_numel[kMaxLayers];
  int64_t first_item[kMaxLayers + 1];
  int64_t first_partial[kMaxLayers];
  int num_layers;
  int first_layer;  // index of table entry 0 among all layers (output column)
};

__host__ __device__ inline bool is_short_row(int64_t numel) { return numel <= kShortRow; }

__host__ __device__ inline int64_t items_of(int64_t numel, int64_t batch) {
  return is_short_row(numel) ? (batch + kWarps - 1) / kWarps : batch * chunks_per_sample(numel);
}

// What the calling thread works on: one row span, and its place among the threads
// that share it (the whole block for a long row, one warp for a short one).
struct ThreadSpan {
  int layer;  // table entry
  int64_t sample;
  int64_t begin;   // element offset in the layer's memory
  int64_t length;  // elements (0: this warp has no sample)
  int64_t partial;  // slot of the partial sums
  int tid, threads;
  bool warp_row;
};

__device__ inline ThreadSpan locate(const LayerTable& table, int64_t item, int64_t batch) {
  int lo = 0, hi = table.num_layers - 1;
  while (lo < hi) {  // last layer whose first item is <= item
    const int mid = (lo + hi + 1) / 2;
    if (table.first_item[mid] <= item) lo = mid; else hi = mid - 1;
  }
  const int64_t numel = table.sample_numel[lo];
  const int64_t local = item - table.first_item[lo];
  ThreadSpan span;
  span.layer = lo;
  span.warp_row = is_short_row(numel);
  if (span.warp_row) {
    span.sample = local * kWarps + threadIdx.x / 32;
    span.begin = span.sample * numel;
    span.length = span.sample < batch ? numel : 0;
    span.partial = table.first_partial[lo] + span.sample;
    span.tid = threadIdx.x % 32;
    span.threads = 32;
  } else {
    const int64_t chunks = chunks_per_sample(numel);
    span.sample = local / chunks;
    const int64_t chunk = local - span.sample * chunks;
    span.begin = span.sample * numel + chunk * kChunkElements;
    span.length = max(int64_t(0), min(kChunkElements, numel - chunk * kChunkElements));
    span.partial = table.first_partial[lo] + local;
    span.tid = threadIdx.x;
    span.threads = kThreads;
  }
  return span;
}

template <typename scalar_t>
constexpr int vector_width() { return 16 / sizeof(scalar_t); }

// Elements before the first 16-byte boundary when every pointer shares one
// misalignment (then the rest is read in 16-byte vectors), else -1 (scalar loads).
template <typename scalar_t, typename... Ptrs>
__device__ inline int64_t peel_to_alignment(int64_t length, const scalar_t* first, const Ptrs*... rest) {
  const uintptr_t offset = reinterpret_cast<uintptr_t>(first) % 16;
  if (offset % sizeof(scalar_t) != 0 || !((reinterpret_cast<uintptr_t>(rest) % 16 == offset) && ...)) return -1;
  return min(length, static_cast<int64_t>(offset ? (16 - offset) / sizeof(scalar_t) : 0));
}

template <typename scalar_t, typename acc_t>
__device__ inline void accumulate(scalar_t a, scalar_t b, acc_t& diff, acc_t& clean) {
  const acc_t x = static_cast<acc_t>(a);
  const acc_t t = x - static_cast<acc_t>(b);
  diff += t * t;
  clean += x * x;
}

// This thread's share of the two sums of squares of a span.
template <typename scalar_t, typename acc_t>
__device__ inline void span_sums(const scalar_t* a, const scalar_t* b, const ThreadSpan& span, acc_t& diff,
                                 acc_t& clean) {
  constexpr int V = vector_width<scalar_t>();
  const int64_t head = peel_to_alignment(span.length, a, b);
  int64_t scalar_from = 0;
  if (head >= 0) {
    for (int64_t i = span.tid; i < head; i += span.threads) accumulate(a[i], b[i], diff, clean);
    const uint4* va = reinterpret_cast<const uint4*>(a + head);
    const uint4* vb = reinterpret_cast<const uint4*>(b + head);
    const int64_t vectors = (span.length - head) / V;
    for (int64_t v = span.tid; v < vectors; v += span.threads) {
      uint4 raw_a = va[v], raw_b = vb[v];
      const scalar_t* xa = reinterpret_cast<const scalar_t*>(&raw_a);
      const scalar_t* xb = reinterpret_cast<const scalar_t*>(&raw_b);
#pragma unroll
      for (int j = 0; j < V; ++j) accumulate(xa[j], xb[j], diff, clean);
    }
    scalar_from = head + vectors * V;
  }
  for (int64_t i = scalar_from + span.tid; i < span.length; i += span.threads) accumulate(a[i], b[i], diff, clean);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) sum_squares_kernel(LayerTable table, int64_t batch, acc_t* partials) {
  const ThreadSpan span = locate(table, blockIdx.x, batch);
  const scalar_t* a = static_cast<const scalar_t*>(table.clean[span.layer]) + span.begin;
  const scalar_t* b = static_cast<const scalar_t*>(table.perturbed[span.layer]) + span.begin;
  acc_t diff = 0, clean = 0;
  span_sums(a, b, span, diff, clean);
  if (span.warp_row) {  // the block is uniform: every warp takes this branch or none
    diff = warp_reduce(diff, Sum());
    clean = warp_reduce(clean, Sum());
    if (span.tid == 0 && span.length > 0) {
      partials[2 * span.partial] = diff;
      partials[2 * span.partial + 1] = clean;
    }
    return;
  }
  diff = block_reduce(diff, Sum(), acc_t(0));
  clean = block_reduce(clean, Sum(), acc_t(0));
  if (threadIdx.x == 0) {
    partials[2 * span.partial] = diff;
    partials[2 * span.partial + 1] = clean;
  }
}

// One block per layer: each thread adds the chunk partials of its samples in chunk
// order, in fp64 (a long row has up to thousands of fp32 partials); batch mode then
// sums the samples with a fixed-order block reduction, in fp64 too.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads) finalize_kernel(
    LayerTable table, const acc_t* partials, int64_t batch, int64_t total_layers, bool batch_mode, acc_t eps,
    acc_t* cm, acc_t* norms) {
  const int layer = blockIdx.x;
  const int64_t column = table.first_layer + layer;
  const int64_t chunks = chunks_per_sample(table.sample_numel[layer]);
  const int64_t plane = batch_mode ? total_layers : batch * total_layers;
  double layer_diff = 0, layer_clean = 0;
  for (int64_t m = threadIdx.x; m < batch; m += kThreads) {
    const acc_t* p = partials + 2 * (table.first_partial[layer] + m * chunks);
    double diff = 0, clean = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      diff += static_cast<double>(p[2 * c]);
      clean += static_cast<double>(p[2 * c + 1]);
    }
    if (batch_mode) {
      layer_diff += diff;
      layer_clean += clean;
    } else {
      const int64_t slot = m * total_layers + column;
      norms[slot] = static_cast<acc_t>(diff);
      norms[plane + slot] = static_cast<acc_t>(clean);
      cm[slot] = relative_error_value<acc_t>(static_cast<acc_t>(diff), static_cast<acc_t>(clean), eps);
    }
  }
  if (batch_mode) {
    layer_diff = block_reduce(layer_diff, Sum(), 0.0);
    layer_clean = block_reduce(layer_clean, Sum(), 0.0);
    if (threadIdx.x == 0) {
      norms[column] = static_cast<acc_t>(layer_diff);
      norms[plane + column] = static_cast<acc_t>(layer_clean);
      cm[column] = relative_error_value<acc_t>(static_cast<acc_t>(layer_diff), static_cast<acc_t>(layer_clean), eps);
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
  const ThreadSpan span = locate(table, blockIdx.x, batch);
  if (span.length == 0) return;
  const int64_t column = table.first_layer + span.layer;
  const int64_t slot = batch_mode ? column : span.sample * total_layers + column;
  const int64_t plane = batch_mode ? total_layers : batch * total_layers;
  const auto k = relative_error_grad_coefficients<acc_t>(grad_cm[slot], norms[slot], norms[plane + slot], eps);
  const scalar_t* __restrict__ a = static_cast<const scalar_t*>(table.clean[span.layer]) + span.begin;
  const scalar_t* __restrict__ b = static_cast<const scalar_t*>(table.perturbed[span.layer]) + span.begin;
  scalar_t* __restrict__ ga = static_cast<scalar_t*>(table.grad_clean[span.layer]) + span.begin;
  scalar_t* __restrict__ gb = static_cast<scalar_t*>(table.grad_perturbed[span.layer]) + span.begin;
  constexpr int V = vector_width<scalar_t>();
  const int64_t head = peel_to_alignment(span.length, a, b, ga, gb);
  int64_t scalar_from = 0;
  if (head >= 0) {
    for (int64_t i = span.tid; i < head; i += span.threads) write_grads(a[i], b[i], k, ga[i], gb[i]);
    const int64_t vectors = (span.length - head) / V;
    for (int64_t v = span.tid; v < vectors; v += span.threads) {
      uint4 raw_a = reinterpret_cast<const uint4*>(a + head)[v];
      uint4 raw_b = reinterpret_cast<const uint4*>(b + head)[v];
      uint4 out_a, out_b;
      const scalar_t* xa = reinterpret_cast<const scalar_t*>(&raw_a);
      const scalar_t* xb = reinterpret_cast<const scalar_t*>(&raw_b);
      scalar_t* ya = reinterpret_cast<scalar_t*>(&out_a);
      scalar_t* yb = reinterpret_cast<scalar_t*>(&out_b);
#pragma unroll
      for (int j = 0; j < V; ++j) write_grads(xa[j], xb[j], k, ya[j], yb[j]);
      reinterpret_cast<uint4*>(ga + head)[v] = out_a;
      reinterpret_cast<uint4*>(gb + head)[v] = out_b;
    }
    scalar_from = head + vectors * V;
  }
  for (int64_t i = scalar_from + span.tid; i < span.length; i += span.threads) write_grads(a[i], b[i], k, ga[i], gb[i]);
}

// Splits the layers into tables of at most kMaxLayers and calls launch(table,
// items, partials) for each; nearly every network fits in one.
template <typename Launch>
void for_each_table(const LayerPairs& pairs, std::vector<Tensor>* grad_clean, std::vector<Tensor>* grad_perturbed,
                    const Launch& launch) {
  const int layers = static_cast<int>(pairs.layers.size());
  for (int first = 0; first < layers; first += kMaxLayers) {
    LayerTable table{};
    table.first_layer = first;
    table.num_layers = std::min(kMaxLayers, layers - first);
    int64_t items = 0, partials = 0;
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
      table.first_partial[i] = partials;
      items += items_of(pair.sample_numel, pairs.batch);
      partials += pairs.batch * chunks_per_sample(pair.sample_numel);
    }
    table.first_item[table.num_layers] = items;
    STD_TORCH_CHECK(items < (int64_t(1) << 31), "relative_error: too many work items for one launch");
    launch(table, items, partials);
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
    for_each_table(pairs, nullptr, nullptr, [&](const LayerTable& table, int64_t items, int64_t slots) {
      Tensor partials = torch::stable::new_empty(clean[0], {2 * slots}, acc);
      acc_t* partial_ptr = static_cast<acc_t*>(partials.mutable_data_ptr());
      sum_squares_kernel<scalar_t, acc_t><<<items, kThreads, 0, stream>>>(table, pairs.batch, partial_ptr);
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
    for_each_table(pairs, &grad_clean, &grad_perturbed, [&](const LayerTable& table, int64_t items, int64_t) {
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
