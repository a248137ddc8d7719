"""AutoAttack parity at full settings (issue 23): lsa_fast.attacks.autoattack against
the reference implementations on the same points, in one run.

  python benchmarks/autoattack_parity.py --device cuda --data DIR --points 1000 --seeds 0,1,2 --out FILE.json
  python benchmarks/autoattack_parity.py --device cpu --points 20 --quick --out /tmp/parity.json

A run that raises is recorded (the row's "errors") and the others go on; the script then
exits non-zero.

The standard version (APGD-CE 100 steps; APGD-T 9 targets, 100 steps; FAB-T 9 targets,
100 steps; Square 5000 queries, p_init 0.8), L-inf, on
- mnist: lsa_fast's model B adversarially trained on real MNIST (the committed weights
  tests/data/autoattack/model_b_mnist.pt), the first --points test digits of --data
  (the four IDX files, gzipped or not; default tests/data/mnist, its first 1 000), eps 0.3;
- cifar-shaped: the committed small CNN (cnn_cifar_shaped.pt) on the synthetic
  CIFAR-shaped images the tests use, the first --cifar-points of them, eps 16/255.

Attacks, each on the same points, stage by stage on the points still robust (as the
reference's run_standard_evaluation runs them, --batch-size points at a time):
- ours: lsa_fast.attacks.autoattack, once per --seeds;
- fra31: the fra31/auto-attack code, the package `autoattack` that torchattacks 3.3.0
  installs, once per --seeds (its own seed-to-seed spread, measured in the same run, is
  what any parity tolerance rests on);
- pyautoattack: pyautoattack 0.2.0 (the same code, its own keyword-only API), first seed;
- torchattacks: torchattacks.AutoAttack's four attacks, first seed, set to the
  reference's settings (its AutoAttack defaults are 10 steps and a rescaled Square
  schedule: those would not be the standard version).
An oracle that does not import is skipped with the reason printed. --oracle-path DIR
puts DIR (e.g. a `pip install --no-deps --target DIR` of the oracles' wheels) on
sys.path after the installed packages.

Per attack and seed: robust accuracy after each stage, final, wall seconds (the device
synchronised before and after), and per point whether it is robust at the end; per pair
(ours or a reference seed against each run of the first seed's oracles), the fraction of
points on which "robust at the end" agrees. --quick: APGD 10 steps, 3 targets, FAB-T 10
steps, Square 100 queries, on every side alike. The JSON (written again after every run,
atomically) holds everything; a short table is printed at the end."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
import harness  # noqa: E402

from lsa_fast.attacks import autoattack  # noqa: E402

STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")
FULL = {"steps": 100, "targets": 9, "queries": 5000}
QUICK = {"steps": 10, "targets": 3, "queries": 100}
ORACLES = ("fra31", "pyautoattack", "torchattacks")


# ----------------------------------------------------------------------------- runs


def run_ours(model, x, y, eps, seed, settings, batch_size):
    options = {
        "apgd-ce": {"steps": settings["steps"]},
        "apgd-t": {"steps": settings["steps"], "n_target_classes": settings["targets"]},
        "fab-t": {"steps": settings["steps"], "n_target_classes": settings["targets"]},
        "square": {"n_queries": settings["queries"]},
    }
    result = autoattack(model, x, y, eps, norm="Linf", version="standard", seed=seed, batch_size=batch_size,
                        stage_options=options)
    robust_after = []
    for k in range(1, len(result.stages) + 1):
        robust_after.append((result.broken_by == -1) | (result.broken_by > k))
    return robust_after


def _zero_gradients(x):
    if x.grad is not None:
        x.grad.detach_()
        x.grad.zero_()


def import_fra31():
    # torchattacks 3.3.0's copy imports torch.autograd.gradcheck.zero_gradients, which torch >= 1.9
    # removed: a two-line stand-in goes there first.
    gradcheck = sys.modules["torch.autograd.gradcheck"]
    if not hasattr(gradcheck, "zero_gradients"):
        gradcheck.zero_gradients = _zero_gradients
    import autoattack as fra31
    from autoattack import fab_pt  # noqa: F401  (the import that needs the stand-in)

    if not hasattr(fra31.AutoAttack, "run_standard_evaluation") or "attacks_to_run" not in \
            fra31.AutoAttack.__init__.__code__.co_varnames:
        raise ImportError(f"`autoattack` at {fra31.__file__} is not the fra31/auto-attack code")
    return fra31


def _staged(model, x, y, stages, attack_stage):
    """Run attack_stage(name, xs, ys) -> adversarials on the points still robust, stage by
    stage; return the robust mask after each."""
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    after = []
    for name in stages:
        idx = robust.nonzero().squeeze(1)
        if idx.numel():
            adv = attack_stage(name, x[idx], y[idx])
            with torch.no_grad():
                robust[idx] = model(adv).argmax(1) == y[idx]
        after.append(robust.clone())
    return after


def run_fra31(module, model, x, y, eps, seed, settings, batch_size, device):
    adversary = module.AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=seed, verbose=False,
                                  device=device)
    adversary.apgd.n_iter = adversary.apgd_targeted.n_iter = adversary.fab.n_iter = settings["steps"]
    adversary.apgd_targeted.n_target_classes = adversary.fab.n_target_classes = settings["targets"]
    adversary.square.n_queries = settings["queries"]
    stages = list(adversary.attacks_to_run)

    def stage(name, xs, ys):  # its run_standard_evaluation, one stage at a time
        adversary.attacks_to_run = [name]
        return adversary.run_standard_evaluation(xs, ys, bs=batch_size)

    return _staged(model, x, y, stages, stage)


def import_pyautoattack():
    import pyautoattack

    return pyautoattack


def run_pyautoattack(module, model, x, y, eps, seed, settings, batch_size, device):
    adversary = module.AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=seed, device=device)
    adversary.verbose = False
    adversary.apgd.n_iter = adversary.apgd_targeted.n_iter = adversary.fab.n_iter = settings["steps"]
    for apgd in (adversary.apgd, adversary.apgd_targeted):  # derived from n_iter in its constructor only
        n = settings["steps"]
        apgd.n_iter_2, apgd.n_iter_min, apgd.size_decr = max(int(0.22 * n), 1), max(int(0.06 * n), 1), max(int(0.03 * n), 1)
    adversary.apgd_targeted.n_target_classes = adversary.fab.n_target_classes = settings["targets"]
    adversary.square.n_queries = settings["queries"]
    stages = list(adversary.attacks_to_run)

    def stage(name, xs, ys):
        adversary.attacks_to_run = [name]
        x_adv, _ = adversary.run_standard_evaluation(xs, ys, batch_size=batch_size)
        return x_adv

    return _staged(model, x, y, stages, stage)


def import_torchattacks():
    import torchattacks

    return torchattacks


def run_torchattacks(module, model, x, y, eps, seed, settings, batch_size, device):
    oracle = module.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=seed)
    apgd_ce, apgd_t, fab_t, square = oracle._autoattack.attacks
    apgd_ce.steps = apgd_t.steps = fab_t.steps = settings["steps"]
    apgd_t.n_target_classes = fab_t.n_target_classes = settings["targets"]
    square.n_queries, square.rescale_schedule = settings["queries"], False  # the reference's settings
    attacks = dict(zip(STAGES, (apgd_ce, apgd_t, fab_t, square)))

    def stage(name, xs, ys):
        return torch.cat([attacks[name](xs[i : i + batch_size], ys[i : i + batch_size])
                          for i in range(0, xs.shape[0], batch_size)])

    return _staged(model, x, y, STAGES, stage)


ORACLE_CODE = {
    "fra31": (import_fra31, run_fra31),
    "pyautoattack": (import_pyautoattack, run_pyautoattack),
    "torchattacks": (import_torchattacks, run_torchattacks),
}


# ----------------------------------------------------------------------------- data


def mnist_row(args):
    from aa_models import mnist_model_b

    model, x, y = mnist_model_b(args.data)
    if x.shape[0] < args.points:
        raise SystemExit(f"--points {args.points}: {args.data} holds only {x.shape[0]} test digits")
    return "mnist (model B, adv. trained)", model, x[: args.points], y[: args.points], 0.3


def cifar_row(args):
    from aa_models import cifar_shaped

    model, x, y = cifar_shaped()
    n = min(args.cifar_points, x.shape[0])
    return "cifar-shaped (small CNN, synthetic)", model, x[:n], y[:n], 16 / 255


# ----------------------------------------------------------------------------- driver


def timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def record(attack, seed, seconds, robust_after):
    final = robust_after[-1]
    return {
        "attack": attack,
        "seed": seed,
        "seconds": round(seconds, 3),
        "after": {stage: round(r.double().mean().item(), 5) for stage, r in zip(STAGES, robust_after)},
        "final": round(final.double().mean().item(), 5),
        "robust": "".join("1" if r else "0" for r in final.tolist()),
    }


def agreement(a, b):
    ra = torch.tensor([c == "1" for c in a["robust"]])
    rb = torch.tensor([c == "1" for c in b["robust"]])
    return {
        "a": f"{a['attack']}:{a['seed']}",
        "b": f"{b['attack']}:{b['seed']}",
        "agree": round((ra == rb).double().mean().item(), 5),
        "robust_only_in_a": int((ra & ~rb).sum()),
        "robust_only_in_b": int((rb & ~ra).sum()),
    }


def warm_up(model, x, y):
    """cuDNN/cuBLAS set-up and the allocator, outside every timing."""
    xg = x[:64].clone().requires_grad_(True)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(xg), y[:64])
        torch.autograd.grad(loss, xg)


def write_json(path, payload):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--data", default=str(ROOT / "tests" / "data" / "mnist"),
                        help="directory of the MNIST IDX files (default: the tests' subset, 1 000 test digits)")
    parser.add_argument("--points", type=int, default=1000, help="MNIST test points (the first N)")
    parser.add_argument("--cifar-points", type=int, default=None,
                        help="CIFAR-shaped points (default: --points, at most 1 000); 0 skips that row")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds for ours and fra31 (default 0)")
    parser.add_argument("--oracles", default=",".join(ORACLES), help=f"comma-separated subset of {ORACLES}")
    parser.add_argument("--oracle-path", action="append", default=[],
                        help="directory appended to sys.path before the oracles are imported (repeatable)")
    parser.add_argument("--batch-size", type=int, default=1000, help="points per attack batch, every side alike")
    parser.add_argument("--quick", action="store_true", help="10 steps, 3 targets, 100 queries on every side")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/<device>-autoattack-parity.json)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not args.seeds:
        parser.error("--seeds: give at least one seed")
    args.oracles = [o.strip() for o in args.oracles.split(",") if o.strip()]
    unknown = [o for o in args.oracles if o not in ORACLES]
    if unknown:
        parser.error(f"--oracles: unknown {unknown[0]!r}; known: {', '.join(ORACLES)}")
    if args.points < 1 or args.batch_size < 1:
        parser.error("--points and --batch-size must be >= 1")
    if args.cifar_points is None:
        args.cifar_points = min(args.points, 1000)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def main(argv=None):
    args = parse(argv)
    settings = QUICK if args.quick else FULL
    for path in args.oracle_path:
        sys.path.append(str(Path(path).resolve()))
    modules, skipped = {}, {}
    for name in args.oracles:
        try:
            modules[name] = ORACLE_CODE[name][0]()
        except Exception as error:  # any import failure (missing package or dependency) skips that oracle
            skipped[name] = f"{type(error).__name__}: {error}".splitlines()[0]
            print(f"skipping {name}: {skipped[name]}", flush=True)
    info = harness.environment(args.device)
    out = args.out or str(harness.RESULTS / (harness.device_slug(info, args.device) + "-autoattack-parity.json"))
    payload = {
        "benchmark": "autoattack-parity",
        "command": " ".join(["python"] + sys.argv),
        "environment": info,
        "settings": {"quick": args.quick, **settings, "batch_size": args.batch_size, "seeds": args.seeds,
                     "norm": "Linf", "version": "standard"},
        "oracles": {name: getattr(m, "__version__", None) or getattr(m, "__file__", "") for name, m in modules.items()},
        "skipped": skipped,
        "rows": [],
    }
    rows = [mnist_row] + ([cifar_row] if args.cifar_points > 0 else [])
    for make in rows:
        name, model, x, y, eps = make(args)
        model, x, y = model.to(args.device).eval(), x.to(args.device), y.to(args.device)
        warm_up(model, x, y)
        with torch.no_grad():
            clean = (model(x).argmax(1) == y).double().mean().item()
        row = {"model": name, "points": x.shape[0], "eps": eps, "clean": round(clean, 5), "runs": [],
               "agreement": []}
        payload["rows"].append(row)
        plan = [("ours", args.seeds[0])]
        plan += [(o, args.seeds[0]) for o in modules]
        plan += [(side, s) for s in args.seeds[1:] for side in ("ours", "fra31") if side == "ours" or side in modules]
        for attack, seed in plan:
            print(f"{name}: {attack} seed {seed} ...", flush=True)
            try:
                if attack == "ours":
                    seconds, after = timed(lambda: run_ours(model, x, y, eps, seed, settings, args.batch_size),
                                           args.device)
                else:
                    run = ORACLE_CODE[attack][1]
                    seconds, after = timed(lambda: run(modules[attack], model, x, y, eps, seed, settings,
                                                       args.batch_size, args.device), args.device)
            except Exception as error:  # one run's failure must not cost the others (a one-shot device run)
                traceback.print_exc()
                row.setdefault("errors", []).append(f"{attack}:{seed}: {type(error).__name__}: {error}")
                payload["failed"] = True
                write_json(out, payload)
                continue
            row["runs"].append(record(attack, seed, seconds, after))
            print(f"  {seconds:.1f} s, robust after each stage {list(row['runs'][-1]['after'].values())}", flush=True)
            row["agreement"] = pairs(row["runs"])
            write_json(out, payload)
    print_tables(payload)
    print(f"\nwrote {out}", flush=True)
    if payload.get("failed"):
        raise SystemExit("some runs failed: see 'errors' in the rows of " + out)
    return payload


def pairs(runs):
    """Agreement of every run with every other run (ours and fra31 across seeds, and the
    first seed's oracles)."""
    return [agreement(a, b) for i, a in enumerate(runs) for b in runs[i + 1 :]]


def print_tables(payload):
    for row in payload["rows"]:
        table = []
        for run in row["runs"]:
            table.append({"attack": run["attack"], "seed": run["seed"], **{s: f"{run['after'][s]:.3f}" for s in STAGES},
                          "final": f"{run['final']:.3f}", "seconds": f"{run['seconds']:.1f}"})
        harness.print_table(f"{row['model']}: {row['points']} points, eps {row['eps']:.4f}, clean {row['clean']:.3f}"
                            " (robust accuracy after each stage)", table,
                            ["attack", "seed", *STAGES, "final", "seconds"])
        spread = []
        for attack in ("ours", "fra31"):
            runs = [r for r in row["runs"] if r["attack"] == attack]
            if len(runs) > 1:
                spread.append({"attack": attack, "seeds": len(runs), **{
                    s: f"{min(r['after'][s] for r in runs):.3f}-{max(r['after'][s] for r in runs):.3f}"
                    for s in STAGES}})
        if spread:
            harness.print_table("spread over the seeds (min-max of robust accuracy)", spread, ["attack", "seeds", *STAGES])
        for line in row.get("errors", []):
            print(f"FAILED {line}")
        ours = [r for r in row["runs"] if r["attack"] == "ours"]
        if ours:
            first = ours[0]
            ref = [r for r in row["runs"] if r["attack"] != "ours"]
            if ref:
                speed = [{"oracle": f"{r['attack']}:{r['seed']}", "seconds": f"{r['seconds']:.1f}",
                          "ours s": f"{first['seconds']:.1f}", "speed-up": f"{r['seconds'] / first['seconds']:.2f}x"}
                         for r in ref]
                harness.print_table("wall time, ours (first seed) against each reference run", speed,
                                    ["oracle", "seconds", "ours s", "speed-up"])
        harness.print_table("agreement of 'robust at the end', point by point", row["agreement"],
                            ["a", "b", "agree", "robust_only_in_a", "robust_only_in_b"])


if __name__ == "__main__":
    main()
