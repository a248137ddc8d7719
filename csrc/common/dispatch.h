// dtype dispatch at the op boundary: the kernels below it are plain templates.
#pragma once

#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Exception.h>
#include <torch/headeronly/util/Half.h>

#include "cm_math.h"

namespace lsa_fast {

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls body(TypeTag<scalar_t>{}) for fp32, fp64, fp16 and bf16.
template <typename Body>
void dispatch_floating(torch::headeronly::ScalarType dtype, const char* op, Body&& body) {
  using torch::headeronly::ScalarType;
  switch (dtype) {
    case ScalarType::Float:
      body(TypeTag<float>{});
      break;
    case ScalarType::Double:
      body(TypeTag<double>{});
      break;
    case ScalarType::Half:
      body(TypeTag<torch::headeronly::Half>{});
      break;
    case ScalarType::BFloat16:
      body(TypeTag<torch::headeronly::BFloat16>{});
      break;
    default:
      STD_TORCH_CHECK(false, op, ": unsupported dtype; expected float32, float64, float16 or bfloat16");
  }
}

// fp16's largest finite value: where gradients saturate (cm_math.h).
template <>
struct StorageLimit<torch::headeronly::Half> {
  static constexpr float value = 65504.0f;
};

inline torch::headeronly::ScalarType accumulation_dtype(torch::headeronly::ScalarType dtype) {
  using torch::headeronly::ScalarType;
  return dtype == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

}  // namespace lsa_fast
