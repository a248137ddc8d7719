"""The AT-LR training loss of one minibatch (Algorithm 3 after the attack), written
once for the eager trainer (lsa_fast.training) and the compiled step
(lsa_fast.compiled_step), which differ only in how they take the layer outputs:

    loss = J(theta, x_hat, y) + sum_{l in MVL} gamma_l * mean_m CM[m, l]

Task losses: one logit -> BCE-with-logits, C logits -> cross-entropy; TRADES:
CE(f(x), y) + beta * KL(f(x) || f(x_hat)) (batch mean), reusing its clean forward.
The clean forward stops at the deepest regularised layer when the clean logits are
not needed (every base but TRADES)."""
from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .attacks import as_multiclass, predicted_class
from .ops import layerwise_regularizer

__all__ = ["StepLoss", "Forward", "atlr_loss", "regularised_loss", "task_loss", "kl_clean_adv"]

# forward(x, record, stop_after, adversarial) -> (logits, or None when stopped after layer
# `stop_after`; the probe points' outputs when record, else None). adversarial: x is x_hat
# (the eager trainer runs that forward through DDP).
Forward = Callable[[torch.Tensor, bool, Optional[int], bool], Tuple[Optional[torch.Tensor], Optional[List]]]


class StepLoss(NamedTuple):
    """One minibatch's loss: total = task + regularizer; stats (detached, on the device)
    = [task loss * batch, correct predictions on x_hat, regulariser * batch]."""

    total: torch.Tensor
    task: torch.Tensor
    regularizer: torch.Tensor
    x_hat: torch.Tensor
    stats: torch.Tensor


def atlr_loss(forward: Forward, base: str, x: torch.Tensor, x_hat: torch.Tensor, y: torch.Tensor,
              layers: Sequence[int], gammas: Sequence[float], lr_grad: str, beta: float, binary: bool,
              real: Optional[int]) -> StepLoss:
    """The loss of Algorithm 3 for x_hat (no backward). layers: the regularised probe
    points (empty: none); real: how many leading samples count in the stats."""
    clean_logits = clean_feats = None
    if base == "trades":
        clean_logits, clean_feats = forward(x, bool(layers), None, False)
    elif layers:
        _, clean_feats = forward(x, True, max(layers), False)
    logits, adv_feats = forward(x_hat, bool(layers), None, True)
    if base == "trades":
        task = task_loss(clean_logits, y, binary) + beta * kl_clean_adv(clean_logits, logits)
    else:
        task = task_loss(logits, y, binary)
    total, regularizer, stats = regularised_loss(task, logits, y, clean_feats, adv_feats, layers, gammas, lr_grad, real)
    return StepLoss(total, task, regularizer, x_hat, stats)


def regularised_loss(task, logits, y, clean_feats, adv_feats, layers, gammas, lr_grad: str, real: Optional[int]):
    """J + LR (Algorithm 3) and the step's detached stats [task * n, correct, LR * n] over
    the first `real` samples (the rest are padding)."""
    if layers:
        regularizer = layerwise_regularizer(clean_feats, adv_feats, list(layers), list(gammas), lr_grad=lr_grad)
        total = task + regularizer
    else:
        regularizer = torch.zeros((), dtype=torch.float32, device=logits.device)
        total = task
    batch = y.shape[0] if real is None else real
    correct = (predicted_class(logits.detach())[:batch] == y[:batch]).sum()
    stats = torch.stack([task.detach().double() * batch, correct.double(), regularizer.detach().double() * batch])
    return total, regularizer, stats


def task_loss(logits: torch.Tensor, y: torch.Tensor, binary: bool) -> torch.Tensor:
    if binary:
        z = logits.reshape(-1)
        return F.binary_cross_entropy_with_logits(z, y.to(z.dtype))
    return F.cross_entropy(logits, y.long())


def kl_clean_adv(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """KL(f(x) || f(x_hat)) averaged over the batch (TRADES' robust term); a one-logit
    model is read as the two logits [0, z], as lsa_fast.attacks.trades_perturb does."""
    clean, adv = as_multiclass(clean_logits.float()), as_multiclass(adv_logits.float())
    return F.kl_div(F.log_softmax(adv, dim=1), F.softmax(clean, dim=1), reduction="batchmean")
