"""Builds lsa_fast._C, the operators of csrc/, as one abi3 extension on PyTorch's
stable C API (torch >= 2.10, CPython >= 3.10: torch itself needs 3.10).

Environment:
  LSA_FAST_CUDA=1|0      force the CUDA kernels on or off (default: on when the
                         installed torch is a CUDA build and nvcc is found)
  CUDA_HOME              the CUDA toolkit (bin/nvcc, include/, lib64/libcudart_static.a);
                         default: CUDA_PATH, /usr/local/cuda, or above nvcc on PATH
  TORCH_CUDA_ARCH_LIST   GPU architectures (default "8.0;9.0+PTX": sm_80 and sm_90
                         code, plus PTX that newer GPUs compile at load time)
  LSA_FAST_DEBUG=1       -O0 -g
Build against the torch already installed: pip install --no-build-isolation .
"""
import glob
import os
import shutil

from setuptools import setup


def is_cuda_toolkit(path) -> bool:
    """nvcc, the runtime headers and the static runtime: what the CUDA build uses."""
    return bool(path) and all(
        os.path.exists(os.path.join(path, part))
        for part in ("bin/nvcc", "include/cuda_runtime.h", "lib64/libcudart_static.a")
    )


def find_cuda_home():
    """CUDA_HOME or CUDA_PATH, else /usr/local/cuda, else the toolkit that nvcc on PATH
    runs, or None. Only a complete toolkit counts: torch's own guess takes /usr/local
    when nvcc is a wrapper script in /usr/local/bin, and a CUDA_HOME that points nowhere
    must mean a CPU-only build, not a failed one."""
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    return next((os.path.realpath(c) for c in candidates if is_cuda_toolkit(c)), None)


CUDA_ROOT = find_cuda_home()
if CUDA_ROOT:  # read by torch.utils.cpp_extension when it is imported
    os.environ["CUDA_HOME"] = CUDA_ROOT

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0+PTX"


def read_flags(compiler: str) -> list:
    """csrc/flags/<compiler>.txt: the flags CMakeLists.txt passes too (one list, two builds)."""
    with open(os.path.join(HERE, "csrc", "flags", f"{compiler}.txt")) as f:
        return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]


def why_not_cuda():
    """None when the CUDA kernels can be compiled, else the reason they cannot."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if CUDA_ROOT is None:
        return "no CUDA toolkit found; set CUDA_HOME to the directory with bin/nvcc"
    return None  # a GPU need not be present: a CUDA torch and nvcc are enough to compile


def cpu_only_reason():
    """None to build the CUDA kernels, else why the build is CPU-only."""
    forced = os.environ.get("LSA_FAST_CUDA")
    if forced == "0":
        return "LSA_FAST_CUDA=0"
    if forced == "1" and why_not_cuda():
        raise RuntimeError(f"LSA_FAST_CUDA=1 but {why_not_cuda()}")
    return why_not_cuda()


def extensions():
    debug = os.environ.get("LSA_FAST_DEBUG") == "1"
    optimise = ["-O0", "-g"] if debug else ["-O3"]
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cxx = optimise + ["-std=c++17"] + read_flags("cxx")
    reason = cpu_only_reason()
    if reason:
        print(f"lsa_fast: building the CPU kernels only ({reason})")
        return [CppExtension("lsa_fast._C", sources, extra_compile_args={"cxx": cxx}, py_limited_api=True)]
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    print(f"lsa_fast: building the CPU and CUDA kernels for {os.environ['TORCH_CUDA_ARCH_LIST']} ({CUDA_ROOT})")
    sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    nvcc = optimise + ["-std=c++17", "-DUSE_CUDA"] + read_flags("nvcc")
    # CppExtension rather than CUDAExtension: the CUDA runtime is linked statically and
    # nothing of torch_cuda/c10_cuda is linked, so the same binary also loads under a
    # CPU-only torch (its CUDA kernels then simply never run).
    return [
        CppExtension(
            "lsa_fast._C",
            sources,
            include_dirs=[os.path.join(CUDA_ROOT, "include")],
            library_dirs=[os.path.join(CUDA_ROOT, "lib64")],
            libraries=["cudart_static", "rt", "pthread", "dl"],
            extra_compile_args={"cxx": cxx + ["-DUSE_CUDA"], "nvcc": nvcc},
            py_limited_api=True,
        )
    ]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)},
    # abi3 from CPython 3.10 on: torch defines Py_LIMITED_API=0x030A0000 for py_limited_api
    # extensions, and torch >= 2.10 needs Python >= 3.10 anyway (requires-python).
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
