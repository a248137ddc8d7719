"""Issue 23: is AutoAttack's first-stage gap on a GPU a first-use cost (kernel loading,
cuDNN plans for a new batch shape) paid by whichever side runs first? Times APGD-CE
(the standard version's first stage, 100 steps) three times in one process: ours
cold, the reference on 2 points (its own one-time set-up), the reference on ours'
batch shape, ours again warm; then the reference on a
batch shape nobody has seen (one point fewer), cold for it.

  python benchmarks/aa_first_stage_cold.py [--device cuda] [--points 500]"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from autoattack_parity import import_fra31  # noqa: E402
from bench_autoattack import _correct, _sync  # noqa: E402

from lsa_fast.attacks import autoattack  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    from aa_models import mnist_model_b

    model, x, y = mnist_model_b()
    model, x, y = model.to(args.device), x[: args.points].to(args.device), y[: args.points].to(args.device)
    xg = x[:64].clone().requires_grad_(True)  # the benchmark's old warm-up: batch 64 only
    torch.autograd.grad(torch.nn.functional.cross_entropy(model(xg), y[:64]), xg)
    reference = import_fra31()
    keep = _correct(model, x, y)
    xc, yc = x[keep], y[keep]

    def ours(xs, ys):
        autoattack(model, xs, ys, 0.3, stages=["apgd-ce"], stage_options={"apgd-ce": {"steps": args.steps}})

    def ref(xs, ys):
        adversary = reference.AutoAttack(model, norm="Linf", eps=0.3, version="standard", seed=0, verbose=False,
                                         device=args.device)
        adversary.attacks_to_run = ["apgd-ce"]
        adversary.apgd.n_iter = args.steps
        adversary.run_standard_evaluation(xs, ys, bs=500)

    for label, run, xs, ys in [("ours, cold", ours, x, y), ("reference, 2 points", ref, xc[:2], yc[:2]),
                               ("reference, shape seen", ref, xc, yc),
                               ("ours, warm", ours, x, y), ("reference, new shape", ref, xc[:-1], yc[:-1])]:
        _sync(args.device)
        start = time.perf_counter()
        run(xs, ys)
        _sync(args.device)
        print(f"{label:24s} {time.perf_counter() - start:7.3f} s  ({xs.shape[0]} points in, {int(keep.sum())} correct)",
              flush=True)


if __name__ == "__main__":
    main()
