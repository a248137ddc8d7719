// Stream, device guard and launch checks over the stable C API.
#pragma once

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/Exception.h>

namespace lsa_fast {
namespace cuda {

// torch's current CUDA stream. The shim function lives in libtorch_cuda, which a
// CUDA build of torch has already loaded; it is looked up at run time instead of
// linked, so this library (CUDA runtime linked statically) also loads under a
// CPU-only torch, where its CUDA kernels are simply never called.
inline cudaStream_t current_stream(const torch::stable::Tensor& t) {
  using GetStream = AOTITorchError (*)(int32_t, void**);
  static const GetStream get_stream = [] {
    void* library = dlopen("libtorch_cuda.so", RTLD_LAZY | RTLD_NOLOAD);
    return library ? reinterpret_cast<GetStream>(dlsym(library, "aoti_torch_get_current_cuda_stream")) : nullptr;
  }();
  STD_TORCH_CHECK(get_stream != nullptr, "lsa_fast: libtorch_cuda is not loaded; CUDA tensors need a CUDA build of torch");
  void* stream = nullptr;
  TORCH_ERROR_CODE_CHECK(get_stream(t.get_device_index(), &stream));
  return static_cast<cudaStream_t>(stream);
}

inline void check_launch(const char* op) {
  const cudaError_t error = cudaGetLastError();
  STD_TORCH_CHECK(error == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(error));
}

}  // namespace cuda
}  // namespace lsa_fast
