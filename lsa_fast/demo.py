"""The main job, `lsa-fast demo`: the paper's story on Moons with model A, end to end.

1. train model A normally; 2. run LSA on the test set (FGSM, PGD and the statistical
noises) and print the per-layer table and the MVL list; 3. train AT-PGD and AT-PGD-LR
on the MVL; 4. evaluate all three over the paper's FGSM eps grid and print the
paper-style table with R&G scores; 5. write a report directory (report.json,
report.md, lsa.png, decision_boundaries.png).

The moons are standardized (each axis z-scored with the training split's mean and std,
the paper's coordinates) and every eps is in those z units; the probes are the
activation outputs (the authors' L0, L1, L2), for LSA and the regulariser alike."""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from .analysis import analyze, eps_to_input_units
from .attacks import make_attack
from .data import make_loader, moons_unit_map
from .evaluation import PAPER_EPS_GRIDS, EvaluationTable, evaluate
from .models import build_model
from .report import atomic_write_text, plot_decision_boundaries
from .run_data import load_split, record
from .threads import torch_threads
from .training import ATLRTrainer, TrainConfig


@dataclasses.dataclass
class DemoSettings:
    """Everything the demo does, in the moons' z units where an eps is involved
    (standardize=False: moons coordinates)."""

    n_train: int = 2000
    n_test: int = 1000
    noise: float = 0.15
    seed: int = 0
    batch_size: int = 64
    epochs: int = 40
    lr: float = 1e-2  # Adam: model A is a small MLP
    train_eps: float = 0.3  # AT radius (z units; /10 in input units)
    pgd_steps: int = 10
    lsa_eps: float = 0.3
    noise_std: float = 0.3  # gaussian std (z units, like eps) and speckle std (relative: x * (1 + n))
    noise_amount: float = 0.05  # salt/pepper: the fraction of coordinates set to 1/0
    eta: float = 0.5
    gamma: float = 1.0
    eval_grid: tuple = PAPER_EPS_GRIDS["moons"]
    standardize: bool = True  # z-scored moons, the paper's units

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(n_train=400, n_test=300, epochs=6, pgd_steps=5)


def run_demo(out_dir="runs/demo", settings: Optional[DemoSettings] = None, device=None,
             progress: bool = True, log=print) -> Dict:
    with torch_threads(1, device or "cpu"):
        return _run_demo(out_dir, settings or DemoSettings(), device, progress, log)


def _run_demo(out_dir, settings: DemoSettings, device, progress: bool, log) -> Dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    train = load_split("moons", _data_options(settings), train=True)
    test = load_split("moons", _data_options(settings), train=False)
    train_loader = make_loader(train, settings.batch_size, shuffle=True, seed=settings.seed)
    test_loader = make_loader(test, 256)
    units = _units(settings)
    log(f"Moons: {settings.n_train} training and {settings.n_test} test points, noise {settings.noise}, "
        f"{'standardized (eps in z units)' if settings.standardize else 'moons coordinates'}; "
        f"model A (MLP 2-100-100-100-1, ELU)")

    log("\n[1/4] training model A normally")
    normal = _train(settings, "none", None, train_loader, device, progress, out / "normal")

    log("\n[2/4] Layer Sustainability Analysis of the normally trained model (test set)")
    # Noises of the attacks' size, as the paper compares them (Fig. 5).
    # Labelled in the dataset's units (moons coordinates), like every eps the user reads.
    eps, std, amount = settings.lsa_eps, settings.noise_std, settings.noise_amount
    perturbations = {
        f"fgsm:{eps:g}": make_attack("fgsm", eps_to_input_units("moons", eps, moons_units=units)),
        f"pgd:{eps:g}": make_attack("pgd", eps_to_input_units("moons", eps, moons_units=units)),
        f"gaussian:{std:g}": make_attack("gaussian", eps_to_input_units("moons", std, "gaussian", moons_units=units)),
        f"salt:{amount:g}": make_attack("salt", amount),
        f"pepper:{amount:g}": make_attack("pepper", amount),
        f"speckle:{std:g}": make_attack("speckle", std),  # relative (x * (1 + n)): no unit to convert
    }
    report = analyze(normal, test_loader, perturbations, eta=settings.eta, dataset="moons",
                     model_name="A", progress=progress, moons_units=units)
    log(report.to_markdown())
    mvl, why = _layers_to_regularise(report, settings.eta)
    log(f"{why}: regularising {mvl}  ({', '.join(report.layer_names[l] for l in mvl)})")

    log("\n[3/4] adversarial training: AT-PGD and AT-PGD-LR on the MVL")
    at_pgd = _train(settings, "pgd", None, train_loader, device, progress, out / "at-pgd")
    at_pgd_lr = _train(settings, "pgd", mvl, train_loader, device, progress, out / "at-pgd-lr")

    log(f"\n[4/4] evaluation under FGSM over the paper's eps grid ({'z units' if settings.standardize else 'moons units'})")
    lr_name = "AT-PGD-LR-" + "".join(f"L{l}" for l in mvl)
    models = {"Normal": normal, "AT-PGD": at_pgd, lr_name: at_pgd_lr}
    table = EvaluationTable(eps_grid=settings.eval_grid, attack="fgsm")
    grid_in = [eps_to_input_units("moons", eps, moons_units=units) for eps in settings.eval_grid]
    for name, model in models.items():
        row = evaluate(model, test_loader, "fgsm", grid_in, row=name)
        table.add_row(name, row.rows[name])
    log(table.to_markdown())

    # The results first: a figure that cannot be drawn must not cost the numbers.
    report.to_json(out / "lsa_report.json")
    summary = {
        "settings": dataclasses.asdict(settings),
        "mvl": mvl,
        "layer_names": report.layer_names,
        "lsa": report.to_dict(),
        "evaluation": table.to_dict(),
        "rg_scores": table.rg_scores(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_text(out / "report.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "report.md", _markdown(settings, report, mvl, table))
    figures = _figures(out, settings, report, models, table, test)
    log(f"\ndone in {summary['seconds']} s")
    log(f"report: {out}/report.md, {out}/report.json" + (f"; figures: {', '.join(figures)}" if figures else ""))
    return summary


def _figures(out: Path, settings: DemoSettings, report, models, table, test) -> List[str]:
    """lsa.png and decision_boundaries.png; skipped with one line on stderr when
    matplotlib cannot be imported."""
    try:
        report.plot(out / "lsa.png")
        x_test, y_test = test.tensors
        at = min(table.eps_grid, key=lambda e: abs(e - settings.train_eps))
        column = table.eps_grid.index(at)
        clean = table.eps_grid.index(0.0) if 0.0 in table.eps_grid else None
        notes = {name: (f"clean acc {row[clean]:.1f}%, " if clean is not None else "")
                 + f"FGSM eps {at:g}: {row[column]:.1f}%\nR&G {sum(row):.1f}" for name, row in table.rows.items()}
        axes = ("z1 (standardized)", "z2 (standardized)") if settings.standardize else ("x1 (moons units)",
                                                                                          "x2 (moons units)")
        plot_decision_boundaries(models, x_test, y_test, out / "decision_boundaries.png", notes=notes,
                                 unit_map=moons_unit_map(_units(settings)), axis_names=axes)
    except ImportError as error:
        print(f"lsa-fast demo: figures skipped ({error}); the results are in report.json and report.md",
              file=sys.stderr, flush=True)
        return []
    return [str(out / "lsa.png"), str(out / "decision_boundaries.png")]


def _train(settings: DemoSettings, base: str, layers: Optional[List[int]], loader, device, progress, out_dir):
    model_kwargs = {"normalize": "moons-standardized"} if settings.standardize else {}  # the layers see z
    config = TrainConfig(
        base=base, eps=eps_to_input_units("moons", settings.train_eps, moons_units=_units(settings)),
        steps=settings.pgd_steps, lr_layers=layers, gammas=settings.gamma, epochs=settings.epochs,
        batch_size=settings.batch_size, optimizer="adam", lr=settings.lr, schedule="cosine", seed=settings.seed,
        model="A", model_kwargs=model_kwargs, dataset="moons", data_options=_data_options(settings),
    )
    torch.manual_seed(settings.seed)
    model = build_model("A", **model_kwargs)
    if ATLRTrainer(model, config, loader, device=device, out_dir=out_dir).fit(progress=progress).interrupted:
        raise KeyboardInterrupt  # Ctrl-C / SIGTERM: the run is checkpointed; the demo stops here
    return model.eval()


def _layers_to_regularise(report, eta: float):
    """(layers, why): the pooled adversarial MVL at eta, or, when nothing stands out at
    that eta, the layer with the largest pooled mean CM (the one that moves most)."""
    if report.mvl:
        return report.mvl, f"Most vulnerable layers (pooled adversarial CM, eta = {eta:g})"
    means = report.combined.layer_mean
    layer = max(range(len(means)), key=means.__getitem__)
    return [layer], (f"No most vulnerable layer at eta = {eta:g} (pooled adversarial CM); the layer with the "
                     f"largest mean CM instead")


def _data_options(settings: DemoSettings) -> Dict:
    """The demo's Moons, as every run directory records them (lsa_fast.run_data)."""
    return record("moons", {"n_train": settings.n_train, "n_test": settings.n_test, "noise": settings.noise,
                            "seed": settings.seed, "standardize": settings.standardize})


def _units(settings: DemoSettings) -> str:
    return "standardized" if settings.standardize else "raw"


def _markdown(settings, report, mvl, table) -> str:
    lines = [
        "# lsa_fast demo: LSA and AT-LR on Moons (model A)",
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(settings).items()),
        "",
        "## Layer Sustainability Analysis of the normally trained model",
        "",
        report.to_markdown(),
        "",
        f"{_layers_to_regularise(report, settings.eta)[1]}: AT-PGD-LR regularises {mvl}",
        "",
        f"## FGSM accuracy (%) over eps ({'z units of the standardized moons' if settings.standardize else 'moons units'}) "
        "and R&G score",
        "",
        table.to_markdown(),
        "",
        "Figures: lsa.png (CM per layer, like the paper's Fig. 5), decision_boundaries.png (Fig. 7).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_demo(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
