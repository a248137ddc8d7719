"""FGSM with a random start: the "FAST" adversarial training attack of Wong, Rice,
Kolter 2020 ("Fast is better than free"), Algorithm 3: delta ~ U(-eps, eps), one
signed step of size alpha = 1.25 eps, projection back onto the eps-ball."""
from __future__ import annotations

from typing import Optional

import torch

from .. import ops
from ._common import (
    GeneratorArg,
    LossArg,
    attack_mode,
    check_eps,
    check_generator,
    check_model_mode,
    check_values,
    check_x,
    check_y,
    draw,
    input_gradient,
    sign_for,
    summed_loss,
)


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
    eps = check_eps("fgsm_rs", eps)
    alpha = 1.25 * eps if alpha is None else check_eps("fgsm_rs", alpha, "alpha")
    x = check_x("fgsm_rs", x)
    y = check_y("fgsm_rs", x, y)
    check_model_mode("fgsm_rs", model_mode)
    generator = check_generator("fgsm_rs", generator, x)
    sign = sign_for(targeted)
    start = draw(x, lambda t, g: t.uniform_(-eps, eps, generator=g), generator)
    x_start = torch.clamp(x + start, min=0, max=1)
    with attack_mode(model, model_mode):
        grad, _, _ = input_gradient(
            model,
            x_start,
            lambda logits: sign * summed_loss(logits, y, loss, "fgsm_rs"),
            "fgsm_rs",
            check=lambda logits: check_values("fgsm_rs", x, logits, y),
        )
    return ops.pgd_step(x_start, grad, x, alpha, eps, norm="linf")
