"""`lsa-fast demo`: LSA and AT-LR on Moons with model A, end to end (lsa_fast.demo)."""
from __future__ import annotations


def register(subparsers, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        help="the main job: LSA and AT-LR on Moons with model A, with a report",
        description="Train model A normally on Moons, run LSA (FGSM, PGD, statistical noises), train AT-PGD "
        "and AT-PGD-LR on the most vulnerable layers, evaluate under FGSM over the paper's eps grid and "
        "write a report directory. No download; about 70 s on two CPU cores (--quick: a few seconds).",
    )
    parser.add_argument("--out", default="runs/demo", help="report directory (default: runs/demo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="epochs of each training run")
    parser.add_argument("--eta", type=float, default=None, help="the MVL threshold of Algorithm 1")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(run=run)


def run(args) -> int:
    import dataclasses

    from ..demo import DemoSettings, run_demo
    from ..devices import parse_device
    from ._outputs import check_output_dir

    device = parse_device(args.device)
    check_output_dir(args.out, "--out")

    settings = DemoSettings.quick() if args.quick else DemoSettings()
    changes = {"seed": args.seed}
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.eta is not None:
        changes["eta"] = args.eta
    settings = dataclasses.replace(settings, **changes)
    run_demo(args.out, settings, device=device, progress=not args.no_progress)
    return 0
