"""`lsa-fast train`: AT-LR (Algorithm 3) on a paper model and dataset, with
checkpoints, exact resume and torchrun DDP.

    lsa-fast train --model A --dataset moons --base pgd --lr-layers 0,1 --gamma 1.0 \\
        --epochs 20 --eps 0.3 --out runs/x
    lsa-fast train --resume runs/x
    torchrun --nproc_per_node=2 -m lsa_fast.cli train ... --out runs/ddp

eps and alpha are given in the dataset's own units (moons coordinates, or z units with
--standardize; pixel fractions for MNIST/CIFAR-10) and converted to model-input units.
--lr-layers counts the probe points of --probes (default: the activation outputs, the
authors' L0, L1, ...).

A run directory belongs to one process at a time (lsa_fast.run_lock); a restart
removes what a killed write left (temporary files) and finishes what a killed run left
undone (final.pt). The run records where its data was (as an absolute path) and a
fingerprint of it: --resume reads the data from --data, $LSA_FAST_DATA or that path,
and refuses data that differs.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from pathlib import Path

import torch

from ..analysis import eps_to_input_units
from ..checkpoint import (
    load_checkpoint,
    remove_stray_temporaries,
    resolve_checkpoint,
    save_checkpoint,
)
from ..best_checkpoint import KEEP_BEST_MODES
from ..checks import dataset_key
from ..run_data import check_fingerprint, data_dir_to_read, data_dir_to_record, fingerprint, missing_data_hint
from ..run_data import describe, load_split, record
from ..device_loader import make_device_loader
from ..devices import parse_device
from ..distributed import broadcast_from_rank0
from ..validation import check_val_size, split_validation
from ..model_fit import FITS, check_model_fits, check_model_name
from ..models import MODEL_DATASET, model_options, parse_model_options
from ..models import model_dataset as implied_dataset
from ..run_data import moons_units as run_data_units
from ..run_lock import RunLock
from ..train_config import AUGMENT_MODES, BASES, COMPILE_MODES, LR_GRAD_MODES, OPTIMIZERS, PROBE_PRESETS, SCHEDULES, TrainConfig
from ..run_files import CHECKPOINT_NAME, FINAL_NAME, METRICS_NAME, RUN_FILES
from ..training import (
    ATLRTrainer,
    learning_rate_at,
    run_name,
    seed_everything,
    setup_distributed,
    teardown_distributed,
    write_run_files,
)

from ._outputs import check_output_dir
from .arguments import comma_items
from .recipes import TRAIN_EPILOG

# The paper's training eps per dataset, in the dataset's units.
DEFAULT_EPS = {"moons": 0.3, "mnist": 0.3, "cifar10": 8 / 255}

# Options that define the run: with --resume they come from the checkpoint, and
# giving one with another value is an error (the run would not be the same run).
_RUN_OPTIONS = ("model", "dataset", "base", "lr_layers", "gamma", "epochs", "eps", "alpha", "steps",
                "no_random_start", "beta", "attack_mode", "eta", "warmup_epochs", "eps_warmup_epochs", "batch_size",
                "optimizer", "lr", "momentum", "weight_decay", "schedule", "amp", "channels_last", "grad_clip", "seed",
                "n_train", "n_test", "noise", "limit", "model_option", "augment", "drop_last", "probes", "lr_grad",
                "standardize", "val_size", "keep_best", "lsa_every")
# The options of the run's data record (lsa_fast.run_data).
_DATA_OPTIONS = ("n_train", "n_test", "noise", "limit", "standardize")


# Options whose flag is not their dest with dashes.
_OPTION_NAMES = {"lr": "--learning-rate"}


def register(subparsers, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name, help="adversarial training with the layer-wise regulariser (AT-LR, Algorithm 3)",
        description=__doc__, epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    general = parser.add_argument_group("run")
    general.add_argument("--model", help="A (fits moons), B (mnist), C, D, wrn-28-10, wrn-34-10 (cifar10) or "
                                         "package.module:attr (default: the dataset's paper model)")
    general.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                         help="a constructor option of the model (repeatable), e.g. depth=16, widen_factor=4, "
                              "hidden=50, normalize=none|cifar10; recorded in the run (default: the paper's; C and D "
                              "normalise with the CIFAR-10 statistics)")
    general.add_argument("--dataset", help="moons, mnist or cifar10 (default: the model's paper dataset)")
    general.add_argument("--out", help="run directory: checkpoint.pt, final.pt, config.json, metrics.jsonl")
    general.add_argument("--resume", metavar="DIR", help="continue the run in DIR exactly where it stopped")
    general.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto (default)")
    general.add_argument("--data", metavar="DIR", help="where MNIST / CIFAR-10 files are (default $LSA_FAST_DATA or "
                                                       "./data; with --resume: the run's recorded directory)")
    general.add_argument("--n-train", type=int, help="moons: training samples (default 10000)")
    general.add_argument("--n-test", type=int, help="moons: test samples (default 2000)")
    general.add_argument("--noise", type=float, help="moons: noise (default 0.2)")
    general.add_argument("--standardize", action="store_true", default=None,
                         help="moons: z-score both axes with the training split's mean and std (the paper's units; "
                              "eps and alpha then in z units; model A sees z-scores)")
    general.add_argument("--limit", type=int, help="keep the first N samples of each split (quick runs)")
    general.add_argument("--workers", type=int, default=0,
                         help="unused: the training data live on the device (kept for old command lines)")
    general.add_argument("--no-progress", action="store_true", help="no progress bar")
    general.add_argument("--stop-after-epoch", type=int, metavar="K",
                         help="stop (resumably) once K epochs are complete, e.g. to fit a job's time slot")

    attack = parser.add_argument_group("attack and regulariser")
    attack.add_argument("--base", choices=BASES, help="base attack (default pgd)")
    attack.add_argument("--eps", type=float, help="attack radius in dataset units (default: moons 0.3, "
                                                  "mnist 0.3, cifar10 8/255)")
    attack.add_argument("--alpha", type=float, help="step size in dataset units (default: PGD/TRADES 2.5 eps / "
                                                    "steps, FAST 1.25 eps)")
    attack.add_argument("--steps", type=int, help="PGD / APGD / TRADES steps (default 10)")
    attack.add_argument("--no-random-start", action="store_true", default=None, help="PGD without random start")
    attack.add_argument("--beta", type=float, help="TRADES beta (default 6)")
    attack.add_argument("--attack-mode", choices=("auto", "train", "eval"),
                        help="model mode while attacking (default auto: eval for TRADES, else train)")
    attack.add_argument("--lr-layers", help="layers of the layer-wise regulariser (the paper's LR, not the "
                                            "learning rate): '0,2', 'auto' (LSA after the warm-up), or "
                                            "an LSA report JSON (its MVL); default: none")
    attack.add_argument("--gamma", help="regulariser weight: one value, or one per layer '1,0.5' (default 1)")
    attack.add_argument("--probes", choices=PROBE_PRESETS,
                        help="what --lr-layers indices count: activations (the ReLU/ELU/LeakyReLU outputs, one per "
                             "hidden layer, the authors' L0, L1, ...; default), hidden (Conv/Linear outputs but the "
                             "last, before the activation), learnable")
    attack.add_argument("--lr-grad", choices=LR_GRAD_MODES,
                        help="the regulariser's gradient paths: both (the paper's equation; default), adversarial "
                             "(clean features detached), numerator (the denominator ||phi(x)|| detached)")
    attack.add_argument("--eta", type=float, help="MVL threshold of Algorithm 1 for --lr-layers auto (default 1)")
    attack.add_argument("--warmup-epochs", type=int, help="normal epochs before LSA for --lr-layers auto (default 1)")
    attack.add_argument("--eps-warmup-epochs", type=int, metavar="K",
                        help="the eps ramp: epoch k (from 0) attacks at eps * min(1, k / K), so the first epoch "
                             "trains clean and the full eps applies from epoch K + 1; the remedy when adversarial "
                             "training from scratch at a large eps collapses to one class (default 0: no ramp)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, help="default 10")
    optim.add_argument("--batch-size", type=int, help="global batch size (default 128; per rank: / world size)")
    optim.add_argument("--optimizer", choices=OPTIMIZERS, help="default sgd (momentum 0.9)")
    optim.add_argument("--learning-rate", "--lr", dest="lr", type=float,
                       help="peak learning rate of the optimiser (default: sgd 0.1, adam 1e-3); not the "
                            "regulariser, which --lr-layers and --gamma set")
    optim.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    optim.add_argument("--weight-decay", type=float, help="default: sgd 5e-4, adam 0")
    optim.add_argument("--schedule", choices=SCHEDULES, help="default auto: cyclic for fast, piecewise for sgd, "
                                                             "constant for adam")
    optim.add_argument("--amp", choices=("none", "bf16", "fp16"), help="autocast dtype (fp16: CUDA only)")
    optim.add_argument("--channels-last", action="store_true", default=None, help="channels_last memory format")
    optim.add_argument("--grad-clip", type=float, help="clip the gradient norm to this value")
    optim.add_argument("--augment", choices=AUGMENT_MODES,
                       help="training augmentation on the device: crop-flip (random crop with 4-pixel padding + "
                            "horizontal flip), none, or auto (default: crop-flip for cifar10, else none)")
    optim.add_argument("--drop-last", action="store_true", default=None,
                       help="drop each epoch's last, smaller batch (a static batch shape for CUDA graphs)")
    optim.add_argument("--compile", nargs="?", const="auto", choices=COMPILE_MODES,
                       help="compile the training step (torch.compile; on CUDA also CUDA graphs): --compile alone "
                            "is auto (cudagraphs on CUDA, inductor on CPU); may differ on --resume")
    optim.add_argument("--seed", type=int, help="default 0")

    watch = parser.add_argument_group("validation and LSA during training")
    watch.add_argument("--val-size", type=int, metavar="N",
                       help="hold out N training samples (drawn with --seed, never trained on) for val_acc and "
                            "val_robust_acc (PGD-10 at --eps) in metrics.jsonl each epoch (default 0: none)")
    watch.add_argument("--keep-best", choices=KEEP_BEST_MODES,
                       help="write best.pt at the epoch of the best validation accuracy: robust (PGD-10), clean, "
                            "or none (default); needs --val-size")
    watch.add_argument("--lsa-every", type=int, metavar="K",
                       help="the CM of every probed layer (training attack and Gaussian noise) and the MVL on a fixed "
                            "validation (else test) batch every K epochs, as layer_cm, layer_cm_noise, layer_mvl in "
                            "metrics.jsonl (default 1; 0: off); drawn in training_lsa.png (lsa-fast plot)")
    parser.set_defaults(run=run)
    return parser


def run(args) -> int:
    if args.stop_after_epoch is not None and args.stop_after_epoch < 1:
        raise ValueError(f"--stop-after-epoch must be >= 1 (the number of epochs to complete before stopping), "
                         f"got {args.stop_after_epoch}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    # Everything that can be checked without touching the disk first: a bad option
    # leaves no trace.
    device = parse_device(args.device)
    out_dir = _out_dir(args)
    config = None if args.resume else _config_from_args(args, MODEL_DATASET)
    rank, world_size, device = setup_distributed(device)
    try:
        with contextlib.ExitStack() as held:
            _on_rank0(rank, world_size, lambda: _claim(held, args, out_dir, rank))
            return _train(args, rank, world_size, device, out_dir, config)
    finally:
        teardown_distributed(finished=sys.exc_info()[0] is None)


def _train(args, rank: int, world_size: int, device: torch.device, out_dir: Path, config) -> int:
    from ..data import make_loader
    from ..models import build_model

    state = None
    if args.resume:  # read only now, under the lock: no other process can be writing it
        state = load_checkpoint(resolve_checkpoint(args.resume, prefer=(CHECKPOINT_NAME, FINAL_NAME)))
        config = TrainConfig.from_dict(state["config"])
        extending = args.epochs is not None and args.epochs > config.epochs
        _check_resume_args(args, config, MODEL_DATASET, ignore=("epochs",) if extending else ())
        if extending:
            config = _extend(config, args.epochs, state, out_dir, rank)
        if args.compile is not None:  # how to run, not what: a resumed run may change it
            config.compile = args.compile

    if state is not None and int(state["epoch"]) >= config.epochs:
        done = _on_rank0(rank, world_size, lambda: _complete(state, config, out_dir))
        undone = f" (finished what the interrupted run left undone: wrote {', '.join(done)})" if done else ""
        _say(rank, f"the run in {out_dir} is already complete ({config.epochs} epochs); "
                   f"weights in {out_dir / FINAL_NAME}{undone}; to train it on, raise its epochs: lsa-fast train "
                   f"--resume {out_dir} --epochs {config.epochs + max(1, config.epochs // 2)} (the learning-rate "
                   f"schedule is stretched over the new total)", final=True)
        return 0

    seed_everything(config.seed)  # the same initial weights on every rank
    model = build_model(config.model, **config.model_kwargs)
    check_model_fits(model, config.model, config.dataset)  # before the data is read
    train_set, test_set = _load_data(args, config, resumed=state is not None)
    train_set, val_set = _hold_out(args, config, train_set, resumed=state is not None)
    held = f"; {len(val_set)} of them held out for validation, never trained on" if val_set is not None else ""
    _say(rank, "training data: " + describe(config.dataset, config.data_options, "train", len(train_set)
                                            + (len(val_set) if val_set is not None else 0)) + held)
    if args.workers:
        _say(rank, "--workers is unused: the training data are loaded onto the device once")
    train_loader = make_device_loader(train_set, config, device, rank, world_size)
    test_loader = make_loader(test_set, max(config.batch_size // world_size, 1), shuffle=False)
    trainer = ATLRTrainer(model, config, train_loader, test_loader if rank == 0 else None, device=device,
                          out_dir=out_dir, val_set=val_set)
    if state is not None:
        trainer.load_state_dict(state)
        _say(rank, f"resuming {out_dir} at epoch {trainer.epoch + 1}"
                   + (f", batch {trainer.step_in_epoch + 1}" if trainer.step_in_epoch else ""))
    _say(rank, f"{run_name(config)} on {config.dataset} (model {config.model}), {world_size} process(es) on "
               f"{device}, eps {config.extra.get('eps_dataset_units', config.eps):g} "
               f"({config.eps:g} in input units), {config.epochs} epochs")
    result = trainer.fit(progress=not args.no_progress, stop_after_epoch=args.stop_after_epoch)
    if result.interrupted:
        _say(rank, f"interrupted; continue with: lsa-fast train --resume {out_dir}", final=True)
        # 128 + the signal: what a shell (Ctrl-C: 130) or a scheduler (SIGTERM: 143) expects.
        return 130 if result.stop_signal == "SIGINT" else 143
    if result.epochs_completed < config.epochs:
        _say(rank, f"stopped after epoch {result.epochs_completed} of {config.epochs}; checkpoint "
                   f"{out_dir / CHECKPOINT_NAME}; continue with: lsa-fast train --resume {out_dir}", final=True)
        return 0
    _on_rank0(rank, world_size, lambda: _figure(out_dir, config, result.metrics))
    last = result.metrics[-1] if result.metrics else {}
    summary = f"test acc {last['test_acc']:.2f}%, " if "test_acc" in last else ""
    _say(rank, f"{run_name(config, result.mvl)}: {summary}weights in {out_dir / FINAL_NAME} "
               f"(checkpoint {out_dir / CHECKPOINT_NAME}, metrics {out_dir / METRICS_NAME})", final=True)
    return 0


def _out_dir(args) -> Path:
    """The run directory this command writes, checked before any work."""
    if args.resume:
        resume = Path(args.resume).expanduser()
        if not resume.exists():
            raise FileNotFoundError(f"--resume {resume}: no such run directory or checkpoint file")
        out_dir = Path(args.out) if args.out else (resume if resume.is_dir() else resume.parent)
    elif args.out:
        out_dir = Path(args.out)
    else:
        raise ValueError("--out DIR is required (or --resume DIR)")
    return check_output_dir(out_dir, "--out", files=RUN_FILES)


def _claim(held: contextlib.ExitStack, args, out_dir: Path, rank: int) -> None:
    """Rank 0: lock the run directory for the life of the run, clear what a killed
    write left in it, and make sure it holds no other run."""
    lock = held.enter_context(RunLock(out_dir))
    if lock.stale:
        _say(rank, lock.stale)
    removed = remove_stray_temporaries(out_dir)
    if removed:
        _say(rank, f"{out_dir}: removed {len(removed)} temporary file(s) that an interrupted write left: "
                   f"{', '.join(path.name for path in removed)}")
    held_files = [name for name in (CHECKPOINT_NAME, FINAL_NAME) if (out_dir / name).exists()]
    if not held_files:
        return
    if not args.resume:
        raise ValueError(f"{out_dir} already holds a run ({held_files[0]}); continue it with --resume {out_dir} "
                         f"or choose another --out")
    resume = Path(args.resume).expanduser()
    source = resume if resume.is_dir() else resume.parent
    if not _same_directory(source, out_dir):
        raise ValueError(f"--out {out_dir} already holds another run ({held_files[0]}); --resume {args.resume} "
                         f"--out DIR continues that run in DIR, which must not hold a run: choose an empty --out, "
                         f"or leave --out out to continue it in {source}")


def _complete(state, config: TrainConfig, out_dir: Path):
    """Rank 0, for a checkpoint whose training is complete: write what a kill may have
    left unwritten (final.pt, the checkpoint in a new --out, config.json, metrics.jsonl
    with the checkpoint's metrics); returns the names of the weight files written."""
    payload = {k: v for k, v in state.items() if k not in ("path", "format", "version")}
    written = []
    for name in (FINAL_NAME, CHECKPOINT_NAME):
        if not (out_dir / name).is_file():
            save_checkpoint(payload, out_dir / name)
            written.append(name)
    write_run_files(out_dir, config, state.get("metrics", []))
    return written


def _load_data(args, config: TrainConfig, resumed: bool):
    """Both splits; a new run records where its files were and their fingerprints, a
    resumed one reads them from --data, $LSA_FAST_DATA or the recorded directory and
    checks them against the fingerprints."""
    source = data_dir_to_read(args.data, config.data_dir if resumed else None)
    try:
        train_set = load_split(config.dataset, config.data_options, train=True, data_dir=source)
        test_set = load_split(config.dataset, config.data_options, train=False, data_dir=source)
    except FileNotFoundError as error:
        raise missing_data_hint(error, config.data_dir if resumed else None, args.data) from None
    config.data_dir = data_dir_to_record(config.dataset, source)
    recorded = config.extra.get("data_fingerprint") if resumed else None
    if recorded:
        where = f"--resume {args.resume}"
        for split, data in (("train", train_set), ("test", test_set)):
            check_fingerprint(recorded.get(split), data, split, config.data_dir, where)
    else:
        config.extra = {**config.extra, "data_fingerprint": {"train": fingerprint(train_set),
                                                             "test": fingerprint(test_set)}}
    return train_set, test_set


def _hold_out(args, config: TrainConfig, train_set, resumed: bool):
    """(train, validation) of --val-size; the split's record goes into config.extra and its
    fingerprint into the data record, which a resumed run's split must match."""
    if not config.val_size:
        return train_set, None
    check_val_size(config.val_size, len(train_set))
    train_set, val_set, split = split_validation(train_set, config.val_size, config.seed)
    recorded = (config.extra.get("data_fingerprint") or {}).get("validation") if resumed else None
    if resumed:
        check_fingerprint(recorded, val_set, "validation", config.data_dir, f"--resume {args.resume}")
    else:
        prints = {**config.extra.get("data_fingerprint", {}), "validation": fingerprint(val_set)}
        config.extra = {**config.extra, "validation": split, "data_fingerprint": prints}
    return train_set, val_set


def _figure(out_dir: Path, config: TrainConfig, metrics) -> None:
    """training_lsa.png (lsa-fast plot); a missing matplotlib costs the figure, not the run."""
    from ..training_figure import FIGURE_NAME, plot_training

    if not any(m.get("layer_cm") or m.get("val_acc") is not None for m in metrics):
        return
    try:
        path = plot_training(config.to_dict(), metrics, out_dir / FIGURE_NAME)
        _say(0, f"figure: {path}")
    except ImportError as error:
        _say(0, f"figure skipped: {error}")


def _on_rank0(rank: int, world_size: int, work):
    """work() on rank 0 only; under torchrun every rank then stops with rank 0's error,
    if it had one (else the others would wait for it in the next collective)."""
    failure, result = None, None
    if rank == 0:
        try:
            result = work()
        except Exception as error:  # noqa: BLE001 - passed on to the other ranks, then re-raised
            failure = error
    if world_size > 1:
        box = broadcast_from_rank0([None if failure is None else str(failure), result], world_size)
        if rank != 0:
            if box[0] is not None:
                raise ValueError(box[0])  # rank 0 prints it (lsa_fast.cli prints on rank 0 only)
            result = box[1]
    if failure is not None:
        raise failure
    return result


def _same_directory(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def _config_from_args(args, model_dataset) -> TrainConfig:
    model = args.model
    dataset = args.dataset
    if model is None and dataset is None:
        raise ValueError("give --model or --dataset (e.g. --model A --dataset moons)")
    if model is not None:
        check_model_name(model)
    if dataset is None:
        dataset = implied_dataset(model)
        if dataset is None:
            raise ValueError(f"--dataset is needed for model {model!r} (one of {', '.join(DEFAULT_EPS)}; {FITS})")
    dataset = dataset_key(dataset)
    if model is None:
        model = {d: m for m, d in reversed(list(model_dataset.items()))}.get(dataset)
        if model is None:
            raise ValueError(f"no paper model for dataset {dataset!r}; give --model")
    if dataset not in DEFAULT_EPS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DEFAULT_EPS)}")
    if args.val_size is not None and args.val_size < 0:
        raise ValueError(f"--val-size must be >= 0 (training samples held out for validation), got {args.val_size}")
    eps = DEFAULT_EPS[dataset] if args.eps is None else args.eps
    if eps < 0:
        raise ValueError(f"--eps must be >= 0, got {eps}")
    # The run directory records its data in full (defaults too): eval and analyze rebuild it
    # from there; where files were read from is TrainConfig.data_dir (_load_data).
    data_options = record(dataset, {key: getattr(args, key) for key in _DATA_OPTIONS})
    moons_units = run_data_units(data_options) if dataset == "moons" else "raw"
    for option, text in (("--gamma", args.gamma), ("--lr-layers", args.lr_layers)):
        if text is not None and "," in text:
            comma_items(text, option)  # '0,,2' is an error, not '0,2'
    fields = {
        "base": args.base, "steps": args.steps, "beta": args.beta, "attack_mode": args.attack_mode,
        "lr_layers": args.lr_layers, "gammas": args.gamma, "eta": args.eta, "warmup_epochs": args.warmup_epochs,
        "eps_warmup_epochs": args.eps_warmup_epochs,
        "epochs": args.epochs, "batch_size": args.batch_size, "optimizer": args.optimizer, "lr": args.lr,
        "momentum": args.momentum, "weight_decay": args.weight_decay, "schedule": args.schedule,
        "amp": args.amp, "channels_last": args.channels_last, "grad_clip": args.grad_clip, "seed": args.seed,
        "augment": args.augment, "drop_last": args.drop_last, "compile": args.compile,
        "probes": args.probes, "lr_grad": args.lr_grad, "val_size": args.val_size, "keep_best": args.keep_best,
        "lsa_every": args.lsa_every,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    if args.no_random_start:
        fields["random_start"] = False
    if args.alpha is not None:
        fields["alpha"] = eps_to_input_units(dataset, args.alpha, moons_units=moons_units)
    extra = {"eps_dataset_units": eps}
    if args.alpha is not None:
        extra["alpha_dataset_units"] = args.alpha
    given = parse_model_options(args.model_option)
    if moons_units == "standardized" and model.strip().upper() == "A":
        given.setdefault("normalize", "moons-standardized")  # model A's layers see the z-scores
    options = model_options(model, given)
    return TrainConfig(eps=eps_to_input_units(dataset, eps, moons_units=moons_units), model=model, dataset=dataset,
                       model_kwargs=options, data_options=data_options, extra=extra, **fields)


def _extend(config: TrainConfig, epochs: int, state, out_dir: Path, rank: int) -> TrainConfig:
    """The run's config with more epochs (--resume DIR --epochs N, N above the run's).
    The learning-rate schedule is a function of the fraction of training done, so it is
    stretched over the new total: the epochs to come follow the schedule of an N-epoch
    run from where this run stands. The config's extra records the earlier totals."""
    done = int(state["epoch"])
    earlier = list(config.extra.get("extended_from", [])) + [config.epochs]
    extended = dataclasses.replace(config, epochs=epochs, extra={**config.extra, "extended_from": earlier})
    state["config"] = extended.to_dict()  # the trainer resumes this config, not the old one
    old_rate, new_rate = learning_rate_at(config, done), learning_rate_at(extended, done)
    _say(rank, f"extending {out_dir} from {config.epochs} to {epochs} epochs ({done} done): the "
               f"{config.resolved_schedule()} learning-rate schedule is stretched over {epochs} epochs, so the "
               f"learning rate goes from {old_rate:.3g} (where the {config.epochs}-epoch schedule stands) to "
               f"{new_rate:.3g}")
    return extended


def _check_resume_args(args, config: TrainConfig, model_dataset, ignore=()) -> None:
    """With --resume the checkpoint defines the run. Run options given anyway (e.g. the
    same command line relaunched with --resume appended) must agree with it, except
    those in `ignore` (--epochs when it extends the run)."""
    given = [name for name in _RUN_OPTIONS if getattr(args, name, None) not in (None, False) and name not in ignore]
    if not given:
        return
    if args.model is None and args.dataset is None:
        args.model, args.dataset = config.model, config.dataset
    wanted = _config_from_args(args, model_dataset)
    renamed = {"gamma": "gammas", "no_random_start": "random_start", "model_option": "model_kwargs"}
    conflicts = []
    for name in given:
        if name in _DATA_OPTIONS:
            # A run written before data_options was complete used the defaults for what it omits.
            mine, theirs = wanted.data_options.get(name), record(config.dataset, config.data_options).get(name)
        else:
            key = renamed.get(name, name)
            mine, theirs = getattr(wanted, key), getattr(config, key)
        if mine != theirs:
            note = "; raise it to extend the run" if name == "epochs" else ""
            option = _OPTION_NAMES.get(name, "--" + name.replace("_", "-"))
            conflicts.append(f"{option}: {mine!r} (the run has {theirs!r}{note})")
    if conflicts:
        raise ValueError("--resume continues the run as it was configured, but these options differ from its "
                         "checkpoint: " + "; ".join(conflicts))


def _say(rank: int, message: str, final: bool = False) -> None:
    # Progress goes to stderr; the closing line (where the weights are) to stdout.
    if rank == 0:
        print(message, file=sys.stdout if final else sys.stderr, flush=True)
