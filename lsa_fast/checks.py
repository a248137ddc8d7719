"""Argument checks shared by every module: one definition of "an int that is not a
bool" and "a finite number", and of the normalised dataset name.

A bool is an int in Python (``True == 1``), so ``batch_size=True`` would pass a plain
``isinstance(value, int)``; every count and size in lsa_fast is checked here instead.
Each check takes the caller's name, so its error line says who rejected what."""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

__all__ = ["is_int", "is_number", "check_int", "check_number", "check_labelled_data", "dataset_key"]


def is_int(value) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A real number (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _prefix(caller: Optional[str], name: str) -> str:
    return f"{caller}: {name}" if caller else name


def check_int(caller: Optional[str], name: str, value, minimum: int = 0) -> int:
    """`value` as an int >= minimum; otherwise ValueError "caller: name must be ...".
    caller None leaves the prefix out (a command-line option names itself)."""
    if not is_int(value) or value < minimum:
        wanted = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{_prefix(caller, name)} must be {wanted}, got {value!r}")
    return int(value)


def check_number(caller: Optional[str], name: str, value, minimum: Optional[float] = None) -> float:
    """`value` as a finite float (>= minimum when given); otherwise ValueError."""
    if not is_number(value) or not math.isfinite(value) or (minimum is not None and value < minimum):
        wanted = "a finite number" if minimum is None else f"a finite number >= {minimum:g}"
        raise ValueError(f"{_prefix(caller, name)} must be {wanted}, got {value!r}")
    return float(value)


def check_labelled_data(caller: Optional[str], x, y, min_dim: int = 1) -> None:
    """x [N, ...] (at least min_dim dimensions) and y [N], tensors holding N >= 1
    samples; otherwise one error line naming the caller."""
    prefix = f"{caller}: " if caller else ""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{prefix}x and y must be tensors")
    if x.dim() < min_dim or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{prefix}x [N, ...] and y [N] must hold the same number of samples, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{prefix}the dataset is empty")


def dataset_key(name) -> str:
    """A dataset name as lsa_fast spells it: "MNIST", "cifar-10", "cifar_10" -> mnist,
    cifar10 (whether it is a known dataset is the caller's check)."""
    return str(name).strip().lower().replace("-", "").replace("_", "")
