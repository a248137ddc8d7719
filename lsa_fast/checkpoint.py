"""Training checkpoints: written atomically, read with torch.load(weights_only=True),
checked before use, plus the RNG snapshots that make a resumed run continue exactly.

A checkpoint is a dict of tensors and plain containers only (no pickled classes), so a
file from an untrusted source cannot run code when it is loaded:

    format, version        "lsa_fast.checkpoint", 1
    model                  state_dict of the bare model (never the DDP wrapper)
    optimizer, scheduler,  their state_dicts ({} for an absent scaler)
    scaler
    epoch                  completed epochs; step_in_epoch > 0 means "stopped inside
    step_in_epoch          epoch `epoch` after that many batches" (SIGTERM)
    config                 TrainConfig.to_dict()
    mvl, metrics, rng, ... see lsa_fast.train_state

Writes go to a temporary file in the target's directory, then os.replace: a crash
mid-write leaves the previous checkpoint intact, never half a file. What a kill -9 can
strand is the temporary file itself (.checkpoint.pt.XXXX.tmp); remove_stray_temporaries
deletes those of a run directory when the run starts again (under its RunLock).
"""
from __future__ import annotations

import json
import os
import random
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from .run_files import CHECKPOINT_NAME, FINAL_NAME, RUN_FILES

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CHECKPOINT_NAME",
    "FINAL_NAME",
    "save_checkpoint",
    "load_checkpoint",
    "resolve_checkpoint",
    "remove_stray_temporaries",
    "why_unreadable",
    "capture_rng_state",
    "restore_rng_state",
]

CHECKPOINT_FORMAT = "lsa_fast.checkpoint"
CHECKPOINT_VERSION = 1

PathLike = Union[str, "os.PathLike[str]"]
_REQUIRED = ("model", "config", "epoch")


def save_checkpoint(state: Mapping, path: PathLike) -> Path:
    """Write `state` (a dict; format and version are added) to `path` atomically."""
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}
    payload.update(state)
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a checkpoint is shared like any output
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)
    return path


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device, None] = "cpu") -> Dict:
    """Read and check a checkpoint (a file, or a run directory: its final.pt, else its
    checkpoint.pt). FileNotFoundError if absent; ValueError naming the file if it is
    truncated, corrupt, unsafe to load, or not an lsa_fast checkpoint."""
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise ValueError(f"{path}: {why_unreadable(path, error)}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not an lsa_fast checkpoint (it holds a {type(state).__name__}, "
                         f"expected a dict with format {CHECKPOINT_FORMAT!r})")
    found = state.get("format")
    if found != CHECKPOINT_FORMAT:
        keys = sorted(str(k) for k in state)[:8]
        raise ValueError(f"{path}: not an lsa_fast checkpoint (format {found!r}, expected "
                         f"{CHECKPOINT_FORMAT!r}; keys {keys})")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {state.get('version')!r}, this lsa_fast reads "
                         f"version {CHECKPOINT_VERSION}")
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise ValueError(f"{path}: incomplete lsa_fast checkpoint, missing {missing}")
    if not isinstance(state["model"], dict) or not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise ValueError(f"{path}: the checkpoint's 'model' entry is not a state_dict of tensors")
    if not isinstance(state["config"], dict):
        raise ValueError(f"{path}: the checkpoint's 'config' entry is not a dict")
    state["path"] = str(path)
    return state


def resolve_checkpoint(path: PathLike, prefer=(FINAL_NAME, CHECKPOINT_NAME)) -> Path:
    """A file as is; a directory -> the first of `prefer` it holds."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in prefer:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: the directory holds no checkpoint (looked for "
                                f"{', '.join(prefer)})")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    return path


def capture_rng_state(generators: Optional[Mapping[str, Optional[torch.Generator]]] = None) -> Dict:
    """Every random stream a training step can draw from, as tensors and plain values:
    torch CPU, CUDA (all devices, if CUDA is in use), NumPy's and Python's global
    generators, and the named torch.Generators (the attack's, the loader's)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    cuda = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [state.clone() for state in torch.cuda.get_rng_state_all()]
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_version), "state": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
        "generators": {name: gen.get_state() for name, gen in (generators or {}).items() if gen is not None},
    }


def restore_rng_state(state: Mapping, generators: Optional[Mapping[str, Optional[torch.Generator]]] = None) -> List[str]:
    """The inverse of capture_rng_state. CUDA states are restored only where CUDA is
    available and the counts of devices agree. Returns the names of the generators left
    as they were because the saved state belongs to another device type (a run saved on
    the CPU and resumed on a GPU, say)."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    saved = state.get("generators") or {}
    skipped = []
    for name, gen in (generators or {}).items():
        if gen is not None and name in saved:
            if gen.get_state().numel() != saved[name].numel():  # another device type's generator
                skipped.append(name)
                continue
            gen.set_state(saved[name].cpu())
    return skipped


# ---------------------------------------------------------------------------- helpers


def remove_stray_temporaries(directory: PathLike, names: Sequence[str] = ()) -> List[Path]:
    """Delete the temporary files that an interrupted atomic write of one of `names`
    (default: the files of a run directory) left in `directory`; returns them. Call it
    only while no other process writes there (hold the directory's RunLock)."""
    names = tuple(names) or RUN_FILES
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        # save_checkpoint and lsa_fast.report.atomic_write_* name them .<target>.<random>.tmp
        match = re.fullmatch(r"\.(.+)\.[A-Za-z0-9_]+\.tmp", entry.name)
        if match and match.group(1) in names and entry.is_file():
            entry.unlink()
            removed.append(entry)
    return removed


def why_unreadable(path: PathLike, error: Exception) -> str:
    """Why torch.load(path, weights_only=True) failed, in the words of what the file
    is, without torch's advice to load untrusted files unsafely."""
    path = Path(path)
    size = path.stat().st_size
    expected = ("expected a checkpoint written by lsa-fast train (checkpoint.pt or final.pt of a run "
                "directory) or a state_dict saved with torch.save")
    if size == 0:
        return f"empty file, not a checkpoint; {expected}"
    with open(path, "rb") as handle:
        head = handle.read(4096)
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    if refused:
        return (f"refusing to load: the file holds a pickled {refused.group(1)}, not plain tensors and "
                f"containers, so it is not an lsa_fast checkpoint (loading it could run code); {expected}")
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            return f"truncated checkpoint ({size} bytes on disk; the zip archive is incomplete)"
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                return f"a zip archive that torch.save did not write ({size} bytes), not a checkpoint; {expected}"
        return f"corrupt checkpoint ({size} bytes on disk): {_torch_detail(error)}"
    return f"{_file_kind(path, head, size)}, not a checkpoint; {expected}"


def _torch_detail(error: Exception) -> str:
    # torch's weights_only message wraps the reason in advice; keep only the reason.
    text = str(error)
    marker = text.find("WeightsUnpickler error:")
    if marker >= 0:
        text = text[marker + len("WeightsUnpickler error:"):]
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {line[:200]}"


def _file_kind(path: Path, head: bytes, size: int) -> str:
    if head.startswith(b"\x89PNG"):
        return f"a PNG image ({size} bytes)"
    if head.startswith(b"%PDF"):
        return f"a PDF document ({size} bytes)"
    if b"\0" in head:
        return f"binary data of an unknown kind ({size} bytes; truncated, corrupt or another format)"
    text = head.lstrip()
    if text[:1] in (b"{", b"["):
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            return f"a text file that looks like JSON ({size} bytes)"
        kind = data.get("format") if isinstance(data, dict) else None
        known = {"lsa_fast.LSAReport/1": "an LSA report of lsa-fast analyze"}
        if isinstance(kind, str):
            return f"a JSON file ({known.get(kind, 'format ' + repr(kind))}, {size} bytes)"
        return f"a JSON file ({size} bytes)"
    return f"a text file ({size} bytes)"


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
