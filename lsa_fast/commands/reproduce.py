"""`lsa-fast reproduce moons|mnist|cifar10`: the paper's Tables 2, 3 and 4 over seeds,
beside the paper's numbers, with the verdicts on its claims (lsa_fast.reproduce).

    lsa-fast reproduce moons --seeds 5 --out runs/reproduce-moons
    lsa-fast reproduce mnist --data DIR
    lsa-fast reproduce cifar10 --data DIR --set amp=bf16
"""
from __future__ import annotations

import os
import sys

from ..devices import parse_device
from ..paper import PAPER_TABLES
from ._outputs import check_output_dir


def register(subparsers, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        help="reproduce the paper's Table 2 (moons), 3 (mnist) or 4 (cifar10) over seeds, beside the paper",
        description="Train every row of the paper's table (Normal, AT-<base>, AT-<base>-LR-L<k>; on moons also a "
        "sweep of gamma and of the regulariser's gradient paths for LR-L2 of FGSM and PGD) from scratch for each "
        "seed with one shared set of settings, evaluate under FGSM and PGD-20 over the paper's eps grid and AutoAttack at the training eps (final "
        "and, with --val-size, best-robust weights), and write a "
        "report directory: settings.json (before the first run), report.md (ours mean ± std beside the paper's "
        "numbers, paired LR-minus-base differences with 95%% intervals, verdicts on the paper's claims), "
        "report.json (every seed's numbers), runs.jsonl, rg_scores.png (Fig. 6), cm_layers.png (Fig. 5). Moons "
        "(standardized, eps in z units) needs no download; MNIST and CIFAR-10 are read from --data.",
    )
    parser.add_argument("dataset", choices=list(PAPER_TABLES), help="moons (Table 2), mnist (Table 3), cifar10 (Table 4)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="number of seeds 0..N-1 (default: 10 for moons, 3 for mnist, 1 for cifar10; --quick: 2, 2, 1)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and few epochs, for a smoke test (the numbers mean nothing)")
    parser.add_argument("--out", default=None, help="report directory (default: runs/reproduce-<dataset>)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every training run")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="where MNIST / CIFAR-10 lie (default: $LSA_FAST_DATA or ./data); moons is generated")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change one setting for every row (repeatable), e.g. --set n_train=500 --set gamma=0.5; "
                        "the settings are printed at the start and saved in the report")
    parser.add_argument("--workers", type=int, default=None,
                        help="moons on the CPU: runs trained side by side in this many processes, one thread each "
                             "(default: 2, or 1 on a one-core machine; the numbers do not depend on it)")
    parser.add_argument("--val-size", type=int, default=None, metavar="N",
                        help="training samples held out per seed (default: mnist 5000, else 0); the best robust "
                             "validation epoch's weights are then evaluated beside the final ones")
    parser.add_argument("--weights", choices=("both", "final", "best"), default=None,
                        help="which weights to evaluate: final, best (needs --val-size) or both (default)")
    parser.add_argument("--compile", nargs="?", const="auto", default=None,
                        choices=("none", "auto", "inductor", "cudagraphs", "aot-eager"),
                        help="compile every run's training step (lsa-fast train --compile)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..reproduce import ReproduceSettings, apply_overrides, run_reproduce
    from ..reproduce.running import REPORT_FILES
    from ..run_lock import RunLock

    device = parse_device(args.device)
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    workers = args.workers
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if args.dataset == "moons" and device.type == "cpu" else 1
    out = check_output_dir(args.out or f"runs/reproduce-{args.dataset}", "--out", files=REPORT_FILES)
    settings = ReproduceSettings.defaults(args.dataset, quick=args.quick)
    # The options and every --set at once: the settings are checked as a whole (e.g. --val-size
    # against --set n_train=N, in either order).
    flags = {option: getattr(args, option) for option in ("seeds", "epochs", "val_size", "weights", "compile")}
    settings = apply_overrides(settings, list(args.overrides) + [f"{key}={value}" for key, value in flags.items()
                                                                 if value is not None])
    with RunLock(out) as lock:  # one reproduction per directory: runs.jsonl is appended to as runs finish
        if lock.stale:
            print(lock.stale, file=sys.stderr)
        run_reproduce(args.dataset, out, settings, data_dir=args.data, device=device, progress=not args.no_progress,
                      workers=workers)
    return 0
