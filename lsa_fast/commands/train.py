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
import sys
from pathlib import Path

import torch

from ..analysis import eps_to_input_units
from ..checkpoint import CHECKPOINT_NAME, FINAL_NAME, load_checkpoint
from ..device_data import make_device_loader
from ..train_config import AUGMENT_MODES, BASES, COMPILE_MODES, OPTIMIZERS, SCHEDULES, TrainConfig
from ..training import (
    ATLRTrainer,
    run_name,
    seed_everything,
    setup_distributed,
    teardown_distributed,
)

# The paper's training eps per dataset, in the dataset's units.
DEFAULT_EPS = {"moons": 0.3, "mnist": 0.3, "cifar10": 8 / 255}

# Options that define the run: with --resume they come from the checkpoint, and
# giving one with another value is an error (the run would not be the same run).
_RUN_OPTIONS = ("model", "dataset", "base", "lr_layers", "gamma", "epochs", "eps", "alpha", "steps",
                "no_random_start", "beta", "attack_mode", "eta", "warmup_epochs", "batch_size", "optimizer",
                "lr", "momentum", "weight_decay", "schedule", "amp", "channels_last", "grad_clip", "seed",
                "n_train", "n_test", "noise", "limit", "augment", "drop_last")


def register(subparsers, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name, help="adversarial training with the layer-wise regulariser (AT-LR, Algorithm 3)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    general = parser.add_argument_group("run")
    general.add_argument("--model", help="A, B, C, D, wrn-28-10, wrn-34-10 or package.module:attr (default: "
                                     "the dataset's paper model)")
    general.add_argument("--dataset", help="moons, mnist or cifar10 (default: the model's paper dataset)")
    general.add_argument("--out", help="run directory: checkpoint.pt, final.pt, config.json, metrics.jsonl")
    general.add_argument("--resume", metavar="DIR", help="continue the run in DIR exactly where it stopped")
    general.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto (default)")
    general.add_argument("--data", metavar="DIR", help="where MNIST / CIFAR-10 files are (default $LSA_FAST_DATA or ./data)")
    general.add_argument("--n-train", type=int, help="moons: training samples (default 10000)")
    general.add_argument("--n-test", type=int, help="moons: test samples (default 2000)")
    general.add_argument("--noise", type=float, help="moons: noise (default 0.2)")
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
    attack.add_argument("--lr-layers", help="regularised layers: '0,2', 'auto' (LSA after the warm-up), or "
                                            "an LSA report JSON (its MVL); default: none")
    attack.add_argument("--gamma", help="regulariser weight: one value, or one per layer '1,0.5' (default 1)")
    attack.add_argument("--eta", type=float, help="MVL threshold of Algorithm 1 for --lr-layers auto (default 1)")
    attack.add_argument("--warmup-epochs", type=int, help="normal epochs before LSA for --lr-layers auto (default 1)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, help="default 10")
    optim.add_argument("--batch-size", type=int, help="global batch size (default 128; per rank: / world size)")
    optim.add_argument("--optimizer", choices=OPTIMIZERS, help="default sgd (momentum 0.9)")
    optim.add_argument("--lr", type=float, help="peak learning rate (default: sgd 0.1, adam 1e-3)")
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
    parser.set_defaults(run=run)
    return parser


def run(args) -> int:
    rank, world_size, device = setup_distributed(args.device)
    try:
        return _train(args, rank, world_size, device)
    finally:
        teardown_distributed()


def _train(args, rank: int, world_size: int, device: torch.device) -> int:
    from ..data import load_dataset, make_loader
    from ..models import MODEL_DATASET, build_model

    state = None
    if args.resume:
        state = load_checkpoint(Path(args.resume) / CHECKPOINT_NAME if Path(args.resume).is_dir() else args.resume)
        config = TrainConfig.from_dict(state["config"])
        _check_resume_args(args, config, MODEL_DATASET)
        if args.compile is not None:  # how to run, not what: a resumed run may change it
            config.compile = args.compile
        out_dir = Path(args.out) if args.out else Path(state["path"]).parent
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

    data_dir = config.data_options.get("data_dir")
    options = {k: v for k, v in config.data_options.items() if k != "data_dir"}
    train_options = {k: v for k, v in options.items() if k != "n_test"}
    test_options = {k: v for k, v in options.items() if k != "n_train"}
    if config.dataset == "moons":
        if "n_train" in train_options:
            train_options["n_samples"] = train_options.pop("n_train")
        if "n_test" in test_options:
            test_options["n_samples"] = test_options.pop("n_test")
    else:
        for key in ("n_train", "n_test", "noise"):
            if key in options:
                raise ValueError(f"--{key.replace('_', '-')} applies to moons only, not {config.dataset}")
    train_set = load_dataset(config.dataset, data_dir, train=True, **train_options)
    test_set = load_dataset(config.dataset, data_dir, train=False, **test_options)

    seed_everything(config.seed)  # the same initial weights on every rank
    model = build_model(config.model, **config.model_kwargs)
    if args.workers:
        print("lsa-fast train: --workers is unused: the training data are loaded onto the device once",
              file=sys.stderr)
    train_loader = make_device_loader(train_set, config, device, rank, world_size)
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
        return 143  # 128 + SIGTERM, what a scheduler expects from a terminated job
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
    if dataset is None:
        key = model.strip().upper()
        if key not in model_dataset:
            raise ValueError(f"--dataset is needed for model {model!r} (paper models: "
                             f"{', '.join(f'{m} -> {d}' for m, d in model_dataset.items())})")
        dataset = model_dataset[key]
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
    data_options = {}
    for key in ("n_train", "n_test", "noise", "limit"):
        value = getattr(args, key)
        if value is not None:
            data_options[key] = value
    if args.data:
        data_options["data_dir"] = str(args.data)
    fields = {
        "base": args.base, "steps": args.steps, "beta": args.beta, "attack_mode": args.attack_mode,
        "lr_layers": args.lr_layers, "gammas": args.gamma, "eta": args.eta, "warmup_epochs": args.warmup_epochs,
        "epochs": args.epochs, "batch_size": args.batch_size, "optimizer": args.optimizer, "lr": args.lr,
        "momentum": args.momentum, "weight_decay": args.weight_decay, "schedule": args.schedule,
        "amp": args.amp, "channels_last": args.channels_last, "grad_clip": args.grad_clip, "seed": args.seed,
        "augment": args.augment, "drop_last": args.drop_last, "compile": args.compile,
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


def _check_resume_args(args, config: TrainConfig, model_dataset) -> None:
    """With --resume the checkpoint defines the run. Run options given anyway (e.g. the
    same command line relaunched with --resume appended) must agree with it."""
    given = [name for name in _RUN_OPTIONS if getattr(args, name, None) not in (None, False)]
    if not given:
        return
    if args.model is None and args.dataset is None:
        args.model, args.dataset = config.model, config.dataset
    wanted = _config_from_args(args, model_dataset)
    renamed = {"gamma": "gammas", "no_random_start": "random_start"}
    conflicts = []
    for name in given:
        if name in ("n_train", "n_test", "noise", "limit"):
            mine, theirs = wanted.data_options.get(name), config.data_options.get(name)
        else:
            key = renamed.get(name, name)
            mine, theirs = getattr(wanted, key), getattr(config, key)
        if mine != theirs:
            conflicts.append(f"--{name.replace('_', '-')}: {mine!r} (the run has {theirs!r})")
    if conflicts:
        raise ValueError("--resume continues the run as it was configured, but these options differ from its "
                         "checkpoint: " + "; ".join(conflicts))


def _say(rank: int, message: str, final: bool = False) -> None:
    # Progress goes to stderr; the closing line (where the weights are) to stdout.
    if rank == 0:
        print(message, file=sys.stdout if final else sys.stderr, flush=True)
