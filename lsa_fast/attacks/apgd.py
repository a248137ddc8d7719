"""APGD, Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks", Algorithm 1), with the CE and DLR
losses and the targeted DLR version (APGD-T), L-inf and L2.

Read beside the paper:
- step size eta^(0) = 2 eps; checkpoints w_j = ceil(p_j N) with p_0 = 0, p_1 = 0.22,
  p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06): windows of 0.22 N steps, each
  0.03 N shorter than the last, at least 0.06 N (as the authors' code computes them);
- z^(k+1) = P(x^(k) + eta^(k) step(grad)),
  x^(k+1) = P(x^(k) + alpha (z^(k+1) - x^(k)) + (1 - alpha)(x^(k) - x^(k-1))),
  alpha = 0.75 (alpha = 1 for the first step);
- at a checkpoint the step size halves, and the iterate restarts from the best point,
  for the samples where
    condition 1: the loss increased in at most rho * (w_j - w_{j-1}) of the window's
                 steps (the paper writes "<", the authors' code "<="; we follow the code), or
    condition 2: the step size was not halved at the last checkpoint and the best loss
                 has not improved since.

A run is a fixed-shape iteration: apgd_schedule computes the checkpoints up front,
apgd_start makes an APGDState from the random start (apgd_random_start, drawn before
the loop), and apgd_step, steps + 1 times, is pure (state in, state out): the
halving, the restarts from the best point and the bookkeeping are torch.where masks,
with no host sync and no Python branch on a tensor's value, so one compiled graph (or
a CUDA graph) serves every step; apgd_result reads the answer. Each sample's run is
its own (per-sample losses summed for the gradient, per-sample step sizes and
checkpoints), so a sample's result does not depend on its batch.

Several runs (restarts, target classes): as AutoAttack does, every run after the
first attacks only the samples that no earlier run has fooled (skip_fooled=True, one
host sync per run to gather them; nothing is left to do for a fooled sample, whose
output is the first misclassified point found). skip_fooled=False runs every run on
the whole batch without a host sync, with the same result. Per sample, the output is
the first misclassified point found, else the highest-loss point.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ._common import (
    GeneratorArg,
    LossArg,
    attack_mode,
    batch_shape,
    check_attack,
    check_choice,
    check_counts,
    correct,
    dlr_targeted_loss,
    draw,
    input_gradient,
    is_binary,
    per_sample_loss,
    validate,
)

MOMENTUM = 0.75  # alpha of Algorithm 1


def apgd(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 100,
    norm: str = "linf",
    loss: LossArg = "ce",
    targeted: bool = False,
    n_restarts: int = 1,
    n_target_classes: int = 9,
    rho: float = 0.75,
    generator: GeneratorArg = None,
    *,
    skip_fooled: bool = True,
    model_mode: str = "eval",
    eot_steps: int = 1,
) -> torch.Tensor:
    """APGD with `steps` iterations per run and `n_restarts` random restarts.

    loss: "ce" (cross-entropy; BCE-with-logits for a one-logit model), "dlr", or a
    callable(logits, y) -> [N]. targeted=True is APGD-T: for each of the
    n_target_classes most likely wrong classes of the clean input (capped at C - 1),
    n_restarts runs of the targeted loss (targeted DLR for loss="dlr", -CE(target) for
    loss="ce"); y stays the true label, success is any misclassification.
    skip_fooled: runs after the first attack only the samples not fooled yet (one
    host sync per run); False: every run on the whole batch, no host sync.
    generator: a torch.Generator, or a list of one per sample (each sample's random
    starts its own). eot_steps > 1 averages the input gradient over that many
    forward/backward passes (EOT, for randomised models, AutoAttack's "rand" version).
    Returns x_hat detached, x's dtype and shape: a misclassified
    point where one was found, else the highest-loss point."""
    steps, n_restarts, n_target_classes, eot_steps = check_counts(
        "apgd", steps=steps, n_restarts=n_restarts, n_target_classes=n_target_classes, eot_steps=eot_steps)
    if not callable(loss):
        check_choice("apgd", "loss", loss, ("ce", "dlr"))
    if not 0 < rho <= 1:
        raise ValueError(f"apgd: rho must lie in (0, 1], got {rho}")
    x, y, eps, generator = check_attack("apgd", x, y, eps, model_mode, generator, norm=norm)

    with attack_mode(model, model_mode):
        clean_logits = validate("apgd", model, x, y)
        if eps == 0:
            return x.clone()
        objective = apgd_objective(clean_logits, loss, targeted)
        targets = _targets(clean_logits, targeted, n_target_classes, n_restarts)
        x_out = x.clone()
        out_fooled = torch.zeros_like(y, dtype=torch.bool)
        out_loss = torch.full((x.shape[0],), float("-inf"), dtype=clean_logits.dtype, device=x.device)
        for run, target in enumerate(targets):
            # Drawn for the whole batch, as without skip_fooled: the same starts either way.
            start = apgd_random_start(x, eps, norm, generator)
            active = None  # all samples
            if skip_fooled and run > 0:
                active = (~out_fooled).nonzero().squeeze(1)  # the run's one host sync
                if active.numel() == 0:
                    break
            x_run, fooled, best_loss = _apgd_run(
                model, _take(x, active), _take(y, active), _take(target, active), _take(start, active),
                eps, steps, norm, objective, rho, apgd_loss_dtype(clean_logits.dtype), eot_steps,
            )
            # First success wins; among still-robust samples the highest loss wins.
            was_fooled, had_loss = _take(out_fooled, active), _take(out_loss, active)
            take = ~was_fooled & (fooled | (best_loss > had_loss))
            _put(x_out, active, torch.where(take.reshape(batch_shape(x_run)), x_run, _take(x_out, active)))
            _put(out_loss, active, torch.where(take, best_loss.to(out_loss.dtype), had_loss))
            _put(out_fooled, active, was_fooled | fooled)
    return x_out


def apgd_objective(clean_logits, loss, targeted):
    """The per-sample loss of a run, as f(logits, y, target) -> [N]."""
    if not targeted:
        return lambda logits, y, target: per_sample_loss(logits, y, loss, "apgd")
    if callable(loss):
        raise ValueError("apgd: targeted=True takes loss='dlr' or 'ce', not a callable")
    if is_binary(clean_logits):
        raise ValueError("apgd: targeted=True needs a model with C >= 3 logits (a one-logit model has one wrong class)")
    if loss == "dlr":
        return lambda logits, y, target: dlr_targeted_loss(logits, y, target, "apgd")
    return lambda logits, y, target: -per_sample_loss(logits, target, "ce", "apgd")


def _targets(clean_logits, targeted, n_target_classes, n_restarts):
    """The target class of every run ([N] per run; None when untargeted), in
    AutoAttack's order: restarts inside target classes."""
    if not targeted:
        return [None] * n_restarts
    ranked = clean_logits.argsort(dim=1)  # ascending: ranked[:, -1] is the top class
    runs = []
    for rank in range(2, min(n_target_classes, clean_logits.shape[1] - 1) + 2):
        runs.extend([ranked[:, -rank]] * n_restarts)  # auto-attack: the rank-th most likely class at x
    return runs


def _take(t, active):
    return t if t is None or active is None else t[active]


def _put(t, active, value):
    if active is None:
        t.copy_(value)
    else:
        t[active] = value


class APGDSchedule(NamedTuple):
    """What each of a run's steps + 1 evaluations does, computed up front ([steps + 1]
    tensors on x's device, indexed by APGDState.k inside the step): `first`, the
    start's evaluation; `momentum`, alpha of the move after it (1 after the start);
    `checkpoint`, a checkpoint w_j falls on it; `threshold`, rho * (w_j - w_{j-1}),
    condition 1's bound there."""

    first: torch.Tensor
    momentum: torch.Tensor
    checkpoint: torch.Tensor
    threshold: torch.Tensor


class APGDState(NamedTuple):
    """One run of Algorithm 1 between two steps; per sample: every tensor has the batch
    first ([B, ...] like x, or [B] / [B, 1, ...] per-sample values)."""

    k: torch.Tensor  # 0-d int64: the evaluation the next step makes (0: the start)
    x_adv: torch.Tensor  # the point the next step evaluates
    x_prev: torch.Tensor  # the point before it (the momentum term)
    step_size: torch.Tensor  # eta^(k), [B, 1, ...]
    x_best: torch.Tensor  # the highest-loss point so far, its gradient and loss
    grad_best: torch.Tensor
    loss_best: torch.Tensor
    loss_prev: torch.Tensor  # the loss of the last evaluation
    increases: torch.Tensor  # evaluations of this window where the loss went up
    reduced_last: torch.Tensor  # the step size halved at the last checkpoint
    loss_best_last: torch.Tensor  # loss_best at the last checkpoint
    x_fooled: torch.Tensor  # the first misclassified point found
    fooled: torch.Tensor


def apgd_schedule(steps: int, rho: float, x: torch.Tensor, loss_dtype: torch.dtype) -> APGDSchedule:
    """The checkpoints of a run of `steps` steps, as the authors' code computes them:
    windows of 0.22 N steps, each 0.03 N shorter than the last, at least 0.06 N.
    momentum in x's dtype, threshold in the losses' (apgd_loss_dtype)."""
    window = max(int(0.22 * steps), 1)  # w_1 - w_0
    window_min = max(int(0.06 * steps), 1)
    window_decrease = max(int(0.03 * steps), 1)
    checkpoint, threshold = [False] * (steps + 1), [0.0] * (steps + 1)
    k = window
    while k <= steps:
        checkpoint[k], threshold[k] = True, rho * window
        window = max(window - window_decrease, window_min)
        k += window
    first = [k == 0 for k in range(steps + 1)]
    momentum = [1.0 if k == 0 else MOMENTUM for k in range(steps + 1)]
    device = x.device
    return APGDSchedule(torch.tensor(first, device=device), torch.tensor(momentum, dtype=x.dtype, device=device),
                        torch.tensor(checkpoint, device=device),
                        torch.tensor(threshold, dtype=loss_dtype, device=device))


def apgd_loss_dtype(logits_dtype: torch.dtype) -> torch.dtype:
    """The dtype a run keeps its losses in: at least fp32, which holds a bf16/fp16 loss
    exactly and the fp32 loss of a cross-entropy under autocast."""
    return torch.promote_types(logits_dtype, torch.float32)


def apgd_start(x: torch.Tensor, start: torch.Tensor, eps: float, norm: str, loss_dtype: torch.dtype) -> APGDState:
    """The state before a run's first step: start (apgd_random_start's draw) projected;
    nothing evaluated yet."""
    x_adv = _project(start, x, eps, norm)
    batch = x.shape[0]

    def losses():
        return torch.zeros(batch, dtype=loss_dtype, device=x.device)

    # No two fields share memory: a compiled step sees the same aliasing in every call.
    return APGDState(
        k=torch.zeros((), dtype=torch.long, device=x.device), x_adv=x_adv, x_prev=x_adv.clone(),
        step_size=torch.full(batch_shape(x), 2 * eps, dtype=x.dtype, device=x.device),  # eta^(0) = 2 eps
        x_best=x_adv.clone(), grad_best=torch.zeros_like(x_adv), loss_best=losses(), loss_prev=losses(),
        increases=losses(), loss_best_last=losses(), x_fooled=x_adv.clone(),
        # no condition 2 at the first checkpoint (authors' code)
        reduced_last=torch.ones(batch, dtype=torch.bool, device=x.device),
        fooled=torch.zeros(batch, dtype=torch.bool, device=x.device),
    )


def apgd_step(model, state: APGDState, schedule: APGDSchedule, x, y, target, eps: float, norm: str,
              objective, eot_steps: int = 1) -> APGDState:
    """One step of a run (pure: state in, state out; no host sync, no Python branch on
    a tensor's value, the same shapes every step): the gradient at state.x_adv, the
    bookkeeping of its loss (first success, best point, the window's increases; at a
    checkpoint the halving and the restart from the best point, by masks), then the
    move to the next point. A run is steps + 1 of these (the first evaluates the start;
    the last one's move is not used). objective(logits, y, target) -> [B] losses;
    eot_steps > 1 averages the gradient over that many passes (EOT)."""
    k = state.k
    first, momentum, checkpoint, threshold = (_at(entry, k) for entry in schedule)
    grad, logits, loss = _eot_gradient(model, state.x_adv, lambda z: objective(z, y, target), eot_steps)
    x_adv = state.x_adv.detach()  # a compiled caller passes a leaf that requires grad: the state holds none
    loss = loss.to(state.loss_best.dtype)  # exact (the state's dtype is at least the loss's): the same dtypes every step
    now_fooled = ~correct(logits, y)
    x_fooled = torch.where(_per_sample(now_fooled & ~state.fooled, x), x_adv, state.x_fooled)
    fooled = state.fooled | now_fooled

    increases = state.increases + ((loss > state.loss_prev) & ~first).to(state.increases.dtype)
    improved = (loss > state.loss_best) | first
    x_best = torch.where(_per_sample(improved, x), x_adv, state.x_best)
    grad_best = torch.where(_per_sample(improved, x), grad, state.grad_best)
    loss_best = torch.where(improved, loss, state.loss_best)

    # checkpoint w_j: condition 1 (few increases) or 2 (no halving last time, no progress since)
    condition_1 = increases <= threshold
    condition_2 = ~state.reduced_last & (state.loss_best_last >= loss_best)
    reduce = checkpoint & (condition_1 | condition_2)
    step_size = torch.where(_per_sample(reduce, x), state.step_size / 2, state.step_size)
    x_adv = torch.where(_per_sample(reduce, x), x_best, x_adv)
    grad = torch.where(_per_sample(reduce, x), grad_best, grad)
    reduced_last = torch.where(checkpoint, reduce, state.reduced_last)
    loss_best_last = torch.where(checkpoint | first, loss_best, state.loss_best_last)
    increases = torch.where(checkpoint, torch.zeros_like(increases), increases)
    # The authors' code compares the first step's loss with its loss history's last row,
    # still 0 then (not with the start's loss): the first window's count.
    loss_prev = torch.where(first, torch.zeros_like(loss), loss)

    z = _project(x_adv + step_size * _direction(grad, norm), x, eps, norm)
    x_next = _project(x_adv + momentum * (z - x_adv) + (1 - momentum) * (x_adv - state.x_prev), x, eps, norm)
    return APGDState(k + 1, x_next, x_adv, step_size, x_best, grad_best, loss_best, loss_prev, increases,
                     reduced_last, loss_best_last, x_fooled, fooled)


def apgd_result(state: APGDState):
    """(x_hat, fooled, best loss) per sample: the first misclassified point found, else
    the highest-loss point."""
    x_hat = torch.where(_per_sample(state.fooled, state.x_adv), state.x_fooled, state.x_best)
    return x_hat, state.fooled, state.loss_best


def _apgd_run(model, x, y, target, start, eps, steps, norm, objective, rho, loss_dtype, eot_steps=1):
    """One run of Algorithm 1 from `start`. Returns (x_hat, fooled, best loss), all
    per sample."""
    schedule = apgd_schedule(steps, rho, x, loss_dtype)
    state = apgd_start(x, start, eps, norm, loss_dtype)
    for _ in range(steps + 1):
        state = apgd_step(model, state, schedule, x, y, target, eps, norm, objective, eot_steps)
    return apgd_result(state)


def _eot_gradient(model, x_adv, run_loss, eot_steps):
    """input_gradient averaged over eot_steps passes; the last pass's logits and loss."""
    grad, logits, loss = input_gradient(model, x_adv, run_loss, "apgd")
    for _ in range(eot_steps - 1):
        more, logits, loss = input_gradient(model, x_adv, run_loss, "apgd")
        grad = grad + more
    return (grad / eot_steps if eot_steps > 1 else grad), logits, loss


def apgd_random_start(x, eps, norm, generator):
    """auto-attack's start: on the L-inf sphere (t / max|t|, t ~ U(-1, 1)) or the L2
    sphere (Gaussian direction) of radius eps."""
    if norm == "linf":
        t = draw(x, lambda r, g: r.uniform_(-1, 1, generator=g), generator)
        scale = t.reshape(x.shape[0], -1).abs().amax(dim=1)
    else:
        t = draw(x, lambda r, g: r.normal_(generator=g), generator)
        scale = torch.linalg.vector_norm(t.reshape(x.shape[0], -1), dim=1) + 1e-12
    return x + eps * t / scale.reshape(batch_shape(x))


def _direction(grad, norm):
    if norm == "linf":
        return grad.sign()
    return grad / (_norm(grad) + 1e-12)


def _project(v, x, eps, norm):
    """P: onto the eps-ball around x, then onto [0, 1]."""
    if norm == "linf":
        return torch.clamp(torch.clamp(v, min=x - eps, max=x + eps), min=0, max=1)
    delta = v - x
    length = _norm(delta)
    return torch.clamp(x + delta * (torch.clamp(length, max=eps) / (length + 1e-12)), min=0, max=1)


def _norm(t):
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1).reshape(batch_shape(t))


def _at(entry, k):
    """entry[k] for a 0-d tensor k, as a gather: indexing with a tensor would make
    torch.compile read k's value (a data-dependent shape)."""
    return entry.index_select(0, k.reshape(1)).reshape(())


def _per_sample(mask, x):
    return mask.reshape(batch_shape(x))
