"""Statistical perturbations LSA compares against adversarial ones: Gaussian, salt,
pepper, salt-and-pepper and speckle noise (the modes of skimage.util.random_noise,
drawn per element), each clamped to [0, 1] and deterministic under a generator (or a
list of one generator per sample: each sample's noise its own, whatever its batch)."""
from __future__ import annotations

import torch

from ._common import GeneratorArg, check_eps, check_generator, check_values, check_x, draw


def gaussian_noise(x: torch.Tensor, std: float, generator: GeneratorArg = None) -> torch.Tensor:
    """clip_[0,1](x + n), n ~ N(0, std^2) per element."""
    x = _check("gaussian_noise", x)
    std = check_eps("gaussian_noise", std, "std")
    generator = check_generator("gaussian_noise", generator, x)
    return torch.clamp(x + std * _normal(x, generator), min=0, max=1)


def salt(x: torch.Tensor, amount: float, generator: GeneratorArg = None) -> torch.Tensor:
    """Each element becomes 1 with probability `amount`."""
    return _replace("salt", x, amount, 1.0, generator)


def pepper(x: torch.Tensor, amount: float, generator: GeneratorArg = None) -> torch.Tensor:
    """Each element becomes 0 with probability `amount`."""
    return _replace("pepper", x, amount, 0.0, generator)


def salt_and_pepper(
    x: torch.Tensor,
    amount: float,
    salt_vs_pepper: float = 0.5,
    generator: GeneratorArg = None,
) -> torch.Tensor:
    """Each element is replaced with probability `amount`: by 1 with probability
    salt_vs_pepper, else by 0."""
    return _replace("salt_and_pepper", x, amount, salt_vs_pepper, generator)


def speckle(x: torch.Tensor, std: float, generator: GeneratorArg = None) -> torch.Tensor:
    """clip_[0,1](x + x * n), n ~ N(0, std^2) per element: noise proportional to the signal."""
    x = _check("speckle", x)
    std = check_eps("speckle", std, "std")
    generator = check_generator("speckle", generator, x)
    return torch.clamp(x + x * (std * _normal(x, generator)), min=0, max=1)


def _replace(fn: str, x, amount, salt_vs_pepper, generator) -> torch.Tensor:
    x = _check(fn, x)
    amount = _probability(fn, "amount", amount)
    salt_vs_pepper = _probability(fn, "salt_vs_pepper", salt_vs_pepper)
    generator = check_generator(fn, generator, x)
    hit = _uniform(x, generator) < amount
    is_salt = _uniform(x, generator) < salt_vs_pepper
    return torch.where(hit, is_salt.to(x.dtype), x)


def _check(fn: str, x) -> torch.Tensor:
    x = check_x(fn, x)
    check_values(fn, x)
    return x


def _probability(fn: str, name: str, value) -> float:
    value = check_eps(fn, value, name)
    if value > 1:
        raise ValueError(f"{fn}: {name} is a probability and must lie in [0, 1], got {value}")
    return value


def _normal(x, generator):
    return draw(x, lambda t, g: t.normal_(generator=g), generator)


def _uniform(x, generator):
    return draw(x, lambda t, g: t.uniform_(generator=g), generator)
