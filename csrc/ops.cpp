// Operator schemas of lsa_fast and the Python module init. Kernels register
// themselves per backend in cpu/*.cpp and cuda/*.cu; autograd and fake kernels are
// registered from Python (lsa_fast/ops.py). Only PyTorch's stable C API is used, so
// one binary serves every torch >= 2.10 (docs/DESIGN.md section 2).
#include <Python.h>

#include <torch/csrc/stable/library.h>

extern "C" {
// An empty module: importing lsa_fast._C loads this library, whose static
// initialisers register the operators below. Written against the limited Python API
// (no pybind11, which cannot build abi3 modules) so one wheel serves every CPython >= 3.10 (torch >= 2.10 needs 3.10).
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

STABLE_TORCH_LIBRARY(lsa_fast, m) {
  // cm [M, L] (or [L] in batch mode) and the sums of squares [2, M, L] (or [2, L]):
  // ||a - b||^2 then ||a||^2, which the backward reuses.
  m.def("relative_error(Tensor[] clean, Tensor[] perturbed, bool batch_mode, float eps) -> (Tensor, Tensor)");
  // Gradients w.r.t. clean (first L tensors) then perturbed (last L), in one pass.
  m.def(
      "relative_error_backward(Tensor grad_cm, Tensor[] clean, Tensor[] perturbed, Tensor norms, "
      "bool batch_mode, float eps) -> Tensor[]");
  // mu, sigma, per-layer mean, M2, min, max and the MVL mask of Algorithm 1.
  m.def("cm_statistics(Tensor cm, float eta) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // One projected PGD step, fused: x_adv' = clip_[0,1](x + proj_eps(x_adv + step(g) - x)).
  m.def("pgd_step_linf(Tensor x_adv, Tensor grad, Tensor x_orig, float alpha, float eps) -> Tensor");
  m.def("pgd_step_l2(Tensor x_adv, Tensor grad, Tensor x_orig, float alpha, float eps) -> Tensor");
}
