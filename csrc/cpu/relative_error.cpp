// CPU kernels of relative_error (forward) and relative_error_backward.
//
// Work is split into (layer, sample, chunk) items whose boundaries depend only on
// the shapes; each item's two sums of squares land in their own slot, and the slots
// are added in a fixed order afterwards: the result has the same bits whatever the
// thread count. Threads get contiguous runs of items balanced by element count.
#include <algorithm>
#include <cstdint>
#include <vector>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "../common/cm_math.h"
#include "../common/dispatch.h"
#include "../common/layer_pairs.h"
#include "sum_squares.h"

namespace lsa_fast {
namespace cpu {
namespace {

constexpr int64_t kGrainElements = 65536;  // below this, one thread does it all

struct WorkItem {
  int64_t layer;
  int64_t sample;
  int64_t begin;   // element offset in the layer's memory
  int64_t length;  // elements
};

struct WorkList {
  std::vector<WorkItem> items;   // in (layer, sample, chunk) order
  std::vector<int64_t> weight_start;  // prefix sum of element counts, for balancing
  int64_t total_weight = 0;
};

WorkList make_work_list(const LayerPairs& pairs) {
  WorkList work;
  for (size_t l = 0; l < pairs.layers.size(); ++l) {
    const int64_t numel = pairs.layers[l].sample_numel;
    const int64_t chunks = chunks_per_sample(numel);
    for (int64_t m = 0; m < pairs.batch; ++m) {
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t length = std::max<int64_t>(0, std::min(kChunkElements, numel - c * kChunkElements));
        work.items.push_back({static_cast<int64_t>(l), m, m * numel + c * kChunkElements, length});
        work.weight_start.push_back(work.total_weight);
        work.total_weight += std::max<int64_t>(length, 1);
      }
    }
  }
  return work;
}

// Runs fn(item_index) for every item, in parallel; each item is visited once, by
// the thread whose element range holds the item's first element.
template <typename Fn>
void for_each_item(const WorkList& work, const Fn& fn) {
  torch::stable::parallel_for(0, work.total_weight, kGrainElements, [&](int64_t begin, int64_t end) {
    const auto& starts = work.weight_start;
    size_t i = std::lower_bound(starts.begin(), starts.end(), begin) - starts.begin();
    for (; i < starts.size() && starts[i] < end; ++i) fn(i);
  });
}

// Two builds of each inner loop: the x86-64 baseline and AVX2+FMA, chosen once.
#if defined(__x86_64__) && defined(__GNUC__)
#define LSA_HAVE_AVX2_PATH 1
bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
template <typename scalar_t, typename acc_t>
__attribute__((target("avx2,fma"))) void sum_squares_avx2(
    const scalar_t* a, const scalar_t* b, int64_t n, acc_t* out) {
  sum_squares(a, b, n, out);
}
template <typename scalar_t, typename acc_t>
__attribute__((target("avx2,fma"))) void grads_avx2(
    const scalar_t* a, const scalar_t* b, int64_t n, GradCoefficients<acc_t> k, scalar_t* ga, scalar_t* gb) {
  relative_error_grads(a, b, n, k, ga, gb);
}
#endif

template <typename scalar_t, typename acc_t>
void sum_squares_dispatch(const scalar_t* a, const scalar_t* b, int64_t n, acc_t* out) {
#ifdef LSA_HAVE_AVX2_PATH
  if (cpu_has_avx2()) return sum_squares_avx2(a, b, n, out);
#endif
  sum_squares(a, b, n, out);
}

template <typename scalar_t, typename acc_t>
void grads_dispatch(const scalar_t* a, const scalar_t* b, int64_t n, GradCoefficients<acc_t> k,
                    scalar_t* ga, scalar_t* gb) {
#ifdef LSA_HAVE_AVX2_PATH
  if (cpu_has_avx2()) return grads_avx2(a, b, n, k, ga, gb);
#endif
  relative_error_grads(a, b, n, k, ga, gb);
}

template <typename scalar_t>
void forward_kernel(const LayerPairs& pairs, bool batch_mode, double eps, Tensor& cm, Tensor& norms) {
  using acc_t = acc_type<scalar_t>;
  const int64_t layers = static_cast<int64_t>(pairs.layers.size());
  const int64_t batch = pairs.batch;
  const WorkList work = make_work_list(pairs);
  std::vector<acc_t> partials(2 * work.items.size(), acc_t(0));
  for_each_item(work, [&](size_t i) {
    const WorkItem& item = work.items[i];
    const LayerPair& pair = pairs.layers[item.layer];
    const scalar_t* a = static_cast<const scalar_t*>(pair.clean.const_data_ptr()) + item.begin;
    const scalar_t* b = static_cast<const scalar_t*>(pair.perturbed.const_data_ptr()) + item.begin;
    sum_squares_dispatch<scalar_t, acc_t>(a, b, item.length, &partials[2 * i]);
  });

  acc_t* cm_out = static_cast<acc_t*>(cm.mutable_data_ptr());
  acc_t* norms_out = static_cast<acc_t*>(norms.mutable_data_ptr());
  const int64_t plane = batch_mode ? layers : batch * layers;  // norms is [2, plane]
  size_t i = 0;
  for (int64_t l = 0; l < layers; ++l) {
    const int64_t chunks = chunks_per_sample(pairs.layers[l].sample_numel);
    acc_t layer_diff = 0, layer_clean = 0;
    for (int64_t m = 0; m < batch; ++m) {
      acc_t diff = 0, clean = 0;
      for (int64_t c = 0; c < chunks; ++c, ++i) {
        diff += partials[2 * i];
        clean += partials[2 * i + 1];
      }
      if (batch_mode) {
        layer_diff += diff;
        layer_clean += clean;
      } else {
        norms_out[m * layers + l] = diff;
        norms_out[plane + m * layers + l] = clean;
        cm_out[m * layers + l] = relative_error_value<acc_t>(diff, clean, static_cast<acc_t>(eps));
      }
    }
    if (batch_mode) {
      norms_out[l] = layer_diff;
      norms_out[plane + l] = layer_clean;
      cm_out[l] = relative_error_value<acc_t>(layer_diff, layer_clean, static_cast<acc_t>(eps));
    }
  }
}

template <typename scalar_t>
void backward_kernel(const LayerPairs& pairs, const Tensor& grad_cm, const Tensor& norms, bool batch_mode,
                     double eps, std::vector<Tensor>& grad_clean, std::vector<Tensor>& grad_perturbed) {
  using acc_t = acc_type<scalar_t>;
  const int64_t layers = static_cast<int64_t>(pairs.layers.size());
  const acc_t* g = static_cast<const acc_t*>(grad_cm.const_data_ptr());
  const acc_t* sums = static_cast<const acc_t*>(norms.const_data_ptr());
  const int64_t plane = batch_mode ? layers : pairs.batch * layers;
  const WorkList work = make_work_list(pairs);
  for_each_item(work, [&](size_t i) {
    const WorkItem& item = work.items[i];
    const LayerPair& pair = pairs.layers[item.layer];
    const int64_t slot = batch_mode ? item.layer : item.sample * layers + item.layer;
    const auto k = relative_error_grad_coefficients<acc_t>(g[slot], sums[slot], sums[plane + slot],
                                                           static_cast<acc_t>(eps));
    const scalar_t* a = static_cast<const scalar_t*>(pair.clean.const_data_ptr()) + item.begin;
    const scalar_t* b = static_cast<const scalar_t*>(pair.perturbed.const_data_ptr()) + item.begin;
    scalar_t* ga = static_cast<scalar_t*>(grad_clean[item.layer].mutable_data_ptr()) + item.begin;
    scalar_t* gb = static_cast<scalar_t*>(grad_perturbed[item.layer].mutable_data_ptr()) + item.begin;
    grads_dispatch<scalar_t, acc_t>(a, b, item.length, k, ga, gb);
  });
}

}  // namespace

std::tuple<Tensor, Tensor> relative_error_cpu(
    std::vector<Tensor> clean, std::vector<Tensor> perturbed, bool batch_mode, double eps) {
  LayerPairs pairs = prepare_layer_pairs("relative_error", clean, perturbed);
  auto outputs = allocate_forward_outputs(pairs, clean[0], batch_mode);
  Tensor cm = outputs.first, norms = outputs.second;
  dispatch_floating(pairs.dtype, "relative_error", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    forward_kernel<scalar_t>(pairs, batch_mode, eps, cm, norms);
  });
  return {cm, norms};
}

std::vector<Tensor> relative_error_backward_cpu(
    Tensor grad_cm, std::vector<Tensor> clean, std::vector<Tensor> perturbed, Tensor norms,
    bool batch_mode, double eps) {
  LayerPairs pairs = prepare_layer_pairs("relative_error_backward", clean, perturbed);
  prepare_backward_inputs(pairs, batch_mode, grad_cm, norms);
  std::vector<Tensor> grad_clean, grad_perturbed;
  allocate_grads(pairs, grad_clean, grad_perturbed);
  dispatch_floating(pairs.dtype, "relative_error_backward", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    backward_kernel<scalar_t>(pairs, grad_cm, norms, batch_mode, eps, grad_clean, grad_perturbed);
  });
  return collect_grads(pairs, clean, perturbed, grad_clean, grad_perturbed);
}

STABLE_TORCH_LIBRARY_IMPL(lsa_fast, CPU, m) {
  m.impl("relative_error", TORCH_BOX(&relative_error_cpu));
  m.impl("relative_error_backward", TORCH_BOX(&relative_error_backward_cpu));
}

}  // namespace cpu
}  // namespace lsa_fast
