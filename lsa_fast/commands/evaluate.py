"""`lsa-fast eval`: accuracy of a trained checkpoint under an attack over an eps grid,
as a row of the paper's tables with its R&G score (the sum of the accuracies).

    lsa-fast eval --checkpoint runs/x --attack fgsm --eps 0,0.1,0.2,0.3,0.4,0.5

The model and dataset come from the checkpoint's config; eps values are in the
dataset's own units (moons coordinates, z units for standardized moons, pixel fractions
for images), like the paper's tables, and the default grid is the paper's for the dataset.
A model that predicts one class for everything (collapsed) is named as such before the
table. Progress on stderr: a bar with an ETA on a terminal, a line per tenth of the
batches in a log; the last line gives the speed (img/s).

    lsa-fast eval --checkpoint runs/x --attack autoattack --eps 0.3 --out aa.json

runs AutoAttack at one eps instead (lsa_fast.commands.evaluate_autoattack): the robust
accuracy after each stage, resumable from aa.json.state, sharded under torchrun.
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
from typing import NamedTuple, Optional

import torch
from torch.utils.data import TensorDataset

from ..attacks import ATTACKS, canonical_name
from ..attacks.registry import parse_eps
from ..best_checkpoint import WEIGHTS, weights_file
from ..checkpoint import load_checkpoint
from ..data import make_loader
from ..analysis import eps_to_input_units
from ..checks import dataset_key
from ..run_data import FILE_DATASETS, check_fingerprint, data_dir_to_read, missing_data_hint
from ..run_data import describe, load_split, moons_units
from ..devices import parse_device
from ..model_fit import check_model_fits, check_model_name, load_weights
from ..models import build_model, parse_model_options, recorded_model_options
from ..training import TrainConfig, run_name
from ._outputs import check_output_file
from . import evaluate_autoattack
from .arguments import comma_items


def register(subparsers, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name, help="accuracy of a checkpoint over an eps grid, with the R&G score",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="a checkpoint file, or a run directory (its final.pt, else checkpoint.pt)")
    parser.add_argument("--weights", default="final", choices=WEIGHTS,
                        help="of a run directory: final (final.pt, else checkpoint.pt; default) or best (best.pt, "
                             "written by lsa-fast train --keep-best)")
    parser.add_argument("--attack", default="fgsm",
                        help="attack name (fgsm, fgsm-rs, pgd, apgd-ce, ..., or autoattack at one --eps; default fgsm)")
    parser.add_argument("--eps", "--eps-grid", dest="eps_grid", metavar="EPS,...",
                        help="comma-separated eps in dataset units (default: the paper's grid for the dataset)")
    parser.add_argument("--steps", type=int, help="steps of iterative attacks (their default otherwise)")
    parser.add_argument("--model", help="override the checkpoint's model name (A fits moons, B mnist, C, D, "
                                        "wrn-28-10, wrn-34-10 cifar10)")
    parser.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                        help="override one of the model's recorded constructor options (repeatable)")
    parser.add_argument("--dataset", help="override the checkpoint's dataset")
    parser.add_argument("--data", metavar="DIR", help="where MNIST / CIFAR-10 files are (default: $LSA_FAST_DATA, "
                                                      "else the run's recorded directory); checked against the "
                                                      "run's record of its data")
    parser.add_argument("--limit", "--n-examples", dest="limit", type=int, metavar="N",
                        help="evaluate the first N test samples (default: the test set the run recorded, in full)")
    parser.add_argument("--batch-size", type=int, default=256, help="default 256")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of randomised attacks (default 0)")
    parser.add_argument("--name", help="row name (default: the paper's name of the run, e.g. AT-PGD-LR-L2)")
    parser.add_argument("--out", metavar="FILE.json", help="also write the table as JSON (autoattack: the results, "
                                                           "and FILE.json.state while it runs)")
    evaluate_autoattack.add_arguments(parser)  # --no-progress too
    parser.set_defaults(run=run)
    return parser


def run(args) -> int:
    from ..evaluation import PAPER_EPS_GRIDS, EvaluationTable, evaluate

    device = parse_device(args.device)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--n-examples (--limit) must be >= 1, got {args.limit}")
    if args.out:
        check_output_file(args.out, "--out")
    autoattack = evaluate_autoattack.options(args)  # checked here, before any work
    if autoattack is not None:
        return evaluate_autoattack.run(args, autoattack, device, lambda on: _load_run(args, on))
    grid = _parse_grid(args.eps_grid) if args.eps_grid else None
    loaded = _load_run(args, device)
    dataset, config = loaded.dataset, loaded.config
    grid = grid or list(PAPER_EPS_GRIDS.get(dataset, ()))
    if not grid:
        raise ValueError(f"no paper eps grid for dataset {dataset!r}; give --eps")
    loader = make_loader(loaded.test_set, args.batch_size, shuffle=False)

    attack_kw = {}
    if args.steps is not None:
        attack_fn = ATTACKS[canonical_name(args.attack)]
        if "steps" not in inspect.signature(attack_fn).parameters:
            raise ValueError(f"--steps applies to iterative attacks (pgd, apgd, trades, ...), not {args.attack}")
        attack_kw["steps"] = args.steps
    generator = torch.Generator(device=device)  # randomised attacks repeat under --seed
    generator.manual_seed(args.seed)
    attack_kw["generator"] = generator
    row = args.name or run_name(config, loaded.mvl)
    input_grid = [eps_to_input_units(dataset, eps, args.attack, moons_units=loaded.units) for eps in grid]
    _warn_if_collapsed(loaded.model, loader, loaded.test_set.tensors[1])
    measured = evaluate(loaded.model, loader, attack=args.attack, eps_grid=input_grid, row=row,
                        progress=not args.no_progress, **attack_kw)
    # The same row, labelled with the eps in dataset units as the paper prints them.
    table = EvaluationTable(eps_grid=tuple(grid), attack=measured.attack, rows=dict(measured.rows))
    print(table.to_markdown())
    print(f"R&G = {table.rg(row):.2f}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        table.to_json(args.out)
        print(f"table written to {args.out}", file=sys.stderr)
    return 0


class LoadedRun(NamedTuple):
    """What `eval` rebuilds from a checkpoint: the model (on its device, in eval mode)
    and the test set the run recorded (its first --limit samples)."""

    model: torch.nn.Module
    model_name: str
    test_set: TensorDataset
    dataset: str
    units: str  # moons: "raw" or "standardized" (what eps in dataset units means)
    where: str  # the checkpoint file
    config: TrainConfig
    mvl: Optional[list]


def _load_run(args, device: torch.device) -> LoadedRun:
    given = parse_model_options(args.model_option)
    state = load_checkpoint(weights_file(args.checkpoint, args.weights))
    where = state["path"]
    config = TrainConfig.from_dict(state["config"])
    model_name = args.model or config.model
    dataset = dataset_key(args.dataset or config.dataset or "")
    if not model_name or not dataset:
        raise ValueError(f"{where}: the checkpoint does not say which model/dataset it holds; give --model and --dataset")

    check_model_name(model_name)
    model = build_model(model_name, **recorded_model_options(model_name, config.model, config.model_kwargs, given))
    check_model_fits(model, model_name, dataset)  # before the weights and the data are read
    load_weights(model, state["model"], where, model_name)
    model.to(device).eval()

    # The test set the run was evaluated on, as its config records it (lsa_fast.run_data).
    data_options = config.data_options if dataset == config.dataset else {}
    # Files: from --data, $LSA_FAST_DATA or where the run read them, and checked against
    # the run's fingerprint of its test split (its first samples, when --limit is smaller).
    recorded_dir = config.data_dir if dataset == config.dataset else None
    source = data_dir_to_read(args.data, recorded_dir)
    recorded = None
    if dataset == config.dataset and dataset in FILE_DATASETS:
        recorded = (config.extra.get("data_fingerprint") or {}).get("test")
    limit = args.limit
    if limit is not None and recorded:
        limit = max(limit, int(recorded["samples"]))
    try:
        test_set = load_split(dataset, data_options, train=False, data_dir=source, limit=limit)
    except FileNotFoundError as error:
        raise missing_data_hint(error, recorded_dir, args.data) from None
    check_fingerprint(recorded, test_set, "test", source.resolve() if source else "./data", f"--checkpoint {where}")
    if args.limit is not None and len(test_set) < args.limit:
        raise ValueError(f"--n-examples {args.limit}: more than the {len(test_set)} samples of the test set")
    if args.limit is not None and len(test_set) > args.limit:
        test_set = TensorDataset(*(tensor[: args.limit] for tensor in test_set.tensors))
    shown = {**data_options, "data_dir": str(source.resolve())} if source else data_options
    if os.environ.get("RANK", "0") in ("", "0"):
        print(f"{where}: model {model_name}; " + describe(dataset, shown, "test", len(test_set)),
              file=sys.stderr, flush=True)
    units = moons_units(data_options) if dataset == "moons" else "raw"  # z units for standardized moons
    return LoadedRun(model, model_name, test_set, dataset, units, str(where), config, state.get("mvl"))


def _parse_grid(text: str):
    return [parse_eps(part, "--eps") for part in comma_items(text, "--eps")]


def _warn_if_collapsed(model, loader, labels) -> None:
    """One line before the table when the model's clean accuracy is the share of the
    most frequent class (a forward pass: cheap beside the attacks)."""
    from ..collapse import collapse_warning
    from ..evaluation import accuracy, constant_prediction

    warning = collapse_warning(accuracy(model, loader), labels, "clean test", constant_prediction(model, loader))
    if warning:
        print(f"lsa-fast eval: warning: {warning}", file=sys.stderr, flush=True)
