"""Paired differences over seeds with a Student t confidence interval: how
`lsa-fast reproduce` decides whether a variant (an LR row) differs from its base
(the same seed: the same data, initial weights, batch order and attack streams).

For differences d_1..d_n (variant minus base, one per seed): mean d̄, sample std s
(n - 1), and the interval d̄ ± t_{(1+c)/2, n-1} · s / √n at confidence c. The verdict
reads the interval: "higher" when it lies above 0, "lower" when below, "no difference
detected" when it contains 0. One seed gives no interval.

The t quantile is computed here (regularised incomplete beta by its continued fraction,
inverted by bisection), so the package needs no SciPy; the tests compare it with SciPy's.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from .records import PairedDifference

__all__ = ["paired_difference", "t_quantile", "t_cdf", "mean_std", "interval_text"]


def paired_difference(variant: Sequence[float], base: Sequence[float], confidence: float = 0.95) -> PairedDifference:
    """variant[i] - base[i] over seeds: mean, std (n - 1), n, the t interval (low, high,
    half_width; None for one seed), the differences and the verdict ("higher", "lower",
    "no difference detected", "undecided (1 seed)")."""
    if len(variant) != len(base):
        raise ValueError(f"paired_difference: {len(variant)} variant values for {len(base)} base values; "
                         f"pair them seed by seed")
    if not variant:
        raise ValueError("paired_difference: no values")
    if not 0 < confidence < 1:
        raise ValueError(f"paired_difference: confidence must lie in (0, 1), got {confidence!r}")
    differences = [float(a) - float(b) for a, b in zip(variant, base)]
    mean, std = mean_std(differences)
    n = len(differences)
    low = high = half = None
    if std is not None:
        half = t_quantile((1 + confidence) / 2, n - 1) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    return PairedDifference(mean=mean, std=std, n=n, confidence=confidence, low=low, high=high, half_width=half,
                            differences=differences, verdict=_verdict(mean, low, high))


def mean_std(values: Sequence[float]):
    """(mean, sample std with n - 1; None for one value)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std: no values")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    if df <= 0:
        raise ValueError(f"t_cdf: df must be > 0, got {df!r}")
    if t == 0:
        return 0.5
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (bisection on t_cdf to 1e-12)."""
    if not 0 < p < 1:
        raise ValueError(f"t_quantile: p must lie in (0, 1), got {p!r}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2
    for _ in range(200):
        middle = (low + high) / 2
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2


def interval_text(item: PairedDifference) -> str:
    """'+1.23 [+0.45, +2.01]' of a paired_difference result (its mean alone for one seed)."""
    if item.low is None:
        return f"{item.mean:+.2f}"
    return f"{item.mean:+.2f} [{item.low:+.2f}, {item.high:+.2f}]"


def _verdict(mean: float, low: Optional[float], high: Optional[float]) -> str:
    if low is None:
        return "undecided (1 seed)"
    if low > 0:
        return "higher"
    if high < 0:
        return "lower"
    return "no difference detected"


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) (continued fraction, Lentz's
    method; the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) where that converges faster)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result
