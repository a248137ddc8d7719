"""FGSM (Goodfellow, Shlens, Szegedy 2015): one signed-gradient step of size eps."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ._common import (
    LossArg,
    attack_mode,
    check_attack,
    check_values,
    input_gradient,
    sign_for,
    summed_loss,
)


def fgsm_step(model, x: torch.Tensor, y: torch.Tensor, eps: float, loss: LossArg = None, sign: float = 1.0,
              check: Optional[Callable[[torch.Tensor], None]] = None) -> torch.Tensor:
    """FGSM's one step (a per-step function, lsa_fast.attacks.steps): clip_[0,1](x +
    eps * sign(grad of sign * summed loss)). Pure."""
    grad, _, _ = input_gradient(model, x, lambda logits: sign * summed_loss(logits, y, loss, "fgsm"), "fgsm",
                                check=check)
    return torch.clamp(x.detach() + eps * grad.sign(), min=0, max=1)


def fgsm(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    loss: LossArg = None,
    targeted: bool = False,
    model_mode: str = "eval",
    generator=None,
) -> torch.Tensor:
    """x_hat = clip_[0,1](x + eps * sign(grad_x J(f(x), y))).

    loss: None/"ce" picks cross-entropy (C logits) or BCE-with-logits (one logit);
    targeted=True reads y as target classes and descends the loss. generator is
    unused (FGSM draws nothing) and accepted so every attack takes the same keywords.
    Each sample's step is its own: the loss is summed over the batch, not averaged.
    Returns x_hat detached, with x's dtype and shape."""
    x, y, eps, _ = check_attack("fgsm", x, y, eps, model_mode, generator)
    sign = sign_for(targeted)
    with attack_mode(model, model_mode):
        return fgsm_step(model, x, y, eps, loss, sign, check=lambda logits: check_values("fgsm", x, logits, y))
