"""`lsa-fast analyze`: Layer Sustainability Analysis of a (trained) model on a dataset's
test split; writes report.json, report.md and lsa.png into --out.

    lsa-fast analyze --model A --checkpoint ckpt.pt --perturbations fgsm:0.1,pgd:0.1,gaussian:0.1 --eta 1.0 --out lsa-report

eps values are in the dataset's own units (the paper's): for Moons, the units of the
moons before lsa_fast.data maps them into [0, 1]^2 (z units when the run standardized
them), so fgsm:0.1 attacks with 0.1 / 5 (standardized: 0.1 / 10) in input units; the
report records both. The probe points are the activation outputs (the authors' L0, L1,
...) unless the run recorded another preset or --select says otherwise. Under torchrun
each rank analyses a shard of the data and rank 0 writes the report of the whole set.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch
from torch.utils.data import TensorDataset

from ..best_checkpoint import WEIGHTS, weights_file
from ..checkpoint import why_unreadable
from ..collapse import collapse_warning
from ..analysis import DEFAULT_ETA_SWEEP, ShardSampler, analyze, eps_to_input_units
from ..attacks import make_attack, parse_attack_spec
from ..data import DATASET_NAMES, make_loader
from ..run_data import FILE_DATASETS, check_fingerprint, data_dir_to_read, missing_data_hint
from ..run_data import describe, load_split, moons_units
from ..model_fit import check_model_fits, check_model_name, load_weights
from ..models import build_model, model_dataset, parse_model_options, recorded_model_options
from ..report import atomic_write_text
from ..devices import parse_device
from ..distributed import setup_distributed, teardown_distributed
from ._outputs import check_output_dir
from .arguments import comma_items

REPORT_FILES = ("report.json", "report.md", "lsa.png")


def register(subparsers, name: str = "analyze") -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="find a model's most vulnerable layers (LSA) and write a report",
        description=(
            "Layer Sustainability Analysis (Khalooei et al., arXiv:2202.02626, Algorithms 1 and 2): perturb "
            "the test set, measure the relative error at every probe point (by default the activation outputs, "
            "the authors' L0, L1, ...; see --select), list the most vulnerable layers (MVL) and write "
            "report.json, report.md and lsa.png. Progress on stderr: a bar with an ETA on a terminal, a line per "
            "tenth of the batches in a log, the speed (img/s) at the end. A model whose clean accuracy is the "
            "share of the most frequent class (collapsed) is named as such before the table."
        ),
    )
    parser.add_argument("--model", default=None,
                        help="A (fits moons), B (mnist), C, D, wrn-28-10, wrn-34-10 (cifar10) or package.module:attr "
                             "(default: the checkpoint's)")
    parser.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                        help="a constructor option of the model (repeatable), e.g. depth=16 or normalize=none "
                             "(default: the checkpoint's record, else the paper's)")
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="weights: a run directory of `lsa-fast train` (its final.pt, else checkpoint.pt), a "
                             "trainer checkpoint file (a dict with 'model'), or a state_dict file (default: none, "
                             "a randomly initialised model)")
    parser.add_argument("--weights", default="final", choices=WEIGHTS,
                        help="of a run directory: final (final.pt, else checkpoint.pt; default) or best (best.pt, "
                             "written by lsa-fast train --keep-best)")
    parser.add_argument("--dataset", default=None, choices=DATASET_NAMES,
                        help="default: the dataset of the model (A: moons, B: mnist, C/D: cifar10)")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="where MNIST / CIFAR-10 lie (default: $LSA_FAST_DATA, else the run's recorded directory, "
                             "else ./data); moons is generated")
    parser.add_argument("--split", default="test", choices=("test", "train"), help="which split to analyse (test)")
    parser.add_argument("--perturbations", default="fgsm:0.1,pgd:0.1,gaussian:0.1", metavar="SPECS",
                        help="comma-separated name:eps, eps in the dataset's units "
                             "(fgsm, fgsm-rs, pgd, pgd-l2, apgd, trades, gaussian, salt, pepper, salt-and-pepper, "
                             "speckle; default fgsm:0.1,pgd:0.1,gaussian:0.1)")
    parser.add_argument("--eta", type=float, default=1.0, help="MVL threshold: layer mean - mu > eta * sigma (1.0)")
    parser.add_argument("--eta-sweep", default=",".join(f"{e:g}" for e in DEFAULT_ETA_SWEEP), metavar="ETAS",
                        help="comma-separated etas whose MVL lists the report also gives")
    parser.add_argument("--select", "--probes", dest="select", default=None,
                        help="probe points: activations (the ReLU/ELU/LeakyReLU outputs, one per hidden layer: the "
                             "authors' L0, L1, ...), hidden (Conv/Linear outputs but the last, before the "
                             "activation), learnable, or a module name / glob pattern (default: the preset the "
                             "checkpoint's run recorded for its --lr-layers, else activations)")
    parser.add_argument("--batch-size", type=int, default=256, help="samples per batch (default 256)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="analyse only the first N samples (default: the split the run recorded, in full)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random starts and noises (0)")
    parser.add_argument("--out", default="lsa-report", metavar="DIR", help="output directory (lsa-report)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.out, "--out", files=REPORT_FILES)  # before the analysis, not after it
    parse_device(args.device)
    given = parse_model_options(args.model_option)
    if args.weights != "final" and not args.checkpoint:
        raise ValueError(f"--weights {args.weights} picks the weights of a run: give --checkpoint RUN")
    state, config = _read_checkpoint(args.checkpoint, args.weights) if args.checkpoint else (None, {})
    model_name = args.model or config.get("model")
    if not model_name:
        raise ValueError("--model is required (the checkpoint does not name its model)" if args.checkpoint
                         else "--model is required (A, B, C, D or package.module:attr)")
    model_name = str(model_name)
    # The trainer's checkpoints record the constructor arguments of the model they hold.
    check_model_name(model_name)  # an unknown name fails here, before anything else
    kwargs = recorded_model_options(model_name, config.get("model"), config.get("model_kwargs"), given)
    model = build_model(model_name, **kwargs)
    dataset = args.dataset or config.get("dataset") or model_dataset(model_name)
    if dataset is None:
        raise ValueError(f"--dataset is required for model {model_name!r} (one of {', '.join(DATASET_NAMES)})")
    check_model_fits(model, model_name, dataset)  # before the weights and the data are read
    if state is not None:
        load_weights(model, state, f"--checkpoint {args.checkpoint}", model_name)
    recorded_data = config.get("data_options") if config.get("dataset") == dataset else None
    units = moons_units(recorded_data) if dataset == "moons" and isinstance(recorded_data, dict) else "raw"
    perturbations = _perturbations(args.perturbations, dataset, units)
    select = args.select or _recorded_probes(config) or "activations"
    eta_sweep = _floats("--eta-sweep", args.eta_sweep)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")

    owned = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    rank, world_size, device = setup_distributed(args.device)
    distributed = world_size > 1
    try:
        model.to(device)
        data = _load(args, dataset, config, rank)
        sampler = ShardSampler(len(data)) if distributed else None
        loader = make_loader(data, args.batch_size, sampler=sampler)
        torch.manual_seed(args.seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = analyze(model, loader, perturbations, eta=args.eta, select=select, device=device,
                             progress=not args.no_progress, eta_sweep=eta_sweep, dataset=dataset,
                             model_name=model_name, moons_units=units)
        if rank != 0:
            return 0
        collapsed = collapse_warning(report.clean_accuracy, data.tensors[1], f"clean {args.split}")
        for text in ([collapsed] if collapsed else []) + [str(warning.message) for warning in caught]:
            text = text[len("analyze: "):] if text.startswith("analyze: ") else text
            print(f"lsa-fast analyze: warning: {text}", file=sys.stderr, flush=True)
        return _write(report, args.out)
    finally:
        if owned:
            teardown_distributed(finished=sys.exc_info()[0] is None)


# ---------------------------------------------------------------------------- helpers


def _write(report, out: str) -> int:
    os.makedirs(out, exist_ok=True)
    json_path, md_path, png_path = (os.path.join(out, name) for name in REPORT_FILES)
    report.to_json(json_path)
    atomic_write_text(md_path, report.to_markdown() + "\n")
    written = [json_path, md_path]
    try:
        report.plot(png_path)
        written.append(png_path)
    except ImportError as error:
        print(f"lsa-fast analyze: figure skipped: {error}", file=sys.stderr)
    print(report.to_markdown(details=False))
    print()
    for name, mvl in report.mvl_lists().items():
        print(f"MVL {name} (eta={report.eta:g}): {mvl}")
    print(f"report written to {os.path.abspath(out)}: {', '.join(os.path.basename(p) for p in written)}")
    return 0


def _read_checkpoint(path: str, weights: str = "final"):
    """(state_dict, config) from a plain state_dict file or a trainer checkpoint
    {"model": state_dict, "config": {"model": name, "model_kwargs": {...}, "dataset": ...}, ...}."""
    try:  # a run directory of `lsa-fast train` -> its final.pt (else checkpoint.pt)
        path = str(weights_file(path, weights))
    except FileNotFoundError as error:
        raise FileNotFoundError(error if weights == "best" else f"--checkpoint {error}") from None
    try:
        # weights_only: a checkpoint is data; unpickling arbitrary objects could run code.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle, random bytes: all mean "not a checkpoint"
        raise ValueError(f"--checkpoint {path}: {why_unreadable(path, error)}") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        config = loaded.get("config") if isinstance(loaded.get("config"), dict) else {}
        state = loaded["model"]
    elif isinstance(loaded, dict):
        state, config = loaded, {}
    else:
        raise ValueError(f"--checkpoint {path}: holds a {type(loaded).__name__}, not a state_dict or a checkpoint dict")
    bad = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not state or bad:
        what = "is empty" if not state else f"has non-tensor entries {bad[:5]}"
        raise ValueError(f"--checkpoint {path}: not a state_dict (a dict of tensors): it {what}")
    return state, config


def _load(args, dataset: str, config: dict, rank: int):
    """The split to analyse, as the checkpoint's run recorded it (lsa_fast.run_data):
    files from --data, $LSA_FAST_DATA or where the run read them, checked against the
    run's fingerprint of that split."""
    same = config.get("dataset") == dataset
    recorded_options = config.get("data_options") if same else None
    options = recorded_options if isinstance(recorded_options, dict) else {}
    recorded_dir = config.get("data_dir") if same else None
    if same and recorded_dir is None:
        recorded_dir = options.get("data_dir")  # runs from before TrainConfig.data_dir
    source = data_dir_to_read(args.data, recorded_dir)
    split = "train" if args.split == "train" else "test"
    recorded = None
    if same and dataset in FILE_DATASETS and isinstance(config.get("extra"), dict):
        recorded = (config["extra"].get("data_fingerprint") or {}).get(split)
    limit = args.limit
    if limit is not None and recorded:
        limit = max(limit, int(recorded["samples"]))  # enough to compare the run's samples
    try:
        data = load_split(dataset, options, train=split == "train", data_dir=source, limit=limit)
    except FileNotFoundError as error:
        raise missing_data_hint(error, recorded_dir, args.data) from None
    check_fingerprint(recorded, data, split, source.resolve() if source else "./data", f"--checkpoint {args.checkpoint}")
    if args.limit is not None and len(data) > args.limit:
        data = TensorDataset(*(tensor[: args.limit] for tensor in data.tensors))
    where = "the run's data" if isinstance(recorded_options, dict) else "no data recorded with the weights: defaults"
    if rank == 0:
        shown = {**options, "data_dir": str(source.resolve())} if source else options
        print(f"lsa-fast analyze: {describe(dataset, shown, args.split, len(data))} [{where}]",
              file=sys.stderr, flush=True)
    return data


def _recorded_probes(config: dict):
    """The probe preset a trainer checkpoint's run counted its --lr-layers in (None when
    the checkpoint records none: a plain state_dict, or a run from before the preset was
    recorded)."""
    probes = config.get("probes")
    return probes if isinstance(probes, str) else None


def _perturbations(text: str, dataset: str, units: str = "raw") -> dict:
    """{spec as written: attack bound with eps in input units}."""
    if not str(text).strip():
        raise ValueError("--perturbations is empty; e.g. fgsm:0.1,pgd:0.1,gaussian:0.1")
    specs = comma_items(text, "--perturbations")
    perturbations = {}
    for spec in specs:
        try:
            name, eps = parse_attack_spec(spec)
        except ValueError as error:
            raise ValueError(f"--perturbations: {error}") from None
        if eps is None:
            raise ValueError(f"--perturbations: {spec!r} has no eps; write name:eps, e.g. {spec}:0.1")
        if spec in perturbations:
            raise ValueError(f"--perturbations: {spec!r} is given twice")
        perturbations[spec] = make_attack(name, eps_to_input_units(dataset, eps, name, moons_units=units))
    return perturbations


def _floats(option: str, text: str):
    items = comma_items(text, option)
    try:
        return [float(part) for part in items]
    except ValueError:
        raise ValueError(f"{option}: expected comma-separated numbers, got {text!r}") from None
