"""PGD (Madry et al. 2018) under the L-inf and L2 threat models, in torchattacks'
PGD / PGDL2 update order; each step is one fused lsa_fast.ops.pgd_step.

Unlike torchattacks' PGDL2, each sample's step is independent of its batch: the loss
is summed over the batch (a mean shrinks every gradient by 1/B), and the L2 step
normalises a gradient first scaled to max |g| = 1 per sample, so that the step's
"||g|| + 1e-10" guard never shortens the step of a sample whose gradient is small
but not zero (a confidently classified sample in fp32). foolbox's L2PGD takes the
same steps (its guard is max(||g||, 1e-12))."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .. import ops
from ._common import (
    GeneratorArg,
    LossArg,
    attack_mode,
    batch_shape,
    check_attack,
    check_counts,
    check_eps,
    check_values,
    draw,
    input_gradient,
    sign_for,
    summed_loss,
)


def pgd_default_alpha(eps: float, steps: int) -> float:
    """The default step size of PGD and TRADES: 2.5 * eps / steps (Madry et al.)."""
    return 2.5 * eps / steps


def pgd_iteration(model, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
                  norm: str = "linf", loss: LossArg = None, sign: float = 1.0,
                  check: Optional[Callable[[torch.Tensor], None]] = None, fn: str = "pgd") -> torch.Tensor:
    """One PGD iteration (a per-step function, lsa_fast.attacks.steps): x_adv + alpha *
    (signed or L2-normalised) gradient of sign * summed loss, projected onto the
    eps-ball around x and [0, 1]. Pure; FGSM-RS's one step is this step too."""
    grad, _, _ = input_gradient(model, x_adv, lambda logits: sign * summed_loss(logits, y, loss, fn), fn, check=check)
    if norm == "l2":
        grad = unit_max_per_sample(grad)
    return ops.pgd_step(x_adv, grad, x, alpha, eps, norm=norm)


def pgd(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: Optional[float] = None,
    steps: int = 10,
    random_start: bool = True,
    norm: str = "linf",
    generator: GeneratorArg = None,
    loss: LossArg = None,
    *,
    targeted: bool = False,
    model_mode: str = "eval",
) -> torch.Tensor:
    """`steps` projected gradient steps of size alpha (default 2.5 * eps / steps,
    Madry et al.) inside the eps-ball around x, clipped to [0, 1].

    norm="linf": signed steps; norm="l2": steps along grad / ||grad||, projection
    onto the per-sample L2 ball. random_start: uniform in the L-inf ball, or (L2) a
    Gaussian direction scaled to a radius U(0, eps), as torchattacks draws them.
    loss: None/"ce" (cross-entropy or BCE for one logit), "bce", "dlr", or a
    callable(logits, y). targeted=True reads y as target classes. generator: a
    torch.Generator, or a list of one per sample (each sample's start its own).
    Returns x_hat detached, x's dtype and shape; no host sync inside the loop."""
    x, y, eps, generator = check_attack("pgd", x, y, eps, model_mode, generator, norm=norm)
    (steps,) = check_counts("pgd", steps=steps)
    alpha = pgd_default_alpha(eps, steps) if alpha is None else check_eps("pgd", alpha, "alpha")
    sign = sign_for(targeted)
    if eps == 0:
        # The eps-ball is the point x (and the L2 projection would divide 0 by 0).
        check_values("pgd", x)
        return x.clone()
    x_adv = random_start_point(x, eps, norm, generator) if random_start else x.clone()
    with attack_mode(model, model_mode):
        for step in range(steps):
            # The value checks (x in [0,1], finite logits, labels) cost one sync: do them once.
            check = (lambda logits: check_values("pgd", x, logits, y)) if step == 0 else None
            x_adv = pgd_iteration(model, x_adv, x, y, eps, alpha, norm, loss, sign, check)
    return x_adv


def unit_max_per_sample(grad: torch.Tensor) -> torch.Tensor:
    """grad / max|grad| per sample (a zero gradient stays zero): the same direction,
    with ||g|| >= 1, so the L2 step's 1e-10 guard is negligible and ||g||^2 cannot
    underflow in fp32, however small the sample's gradient."""
    largest = grad.abs().amax(dim=tuple(range(1, grad.dim())), keepdim=True) if grad.dim() > 1 else grad.abs()
    return grad / torch.where(largest > 0, largest, torch.ones_like(largest))


def random_start_point(x: torch.Tensor, eps: float, norm: str, generator: GeneratorArg = None) -> torch.Tensor:
    """L-inf: x + U(-eps, eps) per element; L2: x + eps * r * d / ||d||, d ~ N(0, I),
    r ~ U(0, 1) per sample (torchattacks' PGDL2). Both clipped to [0, 1]."""
    if norm == "linf":
        delta = draw(x, lambda t, g: t.uniform_(-eps, eps, generator=g), generator)
    else:
        direction = draw(x, lambda t, g: t.normal_(generator=g), generator)
        length = torch.linalg.vector_norm(direction.reshape(x.shape[0], -1), dim=1).reshape(batch_shape(x))
        radius = draw(x, lambda t, g: t.uniform_(0, 1, generator=g), generator, per_sample=True)
        delta = direction * (radius / length * eps)
    return torch.clamp(x + delta, min=0, max=1)
