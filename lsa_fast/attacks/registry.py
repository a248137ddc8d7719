"""Attacks by name, for the CLI and the trainer: `ATTACKS[name](model, x, y, eps, **kw)`
has one calling convention for every method (statistical noises ignore model and y,
and read eps as their strength: std or amount), `parse_attack_spec("pgd:0.3")` reads
a "name:eps" string, and `make_attack` / `get_attack` bind a name and an eps into a
callable(model, x, y) -> x_hat."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, NamedTuple, Optional

import torch

from .apgd import apgd
from .autoattack import autoattack
from .fab import fab
from .fgsm import fgsm
from .fgsm_rs import fgsm_rs
from .noise import gaussian_noise, pepper, salt, salt_and_pepper, speckle
from .pgd import pgd
from .square import square
from .trades import trades_perturb


def _trades(model, x, y, eps, **kw):
    return trades_perturb(model, x, eps, **kw)


def _autoattack(model, x, y, eps, **kw):
    return autoattack(model, x, y, eps, **kw).adversarial


def _noise(function):
    @functools.wraps(function)
    def adapter(model, x, y, eps, **kw):
        return function(x, eps, **kw)

    return adapter


# name -> f(model, x, y, eps, **kw) -> x_hat. Defaults (steps, step sizes) live in the
# attack modules (pgd_default_alpha, fgsm_rs_default_alpha; lsa_fast.attacks.steps).
ATTACKS: Dict[str, Callable[..., torch.Tensor]] = {
    "fgsm": fgsm,
    "fgsm-rs": fgsm_rs,
    "pgd": pgd,
    "pgd-l2": functools.partial(pgd, norm="l2"),
    "apgd": apgd,
    "apgd-ce": functools.partial(apgd, loss="ce"),
    "apgd-dlr": functools.partial(apgd, loss="dlr"),
    "apgd-t": functools.partial(apgd, loss="dlr", targeted=True),
    "fab": fab,
    "fab-t": functools.partial(fab, targeted=True),
    "square": square,
    "autoattack": _autoattack,
    "trades": _trades,
    "gaussian": _noise(gaussian_noise),
    "salt": _noise(salt),
    "pepper": _noise(pepper),
    "salt-and-pepper": _noise(salt_and_pepper),
    "speckle": _noise(speckle),
}

STATISTICAL = ("gaussian", "salt", "pepper", "salt-and-pepper", "speckle")

_ALIASES = {
    "fast": "fgsm-rs",
    "pgd-linf": "pgd",
    "pgdl2": "pgd-l2",
    "apgdt": "apgd-t",
    "apgd-dlr-t": "apgd-t",
    "trades-perturb": "trades",
    "fabt": "fab-t",
    "aa": "autoattack",
    "square-attack": "square",
    "gaussian-noise": "gaussian",
    "gn": "gaussian",
    "s&p": "salt-and-pepper",
    "sp": "salt-and-pepper",
}


class AttackSpec(NamedTuple):
    name: str  # canonical key of ATTACKS
    eps: Optional[float]  # None when the spec gives none


def canonical_name(name: str) -> str:
    """'FGSM_RS' -> 'fgsm-rs', 'fast' -> 'fgsm-rs'; a clear error for unknown names."""
    if not isinstance(name, str):
        raise TypeError(f"attack name must be a string, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))}")
    return key


def parse_attack_spec(spec: str) -> AttackSpec:
    """"pgd:0.3" -> AttackSpec("pgd", 0.3); "pgd" -> AttackSpec("pgd", None)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"attack spec must be 'name' or 'name:eps', got {spec!r}")
    name, sep, eps_text = spec.partition(":")
    if not sep:
        return AttackSpec(canonical_name(name), None)
    return AttackSpec(canonical_name(name), parse_eps(eps_text, f"attack spec {spec!r}"))


def parse_eps(text: str, where: str) -> float:
    """A finite eps >= 0 from text; a ValueError naming `where` otherwise."""
    try:
        eps = float(text)
    except ValueError:
        raise ValueError(f"{where}: eps {text.strip()!r} is not a number") from None
    if not eps >= 0 or eps == float("inf"):
        raise ValueError(f"{where}: eps must be a finite number >= 0, got {text.strip()}")
    return eps


@dataclasses.dataclass(frozen=True)
class BoundAttack:
    """An attack with its eps and options bound: call it as attack(model, x, y)."""

    name: str
    eps: float
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ATTACKS[self.name](model, x, y, self.eps, **self.options)

    def __repr__(self) -> str:
        options = "".join(f", {key}={value!r}" for key, value in self.options.items())
        return f"{self.name}(eps={self.eps}{options})"


def make_attack(name: str, eps: float, **options) -> BoundAttack:
    """make_attack("pgd", 0.3, steps=20) -> callable(model, x, y) -> x_hat."""
    key = canonical_name(name)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < float("inf"):
        raise ValueError(f"make_attack: eps must be a finite number >= 0, got {eps!r}")
    return BoundAttack(key, float(eps), dict(options))


def get_attack(spec: str, **options) -> BoundAttack:
    """get_attack("pgd:0.3", steps=20); an eps= keyword stands in for a spec without one."""
    name, eps = parse_attack_spec(spec)
    if "eps" in options:
        given = options.pop("eps")
        if eps is not None and given != eps:
            raise ValueError(f"get_attack: spec {spec!r} says eps={eps} but eps={given} was passed too")
        eps = given
    if eps is None:
        raise ValueError(f"get_attack: spec {spec!r} has no eps; write 'name:eps' or pass eps=")
    return make_attack(name, eps, **options)
