"""The data a run trained and was evaluated on, as its config records it
(TrainConfig.data_options), so that `lsa-fast eval` and `lsa-fast analyze` rebuild
exactly the test set the run saw, and say which one they use.

A complete record (what `record` returns and every run directory's config.json holds):

- moons: n_train, n_test (split sizes), noise (std of the Gaussian noise, moons units),
  seed (of the data; the training seed is the config's own `seed`), standardize when
  the moons were z-scored ({"mean": [..], "std": [..]} of the training split, in moons
  coordinates, applied to both splits), unit_map (the affine map into [0, 1]^2 that the
  models see: x' = (x - low) / scale, of the moons coordinates or of the z-scores), and
  limit when one was given;
- mnist, cifar10: limit (the first N samples of each split) when one was given, and
  data_dir when --data was given.

Runs written before the record was complete hold some keys or none; the missing ones
are the defaults those runs were built with (no standardize: moons coordinates), and
`describe` says so.

Where the files lie, and what they held: a training run records its data directory as an
absolute path (TrainConfig.data_dir: a relative --data would point elsewhere from another
working directory) and a fingerprint of each split it trained and tested on
(TrainConfig.extra["data_fingerprint"]: samples, per-sample shape, sha256 of the
tensors). Resuming, evaluating or analysing the run reads the files from --data, else
$LSA_FAST_DATA, else the recorded directory, and compares what it read with the
fingerprint: moved data is found, other data is refused.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch.utils.data import TensorDataset

from .checks import check_int
from .data import default_data_dir, load_dataset, moons_standardization, moons_unit_map

__all__ = ["MOONS_DEFAULTS", "MOONS_ONLY", "record", "load_split", "describe", "moons_units",
           "FILE_DATASETS", "data_dir_to_record", "data_dir_to_read", "fingerprint", "tensor_bytes", "check_fingerprint",
           "missing_data_hint"]

# What lsa_fast.data.load_dataset uses when a moons option is not given.
MOONS_DEFAULTS: Dict[str, Any] = {"n_train": 10000, "n_test": 2000, "noise": 0.2, "seed": 0}
MOONS_ONLY = ("n_train", "n_test", "noise", "seed", "standardize")


def record(dataset: str, options: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """`options` completed with every default, so that the record alone rebuilds the data.
    Moons: standardize=True z-scores both splits with the training split's mean and std,
    which the record then holds as numbers; False (or absent) keeps moons coordinates."""
    options = {key: value for key, value in dict(options or {}).items() if value is not None}
    if options.get("standardize") is False:
        del options["standardize"]
    _check(options)
    if dataset == "moons":
        for key, value in MOONS_DEFAULTS.items():
            options.setdefault(key, value)
        if options.get("standardize") is True:
            mean, std = moons_standardization(options["n_train"], options["noise"], options["seed"])
            options["standardize"] = {"mean": mean, "std": std}
        options["unit_map"] = _unit_map(moons_units(options))
        return options
    given = [key for key in MOONS_ONLY if key in options]
    if given:
        raise ValueError(f"--{given[0].replace('_', '-')} applies to moons only, not {dataset}")
    return options


def load_split(dataset: str, options: Optional[Mapping[str, Any]], train: bool, data_dir=None,
               limit: Optional[int] = None) -> TensorDataset:
    """The train or test split that `options` (a run's data_options) describes; data_dir
    overrides the recorded one, limit keeps the first N of the recorded split."""
    options = dict(options or {})
    recorded_limit = options.get("limit")
    if limit is not None and recorded_limit is not None:
        limit = min(int(limit), int(recorded_limit))
    elif limit is None:
        limit = recorded_limit
    kwargs: Dict[str, Any] = {} if limit is None else {"limit": limit}
    if dataset == "moons":
        units = moons_units(options)
        unit_map = options.get("unit_map")
        if unit_map is not None and unit_map != _unit_map(units):
            raise ValueError(f"the run's {units} moons were mapped into [0, 1]^2 by {unit_map}, this lsa_fast maps "
                             f"them by {_unit_map(units)}: the models would see other inputs")
        full = {**MOONS_DEFAULTS, **{k: v for k, v in options.items() if k in MOONS_ONLY}}
        kwargs.update(n_samples=full["n_train" if train else "n_test"], noise=full["noise"], seed=full["seed"])
        if units == "standardized":
            kwargs["standardize"] = (options["standardize"]["mean"], options["standardize"]["std"])
        return load_dataset("moons", train=train, **kwargs)
    return load_dataset(dataset, data_dir if data_dir is not None else options.get("data_dir"), train=train, **kwargs)


def describe(dataset: str, options: Optional[Mapping[str, Any]], split: str, count: int) -> str:
    """One line: which data, e.g. 'moons test split, 1000 samples (noise 0.15, data seed 0,
    inputs (x - (-2, -2.25)) / 5)'."""
    options = dict(options or {})
    if dataset == "moons":
        full = {**MOONS_DEFAULTS, **options}
        units = moons_units(options)
        low, scale = moons_unit_map(units)
        low = ", ".join(f"{v:g}" for v in low)
        details = f"noise {full['noise']:g}, data seed {full['seed']}, "
        if units == "standardized":
            mean, std = (", ".join(f"{v:.4g}" for v in options["standardize"][k]) for k in ("mean", "std"))
            details += f"standardized z = (x - ({mean})) / ({std}), inputs (z - ({low})) / {scale:g}"
        else:
            details += f"inputs (x - ({low})) / {scale:g}"
        missing = [key for key in MOONS_ONLY if key not in options and key != "standardize"]
        if missing:
            details += f"; the run does not record {', '.join(missing)}: defaults assumed"
    else:
        details = f"from {options['data_dir']}" if options.get("data_dir") else "from --data or $LSA_FAST_DATA"
    first = f", the first {options['limit']}" if options.get("limit") is not None else ""
    return f"{dataset} {split} split{first}: {count} samples ({details})"


def _check(options: Mapping[str, Any]) -> None:
    for key in ("n_train", "n_test", "limit"):
        value = options.get(key)
        if value is not None:
            check_int(None, f"--{key.replace('_', '-')} (a number of samples)", value, 1)
    noise = options.get("noise")
    if noise is not None and not (isinstance(noise, (int, float)) and 0 <= noise < float("inf")):
        raise ValueError(f"--noise must be a finite number >= 0, got {noise!r}")
    seed = options.get("seed")
    if seed is not None:
        check_int(None, "the data seed", seed, 0)
    standardize = options.get("standardize")
    if standardize is not None and standardize is not True and not (
            isinstance(standardize, dict) and set(standardize) == {"mean", "std"}):
        raise ValueError(f"standardize must be true, false or {{'mean': [..], 'std': [..]}}, got {standardize!r}")


def moons_units(options: Optional[Mapping[str, Any]]) -> str:
    """"standardized" when a moons record z-scores its data, else "raw" (moons coordinates);
    what an eps given in the run's units is divided by depends on it (eps_to_input_units)."""
    return "standardized" if (options or {}).get("standardize") else "raw"


def _unit_map(units: str = "raw") -> Dict[str, Any]:
    low, scale = moons_unit_map(units)
    return {"low": [float(v) for v in low], "scale": float(scale)}


# ------------------------------------------------------------- where the files lie

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
        digest.update(str(tensor.dtype).replace("torch.", "").encode())  # NumPy's name of the dtype
        digest.update(tensor_bytes(tensor))
    return {"samples": n, "shape": [int(s) for s in x.shape[1:]], "sha256": digest.hexdigest()}


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's bytes, in row-major order, for hashing. Through uint8, so that dtypes
    NumPy lacks (bfloat16) hash too."""
    array = tensor.detach().cpu().contiguous()
    return array.reshape(-1).view(torch.uint8).numpy().tobytes() if array.numel() else b""


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
