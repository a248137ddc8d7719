"""The files of a run directory of `lsa-fast train` (ATLRTrainer's out_dir), named once:

    checkpoint.pt   the latest state (every epoch and on SIGTERM / Ctrl-C): resume from it
    final.pt        written once training has finished
    config.json     the TrainConfig (TrainConfig.to_dict())
    metrics.jsonl   one JSON record per completed epoch

and the paper's name of a run (Normal, AT-PGD, AT-FGSM-LR-L2, ...)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

from .report import atomic_write_text
from .train_config import TrainConfig

__all__ = ["CHECKPOINT_NAME", "FINAL_NAME", "CONFIG_NAME", "METRICS_NAME", "RUN_FILES", "write_run_files",
           "append_metrics", "run_name"]

CHECKPOINT_NAME = "checkpoint.pt"  # the latest state of a run directory (resume from it)
FINAL_NAME = "final.pt"  # written once training has finished
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
# What a run directory holds, each written with an atomic write (a new run refuses a
# directory that has one of the first two).
RUN_FILES = (CHECKPOINT_NAME, FINAL_NAME, CONFIG_NAME, METRICS_NAME)


def write_run_files(out_dir: Union[str, os.PathLike], config: TrainConfig, metrics: Sequence[Dict[str, Any]]) -> None:
    """config.json and metrics.jsonl of a run directory, as a checkpoint's config and
    metrics say: after a resume the log must say what the checkpoint says (a crash may
    have come between writing the checkpoint and appending its line)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in ((CONFIG_NAME, json.dumps(config.to_dict(), indent=2) + "\n"),
                       (METRICS_NAME, "".join(json.dumps(m) + "\n" for m in metrics))):
        if not _holds(out_dir / name, text):  # a file that says it already is left alone (its mtime too)
            atomic_write_text(out_dir / name, text)


def _holds(path: Path, text: str) -> bool:
    try:
        return path.read_text() == text
    except (OSError, UnicodeDecodeError):
        return False


def append_metrics(out_dir: Union[str, os.PathLike], record: Dict[str, Any]) -> None:
    """One epoch's line of metrics.jsonl."""
    with open(Path(out_dir) / METRICS_NAME, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def run_name(config: TrainConfig, mvl: Optional[Sequence[int]] = None) -> str:
    """The paper's name of a run: Normal, AT-PGD, AT-FGSM-LR-L2, AT-PGD-LR-L0,1, ..."""
    if config.base == "none":
        return "Normal"
    name = f"AT-{config.base.upper()}"
    layers = mvl if mvl is not None else (config.lr_layers if isinstance(config.lr_layers, list) else None)
    if layers:
        name += "-LR-L" + ",".join(str(l) for l in layers)
    elif config.lr_layers is not None:
        name += "-LR-auto"
    return name
