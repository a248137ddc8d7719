"""AutoAttack (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with
an ensemble of diverse parameter-free attacks"): an ensemble of attacks run in a
fixed order, each only on the points that all the earlier ones left robust. The
versions and their settings are the authors' (the fra31/auto-attack code):

  standard  APGD-CE (100 steps, 1 run), APGD-T (9 targets), FAB-T (9 targets),
            Square (5000 queries, p_init 0.8)
  plus      APGD-CE (5 restarts), APGD-DLR (5), FAB (5), Square, APGD-T, FAB-T
  rand      APGD-CE, APGD-DLR, with the gradient averaged over 20 passes (EOT),
            for randomised models

Independence: every random draw of sample i (APGD's and FAB's random starts,
Square's squares) comes from its own generator, seeded by (seed, sample_ids[i],
stage), so a point's result depends neither on its batch nor on the process or the
chunk that evaluates it: sharded or resumed runs give the one-process numbers.

The authors' checks, one line each, as warnings (and in result.warnings): random
outputs across two forward passes, outputs that are already probabilities, zero or
non-finite input gradients, a model handed over in training mode (evaluated in eval
mode, as the authors do) and, beyond theirs, Square breaking points that every
white-box stage before it left robust (a sign of masked gradients)."""
from __future__ import annotations

import dataclasses
import hashlib
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..checks import is_int
from ._common import attack_mode, check_eps, check_x, check_y, correct, is_binary, validate
from .apgd import apgd
from .fab import fab
from .square import square

VERSIONS = ("standard", "plus", "rand")
NORMS = {"linf": "linf", "l2": "l2"}  # AutoAttack's "Linf" / "L2", any case
WHITE_BOX = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t")


class AutoAttackWarning(UserWarning):
    """One of AutoAttack's checks found something that can make its number wrong."""


@dataclasses.dataclass
class AutoAttackResult:
    adversarial: torch.Tensor  # x's shape/dtype; x itself where no stage broke the point
    broken_by: torch.Tensor  # int64 [N]: 0 misclassified clean, k >= 1 broken by stages[k-1], -1 robust
    stages: Tuple[str, ...]
    clean_correct: torch.Tensor  # bool [N]
    warnings: List[str]

    def robust_accuracy(self, after: Optional[int] = None) -> float:
        """Fraction robust after the first `after` stages (all by default)."""
        after = len(self.stages) if after is None else after
        robust = (self.broken_by == -1) | (self.broken_by > after)
        return robust.double().mean().item()


def _apgd_stage(loss, targeted=False):
    def run(model, x, y, eps, norm, generator, steps=100, n_restarts=1, n_target_classes=9, eot_steps=1):
        return apgd(model, x, y, eps, steps=steps, norm=norm, loss=loss, targeted=targeted, n_restarts=n_restarts,
                    n_target_classes=n_target_classes, generator=generator, eot_steps=eot_steps)

    return run


def _fab_stage(targeted):
    def run(model, x, y, eps, norm, generator, steps=100, n_restarts=1, n_target_classes=9):
        return fab(model, x, y, eps, steps=steps, norm=norm, targeted=targeted, n_restarts=n_restarts,
                   n_target_classes=n_target_classes, generator=generator)

    return run


def _square_stage(model, x, y, eps, norm, generator, n_queries=5000, p_init=0.8):
    return square(model, x, y, eps, n_queries=n_queries, norm=norm, p_init=p_init, generator=generator,
                  rescale_schedule=False)  # AutoAttack's setting (resc_schedule=False)


STAGES: Dict[str, Callable] = {
    "apgd-ce": _apgd_stage("ce"),
    "apgd-dlr": _apgd_stage("dlr"),
    "apgd-t": _apgd_stage("dlr", targeted=True),
    "fab": _fab_stage(False),
    "fab-t": _fab_stage(True),
    "square": _square_stage,
}

# version -> [(stage, its options)], in the authors' order and with their settings.
VERSION_STAGES: Dict[str, List[Tuple[str, dict]]] = {
    "standard": [("apgd-ce", {}), ("apgd-t", {}), ("fab-t", {}), ("square", {})],
    "plus": [
        ("apgd-ce", {"n_restarts": 5}),
        ("apgd-dlr", {"n_restarts": 5}),
        ("fab", {"n_restarts": 5}),
        ("square", {}),
        ("apgd-t", {}),
        ("fab-t", {}),
    ],
    "rand": [("apgd-ce", {"eot_steps": 20}), ("apgd-dlr", {"eot_steps": 20})],
}


def autoattack(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str = "Linf",
    version: str = "standard",
    seed: int = 0,
    *,
    sample_ids: Optional[torch.Tensor] = None,
    n_classes: Optional[int] = None,
    stages: Optional[Sequence[str]] = None,
    progress: Optional[Callable[[str, int, int], None]] = None,
    checks: bool = True,
    batch_size: int = 500,
    stage_options: Optional[Dict[str, dict]] = None,
) -> AutoAttackResult:
    """Run AutoAttack's `version` (or the listed `stages`, names of STAGES) on x.
    Each stage attacks the points still robust, batch_size of them at a time.
    stage_options: {stage: {option: value}} over the version's settings (e.g.
    {"square": {"n_queries": 100}} for a quick look). progress(stage, done, total)
    is called after each batch. Returns an AutoAttackResult."""
    fn = "autoattack"
    eps = check_eps(fn, eps)
    if not isinstance(norm, str) or norm.lower() not in NORMS:
        raise ValueError(f"{fn}: norm must be 'Linf' or 'L2', got {norm!r}")
    norm = NORMS[norm.lower()]
    if version not in VERSIONS:
        raise ValueError(f"{fn}: version must be one of {VERSIONS}, got {version!r}")
    if not is_int(seed):
        raise TypeError(f"{fn}: seed must be an integer, got {type(seed).__name__}")
    plan = _plan(fn, version, stages, stage_options)
    x = check_x(fn, x)
    y = check_y(fn, x, y)
    sample_ids = _check_ids(fn, sample_ids, x)
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"{fn}: batch_size must be an integer >= 1, got {batch_size!r}")

    found: List[str] = []
    if isinstance(model, torch.nn.Module) and any(m.training for m in model.modules()):
        _warn(found, f"{fn}: the model is in training mode; AutoAttack evaluates it in eval mode (as the reference "
                     "does) and restores its mode afterwards")
    with attack_mode(model, "eval"):
        logits = validate(fn, model, x, y)
        if n_classes is not None and (is_binary(logits) or logits.shape[1] != n_classes):
            raise ValueError(f"{fn}: n_classes={n_classes} but the model returns logits of shape {tuple(logits.shape)}")
        plan = _applicable(fn, plan, logits, x, found)
        clean_correct = correct(logits, y)
        broken_by = torch.where(clean_correct, -1, 0).long()
        robust = (broken_by == -1).nonzero().squeeze(1)  # the first stage's points; one host sync per stage
        if checks:
            # On the first stage's first batch: the same shapes as its passes, so a GPU sets
            # up its kernels for one batch shape, not two (a new shape costs more there than
            # the check itself). With no correct point, on the first ones.
            checked = robust[:batch_size] if robust.numel() else torch.arange(min(batch_size, x.shape[0]),
                                                                                device=x.device)
            _model_checks(fn, model, x[checked], y[checked], logits[checked], version, found)
        adversarial = x.clone()
        for k, (name, options) in enumerate(plan, 1):
            if k > 1:
                robust = (broken_by == -1).nonzero().squeeze(1)
            total = robust.numel()
            robust_ids = sample_ids[robust.cpu()]  # the generators' seeds: one host copy per stage
            for first in range(0, total, batch_size):
                idx = robust[first : first + batch_size]
                gens = _generators(seed, robust_ids[first : first + batch_size], name, x.device)
                x_stage = STAGES[name](model, x[idx], y[idx], eps, norm, gens, **options)
                with torch.no_grad():
                    fooled = ~correct(model(x_stage), y[idx])
                broken_by[idx] = torch.where(fooled, k, broken_by[idx])
                adversarial[idx] = torch.where(fooled.reshape((-1,) + (1,) * (x.dim() - 1)), x_stage, x[idx])
                if progress is not None:
                    progress(name, min(first + batch_size, total), total)
        names = tuple(name for name, _ in plan)
        if checks:
            _masking_check(names, broken_by, found)
    return AutoAttackResult(adversarial, broken_by, names, clean_correct, found)


def _plan(fn, version, stages, stage_options):
    settings = dict(VERSION_STAGES[version])
    if stages is None:
        plan = list(VERSION_STAGES[version])
    else:
        if isinstance(stages, str) or not all(isinstance(s, str) for s in stages) or len(stages) == 0:
            raise ValueError(f"{fn}: stages must be a non-empty list of stage names, got {stages!r}")
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"{fn}: unknown stage {unknown[0]!r}; known: {', '.join(STAGES)}")
        plan = [(s, settings.get(s, {})) for s in stages]
    for name, extra in (stage_options or {}).items():
        if name not in STAGES:
            raise ValueError(f"{fn}: stage_options names an unknown stage {name!r}; known: {', '.join(STAGES)}")
        plan = [(s, {**options, **extra} if s == name else options) for s, options in plan]
    return plan


def _check_ids(fn, sample_ids, x):
    if sample_ids is None:
        return torch.arange(x.shape[0])
    if not isinstance(sample_ids, torch.Tensor) or sample_ids.dtype != torch.int64 or sample_ids.shape != (x.shape[0],):
        raise ValueError(f"{fn}: sample_ids must be an int64 tensor of shape [{x.shape[0]}] (one id per sample)")
    return sample_ids.cpu()


def _applicable(fn, plan, logits, x, found):
    """Drop, with one line each, the stages this model or input cannot take."""
    classes = 1 if is_binary(logits) else logits.shape[1]
    needs = {"apgd-dlr": 3, "apgd-t": 4, "fab": 2, "fab-t": 3, "square": 2}
    kept = []
    for name, options in plan:
        if classes < needs.get(name, 1):
            _warn(found, f"{fn}: skipping {name}: it needs a model with at least {needs[name]} classes, "
                         f"this one has {classes}")
        elif name == "square" and x.dim() != 4:
            _warn(found, f"{fn}: skipping square: it needs images [N, C, H, W], got shape {tuple(x.shape)}")
        else:
            kept.append((name, options))
    return kept


def _generators(seed, ids, stage, device):
    """One generator per sample, seeded by (seed, sample id, stage) alone."""
    gens = []
    for sample in ids.tolist():
        digest = hashlib.blake2b(f"{seed}:{sample}:{stage}".encode(), digest_size=8).digest()
        gens.append(torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little") >> 1))
    return gens


def _warn(found, message):
    found.append(message)
    warnings.warn(message, AutoAttackWarning, stacklevel=3)


def _model_checks(fn, model, xs, ys, first, version, found):
    """The reference's checks, on the points xs (labels ys, clean logits `first`)."""
    with torch.no_grad():
        again = model(xs)
    scale = first.abs().amax(dim=-1, keepdim=True) + 1e-10
    differs = ((again - first).abs() / scale).amax() > 1e-5
    probabilities = (
        not is_binary(first)
        and bool((first.min() >= 0) & (first.max() <= 1) & ((first.sum(-1) - 1).abs().amax() < 1e-5))
    )
    if version != "rand" and bool(differs):
        _warn(found, f"{fn}: the model's outputs differ between two forward passes on the same inputs: it looks "
                     "randomised; use version='rand' (EOT)")
    if probabilities:
        _warn(found, f"{fn}: the model's outputs look like probabilities (rows in [0, 1] summing to 1); AutoAttack "
                     "needs logits: remove the final softmax")
    xg = xs.detach().requires_grad_(True)
    with torch.enable_grad():
        out = model(xg)
        if is_binary(out):
            loss = F.binary_cross_entropy_with_logits(out.reshape(-1), ys.to(out.dtype), reduction="sum")
        else:
            loss = F.cross_entropy(out, ys.long(), reduction="sum")
    (grad,) = torch.autograd.grad(loss, xg, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(xs)
    flat = grad.reshape(grad.shape[0], -1)
    counts = torch.stack([(~torch.isfinite(flat)).any(1).sum(), (flat.abs().sum(1) == 0).sum()]).tolist()
    if counts[0]:
        _warn(found, f"{fn}: the input gradient is NaN or Inf at {counts[0]} of {xs.shape[0]} checked points")
    if counts[1]:
        _warn(found, f"{fn}: the input gradient is zero at {counts[1]} of {xs.shape[0]} checked points: gradient-based "
                     "stages cannot move them (gradients may be masked)")


def _masking_check(names, broken_by, found):
    if "square" not in names:
        return
    k = names.index("square") + 1
    if not any(name in WHITE_BOX for name in names[: k - 1]):
        return
    count = int((broken_by == k).sum())
    if count:
        before = ", ".join(names[: k - 1])
        _warn(found, f"autoattack: Square broke {count} points that every white-box stage before it ({before}) left "
                     "robust: gradients may be masked")
