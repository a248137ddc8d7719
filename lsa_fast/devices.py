"""Devices: the one reading of a device name (auto, cpu, cuda, cuda:N, mps), the device
a model lives on, and a context that restores every submodule's training flag."""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

__all__ = ["parse_device", "model_device", "kept_modes"]

_EXAMPLES = "auto, cpu, cuda or cuda:N"


def parse_device(text, option: str = "--device") -> torch.device:
    """None or "auto" -> cuda if available, else cpu; otherwise the named device (a
    string or a torch.device), which must exist on this machine: a bad name or a missing
    GPU is one ValueError naming `option`, never a traceback halfway through."""
    if isinstance(text, torch.device):
        device, name = text, str(text)
    else:
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


def model_device(model, default: Optional[torch.device] = torch.device("cpu")) -> Optional[torch.device]:
    """The device of the model's first parameter (else its first buffer); `default` for a
    model without tensors or anything that is not an nn.Module."""
    if isinstance(model, torch.nn.Module):
        for tensor in model.parameters():
            return tensor.device
        for tensor in model.buffers():
            return tensor.device
    return default


@contextlib.contextmanager
def kept_modes(model, mode: Optional[str] = None) -> Iterator[None]:
    """Within the block the model is in `mode` ("eval", "train", or None: as it is);
    afterwards every submodule has its own training flag back (model.train(flag) would
    overwrite a submodule the caller froze in eval)."""
    if not isinstance(model, torch.nn.Module):
        yield
        return
    saved = [(module, module.training) for module in model.modules()]
    if mode == "eval":
        model.eval()
    elif mode == "train":
        model.train()
    try:
        yield
    finally:
        for module, training in saved:
            module.training = training
