"""Datasets of the paper, from local sources only (nothing here touches the network).

- Moons: generated here (the two interleaving half circles of scikit-learn's
  ``make_moons``), mapped by a fixed affine map into [0, 1]^2 so that attacks can clip
  to [0, 1] like on images; optionally standardized first (each axis z-scored with the
  training split's mean and std, the paper's coordinates: see ``moons_standardization``).
- MNIST: the four standard IDX files (raw or .gz) in DIR, DIR/MNIST/raw (torchvision's
  layout) or DIR/raw.
- CIFAR-10: the standard python batches (data_batch_1..5, test_batch) in DIR or
  DIR/cifar-10-batches-py (the extracted cifar-10-python.tar.gz, also torchvision's layout).

Images come back as float32 in [0, 1] ([N, 1, 28, 28] / [N, 3, 32, 32]), labels as int64.
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from .checks import check_int, dataset_key

__all__ = [
    "DATASET_NAMES",
    "DATASET_INFO",
    "MOONS_LOW",
    "MOONS_SCALE",
    "MOONS_STANDARDIZED_LOW",
    "MOONS_STANDARDIZED_SCALE",
    "MOONS_UNITS",
    "moons_unit_map",
    "moons_standardization",
    "MNIST_FILES",
    "CIFAR10_FILES",
    "load_dataset",
    "make_loader",
    "make_moons",
    "moons_split",
    "moons_to_unit",
    "moons_from_unit",
    "load_mnist",
    "load_cifar10",
    "default_data_dir",
]

PathLike = Union[str, os.PathLike]

DATASET_NAMES: Tuple[str, ...] = ("moons", "mnist", "cifar10")

# Input shape (per sample) and number of classes; moons has one logit (binary) in model A.
DATASET_INFO: Dict[str, Dict[str, object]] = {
    "moons": {"input_shape": (2,), "num_classes": 2},
    "mnist": {"input_shape": (1, 28, 28), "num_classes": 10},
    "cifar10": {"input_shape": (3, 32, 32), "num_classes": 10},
}

# The moons live in x in [-1, 2], y in [-0.5, 1] before noise.  The unit map sends the
# square [-2, 3] x [-2.25, 2.75] (side 5, centred on the moons) onto [0, 1]^2:
#     x' = (x - MOONS_LOW) / MOONS_SCALE, then clamp to [0, 1].
# The box reaches 1 unit beyond the moons on the tight side, so Gaussian noise up to
# about 0.3 (3 sigma) stays inside and the clamp touches almost nothing.  The scaling is
# the same on both axes so an L-inf ball stays a square: a radius eps in the original
# moons coordinates is eps / MOONS_SCALE in the unit coordinates.
MOONS_LOW: Tuple[float, float] = (-2.0, -2.25)
MOONS_SCALE: float = 5.0

# Standardized moons (z = (x - mean) / std per axis, mean and std of the training split,
# as a StandardScaler fitted before training does: the coordinates the paper's numbers
# fit) are mapped by z' = (z - MOONS_STANDARDIZED_LOW) / MOONS_STANDARDIZED_SCALE, the
# square [-5, 5]^2 onto [0, 1]^2: five standard deviations each way, so the clamp touches
# nothing at noise 0.2 (the farthest points lie near |z| = 3). A radius eps in z units is
# eps / MOONS_STANDARDIZED_SCALE in input units.
MOONS_STANDARDIZED_LOW: Tuple[float, float] = (-5.0, -5.0)
MOONS_STANDARDIZED_SCALE: float = 10.0
MOONS_UNITS: Tuple[str, ...] = ("raw", "standardized")

MNIST_FILES: Dict[str, Tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

CIFAR10_FILES: Dict[str, Tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}


def load_dataset(name: str, data_dir: Optional[PathLike] = None, train: bool = True,
                 **kw) -> TensorDataset:
    """Load a dataset by name ("moons", "mnist", "cifar10"; case-insensitive) as a
    TensorDataset of (inputs in [0, 1] float32, labels int64).

    Options: ``limit`` (keep the first N samples, for quick runs) for every dataset;
    for moons also ``n_samples`` (size of the requested split; default 10000 train,
    2000 test), ``noise`` (0.2), ``seed`` (0), ``to_unit`` (True) and ``standardize``
    (None: moons coordinates; (mean, std): z-scored with them, then mapped by the
    standardized unit map; ``moons_standardization`` gives the training split's).  The
    moons train and test splits are independent draws from the same seed (see
    ``moons_split``).
    ``data_dir`` (MNIST, CIFAR-10) defaults to ``default_data_dir()``.
    """
    key = canonical_dataset(name)
    limit = kw.pop("limit", None)
    if key == "moons":
        allowed = {"n_samples", "noise", "seed", "to_unit", "standardize"}
        _reject_unknown(key, kw, allowed | {"limit"})
        n = kw.pop("n_samples", _MOONS_DEFAULT_N["train" if train else "test"])
        x, y = _moons_part(n, kw.get("noise", 0.2), kw.get("seed", 0),
                           "train" if train else "test", kw.get("to_unit", True), kw.get("standardize"))
    else:
        _reject_unknown(key, kw, {"limit"})
        root = default_data_dir() if data_dir is None else data_dir
        loader = load_mnist if key == "mnist" else load_cifar10
        x, y = loader(root, train=train, limit=limit)
    if limit is not None:
        n_keep = _check_limit(limit)
        x, y = x[:n_keep], y[:n_keep]
    return TensorDataset(x, y)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False,
                seed: Optional[int] = 0, num_workers: int = 0,
                sampler: Optional[Sampler] = None, drop_last: bool = False,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose shuffling (and worker seeding) comes from a torch.Generator
    seeded with ``seed``, so two runs with the same seed see the same batches.

    With a ``sampler`` (e.g. DistributedSampler) leave ``shuffle`` False: the sampler
    owns the order.  ``seed=None`` gives an unseeded, non-reproducible order.
    """
    check_int("make_loader", "batch_size", batch_size, 1)
    check_int("make_loader", "num_workers", num_workers, 0)
    if sampler is not None and shuffle:
        raise ValueError("make_loader: shuffle=True with a sampler; the sampler decides the "
                         "order (for DistributedSampler pass shuffle to it and call set_epoch)")
    generator = None
    if seed is not None:
        generator = torch.Generator()
        generator.manual_seed(int(seed))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                      num_workers=num_workers, generator=generator, drop_last=drop_last,
                      pin_memory=pin_memory)


def make_moons(n_samples: int = 1000, noise: float = 0.2, seed: int = 0, *,
               to_unit: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Two interleaving half circles, as scikit-learn's ``make_moons`` defines them.

    Class 0 (n_samples // 2 points): (cos t, sin t); class 1 (the rest):
    (1 - cos t, 0.5 - sin t); t evenly spaced on [0, pi]; the points are shuffled and
    Gaussian noise of std ``noise`` is added.  The random stream is torch's CPU
    generator seeded with ``seed`` (deterministic; not bit-equal to scikit-learn's).
    With ``to_unit`` (default) the points go through ``moons_to_unit`` into [0, 1]^2.

    Returns x float32 [N, 2] and y int64 [N] with labels 0/1.
    """
    n, noise = _check_moons_args(n_samples, noise, seed)
    return _draw_moons(n, noise, _generator(seed), to_unit)


def moons_split(n_train: int = 10000, n_test: int = 2000, noise: float = 0.2, seed: int = 0,
                *, to_unit: bool = True
                ) -> Tuple[Tuple[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]:
    """Independent train and test draws: ``((x_train, y_train), (x_test, y_test))``.

    The train split equals ``make_moons(n_train, noise, seed)``; the test split comes from
    a second random stream derived from ``seed``, so neither split depends on the size of
    the other.
    """
    train = _moons_part(n_train, noise, seed, "train", to_unit)
    test = _moons_part(n_test, noise, seed, "test", to_unit)
    return train, test


def moons_unit_map(units: str = "raw") -> Tuple[Tuple[float, float], float]:
    """(low, scale) of the affine map x' = (x - low) / scale into [0, 1]^2 for moons in
    `units`: "raw" (moons coordinates) or "standardized" (z-scores)."""
    if units == "raw":
        return MOONS_LOW, MOONS_SCALE
    if units == "standardized":
        return MOONS_STANDARDIZED_LOW, MOONS_STANDARDIZED_SCALE
    raise ValueError(f"moons units must be one of {', '.join(MOONS_UNITS)}, got {units!r}")


def moons_to_unit(x: torch.Tensor, units: str = "raw") -> torch.Tensor:
    """The fixed affine map of moons coordinates (or z-scores, units="standardized")
    into [0, 1]^2 (then clamped)."""
    low, scale = moons_unit_map(units)
    return ((x - torch.tensor(low, dtype=x.dtype, device=x.device)) / scale).clamp_(0.0, 1.0)


def moons_from_unit(x: torch.Tensor, units: str = "raw") -> torch.Tensor:
    """Inverse of ``moons_to_unit`` (for plotting in the moons' own coordinates)."""
    low, scale = moons_unit_map(units)
    return x * scale + torch.tensor(low, dtype=x.dtype, device=x.device)


def moons_standardization(n_train: int = 10000, noise: float = 0.2, seed: int = 0
                          ) -> Tuple[List[float], List[float]]:
    """(mean, std) per axis of the training split ``load_dataset("moons", train=True,
    n_samples=n_train, noise=noise, seed=seed)`` in moons coordinates: what a
    StandardScaler fitted on the training data holds (population std), applied to both
    splits by ``load_dataset(..., standardize=(mean, std))``."""
    x, _ = _moons_part(n_train, noise, seed, "train", to_unit=False)
    x = x.double()
    mean = x.mean(dim=0)
    std = x.std(dim=0, correction=0)
    return [float(v) for v in mean], [float(v) for v in std]


def load_mnist(data_dir: PathLike, train: bool = True, limit: Optional[int] = None
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """MNIST from the standard IDX files: x float32 [N, 1, 28, 28] in [0, 1], y int64 [N].

    Looks in ``data_dir``, ``data_dir/MNIST/raw`` and ``data_dir/raw`` for each file, raw
    or gzipped.  ``limit`` keeps the first N samples (decoding only those).
    """
    split = "train" if train else "test"
    root = Path(data_dir).expanduser()
    dirs = [root, root / "MNIST" / "raw", root / "raw"]
    images_name, labels_name = MNIST_FILES[split]
    images_path, labels_path = _find_files("MNIST", split, dirs, [images_name, labels_name],
                                           _mnist_variants, _MNIST_HINT,
                                           spellings="raw or .gz, '-idx' or '.idx' in the name")
    images = _read_idx(images_path, expect_ndim=3)
    labels = _read_idx(labels_path, expect_ndim=1)
    n_images, rows, cols = images.shape
    if (rows, cols) != (28, 28):
        raise ValueError(f"MNIST: {images_path} holds {rows}x{cols} images, expected 28x28")
    if labels.shape[0] != n_images:
        raise ValueError(f"MNIST: {images_path} has {n_images} images but {labels_path} has "
                         f"{labels.shape[0]} labels; the files belong to different sets")
    if labels.size and int(labels.max()) > 9:
        raise ValueError(f"MNIST: {labels_path} has label {int(labels.max())}, expected 0..9")
    n = n_images if limit is None else min(n_images, _check_limit(limit))
    x = torch.from_numpy(images[:n].astype(np.float32)).div_(255.0).unsqueeze(1)
    y = torch.from_numpy(labels[:n].astype(np.int64))
    return x, y


def load_cifar10(data_dir: PathLike, train: bool = True, limit: Optional[int] = None
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from the python batches: x float32 [N, 3, 32, 32] in [0, 1], y int64 [N].

    Looks in ``data_dir`` and ``data_dir/cifar-10-batches-py``.  ``limit`` keeps the
    first N samples (and stops reading batches once it has them).
    """
    split = "train" if train else "test"
    root = Path(data_dir).expanduser()
    dirs = [root, root / "cifar-10-batches-py"]
    names = list(CIFAR10_FILES[split])
    paths = _find_files("CIFAR-10", split, dirs, names, lambda name: [name], _CIFAR_HINT,
                        archives=("cifar-10-python.tar.gz",))
    n_wanted = None if limit is None else _check_limit(limit)
    data_parts: List[np.ndarray] = []
    label_parts: List[np.ndarray] = []
    have = 0
    for path in paths:
        data, labels = _read_cifar_batch(path)
        data_parts.append(data)
        label_parts.append(labels)
        have += data.shape[0]
        if n_wanted is not None and have >= n_wanted:
            break
    data = np.concatenate(data_parts)[:n_wanted]
    labels = np.concatenate(label_parts)[:n_wanted]
    # Each row is 1024 red, 1024 green, 1024 blue values, each plane row-major 32x32.
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32)).div_(255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def default_data_dir() -> Path:
    """$LSA_FAST_DATA if set, else ./data (where torchvision users usually keep datasets)."""
    return Path(os.environ.get("LSA_FAST_DATA", "data")).expanduser()


# ---------------------------------------------------------------------------- moons

_MOONS_DEFAULT_N = {"train": 10000, "test": 2000}


def _moons_part(n_samples: int, noise: float, seed: int, part: str, to_unit: bool, standardize=None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    n, noise = _check_moons_args(n_samples, noise, seed)
    standardize = _check_standardize(standardize)
    if part == "train":
        gen = _generator(seed)
    else:
        # A second stream derived from the seed (NumPy's SeedSequence is stable across
        # versions), so the test draw neither overlaps the train draw nor depends on its size.
        state = np.random.SeedSequence(entropy=int(seed), spawn_key=(1,)).generate_state(
            2, dtype=np.uint32)
        gen = _generator(int(state[0]) << 32 | int(state[1]))
    return _draw_moons(n, noise, gen, to_unit, standardize)


def _draw_moons(n: int, noise: float, gen: torch.Generator, to_unit: bool, standardize=None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    n_outer = n // 2
    n_inner = n - n_outer
    t_outer = torch.linspace(0.0, math.pi, n_outer, dtype=torch.float64)
    t_inner = torch.linspace(0.0, math.pi, n_inner, dtype=torch.float64)
    outer = torch.stack([torch.cos(t_outer), torch.sin(t_outer)], dim=1)
    inner = torch.stack([1.0 - torch.cos(t_inner), 0.5 - torch.sin(t_inner)], dim=1)
    x = torch.cat([outer, inner])
    y = torch.cat([torch.zeros(n_outer, dtype=torch.int64), torch.ones(n_inner, dtype=torch.int64)])
    order = torch.randperm(n, generator=gen)
    x, y = x[order], y[order]
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    units = "raw"
    if standardize is not None:
        mean, std = (torch.tensor(v, dtype=torch.float64) for v in standardize)
        x, units = (x - mean) / std, "standardized"
    if to_unit:
        x = moons_to_unit(x, units)
    return x.to(torch.float32).contiguous(), y


def _check_standardize(standardize):
    """None, or (mean, std): two pairs of finite numbers, std > 0."""
    if standardize is None:
        return None
    try:
        mean, std = ([float(v) for v in part] for part in standardize)
    except (TypeError, ValueError):
        raise ValueError(f"moons: standardize must be (mean, std), two pairs of numbers, got {standardize!r}") from None
    if len(mean) != 2 or len(std) != 2 or not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise ValueError(f"moons: standardize must be (mean, std) with two finite means and two positive stds, "
                         f"got {standardize!r}")
    return mean, std


def _check_moons_args(n_samples, noise, seed) -> Tuple[int, float]:
    n_samples = check_int("moons", "n_samples", n_samples, 1)
    try:
        noise_f = float(noise)
    except (TypeError, ValueError):
        raise ValueError(f"moons: noise must be a number >= 0, got {noise!r}") from None
    if not math.isfinite(noise_f) or noise_f < 0:
        raise ValueError(f"moons: noise must be a finite number >= 0, got {noise!r}")
    check_int("moons", "seed", seed, 0)
    return n_samples, noise_f


def _generator(seed: int) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return gen


# ---------------------------------------------------------------------------- files

_MNIST_HINT = ("the four files are published at http://yann.lecun.com/exdb/mnist/ and its "
               "mirrors; torchvision.datasets.MNIST(root=DIR, download=True) leaves them in "
               "DIR/MNIST/raw")
_CIFAR_HINT = ("extract cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) "
               "into DIR, which gives DIR/cifar-10-batches-py; torchvision.datasets.CIFAR10("
               "root=DIR, download=True) does the same")

# A complete CIFAR-10 batch: 10000 images x 3072 bytes of pixels, plus the pickle framing.
_CIFAR_BATCH_PIXEL_BYTES = 10000 * 3072


def _mnist_variants(name: str) -> List[str]:
    # Some mirrors spell the files with a dot ("train-images.idx3-ubyte").
    dotted = name.replace("-idx", ".idx")
    names = [name, name + ".gz"]
    if dotted != name:
        names += [dotted, dotted + ".gz"]
    return names


def _find_files(dataset: str, split: str, dirs: Sequence[Path], names: Sequence[str],
                variants, hint: str, archives: Sequence[str] = (), spellings: str = "") -> List[Path]:
    """The first existing candidate for every expected file, or one short error naming
    the missing files and the directories looked in."""
    found: List[Path] = []
    missing: List[str] = []
    for name in names:
        candidates = [d / v for d in dirs for v in variants(name)]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            missing.append(name)
        else:
            found.append(hit)
    if missing:
        packed = [str(d / a) for d in dirs for a in archives if (d / a).is_file()]
        extra = f" Found the archive {packed[0]}: extract it first." if packed else ""
        also = f" ({spellings})" if spellings else ""
        raise FileNotFoundError(
            f"{dataset} ({split} split): missing {_missing_names(missing)}{also}; looked in "
            f"{', '.join(str(d) for d in dirs)}. Give the directory with --data DIR or $LSA_FAST_DATA.{extra} "
            f"lsa_fast never downloads: {hint}.")
    return found


def _missing_names(missing: Sequence[str]) -> str:
    return missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    compressed = path.stat().st_size
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"{path}: truncated or corrupt gzip file ({compressed} bytes on disk): "
                         f"{exc}") from exc


_IDX_UBYTE = 0x08


def _read_idx(path: Path, expect_ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes: magic (0, 0, 0x08, ndim), ndim big-endian uint32
    sizes, then the data."""
    raw = _read_bytes(path)
    note = " (after gunzip)" if path.suffix == ".gz" else ""
    header_len = 4 + 4 * expect_ndim
    expected_magic = (_IDX_UBYTE << 8) | expect_ndim
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file: {len(raw)} bytes{note}, fewer than the "
                         f"4-byte magic number")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise ValueError(f"{path}: not an IDX {'image' if expect_ndim == 3 else 'label'} file: "
                         f"magic number 0x{magic:08x}, expected 0x{expected_magic:08x}")
    if len(raw) < header_len:
        raise ValueError(f"{path}: truncated IDX file: {len(raw)} bytes{note}, the header alone "
                         f"needs {header_len}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(expect_ndim))
    expected = header_len + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "too long"
        raise ValueError(f"{path}: {what} IDX file: header says shape {shape}, so {expected} "
                         f"bytes, but the file has {len(raw)} bytes{note}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape)


def _read_cifar_batch(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            # encoding="bytes": the official batches were pickled by Python 2.
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # any unpickling failure means a bad file; name it
        raise ValueError(
            f"{path}: truncated or not a CIFAR-10 python batch ({size} bytes on disk; a "
            f"complete batch holds {_CIFAR_BATCH_PIXEL_BYTES} bytes of pixels, about 31 MB): "
            f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: a CIFAR-10 batch is a pickled dict, got {type(batch).__name__}")
    data = _dict_get(batch, "data")
    labels = _dict_get(batch, "labels")
    if data is None or labels is None:
        keys = sorted(k.decode("latin1") if isinstance(k, bytes) else str(k) for k in batch)
        raise ValueError(f"{path}: CIFAR-10 batch without 'data' and 'labels' (keys: {keys})")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: CIFAR-10 'data' must be uint8 [N, 3072], got "
                         f"{data.dtype} {list(data.shape)}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise ValueError(f"{path}: {data.shape[0]} images but labels of shape "
                         f"{list(labels.shape)}")
    if labels.size and (not np.issubdtype(labels.dtype, np.integer)
                        or int(labels.min()) < 0 or int(labels.max()) > 9):
        raise ValueError(f"{path}: CIFAR-10 labels must be integers 0..9")
    return data, labels


def _dict_get(d: dict, key: str):
    # Python 2 pickles give bytes keys; a batch re-pickled by Python 3 may have str keys.
    return d.get(key.encode(), d.get(key))


_NUMPY_MAJOR = int(np.__version__.split(".")[0])


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 batch holds (dicts, lists, bytes, numpy arrays):
    a pickle can run arbitrary code, and data directories are not always trusted."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # Python 3 protocol-2 pickles of bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}; a CIFAR-10 batch "
                                         f"holds only numpy arrays, lists and bytes")
        if module.startswith("numpy.core.") and _NUMPY_MAJOR >= 2:
            # NumPy 2 moved numpy.core to numpy._core; avoid its deprecation shim.
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


# ---------------------------------------------------------------------------- names

def canonical_dataset(name: str) -> str:
    """A known dataset's name as lsa_fast spells it (ValueError naming the valid ones)."""
    key = dataset_key(name)
    if key not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    return key


def _reject_unknown(dataset: str, kw: dict, allowed: set) -> None:
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise ValueError(f"load_dataset({dataset!r}): unexpected option(s) {unknown}; "
                         f"valid options: {sorted(allowed)}")


def _check_limit(limit) -> int:
    return check_int(None, "limit (the first N samples)", limit, 1)
