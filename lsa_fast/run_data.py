"""The data a run trained and was evaluated on, as its config records it
(TrainConfig.data_options), so that `lsa-fast eval` and `lsa-fast analyze` rebuild
exactly the test set the run saw, and say which one they use.

A complete record (what `record` returns and every run directory's config.json holds):

- moons: n_train, n_test (split sizes), noise (std of the Gaussian noise, moons units),
  seed (of the data; the training seed is the config's own `seed`), unit_map (the
  affine map into [0, 1]^2 that the models see: x' = (x - low) / scale), and limit
  when one was given;
- mnist, cifar10: limit (the first N samples of each split) when one was given, and
  data_dir when --data was given.

Runs written before the record was complete hold some keys or none; the missing ones
are the defaults those runs were built with, and `describe` says so.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from torch.utils.data import TensorDataset

from .data import MOONS_LOW, MOONS_SCALE, load_dataset

__all__ = ["MOONS_DEFAULTS", "MOONS_ONLY", "record", "load_split", "describe"]

# What lsa_fast.data.load_dataset uses when a moons option is not given.
MOONS_DEFAULTS: Dict[str, Any] = {"n_train": 10000, "n_test": 2000, "noise": 0.2, "seed": 0}
MOONS_ONLY = ("n_train", "n_test", "noise", "seed")


def record(dataset: str, options: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """`options` completed with every default, so that the record alone rebuilds the data."""
    options = {key: value for key, value in dict(options or {}).items() if value is not None}
    _check(options)
    if dataset == "moons":
        for key, value in MOONS_DEFAULTS.items():
            options.setdefault(key, value)
        options["unit_map"] = _unit_map()
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
        unit_map = options.get("unit_map")
        if unit_map is not None and unit_map != _unit_map():
            raise ValueError(f"the run's moons were mapped into [0, 1]^2 by {unit_map}, this lsa_fast maps them "
                             f"by {_unit_map()}: the models would see other inputs")
        full = {**MOONS_DEFAULTS, **{k: v for k, v in options.items() if k in MOONS_ONLY}}
        kwargs.update(n_samples=full["n_train" if train else "n_test"], noise=full["noise"], seed=full["seed"])
        return load_dataset("moons", train=train, **kwargs)
    return load_dataset(dataset, data_dir if data_dir is not None else options.get("data_dir"), train=train, **kwargs)


def describe(dataset: str, options: Optional[Mapping[str, Any]], split: str, count: int) -> str:
    """One line: which data, e.g. 'moons test split, 1000 samples (noise 0.15, data seed 0,
    inputs (x - (-2, -2.25)) / 5)'."""
    options = dict(options or {})
    if dataset == "moons":
        full = {**MOONS_DEFAULTS, **options}
        low = ", ".join(f"{v:g}" for v in MOONS_LOW)
        details = f"noise {full['noise']:g}, data seed {full['seed']}, inputs (x - ({low})) / {MOONS_SCALE:g}"
        missing = [key for key in MOONS_ONLY if key not in options]
        if missing:
            details += f"; the run does not record {', '.join(missing)}: defaults assumed"
    else:
        details = f"from {options['data_dir']}" if options.get("data_dir") else "from --data or $LSA_FAST_DATA"
    first = f", the first {options['limit']}" if options.get("limit") is not None else ""
    return f"{dataset} {split} split{first}: {count} samples ({details})"


def _check(options: Mapping[str, Any]) -> None:
    for key in ("n_train", "n_test", "limit"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"--{key.replace('_', '-')} must be a positive number of samples, got {value!r}")
    noise = options.get("noise")
    if noise is not None and not (isinstance(noise, (int, float)) and 0 <= noise < float("inf")):
        raise ValueError(f"--noise must be a finite number >= 0, got {noise!r}")
    seed = options.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"the data seed must be an integer >= 0, got {seed!r}")


def _unit_map() -> Dict[str, Any]:
    return {"low": [float(v) for v in MOONS_LOW], "scale": float(MOONS_SCALE)}
