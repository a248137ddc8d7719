"""Where a run's data files lie, and what they held.

A training run records its data directory as an absolute path (TrainConfig.data_dir:
a relative --data would point elsewhere from another working directory) and a
fingerprint of each split it trained and tested on (TrainConfig.extra["data_fingerprint"]:
samples, per-sample shape, sha256 of the tensors). Resuming, evaluating or analysing the
run reads the files from --data, else $LSA_FAST_DATA, else the recorded directory, and
compares what it read with the fingerprint: moved data is found, other data is refused.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, Optional, Union

from .data import default_data_dir

__all__ = ["FILE_DATASETS", "data_dir_to_record", "data_dir_to_read", "fingerprint", "check_fingerprint",
           "missing_data_hint"]

FILE_DATASETS = ("mnist", "cifar10")  # read from files; moons is generated

PathLike = Union[str, "os.PathLike[str]"]


def data_dir_to_record(dataset: str, read_from: Optional[PathLike]) -> Optional[str]:
    """The absolute directory a run records for `dataset` read from `read_from` (None:
    the default, $LSA_FAST_DATA or ./data); None for a generated dataset."""
    if dataset not in FILE_DATASETS:
        return None
    directory = Path(read_from).expanduser() if read_from else default_data_dir()
    return str(directory.resolve())


def data_dir_to_read(given: Optional[PathLike], recorded: Optional[str]) -> Optional[Path]:
    """--data if given, else $LSA_FAST_DATA if set, else the run's recorded directory,
    else None (the loaders' default, ./data)."""
    if given:
        return Path(given).expanduser()
    if os.environ.get("LSA_FAST_DATA"):
        return default_data_dir()
    return Path(recorded) if recorded else None


def fingerprint(dataset, samples: Optional[int] = None) -> Dict:
    """{"samples", "shape", "sha256"} of the first `samples` (default all) items of a
    TensorDataset (inputs, labels): the bytes of both tensors, hashed."""
    x, y = dataset.tensors[0], dataset.tensors[1]
    n = int(x.shape[0]) if samples is None else int(samples)
    digest = hashlib.sha256()
    for tensor in (x[:n], y[:n]):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(str(array.dtype).encode())
        digest.update(memoryview(array).cast("B"))
    return {"samples": n, "shape": [int(s) for s in x.shape[1:]], "sha256": digest.hexdigest()}


def check_fingerprint(recorded: Optional[Dict], dataset, split: str, source, where: str) -> None:
    """ValueError unless the first recorded["samples"] items of `dataset` (read from
    `source`) are those the run recorded; nothing to check for runs without a record."""
    if not isinstance(recorded, dict) or "sha256" not in recorded:
        return
    n = int(recorded["samples"])
    have = len(dataset)
    found = fingerprint(dataset, min(n, have))
    origin = f"read from {source}" if source else "generated"
    hint = "; give --data DIR where the run's own data lies" if source else ""
    if have < n:
        raise ValueError(f"{where}: the {split} split {origin} has {have} samples, fewer than the {n} the run "
                         f"recorded{hint}")
    if found["shape"] != list(recorded["shape"]):
        raise ValueError(f"{where}: the {split} split {origin} holds samples of shape {found['shape']}, the run "
                         f"recorded {list(recorded['shape'])}{hint}")
    if found["sha256"] != recorded["sha256"]:
        raise ValueError(f"{where}: the {split} split {origin} is not the data the run recorded (its first {n} "
                         f"samples have sha256 {found['sha256'][:12]}..., the run's {recorded['sha256'][:12]}...)"
                         f"{hint}")


def missing_data_hint(error: FileNotFoundError, recorded: Optional[str], given: Optional[PathLike]) -> FileNotFoundError:
    """The loader's error, plus where the run's data was and how to point elsewhere."""
    if given or not recorded:
        return error
    return FileNotFoundError(f"{error} The run read its data from {recorded}; if the files have moved, "
                             f"give --data DIR (or set LSA_FAST_DATA).")
