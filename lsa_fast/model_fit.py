"""Which model fits which dataset, checked before any work: one forward of two zero
samples of the dataset's input shape, and the number of logits against the classes.
A mismatch (model B on moons, model A on MNIST, a 10-class model on 2-class moons) is a
one-line error that names both and says which models fit which datasets, instead of a
traceback from inside a layer after the data has been loaded."""
from __future__ import annotations

import torch
from torch import nn

from .data import DATASET_INFO
from .devices import kept_modes, model_device
from .models import MODEL_NAMES, weights_mismatch_hint

__all__ = ["FITS", "check_model_name", "check_model_fits", "load_weights"]

FITS = "A fits moons, B fits mnist, C, D, wrn-28-10 and wrn-34-10 fit cifar10"


def check_model_name(model_name: str) -> None:
    """A paper model's name or package.module:attr; anything else is an unknown model."""
    name = str(model_name).strip()
    known = {n.lower() for n in MODEL_NAMES}
    if ":" not in name and name.lower().replace("_", "-") not in known:
        raise ValueError(f"unknown model {model_name!r}; valid: {', '.join(MODEL_NAMES)} or package.module:attr "
                         f"({FITS})")


def check_model_fits(model: nn.Module, model_name: str, dataset: str) -> None:
    """ValueError unless `model` takes the dataset's inputs and gives one logit (binary)
    or one per class."""
    info = DATASET_INFO[dataset]
    shape, classes = tuple(info["input_shape"]), int(info["num_classes"])
    what = f"model {model_name} does not fit dataset {dataset} (inputs [N, {', '.join(map(str, shape))}], " \
           f"{classes} classes)"
    try:
        with kept_modes(model, "eval"), torch.no_grad():
            logits = model(torch.zeros((2,) + shape, device=model_device(model)))
    except Exception as error:  # whatever a layer raises on inputs of the wrong shape
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"{what}: {_short(first)}; {FITS}") from None
    if not isinstance(logits, torch.Tensor) or logits.dim() not in (1, 2) or logits.shape[0] != 2:
        raise ValueError(f"{what}: it returns {getattr(logits, 'shape', type(logits).__name__)}, expected logits "
                         f"[N], [N, 1] or [N, {classes}]; {FITS}")
    width = 1 if logits.dim() == 1 else int(logits.shape[1])
    if width != classes and not (classes == 2 and width == 1):
        raise ValueError(f"{what}: it gives {width} logits per sample; {FITS}")


def load_weights(model: nn.Module, state, where: str, model_name: str) -> None:
    """model.load_state_dict(state) (strict), or a one-line ValueError that counts what
    differs and shows the first difference of each kind."""
    try:
        model.load_state_dict(state, strict=True)
        return
    except RuntimeError as error:
        hint = weights_mismatch_hint(error)
    mine = model.state_dict()
    missing = [k for k in mine if k not in state]
    unexpected = [k for k in state if k not in mine]
    resized = [k for k in mine if k in state and tuple(mine[k].shape) != tuple(state[k].shape)]
    parts = []
    if resized:
        k = resized[0]
        parts.append(f"{len(resized)} tensor(s) of another shape (first: {k} is {list(state[k].shape)} in the file, "
                     f"{list(mine[k].shape)} in the model)")
    if missing:
        parts.append(f"{len(missing)} missing (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    what = "; ".join(parts) or "load_state_dict failed"
    raise ValueError(f"{where}: the weights do not fit model {model_name!r}: {what}"
                     + (hint or " (was it trained with another --model or other model options?)")) from None


def _short(text: str, limit: int = 160) -> str:
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " ..."
