"""FAB, the Fast Adaptive Boundary attack (Croce & Hein 2020, "Minimally distorted
adversarial examples with a fast adaptive boundary attack", Algorithm 1), untargeted
and targeted, L-inf, L2 and L1, with AutoAttack's conventions.

Read beside the paper. Each iteration, at the current iterate x^(i):
- linearise the decision boundary: for every class j != y, f_j - f_y and its input
  gradient; keep the class whose linearised boundary is closest in the chosen norm
  (distance |f_j - f_y| / ||grad_j - grad_y||_q, q the dual norm). Targeted: the one
  boundary between y and the target class;
- project both x^(i) and the original x onto that hyperplane inside the box [0, 1]
  (_projections.py): displacements d_1, d_2;
- step to the convex combination, with overshoot eta:
    x^(i+1) = clip_[0,1]((1 - a)(x^(i) + eta d_1) + a (x + eta d_2)),
    a = min(||d_1|| / (||d_1|| + ||d_2||), alpha_max);
- where x^(i+1) is misclassified: keep it if it is the closest one so far, then step
  back towards x: x^(i+1) = x + beta (x^(i+1) - x).
The first run starts at x; restarts start at a random point at distance eps / 2.
A sample counts as broken when a run found a misclassified point within eps.

Runs (restarts, target classes) are independent, so they are batched: every
(run, sample) pair is a row of one batch, iterated together without a host sync; a
sample's output is its first successful run's point, in AutoAttack's order
(restarts inside target classes). Rows beyond `max_rows` go in later groups, which
skip the samples already broken (one host sync per group). On a CPU, where a pass
costs in proportion to its rows, every run is a group of its own (max_rows = N):
a later run then only works on the samples no earlier run broke, as the authors'
loop does; on an accelerator the runs share one batch (max_rows 4096)."""
from __future__ import annotations

from typing import Optional

import torch

from ._common import (
    GeneratorArg,
    attack_mode,
    batch_shape,
    check_attack,
    check_counts,
    correct,
    draw,
    input_gradient,
    is_binary,
    validate,
)
from ._projections import PROJECTIONS

FAB_NORMS = ("linf", "l2", "l1")
_DUAL = {"linf": 1, "l2": 2, "l1": float("inf")}  # the norm of the gradient that measures distance
_NORM_ORD = {"linf": float("inf"), "l2": 2, "l1": 1}


def fab(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 100,
    norm: str = "linf",
    targeted: bool = False,
    n_restarts: int = 1,
    n_target_classes: int = 9,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    generator: GeneratorArg = None,
    *,
    max_rows: Optional[int] = None,
    model_mode: str = "eval",
) -> torch.Tensor:
    """FAB with `steps` iterations per run and `n_restarts` runs (the first from x,
    the others from random points at distance eps / 2). targeted=True is FAB-T: the
    runs aim at each of the n_target_classes most likely wrong classes of the clean
    input (capped at C - 1). eps bounds the perturbation that counts as a success (FAB
    itself minimises the distance). generator: a torch.Generator or a list of one
    per sample (the random starts). Returns x_hat detached, x's dtype and shape: the
    first run's closest misclassified point within eps, else x."""
    steps, n_restarts, n_target_classes = check_counts(
        "fab", steps=steps, n_restarts=n_restarts, n_target_classes=n_target_classes)
    if max_rows is not None:
        (max_rows,) = check_counts("fab", max_rows=max_rows)
    if not 0 <= alpha_max <= 1 or not eta > 0 or not 0 < beta <= 1:
        raise ValueError(f"fab: need 0 <= alpha_max <= 1, eta > 0, 0 < beta <= 1; got {alpha_max}, {eta}, {beta}")
    x, y, eps, generator = check_attack("fab", x, y, eps, model_mode, generator, norm=norm, norms=FAB_NORMS)
    if max_rows is None:
        max_rows = max(x.shape[0], 1) if x.device.type == "cpu" else 4096

    with attack_mode(model, model_mode):
        clean_logits = validate("fab", model, x, y)
        if is_binary(clean_logits):
            raise ValueError("fab: needs a model with C >= 2 logits (a one-logit model has no class boundary)")
        if eps == 0:
            return x.clone()
        runs = _runs(clean_logits, targeted, n_target_classes, n_restarts)
        # Drawn for the whole batch up front: sample i's starts never depend on the others.
        starts = [x if restart == 0 else _random_start(x, eps, norm, generator) for _, restart in runs]
        out = x.clone()
        done = ~correct(clean_logits, y)  # misclassified already: nothing to do
        per_group = max(1, max_rows // x.shape[0])
        for first in range(0, len(runs), per_group):
            group = range(first, min(first + per_group, len(runs)))
            active = None if first == 0 else (~done).nonzero().squeeze(1)  # one host sync per group
            if active is not None and active.numel() == 0:
                break
            xs, ys = _take(x, active), _take(y, active)
            rows = len(group)
            x_adv, dist = _fab_rows(
                model,
                xs.repeat(rows, *[1] * (x.dim() - 1)),
                ys.repeat(rows),
                None if not targeted else torch.cat([_take(runs[r][0], active) for r in group]),
                torch.cat([_take(starts[r], active) for r in group]),
                norm, steps, alpha_max, eta, beta,
            )
            success = (dist <= eps).reshape(rows, -1)
            x_adv = x_adv.reshape(rows, *xs.shape)
            group_out, group_done = _take(out, active).clone(), _take(done, active).clone()
            for r in range(rows):  # the first successful run wins, in run order
                take = success[r] & ~group_done
                group_out = torch.where(take.reshape(batch_shape(xs)), x_adv[r], group_out)
                group_done = group_done | success[r]
            _put(out, active, group_out)
            _put(done, active, group_done)
    return out


def _runs(clean_logits, targeted, n_target_classes, n_restarts):
    """(target class per sample or None, restart index) of every run, in order."""
    if not targeted:
        return [(None, restart) for restart in range(n_restarts)]
    ranked = clean_logits.argsort(dim=1)  # ranked[:, -1] is the predicted class
    ranks = range(2, min(n_target_classes, clean_logits.shape[1] - 1) + 2)
    return [(ranked[:, -rank], restart) for rank in ranks for restart in range(n_restarts)]


def _take(t, active):
    return t if active is None else t[active]


def _put(t, active, value):
    if active is None:
        t.copy_(value)
    else:
        t[active] = value


def _flat_norm(t, norm):
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), ord=_NORM_ORD[norm], dim=1)


def _random_start(x, eps, norm, generator):
    """The authors' restart point: x + (eps / 2) t / ||t||, t uniform in [-1, 1]^D
    (L-inf) or Gaussian (L2, L1), clipped to [0, 1]."""
    if norm == "linf":
        t = draw(x, lambda r, g: r.uniform_(-1, 1, generator=g), generator)
    else:
        t = draw(x, lambda r, g: r.normal_(generator=g), generator)
    return (x + 0.5 * eps * t / _flat_norm(t, norm).reshape(batch_shape(x))).clamp(0, 1)


def _boundary(model, x1, y, target, norm):
    """The linearised boundary nearest to x1: (f, g, logits) with f = f_j - f_y at x1
    and g its input gradient, per row, flattened to [M, D]."""
    rows = torch.arange(x1.shape[0], device=x1.device)
    if target is not None:

        def margin(logits):
            return logits[rows, target] - logits[rows, y]

        grad, logits, f = input_gradient(model, x1, margin, "fab")
        return f, grad.reshape(x1.shape[0], -1), logits
    x_in = x1.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_in)
        jacobian = torch.stack(
            [
                torch.autograd.grad(logits[:, c].sum(), x_in, retain_graph=c < logits.shape[1] - 1)[0]
                for c in range(logits.shape[1])
            ],
            dim=1,
        ).reshape(x1.shape[0], logits.shape[1], -1)
    logits = logits.detach()
    df = logits - logits[rows, y][:, None]
    dg = jacobian - jacobian[rows, y][:, None]
    distance = df.abs() / (torch.linalg.vector_norm(dg, ord=_DUAL[norm], dim=2) + 1e-12)
    distance[rows, y] = float("inf")  # y's own "boundary"
    nearest = distance.argmin(dim=1)
    return df[rows, nearest], dg[rows, nearest], logits


def _fab_rows(model, x0, y, target, start, norm, steps, alpha_max, eta, beta):
    """One FAB run per row, all rows together. Returns (closest misclassified point
    found, its distance to x0; inf where none was found). No host sync: the rows
    that step back are selected with torch.where. (The forward that checks x^(i+1)
    is not reused for the next linearisation: FAB hovers at the boundary, so most
    rows step back and would need a new one anyway.)"""
    project = PROJECTIONS[norm]
    m = x0.shape[0]
    shape = batch_shape(x0)
    x0_flat = x0.reshape(m, -1)
    x1 = start.clone()
    best = x0.clone()
    best_dist = torch.full((m,), float("inf"), dtype=x0.dtype, device=x0.device)
    for _ in range(steps):
        f, g, _ = _boundary(model, x1, y, target, norm)
        x1_flat = x1.reshape(m, -1)
        b = (g * x1_flat).sum(1) - f  # the hyperplane <g, z> = b: f linearised at x1 is zero
        d = project(torch.cat([x1_flat, x0_flat]), torch.cat([g, g]), torch.cat([b, b]))
        d1, d2 = d[:m].reshape(x0.shape), d[m:].reshape(x0.shape)
        size = _flat_norm(d, norm).clamp(min=1e-8)
        a = (size[:m] / (size[:m] + size[m:])).clamp(0, alpha_max).reshape(shape)
        x1 = ((x1 + eta * d1) * (1 - a) + (x0 + eta * d2) * a).clamp(0, 1)
        with torch.no_grad():
            fooled = ~correct(model(x1), y)
        dist = _flat_norm(x1 - x0, norm)
        closer = fooled & (dist < best_dist)
        best = torch.where(closer.reshape(shape), x1, best)
        best_dist = torch.where(closer, dist, best_dist)
        x1 = torch.where(fooled.reshape(shape), x0 + (x1 - x0) * beta, x1)  # back towards x
    return best, best_dist
