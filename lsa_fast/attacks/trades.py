"""TRADES' inner maximisation (Zhang et al. 2019, Algorithm 1, the L-inf version of
their released code): maximise KL(f(x) || f(x')) over the eps-ball from
x' = x + 0.001 * N(0, I), with signed steps."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import ops
from ._common import (
    GeneratorArg,
    attack_mode,
    check_eps,
    check_generator,
    check_model_mode,
    check_steps,
    check_x,
    draw,
    input_gradient,
    is_binary,
    validate,
)


def trades_perturb(
    model,
    x: torch.Tensor,
    eps: float,
    alpha: Optional[float] = None,
    steps: int = 10,
    generator: GeneratorArg = None,
    *,
    model_mode: str = "eval",
) -> torch.Tensor:
    """x' maximising sum_m KL(softmax f(x_m) || softmax f(x'_m)), L-inf ball of radius
    eps, `steps` signed steps of alpha (default 2.5 * eps / steps). Needs no labels.
    A one-logit model is read as the two logits [0, z] (Bernoulli KL). The KL is
    summed over the batch, so each sample's gradient is its own; generator: a
    torch.Generator, or a list of one per sample (each sample's start its own).
    Returns x' detached, x's dtype and shape."""
    eps = check_eps("trades_perturb", eps)
    steps = check_steps("trades_perturb", steps)
    alpha = 2.5 * eps / steps if alpha is None else check_eps("trades_perturb", alpha, "alpha")
    x = check_x("trades_perturb", x)
    check_model_mode("trades_perturb", model_mode)
    generator = check_generator("trades_perturb", generator, x)
    with attack_mode(model, model_mode):
        clean_logits = validate("trades_perturb", model, x)
        if eps == 0:
            return x.clone()
        p_clean = F.softmax(_as_multiclass(clean_logits), dim=1)

        def objective(logits):
            # KLDivLoss(reduction="sum") as TRADES writes it: KL(p_clean || p_adv).
            return F.kl_div(F.log_softmax(_as_multiclass(logits), dim=1), p_clean, reduction="sum")

        noise = draw(x, lambda t, g: t.normal_(generator=g), generator)
        x_adv = x + 0.001 * noise  # TRADES starts here, unclipped; the first step projects
        for _ in range(steps):
            grad, _, _ = input_gradient(model, x_adv, objective, "trades_perturb")
            x_adv = ops.pgd_step(x_adv, grad, x, alpha, eps, norm="linf")
    return x_adv


def _as_multiclass(logits: torch.Tensor) -> torch.Tensor:
    if is_binary(logits):
        z = logits.reshape(-1, 1)
        return torch.cat([torch.zeros_like(z), z], dim=1)
    return logits
