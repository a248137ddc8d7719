"""Builds lsa_fast._C, the operators of csrc/, as one abi3 extension on PyTorch's
stable C API (torch >= 2.10, CPython >= 3.9).

Environment:
  LSA_FAST_CUDA=1|0      force the CUDA kernels on or off (default: on when the
                         installed torch is a CUDA build and nvcc is found)
  TORCH_CUDA_ARCH_LIST   GPU architectures (default "8.0;9.0+PTX": sm_80 and sm_90
                         code, plus PTX that newer GPUs compile at load time)
  LSA_FAST_DEBUG=1       -O0 -g
Build against the torch already installed: pip install --no-build-isolation .
"""
import glob
import os

from setuptools import setup


def find_cuda_home():
    """CUDA_HOME or CUDA_PATH, else /usr/local/cuda, else the directory above nvcc on
    PATH. (torch's own guess takes /usr/local when nvcc is a wrapper in /usr/local/bin.)"""
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return os.path.realpath(candidate)
    return None


if find_cuda_home():  # read by torch.utils.cpp_extension when it is imported
    os.environ["CUDA_HOME"] = find_cuda_home()

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0+PTX"


def read_flags(compiler: str) -> list:
    """csrc/flags/<compiler>.txt: the flags CMakeLists.txt passes too (one list, two builds)."""
    with open(os.path.join(HERE, "csrc", "flags", f"{compiler}.txt")) as f:
        return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]


def use_cuda() -> bool:
    forced = os.environ.get("LSA_FAST_CUDA")
    if forced in ("0", "1"):
        if forced == "1" and (torch.version.cuda is None or CUDA_HOME is None):
            raise RuntimeError(
                "LSA_FAST_CUDA=1 but "
                + ("torch is a CPU-only build" if torch.version.cuda is None else "nvcc was not found (set CUDA_HOME)")
            )
        return forced == "1"
    # A GPU need not be present: a CUDA torch and nvcc are enough to compile.
    return torch.version.cuda is not None and CUDA_HOME is not None


def extensions():
    debug = os.environ.get("LSA_FAST_DEBUG") == "1"
    optimise = ["-O0", "-g"] if debug else ["-O3"]
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cxx = optimise + ["-std=c++17"] + read_flags("cxx")
    if not use_cuda():
        print("lsa_fast: building the CPU kernels only")
        return [CppExtension("lsa_fast._C", sources, extra_compile_args={"cxx": cxx}, py_limited_api=True)]
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    print(f"lsa_fast: building the CPU and CUDA kernels for {os.environ['TORCH_CUDA_ARCH_LIST']} ({CUDA_HOME})")
    sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    nvcc = optimise + ["-std=c++17", "-DUSE_CUDA"] + read_flags("nvcc")
    # CppExtension rather than CUDAExtension: the CUDA runtime is linked statically and
    # nothing of torch_cuda/c10_cuda is linked, so the same binary also loads under a
    # CPU-only torch (its CUDA kernels then simply never run).
    return [
        CppExtension(
            "lsa_fast._C",
            sources,
            include_dirs=[os.path.join(CUDA_HOME, "include")],
            library_dirs=[os.path.join(CUDA_HOME, "lib64")],
            libraries=["cudart_static", "rt", "pthread", "dl"],
            extra_compile_args={"cxx": cxx + ["-DUSE_CUDA"], "nvcc": nvcc},
            py_limited_api=True,
        )
    ]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
