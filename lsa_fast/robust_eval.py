"""AutoAttack over a whole test set: chunks of points with global sample ids, a state
file that makes the run resumable, and shards over torch.distributed processes.

A point's result does not depend on its chunk or its process (the attack seeds every
draw of sample i by (seed, i)), so the chunks can be evaluated in any order, by any
rank, across any number of interrupted sessions, and the numbers stay those of one
uninterrupted process.

The state file (FILE.json.state beside the output) holds the settings (a fingerprint of
the weights and of the data, eps, norm, version, seed, number of points, batch size,
stages) and every finished chunk's per-point results; it is rewritten atomically after
each chunk (each round of chunks under torch.distributed, by rank 0) and removed when
the run completes.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import TensorDataset

from .attacks.autoattack import VERSIONS, autoattack
from .checks import check_int, check_labelled_data, check_number
from .devices import model_device
from .distributed import broadcast_from_rank0, gather_from_ranks, rank_and_world_size
from .report import atomic_write_text
from .run_data import fingerprint, tensor_bytes

__all__ = ["NORMS", "VERSIONS", "RobustEvaluation", "evaluate_autoattack", "check_norm", "check_version",
           "state_path_for", "weights_fingerprint"]

NORMS = ("Linf", "L2")  # as RobustBench spells them
STATE_FORMAT = "lsa_fast.autoattack-state/1"
STATE_SUFFIX = ".state"

PathLike = Union[str, "os.PathLike[str]"]
# progress(points_done, points_total, points_done_this_session, seconds_this_session): on
# rank 0, once before the first chunk (after the state file is read: points_done counts
# the points done before) and after each chunk (each round of chunks when sharded).
# stage_progress(chunk, stage, points_done, points_total): rank 0's chunks, within a stage.
StageProgress = Callable[[int, str, int, int], None]
Progress = Callable[[int, int, int, float], None]


@dataclasses.dataclass
class RobustEvaluation:
    """Per-point results of AutoAttack over n_examples points, and what they add up to.
    broken_by[i]: 0 = misclassified clean, k >= 1 = broken by stages[k-1], -1 = robust
    after every stage (the AutoAttack API's convention)."""

    eps: float
    norm: str
    version: str
    seed: int
    stages: Tuple[str, ...]
    clean_correct: torch.Tensor  # bool [N]
    broken_by: torch.Tensor  # int64 [N]
    seconds: float  # evaluation time over every session of the run
    warnings: Dict[str, int]  # check message -> how many times the chunks raised it
    resumed_chunks: int = 0  # chunks read from a state file rather than evaluated now

    @property
    def n_examples(self) -> int:
        return int(self.broken_by.numel())

    @property
    def clean_acc(self) -> float:
        return _percent(int(self.clean_correct.sum()), self.n_examples)

    @property
    def stage_accs(self) -> List[float]:
        """Robust accuracy in % after each stage: clean-correct points no stage up to
        and including that one broke."""
        robust = self.broken_by
        return [_percent(int(((robust == -1) | (robust > k)).sum()), self.n_examples)
                for k in range(1, len(self.stages) + 1)]

    @property
    def autoattack_acc(self) -> float:
        return _percent(int((self.broken_by == -1).sum()), self.n_examples)

    @property
    def images_per_s(self) -> float:
        return self.n_examples / self.seconds if self.seconds > 0 else float("inf")

    def warning_lines(self) -> List[str]:
        """The check messages, each once: messages that differ only in their numbers
        (per-chunk counts) are one line, the first one's text, with how often."""
        groups: Dict[str, List[Tuple[str, int]]] = {}
        for message, count in self.warnings.items():
            groups.setdefault(re.sub(r"\d+", "#", message), []).append((message, count))
        lines = []
        for members in groups.values():
            total = sum(count for _, count in members)
            note = f"{total} time(s)" if len(members) == 1 else f"{total} times, with other numbers in other chunks"
            lines.append(f"{members[0][0]} ({note})")
        return lines

    def table(self) -> str:
        """The robust accuracy after each stage, as a markdown table."""
        lines = ["| stage | broken | robust accuracy (%) |", "|---|---:|---:|",
                 f"| clean | {int((self.broken_by == 0).sum())} | {self.clean_acc:.2f} |"]
        for k, (stage, acc) in enumerate(zip(self.stages, self.stage_accs), start=1):
            lines.append(f"| {stage} | {int((self.broken_by == k).sum())} | {acc:.2f} |")
        return "\n".join(lines)

    def to_dict(self, **about: Any) -> Dict[str, Any]:
        """The fields of a RobustBench entry (clean_acc, autoattack_acc, eps, norm,
        n_examples; accuracies in %) and ours, then `about` (checkpoint, device, ...)."""
        return {
            "clean_acc": self.clean_acc,
            "autoattack_acc": self.autoattack_acc,
            "eps": self.eps,
            "norm": self.norm,
            "n_examples": self.n_examples,
            "version": self.version,
            "seed": self.seed,
            "stages": [{"name": name, "robust_acc": acc, "broken": int((self.broken_by == k).sum())}
                       for k, (name, acc) in enumerate(zip(self.stages, self.stage_accs), start=1)],
            "seconds": self.seconds,
            "images_per_s": self.images_per_s,
            "warnings": dict(self.warnings),
            "torch": torch.__version__,
            **about,
        }


def check_norm(norm: str, option: str = "norm") -> str:
    """'linf' -> 'Linf', 'l2' -> 'L2'; one ValueError line for anything else."""
    text = str(norm).strip()
    for name in NORMS:
        if text.lower() == name.lower():
            return name
    raise ValueError(f"{option} {norm!r}: unknown norm; use {' or '.join(NORMS)}")


def check_version(version: str, option: str = "version") -> str:
    text = str(version).strip().lower()
    if text not in VERSIONS:
        raise ValueError(f"{option} {version!r}: unknown AutoAttack version; use {', '.join(VERSIONS)}")
    return text


def state_path_for(out: PathLike) -> str:
    """Where the state file of a run writing `out` lies: beside it, `out` + '.state'."""
    return os.fspath(out) + STATE_SUFFIX


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the model's state_dict (names, dtypes, shapes and bytes, in order)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()


def evaluate_autoattack(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    norm: str = "Linf",
    version: str = "standard",
    seed: int = 0,
    batch_size: int = 256,
    state_path: Optional[PathLike] = None,
    restart: bool = False,
    keep_state: bool = False,
    attack: Optional[Callable] = None,
    stages: Optional[Sequence[str]] = None,
    n_classes: Optional[int] = None,
    checks: bool = True,
    progress: Optional[Progress] = None,
    stage_progress: Optional[StageProgress] = None,
    about: Optional[Mapping[str, Any]] = None,
) -> RobustEvaluation:
    """AutoAttack (lsa_fast.attacks.autoattack, or `attack` with its API) on every point
    of (x, y), batch_size points at a time; x and y may stay on the CPU, each chunk moves
    to the model's device. With state_path the run resumes from what that file holds (a
    file of other settings is refused, or discarded with restart=True), records each
    finished chunk there, and removes it at the end (keep_state=True leaves that to the
    caller, once it has written the results elsewhere). Under an initialised
    torch.distributed group every rank must call this with the same arguments: each
    evaluates its share of the chunks and every rank returns the whole result.
    `about` is recorded in the state file for information (the checkpoint's path, ...).
    The attack's check messages are collected per chunk (result.warnings), not also
    emitted as Python warnings once per chunk."""
    eps, norm, version, seed, batch_size = _check_arguments(x, y, eps, norm, version, seed, batch_size)
    attack = autoattack if attack is None else attack
    n = int(x.shape[0])
    settings = {
        "weights": weights_fingerprint(model),
        "data": fingerprint(TensorDataset(x, y))["sha256"],  # the run-data record's hash
        "eps": eps, "norm": norm, "version": version, "seed": seed,
        "n_examples": n, "batch_size": batch_size,
        "stages": list(stages) if stages is not None else None,
    }
    rank, world = rank_and_world_size()
    state, error = None, None
    if rank == 0 and state_path is not None:
        try:
            state = _read_state(state_path, settings, restart)
        except ValueError as refused:
            error = str(refused)
    # Rank 0 alone reads the file; every rank learns what it holds, or that it is refused.
    state, error = broadcast_from_rank0((state if state is not None else _new_state(settings, about), error), world)
    if error:
        raise ValueError(error)
    done: Dict[int, Dict[str, Any]] = {int(k): v for k, v in state["chunks"].items()}
    resumed = len(done)
    n_chunks = math.ceil(n / batch_size)
    todo = [k for k in range(n_chunks) if k not in done]
    mine = todo[rank::world]
    rounds = math.ceil(len(todo) / world)
    device = model_device(model, default=None)
    options = {"eps": eps, "norm": norm, "version": version, "seed": seed, "checks": checks}
    options.update({key: value for key, value in (("stages", tuple(stages) if stages is not None else None),
                                                  ("n_classes", n_classes)) if value is not None})
    seconds_before, start = float(state.get("seconds", 0.0)), time.perf_counter()
    points_now = 0
    if rank == 0 and progress is not None:
        progress(sum(len(c["broken_by"]) for c in done.values()), n, 0, 0.0)
    try:
        for r in range(rounds):
            result = None
            if r < len(mine):
                report = stage_progress if rank == 0 else None
                result = _chunk(attack, model, x, y, mine[r], batch_size, device, options, report)
            for finished in gather_from_ranks(result, world):
                if finished is not None:
                    done[finished["chunk"]] = finished
                    points_now += len(finished["broken_by"])
            elapsed = time.perf_counter() - start
            state["chunks"] = {str(k): v for k, v in sorted(done.items())}
            state["seconds"] = seconds_before + elapsed
            if rank == 0:
                if state_path is not None:
                    atomic_write_text(state_path, json.dumps(state) + "\n")
                if progress is not None:
                    progress(sum(len(c["broken_by"]) for c in done.values()), n, points_now, elapsed)
    except KeyboardInterrupt:
        if rank == 0 and state_path is not None and done:
            print(f"\n{len(done)} of {n_chunks} chunks are saved in {state_path}; the same command continues "
                  f"from them", file=sys.stderr, flush=True)
        raise
    evaluation = _assemble(done, n_chunks, eps, norm, version, seed, state["seconds"] if todo else seconds_before)
    evaluation.resumed_chunks = resumed
    if rank == 0 and state_path is not None and not keep_state and os.path.exists(state_path):
        os.remove(state_path)
    return evaluation


# --------------------------------------------------------------------------- helpers


def _check_arguments(x, y, eps, norm, version, seed, batch_size):
    eps = check_number(None, "eps", eps, 0)
    check_int(None, "seed", seed, 0)
    check_int(None, "batch_size", batch_size, 1)
    check_labelled_data(None, x, y, min_dim=2)
    return eps, check_norm(norm), check_version(version), seed, batch_size


def _chunk(attack, model, x, y, index, batch_size, device, options, stage_progress):
    start, stop = index * batch_size, min((index + 1) * batch_size, int(x.shape[0]))
    xb, yb = x[start:stop], y[start:stop]
    if device is not None:
        xb, yb = xb.to(device), yb.to(device)
    kwargs = dict(options, sample_ids=torch.arange(start, stop))
    if stage_progress is not None:
        kwargs["progress"] = lambda stage, done, total: stage_progress(index, stage, done, total)
    with warnings.catch_warnings(record=True) as raised:
        warnings.simplefilter("always")
        result = attack(model, xb, yb, **kwargs)
    for warning in raised:  # the attack's checks are in result.warnings; anything else passes on
        if str(warning.message) not in result.warnings:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    broken_by = result.broken_by.detach().cpu().to(torch.int64)
    clean = result.clean_correct.detach().cpu().to(torch.bool)
    if broken_by.shape != (stop - start,) or clean.shape != (stop - start,):
        raise ValueError(f"the attack returned {tuple(broken_by.shape)} results for a chunk of {stop - start} points")
    return {"chunk": index, "stages": list(result.stages), "broken_by": broken_by.tolist(),
            "clean_correct": [int(v) for v in clean.tolist()], "warnings": list(result.warnings)}


def _assemble(done, n_chunks, eps, norm, version, seed, seconds) -> RobustEvaluation:
    chunks = [done[k] for k in range(n_chunks)]
    stages = tuple(chunks[0]["stages"])
    if any(tuple(c["stages"]) != stages for c in chunks):
        raise ValueError("the chunks were attacked with different stages")
    warnings = collections.Counter(message for c in chunks for message in c["warnings"])
    return RobustEvaluation(
        eps=eps, norm=norm, version=version, seed=seed, stages=stages,
        clean_correct=torch.tensor([v for c in chunks for v in c["clean_correct"]], dtype=torch.bool),
        broken_by=torch.tensor([v for c in chunks for v in c["broken_by"]], dtype=torch.int64),
        seconds=float(seconds), warnings=dict(warnings))


def _new_state(settings, about) -> Dict[str, Any]:
    return {"format": STATE_FORMAT, "settings": settings, "about": dict(about or {}), "chunks": {}, "seconds": 0.0}


def _read_state(path, settings, restart: bool) -> Optional[Dict[str, Any]]:
    """The state of an unfinished run with these settings, None when there is none (or
    restart discards it); one ValueError line for a state of other settings."""
    if restart or not os.path.exists(path):
        return None
    try:
        with open(path) as handle:
            state = json.load(handle)
        theirs = state["settings"]
        state["chunks"], state["seconds"]  # noqa: B018 (both must be there)
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{path}: not a state file of lsa-fast eval; remove it, or give --restart") from None
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: a state file of another format ({state.get('format')!r}); remove it, or give "
                         f"--restart")
    differ = [key for key in settings if theirs.get(key) != settings[key]]
    if differ:
        what = ", ".join(f"{key} {_short(theirs.get(key))} there, {_short(settings[key])} here" for key in differ[:3])
        what += f", and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise ValueError(f"{path}: an unfinished run with other settings ({what}); give --restart to discard "
                         f"it, or another --out")
    return state


def _short(value) -> str:
    text = str(value)
    return text[:12] + "..." if len(text) > 16 and all(c in "0123456789abcdef" for c in text) else text


def _percent(count: int, total: int) -> float:
    return 100.0 * count / total
