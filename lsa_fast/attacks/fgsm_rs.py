"""FGSM with a random start: the "FAST" adversarial training attack of Wong, Rice,
Kolter 2020 ("Fast is better than free"), Algorithm 3: delta ~ U(-eps, eps), one
signed step of size alpha = 1.25 eps, projection back onto the eps-ball."""
from __future__ import annotations

from typing import Optional

import torch

from ._common import (
    GeneratorArg,
    LossArg,
    attack_mode,
    check_attack,
    check_eps,
    check_values,
    draw,
    sign_for,
)
from .pgd import pgd_iteration


def fgsm_rs_default_alpha(eps: float) -> float:
    """The default step size of FGSM-RS: 1.25 * eps (Wong et al. 2020)."""
    return 1.25 * eps


def fgsm_rs_start(x: torch.Tensor, eps: float, generator: GeneratorArg = None) -> torch.Tensor:
    """FGSM-RS's random start, clip_[0,1](x + U(-eps, eps)): its only random draw."""
    start = draw(x, lambda t, g: t.uniform_(-eps, eps, generator=g), generator)
    return torch.clamp(x + start, min=0, max=1)


def fgsm_rs(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: Optional[float] = None,
    generator: GeneratorArg = None,
    *,
    loss: LossArg = None,
    targeted: bool = False,
    model_mode: str = "eval",
) -> torch.Tensor:
    """x0 = clip_[0,1](x + U(-eps, eps)); x_hat = clip_[0,1](clip_{x +- eps}(x0 + alpha sign(grad))).

    alpha defaults to 1.25 * eps (Wong et al. 2020). Deterministic under `generator`
    (a torch.Generator on x's device, or a list of one per sample: then each sample's
    start is its own, independent of the batch). Returns x_hat detached, x's dtype
    and shape."""
    x, y, eps, generator = check_attack("fgsm_rs", x, y, eps, model_mode, generator)
    alpha = fgsm_rs_default_alpha(eps) if alpha is None else check_eps("fgsm_rs", alpha, "alpha")
    sign = sign_for(targeted)
    x_start = fgsm_rs_start(x, eps, generator)
    with attack_mode(model, model_mode):
        return pgd_iteration(model, x_start, x, y, eps, alpha, "linf", loss, sign,
                             check=lambda logits: check_values("fgsm_rs", x, logits, y), fn="fgsm_rs")
