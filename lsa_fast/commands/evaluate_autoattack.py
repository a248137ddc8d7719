"""`lsa-fast eval --attack autoattack`: the robust accuracy papers and RobustBench
report, on a run's test set.

    lsa-fast eval --checkpoint runs/x --attack autoattack --eps 0.3 [--version standard|plus|rand]
                  [--norm Linf|L2] [--n-examples N] [--seed S] [--out FILE.json]

Prints the clean accuracy, the robust accuracy after each stage and the final one (the
AutoAttack accuracy), the time and images/s; writes FILE.json with a RobustBench
entry's fields. While it runs, FILE.json.state records every finished chunk of points:
the same command after Ctrl-C or kill -9 continues from it. Under
`torchrun --nproc_per_node=K -m lsa_fast.cli eval ...` each process attacks its share
of the chunks and rank 0 prints and writes the result of the whole set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import torch

from ..analysis import eps_to_input_units
from ..attacks import canonical_name
from ..attacks.registry import parse_eps
from ..distributed import setup_distributed, teardown_distributed
from ..progress import ChunkProgress, format_throughput
from ..report import atomic_write_text
from ..robust_eval import check_norm, check_version, evaluate_autoattack, state_path_for
from .arguments import comma_items

__all__ = ["AutoAttackOptions", "add_arguments", "options", "run"]


class AutoAttackOptions(NamedTuple):
    eps: float  # in the dataset's units, as given
    norm: str
    version: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("AutoAttack (--attack autoattack)")
    group.add_argument("--version", help="standard (default), plus or rand (for randomised models)")
    group.add_argument("--norm", help="Linf (default) or L2")
    group.add_argument("--restart", action="store_true",
                       help="discard the state file of an unfinished run (FILE.json.state) and start over")
    group.add_argument("--no-progress", action="store_true", help="no progress bar or per-chunk lines")


def options(args: argparse.Namespace) -> Optional[AutoAttackOptions]:
    """The AutoAttack options of `eval` when --attack is autoattack (else None, after
    checking that none is given), each checked before any work: one ValueError line."""
    if not _is_autoattack(args.attack):
        given = [option for option, value in (("--version", args.version), ("--norm", args.norm),
                                              ("--restart", args.restart or None)) if value is not None]
        if given:
            raise ValueError(f"{given[0]} applies to --attack autoattack, not {args.attack}")
        return None
    if args.steps is not None:
        raise ValueError("--steps does not apply to --attack autoattack (it runs the reference's iterations)")
    if not args.eps_grid:
        raise ValueError("--attack autoattack needs --eps, one value in the dataset's units (e.g. --eps 0.3)")
    items = comma_items(args.eps_grid, "--eps")
    if len(items) != 1:
        raise ValueError(f"--eps {args.eps_grid}: --attack autoattack takes one eps, got {len(items)}")
    eps = parse_eps(items[0], "--eps")
    norm = check_norm(args.norm or "Linf", "--norm")
    version = check_version(args.version or "standard", "--version")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.out:
        directory = Path(args.out).expanduser().parent
        if not directory.is_dir():
            raise ValueError(f"--out {args.out}: the directory {directory} does not exist (the results and the "
                             f"state file that makes the run resumable go there)")
    return AutoAttackOptions(eps, norm, version)


def run(args: argparse.Namespace, chosen: AutoAttackOptions, device: torch.device,
        load: Callable[[torch.device], Any]) -> int:
    """`load(device)` rebuilds the run (commands.evaluate.LoadedRun) on this process's
    device: under torchrun each rank holds the model and the test set."""
    rank, world, device = setup_distributed(device)
    try:
        loaded = load(device)
        x, y = loaded.test_set.tensors[0], loaded.test_set.tensors[1]
        eps = eps_to_input_units(loaded.dataset, chosen.eps, moons_units=loaded.units)
        state_path = state_path_for(args.out) if args.out else None
        chunks = -(-int(x.shape[0]) // args.batch_size)
        header = (f"AutoAttack {chosen.version}, {chosen.norm}, eps {chosen.eps:g} on {x.shape[0]} points ({chunks} "
                  f"chunk(s) of {args.batch_size}, seed {args.seed}, {world} process(es) on {device.type})")
        progress = ChunkProgress(header, shown=not args.no_progress) if rank == 0 else None
        try:
            result = evaluate_autoattack(
                loaded.model, x, y, eps, norm=chosen.norm, version=chosen.version, seed=args.seed,
                batch_size=args.batch_size, state_path=state_path, restart=args.restart, keep_state=True,
                progress=progress,
                stage_progress=progress.stage if progress is not None else None, about={"checkpoint": loaded.where})
        finally:
            if progress is not None:
                progress.close()
        if rank != 0:
            return 0
        for line in result.warning_lines():
            print(f"warning: {line}", file=sys.stderr)
        print(result.table())
        print(f"clean accuracy: {result.clean_acc:.2f}%")
        print(f"robust accuracy (AutoAttack {chosen.version}, {chosen.norm}, eps {chosen.eps:g}): "
              f"{result.autoattack_acc:.2f}%")
        print(f"time: {result.seconds:.1f} s, {format_throughput(result.images_per_s)} "
              f"({result.n_examples} points)")
        if args.out:
            about = {"checkpoint": loaded.where, "model": loaded.model_name, "dataset": loaded.dataset,
                     "device": _describe(device), "processes": world, "batch_size": args.batch_size}
            record = result.to_dict(**about)
            record["eps"] = chosen.eps  # in the dataset's units, as given
            if eps != chosen.eps:
                record["eps_input_units"] = eps
            atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
            if os.path.exists(state_path):  # only now: a kill before the write loses nothing
                os.remove(state_path)
            print(f"results written to {args.out}", file=sys.stderr)
        return 0
    finally:
        if world > 1:
            teardown_distributed(finished=sys.exc_info()[0] is None)


def _is_autoattack(name: str) -> bool:
    try:
        return canonical_name(name) == "autoattack"  # also its aliases (aa)
    except ValueError:
        return False  # an unknown name: the eps-grid path says so


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
