"""The build itself: the extension is there, holds the kernels the machine can
compile, speaks only the stable ABI, and the fallback works without it."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lsa_fast

ROOT = Path(__file__).resolve().parents[1]
UNSTABLE_INCLUDE = re.compile(
    r'#\s*include\s*[<"](torch/extension\.h|torch/all\.h|torch/library\.h|torch/types\.h|torch/torch\.h|ATen/|c10/|pybind11/)'
)


def test_extension_is_built_and_loaded():
    info = lsa_fast.backend()
    assert info["extension"], f"lsa_fast._C did not load: {info['error']}"
    assert info["cpu"]


def test_cuda_kernels_are_compiled_where_the_toolchain_allows():
    """With a CUDA build of torch and nvcc present (as on CI), `pip install` must
    have compiled the CUDA kernels, GPU or not."""
    nvcc = shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")
    if torch.version.cuda is None or not nvcc or os.environ.get("LSA_FAST_CUDA") == "0":
        pytest.skip("CPU-only torch or no nvcc: a CPU-only build is expected")
    assert lsa_fast.backend()["cuda"], "the CUDA kernels were not compiled into lsa_fast._C"


def test_csrc_includes_only_the_stable_api():
    if not (ROOT / "csrc").is_dir():
        pytest.skip("testing an installed wheel: no csrc/ beside the tests")
    offenders = []
    for path in (ROOT / "csrc").rglob("*"):
        if path.suffix in {".h", ".cuh", ".cpp", ".cu"}:
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if UNSTABLE_INCLUDE.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "unstable headers in csrc/:\n" + "\n".join(offenders)


def test_library_uses_no_torch_cpp_symbols():
    """Only C symbols of torch's shim cross the boundary: no mangled c10::/at::/torch::
    names, which is what breaks a binary when torch changes version."""
    if shutil.which("nm") is None:
        pytest.skip("nm is not installed")
    library = next(Path(lsa_fast.__file__).parent.glob("_C*.so"))
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(library)], capture_output=True, text=True, check=True).stdout
    torch_cpp = [line for line in undefined.splitlines() if re.search(r"_ZN\d*(c10|at|torch|caffe2)", line)]
    assert not torch_cpp, torch_cpp
    assert "abi3" in library.name


def test_fallback_runs_the_reference_with_one_warning():
    code = (
        "import warnings, torch\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import lsa_fast\n"
        "    a = [torch.ones(2, 3)]; b = [torch.zeros(2, 3)]\n"
        "    cm = lsa_fast.relative_error(a, b); lsa_fast.relative_error(a, b)\n"
        "print(lsa_fast.backend()['fallback'], cm.tolist(), sum('reference implementation' in str(w.message) for w in caught))\n"
    )
    env = dict(os.environ, LSA_FAST_DISABLE_EXTENSION="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    assert out.stdout.split() == ["reference", "[[1.0],", "[1.0]]", "1"], out.stdout + out.stderr


def test_fatbin_holds_sm80_sm90_code_and_ptx():
    """The CUDA kernels ship as sm_80 and sm_90 code plus PTX for newer GPUs (the
    default TORCH_CUDA_ARCH_LIST "8.0;9.0+PTX"). cuobjdump ships in triton."""
    if not lsa_fast.backend()["cuda"]:
        pytest.skip("a CPU-only build")
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        pytest.skip("TORCH_CUDA_ARCH_LIST overrides the default architectures")
    try:
        import triton
    except ImportError:
        triton = None
    candidates = [shutil.which("cuobjdump"), "/usr/local/cuda/bin/cuobjdump"]
    if triton is not None:
        candidates.append(str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"))
    tool = next((c for c in candidates if c and os.path.exists(c)), None)
    if tool is None:
        pytest.skip("no cuobjdump")
    library = str(next(Path(lsa_fast.__file__).parent.glob("_C*.so")))
    elves = subprocess.run([tool, "--list-elf", library], capture_output=True, text=True, check=True).stdout
    ptx = subprocess.run([tool, "--list-ptx", library], capture_output=True, text=True, check=True).stdout
    assert "sm_80" in elves and "sm_90" in elves, elves
    assert "sm_90" in ptx, ptx
