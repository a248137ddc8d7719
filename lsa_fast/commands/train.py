"""`lsa-fast train`: AT-LR (Algorithm 3) on a paper model and dataset, with
checkpoints, exact resume and torchrun DDP.

    lsa-fast train --model A --dataset moons --base pgd --lr-layers 0,1 --gamma 1.0 \\
        --epochs 20 --eps 0.3 --out runs/x
    lsa-fast train --resume runs/x
    torchrun --nproc_per_node=2 -m lsa_fast.cli train ... --out runs/ddp

eps and alpha are given in the dataset's own units (the paper's: moons coordinates,
pixel fractions for MNIST/CIFAR-10) and converted to model-input units.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from ..analysis import eps_to_input_units
from ..checkpoint import CHECKPOINT_NAME, FINAL_NAME, load_checkpoint
from ..model_fit import FITS, check_model_fits, check_model_name, paper_dataset
from ..run_data import describe, load_split, record
from ..train_config import BASES, OPTIMIZERS, SCHEDULES, TrainConfig
from ..training import (
    ATLRTrainer,
    learning_rate_at,
    make_train_loader,
    run_name,
    seed_everything,
    setup_distributed,
    teardown_distributed,
)
from .arguments import comma_items

# The paper's training eps per dataset, in the dataset's units.
DEFAULT_EPS = {"moons": 0.3, "mnist": 0.3, "cifar10": 8 / 255}

# Options that define the run: with --resume they come from the checkpoint, and
# giving one with another value is an error (the run would not be the same run).
_RUN_OPTIONS = ("model", "dataset", "base", "lr_layers", "gamma", "epochs", "eps", "alpha", "steps",
                "no_random_start", "beta", "attack_mode", "eta", "warmup_epochs", "batch_size", "optimizer",
                "lr", "momentum", "weight_decay", "schedule", "amp", "channels_last", "grad_clip", "seed",
                "n_train", "n_test", "noise", "limit")


# Options whose flag is not their dest with dashes.
_OPTION_NAMES = {"lr": "--learning-rate"}


def register(subparsers, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name, help="adversarial training with the layer-wise regulariser (AT-LR, Algorithm 3)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    general = parser.add_argument_group("run")
    general.add_argument("--model", help="A (fits moons), B (mnist), C, D, wrn-28-10, wrn-34-10 (cifar10) or "
                                         "package.module:attr (default: the dataset's paper model)")
    general.add_argument("--dataset", help="moons, mnist or cifar10 (default: the model's paper dataset)")
    general.add_argument("--out", help="run directory: checkpoint.pt, final.pt, config.json, metrics.jsonl")
    general.add_argument("--resume", metavar="DIR", help="continue the run in DIR exactly where it stopped")
    general.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto (default)")
    general.add_argument("--data", metavar="DIR", help="where MNIST / CIFAR-10 files are (default $LSA_FAST_DATA or ./data)")
    general.add_argument("--n-train", type=int, help="moons: training samples (default 10000)")
    general.add_argument("--n-test", type=int, help="moons: test samples (default 2000)")
    general.add_argument("--noise", type=float, help="moons: noise (default 0.2)")
    general.add_argument("--limit", type=int, help="keep the first N samples of each split (quick runs)")
    general.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
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
    attack.add_argument("--eta", type=float, help="MVL threshold of Algorithm 1 for --lr-layers auto (default 1)")
    attack.add_argument("--warmup-epochs", type=int, help="normal epochs before LSA for --lr-layers auto (default 1)")

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
    optim.add_argument("--seed", type=int, help="default 0")
    parser.set_defaults(run=run)
    return parser


def run(args) -> int:
    rank, world_size, device = setup_distributed(args.device)
    try:
        return _train(args, rank, world_size, device)
    finally:
        teardown_distributed()


def _train(args, rank: int, world_size: int, device: torch.device) -> int:
    from ..data import make_loader
    from ..models import MODEL_DATASET, build_model

    state = None
    if args.resume:
        state = load_checkpoint(Path(args.resume) / CHECKPOINT_NAME if Path(args.resume).is_dir() else args.resume)
        config = TrainConfig.from_dict(state["config"])
        out_dir = Path(args.out) if args.out else Path(state["path"]).parent
        extending = args.epochs is not None and args.epochs > config.epochs
        _check_resume_args(args, config, MODEL_DATASET, ignore=("epochs",) if extending else ())
        if extending:
            config = _extend(config, args.epochs, state, out_dir, rank)
    else:
        if not args.out:
            raise ValueError("--out DIR is required (or --resume DIR)")
        out_dir = Path(args.out)
        if (out_dir / CHECKPOINT_NAME).exists():
            raise ValueError(f"{out_dir} already holds a run ({CHECKPOINT_NAME}); continue it with --resume "
                             f"{out_dir} or choose another --out")
        config = _config_from_args(args, MODEL_DATASET)

    if state is not None and int(state["epoch"]) >= config.epochs:
        _say(rank, f"the run in {out_dir} is already complete ({config.epochs} epochs); "
                   f"weights in {out_dir / FINAL_NAME}", final=True)
        return 0

    seed_everything(config.seed)  # the same initial weights on every rank
    model = build_model(config.model, **config.model_kwargs)
    check_model_fits(model, config.model, config.dataset)  # before the data is read
    train_set = load_split(config.dataset, config.data_options, train=True)
    test_set = load_split(config.dataset, config.data_options, train=False)
    _say(rank, "training data: " + describe(config.dataset, config.data_options, "train", len(train_set)))
    train_loader = make_train_loader(train_set, config, rank, world_size, num_workers=args.workers,
                                     pin_memory=device.type == "cuda")
    test_loader = make_loader(test_set, max(config.batch_size // world_size, 1), shuffle=False)
    trainer = ATLRTrainer(model, config, train_loader, test_loader if rank == 0 else None, device=device,
                          out_dir=out_dir)
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
    last = result.metrics[-1] if result.metrics else {}
    summary = f"test acc {last['test_acc']:.2f}%, " if "test_acc" in last else ""
    _say(rank, f"{run_name(config, result.mvl)}: {summary}weights in {out_dir / FINAL_NAME} "
               f"(checkpoint {out_dir / CHECKPOINT_NAME}, metrics {out_dir / 'metrics.jsonl'})", final=True)
    return 0


def _config_from_args(args, model_dataset) -> TrainConfig:
    model = args.model
    dataset = args.dataset
    if model is None and dataset is None:
        raise ValueError("give --model or --dataset (e.g. --model A --dataset moons)")
    if model is not None:
        check_model_name(model)
    if dataset is None:
        dataset = paper_dataset(model)
        if dataset is None:
            raise ValueError(f"--dataset is needed for model {model!r} (one of {', '.join(DEFAULT_EPS)}; {FITS})")
    dataset = dataset.strip().lower().replace("-", "").replace("_", "")
    if model is None:
        model = {d: m for m, d in reversed(list(model_dataset.items()))}.get(dataset)
        if model is None:
            raise ValueError(f"no paper model for dataset {dataset!r}; give --model")
    if dataset not in DEFAULT_EPS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DEFAULT_EPS)}")
    eps = DEFAULT_EPS[dataset] if args.eps is None else args.eps
    if eps < 0:
        raise ValueError(f"--eps must be >= 0, got {eps}")
    # The run directory records its data in full (defaults too): eval and analyze rebuild it from there.
    data_options = record(dataset, {key: getattr(args, key) for key in ("n_train", "n_test", "noise", "limit")})
    if args.data:
        data_options["data_dir"] = str(args.data)
    for option, text in (("--gamma", args.gamma), ("--lr-layers", args.lr_layers)):
        if text is not None and "," in text:
            comma_items(text, option)  # '0,,2' is an error, not '0,2'
    fields = {
        "base": args.base, "steps": args.steps, "beta": args.beta, "attack_mode": args.attack_mode,
        "lr_layers": args.lr_layers, "gammas": args.gamma, "eta": args.eta, "warmup_epochs": args.warmup_epochs,
        "epochs": args.epochs, "batch_size": args.batch_size, "optimizer": args.optimizer, "lr": args.lr,
        "momentum": args.momentum, "weight_decay": args.weight_decay, "schedule": args.schedule,
        "amp": args.amp, "channels_last": args.channels_last, "grad_clip": args.grad_clip, "seed": args.seed,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    if args.no_random_start:
        fields["random_start"] = False
    if args.alpha is not None:
        fields["alpha"] = eps_to_input_units(dataset, args.alpha)
    extra = {"eps_dataset_units": eps}
    if args.alpha is not None:
        extra["alpha_dataset_units"] = args.alpha
    return TrainConfig(eps=eps_to_input_units(dataset, eps), model=model, dataset=dataset,
                       data_options=data_options, extra=extra, **fields)


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
    renamed = {"gamma": "gammas", "no_random_start": "random_start"}
    conflicts = []
    for name in given:
        if name in ("n_train", "n_test", "noise", "limit"):
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
