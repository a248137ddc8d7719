"""Accuracy over an epsilon grid (the paper's Tables 2-4), the R&G score (the sum of
those accuracies in %), and robust accuracy as the per-sample worst case over an
attack ensemble (APGD-CE, then APGD-T, as AutoAttack runs them).

Data: a loader yielding (x, y) batches, or one (x, y) pair of tensors. Batches are
moved to the model's device. Models are evaluated in eval mode (restored afterwards);
counts stay on the device and are read once at the end.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from .attacks import attack_mode, make_attack, predicted_class
from .devices import model_device
from .paper import PAPER_TABLES
from .progress import BatchProgress

# The eps grids of the paper's Tables 2-4, by dataset.
PAPER_EPS_GRIDS: Dict[str, Tuple[float, ...]] = {dataset: table.eps_grid for dataset, table in PAPER_TABLES.items()}

Data = Union[Iterable, Tuple[torch.Tensor, torch.Tensor]]
AttackArg = Union[str, Callable[..., torch.Tensor]]


def accuracy(model, data: Data) -> float:
    """Clean accuracy in % over a loader or an (x, y) pair."""
    correct, total = _zero_counts(model), 0
    with attack_mode(model, "eval"), torch.no_grad():
        for x, y in _batches(model, data):
            correct = correct + _count_correct(model, x, y)
            total += y.shape[0]
    return _percent("accuracy", correct, total)


def evaluate(
    model,
    data: Data,
    attack: AttackArg = "fgsm",
    eps_grid: Sequence[float] = PAPER_EPS_GRIDS["moons"],
    row: Optional[str] = None,
    progress: bool = False,
    **attack_kw,
) -> "EvaluationTable":
    """Accuracy in % under `attack` at each eps of the grid (eps 0 = clean accuracy),
    as a one-row EvaluationTable named `row` (default: the model's class name).

    attack: a name of lsa_fast.attacks.ATTACKS ("fgsm", "pgd", "apgd-ce", ...) with
    attack_kw passed to it (steps=, generator=, ...), or a callable(model, x, y, eps).
    progress: a bar with an ETA on a terminal (a line per tenth of the batches in a
    log) on stderr, and the speed at the end (lsa_fast.progress)."""
    eps_grid = tuple(float(eps) for eps in eps_grid)
    if not eps_grid:
        raise ValueError("evaluate: eps_grid is empty")
    if any(not (eps >= 0 and math.isfinite(eps)) for eps in eps_grid):
        raise ValueError(f"evaluate: every eps must be a finite number >= 0, got {eps_grid}")
    if isinstance(attack, str):
        attacks = [make_attack(attack, eps, **attack_kw) for eps in eps_grid]
        attack_name = attacks[0].name
    elif callable(attack):
        attacks = [_bind(attack, eps, attack_kw) for eps in eps_grid]
        attack_name = getattr(attack, "__name__", type(attack).__name__)
    else:
        raise TypeError(f"evaluate: attack must be a name or a callable, got {type(attack).__name__}")

    correct = [_zero_counts(model) for _ in eps_grid]
    total = 0
    bar = BatchProgress(f"eval {attack_name} ({len(eps_grid)} eps)", _length(data), enabled=progress)
    finished = False
    try:
        with attack_mode(model, "eval"):
            for x, y in _batches(model, data):
                for i, (eps, bound) in enumerate(zip(eps_grid, attacks)):
                    x_eval = x if eps == 0 else bound(model, x, y)
                    with torch.no_grad():
                        correct[i] = correct[i] + _count_correct(model, x_eval, y)
                total += y.shape[0]
                bar.update(y.shape[0])
        finished = True
    finally:
        bar.close(say=finished)
    accuracies = _percents("evaluate", correct, total)
    table = EvaluationTable(eps_grid=eps_grid, attack=attack_name)
    table.add_row(row if row is not None else type(model).__name__, accuracies)
    return table


def constant_prediction(model, data: Data) -> Optional[int]:
    """The class `model` predicts for every sample of `data` when it predicts one class
    for all of them (a collapsed, constant classifier: its accuracy is the share of that
    class, and attacks cannot move it), else None."""
    seen = None
    with attack_mode(model, "eval"), torch.no_grad():
        for x, _ in _batches(model, data):
            classes = torch.unique(predicted_class(model(x)))
            seen = classes if seen is None else torch.unique(torch.cat([seen, classes]))
            if seen.numel() > 1:
                return None
    if seen is None:
        raise ValueError("constant_prediction: the data holds no samples")
    return int(seen[0])


def rg_score(accuracies) -> float:
    """R&G: the sum of the accuracies in % over the eps grid (paper Table 2: Normal
    97.07 + 93.63 + 82.5 + 76.83 + 63.79 + 52.35 = 466.17). Takes a sequence, a
    mapping eps -> accuracy, or an EvaluationTable with one row."""
    if isinstance(accuracies, EvaluationTable):
        if len(accuracies.rows) != 1:
            raise ValueError("rg_score: the table has several rows; use table.rg_scores()")
        accuracies = next(iter(accuracies.rows.values()))
    if isinstance(accuracies, dict):
        accuracies = list(accuracies.values())
    return float(sum(float(a) for a in accuracies))


def robust_accuracy(
    model,
    data: Data,
    eps: float,
    attacks: Sequence[AttackArg] = ("apgd-ce", "apgd-t"),
    **attack_kw,
) -> float:
    """Robust accuracy in %: a sample counts only if it is classified correctly and
    no attack of the ensemble fools it. Each attack runs only on the samples still
    robust after the ones before it (AutoAttack's order)."""
    if not attacks:
        raise ValueError("robust_accuracy: attacks is empty")
    bound = [make_attack(a, eps, **attack_kw) if isinstance(a, str) else _bind(a, eps, attack_kw) for a in attacks]
    robust_count, total = _zero_counts(model), 0
    with attack_mode(model, "eval"):
        for x, y in _batches(model, data):
            with torch.no_grad():
                robust = predicted_class(model(x)) == y.long()
            for attack in bound:
                # One host sync per attack and batch, to attack only the robust samples.
                index = torch.nonzero(robust).flatten()
                if index.numel() == 0:
                    break
                x_adv = attack(model, x[index], y[index])
                with torch.no_grad():
                    still = predicted_class(model(x_adv)) == y[index].long()
                robust = robust.index_put((index,), still)
            robust_count = robust_count + robust.sum()
            total += y.shape[0]
    return _percent("robust_accuracy", robust_count, total)


@dataclasses.dataclass
class EvaluationTable:
    """Accuracies (%) per row (model or training method) over an eps grid, with the
    R&G score per row; prints as a markdown table like the paper's."""

    eps_grid: Tuple[float, ...]
    rows: Dict[str, List[float]] = dataclasses.field(default_factory=dict)
    attack: str = "fgsm"

    def __post_init__(self):
        self.eps_grid = tuple(float(eps) for eps in self.eps_grid)
        rows, self.rows = dict(self.rows), {}
        for name, accuracies in rows.items():
            self.add_row(name, accuracies)

    def add_row(self, name: str, accuracies: Sequence[float]) -> None:
        accuracies = [float(a) for a in accuracies]
        if len(accuracies) != len(self.eps_grid):
            raise ValueError(
                f"EvaluationTable.add_row: row {name!r} has {len(accuracies)} accuracies "
                f"for {len(self.eps_grid)} eps values {self.eps_grid}"
            )
        self.rows[str(name)] = accuracies

    def rg(self, name: str) -> float:
        return rg_score(self.rows[name])

    def rg_scores(self) -> Dict[str, float]:
        return {name: rg_score(accuracies) for name, accuracies in self.rows.items()}

    def to_markdown(self, digits: int = 2) -> str:
        header = ["Method"] + [f"{eps:g}" for eps in self.eps_grid] + ["R&G"]
        lines = [
            f"Accuracy (%) under {self.attack.upper()} per eps",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        ]
        for name, accuracies in self.rows.items():
            cells = [f"{a:.{digits}f}" for a in accuracies] + [f"{rg_score(accuracies):.{digits}f}"]
            lines.append("| " + " | ".join([name] + cells) + " |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()

    def to_dict(self) -> dict:
        return {
            "attack": self.attack,
            "eps_grid": list(self.eps_grid),
            "rows": {name: list(accuracies) for name, accuracies in self.rows.items()},
            "rg": self.rg_scores(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "EvaluationTable":
        try:
            return cls(eps_grid=tuple(data["eps_grid"]), rows=dict(data["rows"]), attack=data.get("attack", "fgsm"))
        except (KeyError, TypeError) as error:
            raise ValueError(f"EvaluationTable.from_dict: not an evaluation table ({error})") from None

    def to_json(self, path: Union[str, os.PathLike]) -> None:
        """Written to a temporary file beside `path`, then renamed over it (mode 0644,
        like every output): a reader never sees half a file."""
        from .report import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: Union[str, os.PathLike]) -> "EvaluationTable":
        with open(path) as handle:
            return cls.from_dict(json.load(handle))


# --------------------------------------------------------------------------- helpers


def _bind(attack: Callable, eps: float, attack_kw: dict):
    def bound(model, x, y):
        return attack(model, x, y, eps, **attack_kw)

    return bound


def _batches(model, data: Data):
    device = model_device(model, None)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        data = [data]
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("evaluation: each batch must be an (x, y) pair")
        x, y = batch[0], batch[1]
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError("evaluation: each batch must hold two tensors (x, y)")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"evaluation: y must hold one label per sample, got x {tuple(x.shape)}, y {tuple(y.shape)}")
        if device is not None:
            x, y = x.to(device), y.to(device)
        yield x, y


def _length(data: Data) -> Optional[int]:
    """The number of batches of `data`, when it says (a loader), else None."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return 1
    try:
        return len(data)
    except TypeError:
        return None


def _zero_counts(model) -> torch.Tensor:
    return torch.zeros((), dtype=torch.int64, device=model_device(model, None))


def _count_correct(model, x, y) -> torch.Tensor:
    return (predicted_class(model(x)) == y.long()).sum()


def _percent(fn: str, count: torch.Tensor, total: int) -> float:
    if total == 0:
        raise ValueError(f"{fn}: the data holds no samples")
    return 100.0 * int(count) / total


def _percents(fn: str, counts: List[torch.Tensor], total: int) -> List[float]:
    if total == 0:
        raise ValueError(f"{fn}: the data holds no samples")
    return [100.0 * c / total for c in torch.stack(counts).tolist()]
