"""The best checkpoint of a run (best.pt): the weights of the epoch with the highest
validation accuracy, robust (`val_robust_acc`, PGD-10 at the training eps) or clean
(`val_acc`), as TrainConfig.keep_best says. Early stopping on robust validation
accuracy is the usual answer to robust overfitting (Rice et al. 2020): the last
epoch's weights need not be the most robust ones.

BestKeeper decides; the trainer writes best.pt (atomically, like checkpoint.pt) when it
says so, and keeps its state in every checkpoint, so a resumed run keeps the best so
far. weights_file picks final.pt or best.pt of a run directory for eval, analyze and
reproduce (--weights final|best).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

from .checkpoint import CHECKPOINT_NAME, FINAL_NAME, resolve_checkpoint
from .train_config import KEEP_BEST_MODES

__all__ = ["BEST_NAME", "KEEP_BEST_MODES", "WEIGHTS", "BestKeeper", "weights_file"]

BEST_NAME = "best.pt"
WEIGHTS = ("final", "best")
_METRIC = {"robust": "val_robust_acc", "clean": "val_acc"}


class BestKeeper:
    """Tracks the best validation accuracy of a run: update(record) -> True when the
    record's epoch beats every earlier one (ties keep the earlier epoch)."""

    def __init__(self, mode: str = "none"):
        if mode not in KEEP_BEST_MODES:
            raise ValueError(f"keep_best must be one of {', '.join(KEEP_BEST_MODES)}, got {mode!r}")
        self.mode = mode
        self.epoch: Optional[int] = None
        self.value: Optional[float] = None

    @property
    def metric(self) -> Optional[str]:
        return _METRIC.get(self.mode)

    def update(self, record: Dict[str, Any]) -> bool:
        if self.metric is None or record.get(self.metric) is None:
            return False
        value = float(record[self.metric])
        if self.value is not None and value <= self.value:
            return False
        self.epoch, self.value = int(record["epoch"]), value
        return True

    def state_dict(self) -> Optional[Dict[str, Any]]:
        if self.metric is None:
            return None
        return {"metric": self.metric, "epoch": self.epoch, "value": self.value}

    def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
        if not state or state.get("metric") != self.metric:
            return
        self.epoch = None if state.get("epoch") is None else int(state["epoch"])
        self.value = None if state.get("value") is None else float(state["value"])


def weights_file(run: Union[str, "os.PathLike[str]"], weights: str = "final") -> Path:
    """The checkpoint file of `run` to evaluate: a file as is (weights must be final),
    a run directory's final.pt (else checkpoint.pt) or best.pt; a one-line error when
    the run has no best.pt."""
    if weights not in WEIGHTS:
        raise ValueError(f"--weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    path = Path(run).expanduser()
    if weights == "final":
        return resolve_checkpoint(path, prefer=(FINAL_NAME, CHECKPOINT_NAME))
    if path.is_file():
        if path.name == BEST_NAME:
            return path
        path = path.parent
    best = path / BEST_NAME
    if not best.is_file():
        raise FileNotFoundError(f"--weights best: {path} holds no {BEST_NAME} (train with --val-size N and "
                                f"--keep-best robust|clean to write one)")
    return best
