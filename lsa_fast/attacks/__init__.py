"""Adversarial and statistical perturbations, one calling convention:
`attack(model, x, y, eps, ...) -> x_hat`, inputs in [0, 1] (normalisation inside the
model, the torchattacks convention), x_hat detached with x's dtype and shape.

Every attack: runs the model in eval mode unless model_mode="train"/"keep" says
otherwise and restores each submodule's mode afterwards; differentiates w.r.t. the
input only (no .grad on parameters); draws its randomness from `generator`; works on
models with one logit (BCE, logit > 0) and with C logits (cross-entropy); checks its
arguments and the model's first output once, outside its loop."""
from ._common import (
    MODEL_MODES,
    as_multiclass,
    attack_mode,
    correct,
    dlr_loss,
    dlr_targeted_loss,
    no_value_checks,
    predicted_class,
    summed_loss,
    value_checks_enabled,
)
from .apgd import apgd
from .autoattack import AutoAttackResult, AutoAttackWarning, autoattack
from .fab import fab
from .fgsm import fgsm
from .fgsm_rs import fgsm_rs
from .noise import gaussian_noise, pepper, salt, salt_and_pepper, speckle
from .pgd import pgd
from .square import square
from .registry import (
    ATTACKS,
    STATISTICAL,
    AttackSpec,
    BoundAttack,
    canonical_name,
    get_attack,
    make_attack,
    parse_attack_spec,
)
from .trades import trades_perturb

__all__ = [
    "fgsm",
    "fgsm_rs",
    "pgd",
    "apgd",
    "fab",
    "square",
    "autoattack",
    "AutoAttackResult",
    "AutoAttackWarning",
    "trades_perturb",
    "gaussian_noise",
    "salt",
    "pepper",
    "salt_and_pepper",
    "speckle",
    "ATTACKS",
    "STATISTICAL",
    "AttackSpec",
    "BoundAttack",
    "canonical_name",
    "parse_attack_spec",
    "make_attack",
    "get_attack",
    "predicted_class",
    "correct",
    "dlr_loss",
    "dlr_targeted_loss",
    "MODEL_MODES",
    "no_value_checks",
    "value_checks_enabled",
    "as_multiclass",
    "attack_mode",
    "summed_loss",
]
