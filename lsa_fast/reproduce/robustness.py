"""What a reproduction measures on each set of a run's weights (the final epoch's and,
with a validation split, the best robust epoch's): accuracy under FGSM and under PGD
over the paper's eps grid, and robust accuracy under AutoAttack at one eps.

Each (attack, weights) pair is one column of report.json's "accuracies", keyed
`attack` for the final weights and `attack@best` for the best ones, so every paired
verdict of the report is given for both. The AutoAttack column holds one value (its
eps grid is [aa_eps]); its R&G is that accuracy.

AutoAttack: settings.autoattack "standard" runs lsa_fast.attacks.autoattack (Croce &
Hein 2020: APGD-CE, APGD-T, FAB-T, Square; on Moons' one-logit model A the targeted
stages do not apply); "apgd" runs only its first two stages (APGD-CE, then APGD-T on
what survives; lsa_fast.evaluation.robust_accuracy) with settings.aa_steps steps each,
a cheaper upper bound that the column's title never calls AutoAttack.
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Tuple

import torch

from ..attacks import AutoAttackWarning, autoattack
from ..checks import check_int
from ..evaluation import robust_accuracy

__all__ = ["AUTOATTACK", "BEST_SUFFIX", "column_key", "weight_sets", "autoattack_title", "autoattack_accuracy"]

AUTOATTACK = "autoattack"
BEST_SUFFIX = "@best"
AUTOATTACK_MODES = ("standard", "apgd", "none")
WEIGHT_CHOICES = ("both", "final", "best")


def column_key(attack: str, weights: str) -> str:
    """'pgd' for the final weights, 'pgd@best' for the best ones."""
    return attack if weights == "final" else attack + BEST_SUFFIX


def weight_sets(settings) -> Tuple[str, ...]:
    """The weights a reproduction evaluates (settings.weights): both is final, and best
    when there is a validation split."""
    if settings.weights == "both":
        return ("final", "best") if settings.val_size else ("final",)
    return (settings.weights,)


def autoattack_title(settings) -> str:
    """The AutoAttack column's name, saying what ran."""
    one_logit = settings.dataset == "moons"  # model A: the targeted stages do not apply
    if settings.autoattack == "standard":
        return "AutoAttack (standard" + ("; one-logit 2-d model: only APGD-CE applies" if one_logit else "") + ")"
    stages = "APGD-CE" if one_logit else "APGD-CE + APGD-T"
    return f"{stages} ({settings.aa_steps} steps; not the full AutoAttack)"


def autoattack_accuracy(model, x: torch.Tensor, y: torch.Tensor, eps: float, settings, seed: int,
                        batch_size: int) -> float:
    """Robust accuracy (%) of `model` (eval mode) on (x, y) under the AutoAttack column's
    attack at eps (model-input units)."""
    if settings.autoattack == "standard":
        with warnings.catch_warnings():  # its checks' warnings are kept in result.warnings
            warnings.simplefilter("ignore", AutoAttackWarning)
            result = autoattack(model, x, y, eps, norm="Linf", version="standard", seed=seed, batch_size=batch_size)
        return 100.0 * float((result.broken_by == -1).double().mean())
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)
    batches = [(x[s:s + batch_size], y[s:s + batch_size]) for s in range(0, int(y.shape[0]), batch_size)]
    stages = ("apgd-ce",) if settings.dataset == "moons" else ("apgd-ce", "apgd-t")
    return float(robust_accuracy(model, batches, eps, attacks=stages, steps=settings.aa_steps, generator=generator))


def check_autoattack_settings(settings) -> None:
    if settings.autoattack not in AUTOATTACK_MODES:
        raise ValueError(f"ReproduceSettings: autoattack must be one of {', '.join(AUTOATTACK_MODES)}, got "
                         f"{settings.autoattack!r}")
    for name in ("aa_steps", "aa_samples"):
        check_int("ReproduceSettings", name, getattr(settings, name), 1)
    check_int("ReproduceSettings", "val_size", settings.val_size, 0)
    if settings.weights not in WEIGHT_CHOICES:
        raise ValueError(f"ReproduceSettings: weights must be one of {', '.join(WEIGHT_CHOICES)}, got "
                         f"{settings.weights!r}")
    if settings.weights == "best" and not settings.val_size:
        raise ValueError("--weights best evaluates the best robust validation epoch: it needs a validation split "
                         "(--val-size N or --set val_size=N)")


def titles(settings, attacks: List[str], base_title) -> Dict[str, str]:
    """Column titles of every (attack, weights) key: base_title(attack) of the attack,
    ', best weights' for the best ones."""
    out = {}
    for key in attacks:
        attack, _, best = key.partition("@")
        title = autoattack_title(settings) if attack == AUTOATTACK else base_title(attack)
        out[key] = title + (" (best-robust weights)" if best else "")
    return out
