"""The paper's published results as data: Tables 2, 3 and 4 of Khalooei, Homayounpour,
Amirmazlaghani, "Layer-wise Regularized Adversarial Training using Layers Sustainability
Analysis (LSA) framework", arXiv:2202.02626 (2022).

Each table gives the accuracy (%) under FGSM at each eps of its grid (eps in the
dataset's own units: moons coordinates for Table 2, [0, 1] pixels for Tables 3 and 4)
and the R&G score as printed (the sum of the row; every printed score equals its sum).

Training names are the paper's: "Normal", "AT-<base>", "AT-<base>-LR-L<k>" with bases
FGSM, PGD, APGD, TRADE (the paper's spelling of TRADES) and FAST (FGSM with a random
start); parse_training maps them to lsa_fast.training bases and layer indices.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Dict, Optional, Sequence, Tuple

from .checks import dataset_key

__all__ = [
    "CITATION",
    "PaperRow",
    "PaperTable",
    "TABLE_2",
    "TABLE_3",
    "TABLE_4",
    "PAPER_TABLES",
    "paper_table",
    "parse_training",
]

CITATION = "Khalooei et al., arXiv:2202.02626"

# The paper's base names -> lsa_fast.training bases.
_BASES = {"FGSM": "fgsm", "PGD": "pgd", "APGD": "apgd", "TRADE": "trades", "TRADES": "trades", "FAST": "fast"}
_TRAINING = re.compile(r"^AT-(?P<base>[A-Z]+)(?:-LR-L(?P<layer>\d+))?$")


def parse_training(name: str) -> Tuple[str, Optional[int]]:
    """The paper's training name -> (lsa_fast.training base, regularised layer or None):
    "Normal" -> ("none", None), "AT-PGD" -> ("pgd", None), "AT-TRADE-LR-L2" -> ("trades", 2)."""
    text = str(name).strip()
    if text == "Normal":
        return "none", None
    match = _TRAINING.match(text)
    if match is None or match.group("base") not in _BASES:
        raise ValueError(f"parse_training: {name!r} is not a training name of the paper (Normal, AT-<base> or "
                         f"AT-<base>-LR-L<k>, base one of {', '.join(sorted(_BASES))})")
    layer = match.group("layer")
    return _BASES[match.group("base")], None if layer is None else int(layer)


@dataclasses.dataclass(frozen=True)
class PaperRow:
    """One row of a table: `name` is unique in its table (the training name, prefixed by
    the model when the table has several models: "C AT-APGD")."""

    name: str
    model: str
    training: str
    accuracies: Tuple[float, ...]
    rg: float  # as printed

    @property
    def base(self) -> str:
        return parse_training(self.training)[0]

    @property
    def lr_layer(self) -> Optional[int]:
        return parse_training(self.training)[1]


@dataclasses.dataclass(frozen=True)
class PaperTable:
    number: int
    dataset: str
    eps_grid: Tuple[float, ...]
    rows: Tuple[PaperRow, ...]
    attack: str = "fgsm"

    @property
    def source(self) -> str:
        return f"{CITATION}, Table {self.number}"

    @property
    def models(self) -> Tuple[str, ...]:
        return tuple(dict.fromkeys(row.model for row in self.rows))

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(row.name for row in self.rows)

    def row(self, name: str) -> PaperRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"{self.source} has no row {name!r}; rows: {', '.join(self.names)}")


def paper_table(dataset: str) -> PaperTable:
    """The table of a dataset: moons -> Table 2, mnist -> Table 3, cifar10 -> Table 4."""
    key = dataset_key(dataset)
    if key not in PAPER_TABLES:
        raise ValueError(f"paper_table: no table for dataset {dataset!r}; valid: {', '.join(PAPER_TABLES)}")
    return PAPER_TABLES[key]


def _table(number: int, dataset: str, eps_grid: Sequence[float], rows) -> PaperTable:
    several = len({model for model, *_ in rows}) > 1
    built = tuple(
        PaperRow(name=f"{model} {training}" if several else training, model=model, training=training,
                 accuracies=tuple(float(a) for a in accuracies), rg=float(rg))
        for model, training, accuracies, rg in rows
    )
    for row in built:
        parse_training(row.training)  # a typo in the data fails at import
        if len(row.accuracies) != len(eps_grid):
            raise ValueError(f"Table {number}, row {row.name!r}: {len(row.accuracies)} values for {len(eps_grid)} eps")
    return PaperTable(number=number, dataset=dataset, eps_grid=tuple(float(e) for e in eps_grid), rows=built)


# Table 2: model A on Moons, FGSM; eps in moons coordinates.
TABLE_2 = _table(2, "moons", (0.0, 0.1, 0.2, 0.3, 0.4, 0.5), [
    ("A", "Normal", (97.07, 93.63, 82.5, 76.83, 63.79, 52.35), 466.17),
    ("A", "AT-FGSM", (95.86, 91.98, 87.88, 81.33, 70.54, 58.69), 486.28),
    ("A", "AT-PGD", (86.5, 83.89, 80.87, 76.61, 72.57, 60.02), 460.46),
    ("A", "AT-TRADE", (96.17, 93.06, 85.78, 74.2, 68.62, 59.68), 477.51),
    ("A", "AT-FAST", (94.32, 89.72, 84.91, 78.35, 70.18, 61.65), 479.13),
    ("A", "AT-FGSM-LR-L0", (92.81, 90.25, 85.36, 80.74, 68.21, 58.74), 476.11),
    ("A", "AT-FGSM-LR-L1", (91.87, 89.77, 86.95, 81.51, 69.15, 59.59), 478.84),
    ("A", "AT-FGSM-LR-L2", (93.98, 93.01, 89.12, 84.01, 75.15, 63.25), 498.52),
    ("A", "AT-PGD-LR-L0", (87.02, 84.02, 80.64, 76.22, 71.12, 65.87), 464.89),
    ("A", "AT-PGD-LR-L1", (86.2, 82.94, 79.23, 75.16, 70.5, 65.04), 459.07),
    ("A", "AT-PGD-LR-L2", (88.78, 86.93, 81.25, 77.01, 72.81, 66.58), 473.36),
    ("A", "AT-FAST-LR-L0", (86.86, 83.85, 80.33, 76.34, 71.34, 65.79), 464.51),
    ("A", "AT-FAST-LR-L1", (87.91, 85.43, 82.44, 77.38, 70.01, 62.25), 465.42),
    ("A", "AT-FAST-LR-L2", (92.91, 90.31, 86.26, 81.53, 75.09, 67.65), 493.75),
    ("A", "AT-TRADE-LR-L0", (86.84, 82.38, 80.55, 76.37, 71.58, 64.07), 461.79),
    ("A", "AT-TRADE-LR-L1", (87.25, 84.22, 81.25, 76.98, 71.14, 63.25), 464.09),
    ("A", "AT-TRADE-LR-L2", (96.67, 93.2, 86.56, 81.25, 79.5, 68.65), 505.83),
])

# Table 3: model B on MNIST, FGSM; eps in [0, 1] pixel units.
TABLE_3 = _table(3, "mnist", (0.0, 0.1, 0.2, 0.3, 0.4, 0.5), [
    ("B", "Normal", (98.82, 82.1, 47.2, 17.87, 6.96, 4.25), 257.2),
    ("B", "AT-APGD", (99.36, 98.54, 97.67, 96.97, 71.72, 33.73), 497.99),
    ("B", "AT-APGD-LR-L0", (98.97, 98.11, 97.36, 97.17, 94.6, 55.52), 541.73),
])

# Table 4: models C (VGG-19) and D (WideResNet) on CIFAR-10, FGSM; eps in [0, 1] pixel units.
TABLE_4 = _table(4, "cifar10", (0.0, 0.01, 0.03, 0.1, 0.2), [
    ("C", "Normal", (90.53, 48.91, 43.91, 31.5, 22.29), 237.14),
    ("C", "AT-APGD", (83.68, 74.69, 72.21, 50.04, 41.45), 322.07),
    ("C", "AT-APGD-LR-L1", (83.55, 75.32, 73.35, 52.36, 46.01), 330.59),
    ("D", "Normal", (90.01, 40.01, 36.35, 22.3, 16.2), 204.87),
    ("D", "AT-APGD", (82.60, 50.12, 47.11, 41.46, 40.01), 261.3),
    ("D", "AT-APGD-LR-L1", (81.81, 53.21, 48.17, 43.01, 42.65), 268.85),
])

PAPER_TABLES: Dict[str, PaperTable] = {"moons": TABLE_2, "mnist": TABLE_3, "cifar10": TABLE_4}
