"""The typed records that pass between the reproduce modules, and their JSON form.

A record is made from JSON (from_json) where a file is read and turned back into JSON
(to_json) where one is written; in between, the modules pass records. to_json gives the
keys in the order the files have always had them, so runs.jsonl and report.json keep
their exact bytes. Imports nothing of lsa_fast.reproduce: every module may use it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional

__all__ = ["RunRecord"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunRecord:
    """One finished run, a table row trained and evaluated at one seed: a line of runs.jsonl.

    accuracies: per column (column_key(attack, weights)), the accuracy (%) at each eps
    of the column's grid; rg: their sum per column. cm: per attack ("fgsm", "pgd"), the
    mean relative error of every probed layer; clean_norm / difference_norm: per layer,
    ||phi_k(x)|| and ||phi_k(x) - phi_k(x_hat)|| under FGSM."""

    seed: int
    row: str
    model: str
    training: str
    gamma: Optional[float] = None
    lr_grad: Optional[str] = None
    accuracies: Dict[str, List[float]]
    rg: Dict[str, float]
    collapsed: bool = False
    cm: Dict[str, List[float]]
    mvl: List[int]
    layer_names: List[str]
    clean_norm: List[float]
    difference_norm: List[float]
    train_accuracy: Optional[float] = None
    best_epoch: Optional[int] = None
    best_val_robust_acc: Optional[float] = None
    val_robust_acc: Optional[List[Optional[float]]] = None
    data_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: Optional[float] = None  # the run's wall time
    paper_rg: Optional[float] = None  # the paper's FGSM R&G of the row, where it has the row

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "RunRecord":
        """A runs.jsonl line's dict; keys it lacks take their defaults, unknown keys are an error."""
        unknown = sorted(set(data) - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"a run record has unknown keys {unknown}")
        return cls(**data)

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)
