"""--device, read the same way by every command: auto, cpu, cuda, cuda:N (and mps
where PyTorch has it), checked before any work so that a bad name or a missing GPU is
one line, never a traceback halfway through."""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["parse_device"]

_EXAMPLES = "auto, cpu, cuda or cuda:N"


def parse_device(text: Optional[str], option: str = "--device") -> torch.device:
    """None or "auto" -> cuda if available, else cpu; otherwise the named device,
    which must exist on this machine (ValueError naming the option otherwise)."""
    name = "auto" if text is None else str(text).strip()
    if name.lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{option} {name!r}: not a device; use {_EXAMPLES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {name}: CUDA is not available on this machine (no GPU or driver, or a "
                             f"CPU-only torch {torch.__version__}); use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"{option} {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"{option} {name}: MPS is not available on this machine; use --device cpu")
    elif device.type != "cpu":
        raise ValueError(f"{option} {name!r}: lsa-fast runs on cpu or cuda devices; use {_EXAMPLES}")
    return device
