"""Comma-separated option values (--eps 0,0.1,0.2, --perturbations fgsm:0.1,pgd:0.1, ...):
an empty item is an error, never silently dropped."""
from __future__ import annotations

from typing import List

__all__ = ["comma_items"]


def comma_items(text: str, option: str) -> List[str]:
    """The stripped items of a comma-separated value; ValueError naming the option for an
    empty value or an empty item ('0.1,,0.2', '0.1,')."""
    items = [part.strip() for part in str(text).split(",")]
    if not any(items):
        raise ValueError(f"{option} is empty")
    if "" in items:
        raise ValueError(f"{option}: empty item in {text!r} (two commas in a row, or one at either end)")
    return items
