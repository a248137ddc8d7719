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
    as_multiclass,
    attack_mode,
    check_attack,
    check_counts,
    check_eps,
    draw,
    input_gradient,
    validate,
)
from .pgd import pgd_default_alpha


def trades_start(x: torch.Tensor, generator: GeneratorArg = None) -> torch.Tensor:
    """x + 0.001 * N(0, I), TRADES' start (unclipped; the first step projects): its only random draw."""
    return x + 0.001 * draw(x, lambda t, g: t.normal_(generator=g), generator)


def clean_probabilities(clean_logits: torch.Tensor) -> torch.Tensor:
    """softmax f(x), the fixed side of TRADES' KL (one logit z: the two logits [0, z])."""
    return F.softmax(as_multiclass(clean_logits), dim=1)


def trades_step(model, x_adv: torch.Tensor, x: torch.Tensor, p_clean: torch.Tensor, eps: float,
                alpha: float) -> torch.Tensor:
    """One step of the inner maximisation (a per-step function, lsa_fast.attacks.steps):
    a signed ascent step on sum_m KL(p_clean_m || softmax f(x_adv_m)), projected. Pure."""

    def objective(logits):
        # KLDivLoss(reduction="sum") as TRADES writes it: KL(p_clean || p_adv).
        return F.kl_div(F.log_softmax(as_multiclass(logits), dim=1), p_clean, reduction="sum")

    grad, _, _ = input_gradient(model, x_adv, objective, "trades_perturb")
    return ops.pgd_step(x_adv, grad, x, alpha, eps, norm="linf")


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
    x, _, eps, generator = check_attack("trades_perturb", x, None, eps, model_mode, generator, labels=False)
    (steps,) = check_counts("trades_perturb", steps=steps)
    alpha = pgd_default_alpha(eps, steps) if alpha is None else check_eps("trades_perturb", alpha, "alpha")
    with attack_mode(model, model_mode):
        clean_logits = validate("trades_perturb", model, x)
        if eps == 0:
            return x.clone()
        p_clean = clean_probabilities(clean_logits)
        x_adv = trades_start(x, generator)
        for _ in range(steps):
            x_adv = trades_step(model, x_adv, x, p_clean, eps, alpha)
    return x_adv
