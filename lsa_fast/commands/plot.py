"""`lsa-fast plot RUN`: the figure of a training run: the CM of every probed layer over
the epochs (under the training attack and under Gaussian noise; the regularised layers
marked) beside the clean and robust validation accuracy, from the run directory's
metrics.jsonl (lsa_fast.lsa_monitor, lsa_fast.validation).

    lsa-fast plot runs/x                  # writes runs/x/training_lsa.png
    lsa-fast plot runs/x --out fig.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ._outputs import check_output_file


def register(subparsers, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help="figure of a training run: layer CM and validation accuracy per epoch",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN", help="a run directory of lsa-fast train")
    parser.add_argument("--out", metavar="FILE.png", help="where to write the figure (default RUN/training_lsa.png)")
    parser.add_argument("--dpi", type=int, default=120, help="resolution (default 120)")
    parser.set_defaults(run=run)
    return parser


def run(args) -> int:
    from ..training_figure import FIGURE_NAME, plot_training, read_run

    if args.dpi < 10:
        raise ValueError(f"--dpi must be >= 10, got {args.dpi}")
    out = Path(args.out) if args.out else Path(args.run_dir).expanduser() / FIGURE_NAME
    if args.out:
        check_output_file(args.out, "--out")
    config, metrics = read_run(args.run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"figure written to {plot_training(config, metrics, out, dpi=args.dpi)}")
    return 0
