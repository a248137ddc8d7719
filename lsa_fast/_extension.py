"""Loads the compiled library (lsa_fast/_C*.so) that registers the torch.ops.lsa_fast
operators, and says which backends it holds. Without it, lsa_fast runs on
lsa_fast/reference.py, with one warning."""
from __future__ import annotations

import glob
import importlib
import os
import warnings
from functools import lru_cache

import torch

MIN_TORCH = (2, 10)


def _torch_version() -> tuple:
    return tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])


if _torch_version() < MIN_TORCH:
    raise ImportError(
        f"lsa_fast needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} (its extension uses "
        f"PyTorch's stable C ABI, new in 2.10); this environment has torch {torch.__version__}"
    )


def _load():
    """Import lsa_fast._C; return (loaded, reason it failed)."""
    here = os.path.dirname(os.path.abspath(__file__))
    if os.environ.get("LSA_FAST_DISABLE_EXTENSION") == "1":
        return False, "LSA_FAST_DISABLE_EXTENSION=1 is set"
    try:
        importlib.import_module("lsa_fast._C")
        return True, ""
    except ImportError as error:
        candidates = glob.glob(os.path.join(here, "_C*.so"))
        where = candidates[0] if candidates else os.path.join(here, "_C.abi3.so (not built)")
        return False, f"{where}: {error}"


EXTENSION_LOADED, LOAD_ERROR = _load()
if not EXTENSION_LOADED:
    warnings.warn(
        "lsa_fast: the compiled extension could not be loaded, so the slow pure-PyTorch "
        f"reference implementation runs instead. Reason: {LOAD_ERROR}. "
        "Build it with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )


def _has_kernel(op: str, key: str) -> bool:
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(op, key))
    except Exception:  # a private helper: if it moves, report "unknown" as False
        return False


@lru_cache(maxsize=None)
def backend() -> dict:
    """Which implementations serve the ops: {'extension': bool, 'cpu': bool,
    'cuda': bool, 'fallback': 'reference' or None, 'error': str}."""
    if not EXTENSION_LOADED:
        return {"extension": False, "cpu": False, "cuda": False, "fallback": "reference", "error": LOAD_ERROR}
    op = "lsa_fast::relative_error"
    return {
        "extension": True,
        "cpu": _has_kernel(op, "CPU"),
        "cuda": _has_kernel(op, "CUDA"),
        "fallback": None,
        "error": "",
    }
