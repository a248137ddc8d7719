"""AutoAttack benchmark (issue 23, item 6): the standard version (APGD-CE, APGD-T with 9
targets, FAB-T with 9 targets, Square with 5000 queries; the authors' settings
throughout), lsa_fast.attacks.autoattack against the reference implementation
(the fra31/auto-attack code, the package `autoattack` of torchattacks 3.3.0) on the same points in the same run.
Prints images/s of each and the ratio, and the robust accuracy after every stage of
each (the parity at full settings), and writes
benchmarks/results/<device>-autoattack.json.

  python benchmarks/bench_autoattack.py [--device cpu|cuda] [--points 500] [--cifar-points 100]
                                        [--data DIR] [--batch-size 500] [--quick] [--threads 1]

Models:
- mnist: lsa_fast model B adversarially trained on 2 000 real MNIST digits
  (tests/data/autoattack/model_b_mnist.pt, made by scripts/make_autoattack_models.py),
  the first --points test digits of --data (default tests/data/mnist, 1 000 digits), eps 0.3;
- cifar: a CIFAR-size model, torchvision's ResNet-18 (10 classes) untrained
  (torch.manual_seed(0)), eval mode, --cifar-points images torch.rand in [0, 1] with the
  model's own clean predictions as labels (so every point starts correctly
  classified), eps 8/255. (lsa_fast's VGG-19, model C, untrained gives the same logits
  for every input: nothing to attack, every stage would run to its budget.)
--quick: 100 MNIST points and 8 CIFAR-size points (for a loaded machine).
The tables and the results file are written after each model; the stage table has each
stage's seconds on both sides (ours read at the end of each stage through autoattack's
progress callback, the device synchronised there).

Each side runs once per model (a whole AutoAttack takes minutes); ours runs first on
one model and second on the other, so a load change on a shared machine does not
favour one side. The reference's FAB imports torch.autograd.gradcheck.zero_gradients,
which torch >= 1.9 removed: a two-line stand-in is put there first."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
import harness  # noqa: E402
from autoattack_parity import import_fra31  # noqa: E402  (the reference, with its torch stand-in)

from lsa_fast.attacks import autoattack  # noqa: E402

STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")


def run_reference(reference, model, x, y, eps, device, batch_size):
    """The reference's run_standard_evaluation, timed; robust accuracy after each
    stage read from the adversarials it returns (its stages, in order, on the
    points still robust, as its own loop does). Returns (seconds, per-stage seconds,
    robust accuracy after each stage)."""
    adversary = reference.AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=0, verbose=False,
                                     device=device)
    after, stage_seconds = [], []
    robust = _correct(model, x, y)
    _sync(device)
    start = last = time.perf_counter()
    for stage in adversary.attacks_to_run:  # its own loop, one stage at a time, to read the per-stage figures
        adversary.attacks_to_run = [stage]
        idx = robust.nonzero().squeeze(1)
        if idx.numel():
            x_adv = adversary.run_standard_evaluation(x[idx], y[idx], bs=batch_size)
            robust[idx] = _correct(model, x_adv, y[idx])
        after.append(robust.double().mean().item())
        _sync(device)
        now = time.perf_counter()
        stage_seconds.append(now - last)
        last = now
    return last - start, stage_seconds, after


def run_ours(model, x, y, eps, device, batch_size):
    """Ours, timed; per-stage seconds read when each stage's last batch is done."""
    ends = {}

    def progress(stage, done, total):
        if done == total:
            _sync(device)
            ends[stage] = time.perf_counter()

    _sync(device)
    start = time.perf_counter()
    result = autoattack(model, x, y, eps, version="standard", seed=0, batch_size=batch_size, progress=progress)
    _sync(device)
    seconds = time.perf_counter() - start
    marks = [start] + [ends.get(stage) for stage in result.stages]
    for k in range(1, len(marks)):  # a stage with no point left to attack takes no time
        marks[k] = marks[k - 1] if marks[k] is None else marks[k]
    stage_seconds = [b - a for a, b in zip(marks, marks[1:])]
    return seconds, stage_seconds, [result.robust_accuracy(after=k) for k in range(1, len(result.stages) + 1)], \
        result.warnings


def _correct(model, x, y):
    with torch.no_grad():
        return model(x).argmax(1) == y


def _warm_up(model, x, y, batch_size):
    """The device's libraries and allocator set up outside both timings, also for the
    first stage's batch shape (the clean-correct points, both sides attack the same
    ones): on a GPU a new batch shape costs its first pass kernel and cuDNN plan set-up,
    which the side run first would otherwise pay alone."""
    n_first = min(int(_correct(model, x, y).sum()), batch_size)
    for n in sorted({64, max(n_first, 1)}):
        xg = x[:n].clone().requires_grad_(True)
        for _ in range(3):
            torch.autograd.grad(torch.nn.functional.cross_entropy(model(xg), y[:n]), xg)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def models(args):
    from aa_models import mnist_model_b

    model_b, x, y = mnist_model_b(args.data)
    n = args.points if args.points is not None else (100 if args.quick else 500)
    if x.shape[0] < n:
        raise SystemExit(f"--points {n}: {args.data} holds only {x.shape[0]} test digits")
    yield "mnist (model B, adv. trained)", model_b.to(args.device), x[:n].to(args.device), y[:n].to(args.device), 0.3
    cifar_points = args.cifar_points if args.cifar_points is not None else (8 if args.quick else 100)
    if cifar_points == 0:
        return
    try:
        import torchvision
    except ImportError as error:
        print(f"skipping the CIFAR-size model: {error}", flush=True)
        return

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=10).eval().to(args.device)
    n = cifar_points
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(args.device)
    with torch.no_grad():
        y = resnet(x).argmax(1)
    yield "cifar-size (ResNet-18, untrained)", resnet, x, y, 8 / 255


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=None, help="MNIST points (default 500; --quick 100)")
    parser.add_argument("--cifar-points", type=int, default=None,
                        help="ResNet-18 points (default 100; --quick 8); 0 skips the CIFAR-size model")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", default=str(ROOT / "tests" / "data" / "mnist"),
                        help="directory of the MNIST IDX files (default: the tests' subset, 1 000 test digits)")
    parser.add_argument("--batch-size", type=int, default=500, help="points per attack batch, both sides")
    harness.add_common_arguments(parser, "-autoattack")
    args = harness.parse_common(parser)
    reference = import_fra31()
    info = harness.environment(args.device)
    rows, stage_rows = [], []
    for turn, (name, model, x, y, eps) in enumerate(models(args)):
        _warm_up(model, x, y, args.batch_size)
        if turn % 2 == 0:
            ours_s, ours_stage_s, ours_after, found = run_ours(model, x, y, eps, args.device, args.batch_size)
            ref_s, ref_stage_s, ref_after = run_reference(reference, model, x, y, eps, args.device, args.batch_size)
        else:
            ref_s, ref_stage_s, ref_after = run_reference(reference, model, x, y, eps, args.device, args.batch_size)
            ours_s, ours_stage_s, ours_after, found = run_ours(model, x, y, eps, args.device, args.batch_size)
        n = x.shape[0]
        rows.append({"model": name, "points": n, "eps": round(eps, 5), "ours s": f"{ours_s:.1f}",
                     "reference s": f"{ref_s:.1f}", "ours img/s": f"{n / ours_s:.2f}",
                     "reference img/s": f"{n / ref_s:.2f}", "speed-up": f"{ref_s / ours_s:.2f}x",
                     "clean": f"{_correct(model, x, y).double().mean().item():.3f}", "warnings": found})
        for stage, a, b, sa, sb in zip(STAGES, ours_after, ref_after, ours_stage_s, ref_stage_s):
            stage_rows.append({"model": name, "after": stage, "ours": f"{a:.3f}", "reference": f"{b:.3f}",
                               "difference (points)": f"{100 * (a - b):+.1f}", "ours s": f"{sa:.2f}",
                               "reference s": f"{sb:.2f}", "speed-up": f"{sb / sa:.2f}x" if min(sa, sb) > 0.01 else "-"})
        harness.print_table("standard AutoAttack, ours vs the reference (same points, same run)", rows,
                            ["model", "points", "eps", "clean", "ours s", "reference s", "ours img/s",
                             "reference img/s", "speed-up"])
        harness.print_table("robust accuracy after each stage, and each stage's seconds", stage_rows,
                            ["model", "after", "ours", "reference", "difference (points)", "ours s", "reference s",
                             "speed-up"])
        payload = {"benchmark": "autoattack", "command": " ".join(["python"] + sys.argv), "environment": info,
                   "quick": args.quick, "rows": rows, "stages": stage_rows}
        path = harness.write_results(args.out or harness.device_slug(info, args.device) + "-autoattack", payload)
        print(f"\nwrote {path}", flush=True)


if __name__ == "__main__":
    main()
