"""`lsa-fast reproduce`: the paper's Tables 2-4 over several seeds, beside the paper's numbers.

Every row of the table (Normal, AT-<base>, AT-<base>-LR-L<k>, see lsa_fast.paper) is
trained from scratch for every seed with one ReproduceSettings object shared by all
rows (no per-row tuning), evaluated under FGSM over the paper's eps grid, and analysed
with LSA (mean relative error per learnable layer under FGSM and PGD, the paper's
Fig. 5). Seed s fixes the data draw (Moons), the initial weights, the batch order and
the attacks' random starts of every row alike, so rows are compared seed by seed
(paired differences).

Output directory: report.json (settings, every seed's numbers, summaries, claims),
report.md (the table, cell by cell "ours mean ± std (paper)", and the computed
verdicts on the paper's claims), runs.jsonl (one line per finished run, written as
they finish), rg_scores.png (Fig. 6) and cm_layers.png (Fig. 5).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
import typing
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .analysis import analyze, eps_to_input_units
from .attacks import make_attack
from .data import load_dataset, make_loader
from .evaluation import EvaluationTable, evaluate
from .models import build_model, model_options
from .paper import PaperRow, PaperTable, paper_table
from .probes import LayerProbe
from .report import atomic_write_text, new_figure, save_figure
from .threads import torch_threads
from .training import ATLRTrainer, TrainConfig

__all__ = ["ReproduceSettings", "run_reproduce", "summarise", "paper_claims", "to_markdown", "plot_rg_scores",
           "plot_cm_layers", "apply_overrides", "REPORT_FORMAT"]

REPORT_FORMAT = "lsa_fast.reproduce/1"


@dataclasses.dataclass
class ReproduceSettings:
    """Everything a reproduction does, shared by every row of the table. eps values
    (train_eps, cm_eps) are in the dataset's own units (the paper's: moons coordinates,
    [0, 1] pixels); n_train / n_test: Moons points drawn, or the first N images (None:
    all). cm_samples: test samples behind the CM curves. model_kwargs: per model name,
    options beyond the model's defaults (lsa_fast.models.model_options, the factory
    lsa-fast train uses too: C and D normalise with the CIFAR-10 statistics)."""

    dataset: str = "moons"
    seeds: int = 5
    n_train: Optional[int] = 2000
    n_test: Optional[int] = 1000
    noise: float = 0.2  # Moons only; lsa_fast.data's default
    batch_size: int = 128
    epochs: int = 30
    optimizer: str = "adam"
    lr: float = 1e-2
    schedule: str = "cosine"
    weight_decay: Optional[float] = None  # None: the trainer's default for the optimiser
    train_eps: float = 0.3
    attack_steps: int = 10  # PGD, APGD and TRADES steps, in training and for the PGD of the CM curves
    trades_beta: float = 6.0
    gamma: float = 1.0
    amp: str = "none"
    eta: float = 0.5  # Algorithm 1's threshold, for the MVL of each model reported beside
    cm_eps: float = 0.3
    cm_samples: int = 1000
    eval_batch_size: int = 500
    model_kwargs: Dict[str, Dict] = dataclasses.field(default_factory=dict)

    @classmethod
    def defaults(cls, dataset: str, quick: bool = False) -> "ReproduceSettings":
        """The settings of `dataset`; quick: tiny sizes for smoke tests (numbers meaningless)."""
        table = paper_table(dataset)
        if table.dataset == "moons":
            settings = cls()
            if quick:
                settings = dataclasses.replace(settings, seeds=2, n_train=300, n_test=300, batch_size=64, epochs=4,
                                               attack_steps=3, cm_samples=300)
            return settings
        if table.dataset == "mnist":
            settings = cls(dataset="mnist", seeds=1, n_train=None, n_test=None, batch_size=128, epochs=10,
                           optimizer="adam", lr=1e-3, schedule="constant", train_eps=0.3, attack_steps=10,
                           eta=1.0, cm_eps=0.3, cm_samples=1000, eval_batch_size=500)
            if quick:
                settings = dataclasses.replace(settings, n_train=256, n_test=128, batch_size=64, epochs=1,
                                               attack_steps=2, cm_samples=64, eval_batch_size=128)
            return settings
        settings = cls(dataset="cifar10", seeds=1, n_train=None, n_test=None, batch_size=128, epochs=30,
                       optimizer="sgd", lr=0.1, schedule="piecewise", train_eps=8 / 255, attack_steps=10,
                       eta=1.0, cm_eps=8 / 255, cm_samples=1000, eval_batch_size=256,
                       model_kwargs={"D": {"depth": 34, "widen_factor": 10}})
        if quick:
            settings = dataclasses.replace(settings, n_train=128, n_test=64, batch_size=64, epochs=1, attack_steps=2,
                                           cm_samples=32, eval_batch_size=64,
                                           model_kwargs={"D": {"depth": 10, "widen_factor": 1}})
        return settings

    def __post_init__(self):
        self.dataset = paper_table(self.dataset).dataset
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ValueError(f"ReproduceSettings: seeds must be an int >= 1, got {self.seeds!r}")
        for name in ("cm_samples", "eval_batch_size", "batch_size", "epochs", "attack_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ReproduceSettings: {name} must be an int >= 1, got {value!r}")
        for name in ("train_eps", "cm_eps", "gamma", "trades_beta", "noise"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
                raise ValueError(f"ReproduceSettings: {name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"ReproduceSettings: model_kwargs must be a dict model -> kwargs, got {self.model_kwargs!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def apply_overrides(settings: ReproduceSettings, items: Sequence[str]) -> ReproduceSettings:
    """`KEY=VALUE` strings (the CLI's --set) -> a new settings object; values are read
    by the field's type (int, float, str, None as 'none', dicts as JSON)."""
    fields = {field.name: field for field in dataclasses.fields(ReproduceSettings)}
    hints = typing.get_type_hints(ReproduceSettings)
    changes = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(fields))}")
        if key == "dataset":
            raise ValueError("--set dataset=...: the dataset is the command's argument (reproduce moons|mnist|cifar10)")
        changes[key] = _parse_value(key, text.strip(), hints[key])
    return dataclasses.replace(settings, **changes)


def run_reproduce(dataset: str, out_dir="runs/reproduce", settings: Optional[ReproduceSettings] = None,
                  data_dir=None, device=None, progress: bool = True, log=print) -> Dict:
    """Train, evaluate and analyse every row of the paper's table for every seed, then
    write the report directory; returns what report.json holds."""
    small_model = str(dataset).strip().lower() == "moons"  # model A: one CPU thread is faster
    with torch_threads(1, device or "cpu") if small_model else contextlib.nullcontext():
        return _run_reproduce(dataset, out_dir, settings, data_dir, device, progress, log)


def _run_reproduce(dataset: str, out_dir, settings: Optional[ReproduceSettings], data_dir, device,
                   progress: bool, log) -> Dict:
    table = paper_table(dataset)
    settings = settings or ReproduceSettings.defaults(table.dataset)
    if settings.dataset != table.dataset:
        raise ValueError(f"run_reproduce: settings are for {settings.dataset!r}, not {table.dataset!r}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    for row in table.rows:
        _train_config(table, row, 0, settings)  # a bad optimizer, schedule, amp... fails now, not after hours
    started = time.perf_counter()
    images = None if table.dataset == "moons" else _load_images(table.dataset, data_dir, settings)  # fail before writing
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    log(f"Reproducing {table.source} ({table.dataset}; models {', '.join(table.models)}) on {device}: "
        f"{len(table.rows)} rows x {settings.seeds} seed(s), each trained from scratch")
    log("Settings (one for every row):")
    for key, value in settings.to_dict().items():
        log(f"  {key} = {value}")
    runs_path = out / "runs.jsonl"
    atomic_write_text(runs_path, "")
    jobs = [(seed, row) for seed in range(settings.seeds) for row in table.rows]
    costs = [_cost(row, settings) for _, row in jobs]
    runs: List[Dict] = []
    data = images
    for index, (seed, row) in enumerate(jobs):
        if table.dataset == "moons" and (data is None or data[2] != seed):
            data = _load_moons(settings, seed)
        run_started = time.perf_counter()
        run = _run_one(table, row, seed, settings, data[0], data[1], device, progress)
        run["seconds"] = round(time.perf_counter() - run_started, 2)
        runs.append(run)
        with open(runs_path, "a") as handle:
            handle.write(json.dumps(run) + "\n")
        elapsed = time.perf_counter() - started
        if index == 0:
            # The first run pays one-time costs (imports, warm-up): the ETA starts after it.
            first_done, eta_text = elapsed, "ETA after the next run"
        else:
            done = sum(costs[1: index + 1])
            eta_text = f"ETA {_duration((elapsed - first_done) / done * (sum(costs) - costs[0] - done))}"
        log(f"[{index + 1}/{len(jobs)}] seed {seed} {row.name}: R&G {run['rg']:.2f} (paper {row.rg:.2f}), "
            f"{run['seconds']:.1f} s; elapsed {_duration(elapsed)}, {eta_text}")

    summary = summarise(table, settings, runs)
    summary["device"] = str(device)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    markdown = to_markdown(summary)
    atomic_write_text(out / "report.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    atomic_write_text(out / "report.md", markdown)
    figures = [out / "rg_scores.png", out / "cm_layers.png"]
    try:  # after the results are written: a figure that cannot be drawn must not cost them
        plot_rg_scores(summary, figures[0])
        plot_cm_layers(summary, figures[1])
    except ImportError as error:
        print(f"lsa-fast reproduce: figures skipped ({error}); the results are in report.json and report.md",
              file=sys.stderr, flush=True)
        figures = []
    log("")
    log(_main_table(summary))
    log("")
    log(_claims_markdown(summary))
    log(f"\ndone in {_duration(summary['seconds'])}")
    log(f"report: {out}/report.md, {out}/report.json, {runs_path}"
        + (f"; figures: {', '.join(str(f) for f in figures)}" if figures else ""))
    return summary


# ------------------------------------------------------------------ summaries


def summarise(table: PaperTable, settings: ReproduceSettings, runs: Sequence[Dict]) -> Dict:
    """report.json's content from the per-run records: per row the per-seed numbers,
    mean and sample std (n - 1; None for one seed) of every cell, the R&G score and
    the CM curves, the paper's numbers beside, and the claims (paper_claims)."""
    seeds = sorted({run["seed"] for run in runs})
    rows: Dict[str, Dict] = {}
    for paper_row in table.rows:
        mine = sorted((run for run in runs if run["row"] == paper_row.name), key=lambda run: run["seed"])
        if [run["seed"] for run in mine] != seeds:
            raise ValueError(f"summarise: row {paper_row.name!r} has runs for seeds {[r['seed'] for r in mine]}, "
                             f"expected {seeds}")
        accuracies = [run["accuracies"] for run in mine]
        rg = [run["rg"] for run in mine]
        cells = [_mean_std(column) for column in zip(*accuracies)]
        rg_mean, rg_std = _mean_std(rg)
        cm = {}
        for attack in mine[0]["cm"]:
            curves = [run["cm"][attack] for run in mine]
            stats = [_mean_std(layer) for layer in zip(*curves)]
            cm[attack] = {"per_seed": curves, "mean": [m for m, _ in stats], "std": [s for _, s in stats]}
        rows[paper_row.name] = {
            "model": paper_row.model,
            "training": paper_row.training,
            "base": paper_row.base,
            "lr_layer": paper_row.lr_layer,
            "accuracies": accuracies,
            "rg": rg,
            "mean": [m for m, _ in cells],
            "std": [s for _, s in cells],
            "rg_mean": rg_mean,
            "rg_std": rg_std,
            "cm": cm,
            "mvl": [run["mvl"] for run in mine],
            "clean_norm": [run["clean_norm"] for run in mine],
            "difference_norm": [run["difference_norm"] for run in mine],
            "train_accuracy": [run["train_accuracy"] for run in mine],
            "seconds": [run.get("seconds") for run in mine],
            "paper": {"accuracies": list(paper_row.accuracies), "rg": paper_row.rg},
        }
    per_seed = {}
    for seed in seeds:
        evaluation = EvaluationTable(eps_grid=table.eps_grid, attack=table.attack)
        for run in runs:
            if run["seed"] == seed:
                evaluation.add_row(run["row"], run["accuracies"])
        per_seed[str(seed)] = evaluation.to_dict()
    layer_names = {}
    for run in runs:
        layer_names.setdefault(run["model"], run["layer_names"])
    summary = {
        "format": REPORT_FORMAT,
        "dataset": table.dataset,
        "paper_table": table.number,
        "paper_source": table.source,
        "settings": settings.to_dict(),
        "seeds": seeds,
        "eps_grid": list(table.eps_grid),
        "eps_grid_input_units": [eps_to_input_units(table.dataset, eps) for eps in table.eps_grid],
        "layer_names": layer_names,
        "rows": rows,
        "per_seed_tables": per_seed,
        "paper": table.to_evaluation_table().to_dict(),
    }
    summary["claims"] = paper_claims(summary)
    return summary


def paper_claims(summary: Dict) -> Dict:
    """The paper's claims, checked on our numbers with the same rules as on the paper's:

    - lr_vs_base: every AT-<base>-LR-Lk against AT-<base> (paired R&G differences over
      seeds). "beyond the seed spread" = mean difference > the sample std of the
      differences; "stricter" = mean difference > std(base) + std(LR variant).
    - best_lr_beats_base: per base, the LR variant with the best mean R&G against the base
      (chosen on the same seeds, so the winner's margin is biased upwards).
    - best_layer: per base with several LR variants, whether the layer that is best in
      the paper (LR-L2 in Table 2) is also best here.
    - cm_falls: per LR variant, whether the mean CM of its regularised layer under FGSM
      and under PGD falls below the base's (paired over seeds, same spread rule);
      cm_parts says why: the ratio (LR variant / base, mean over seeds) of that layer's
      clean output norm ||phi_k(x)|| (CM's denominator) and of ||phi_k(x) - phi_k(x_hat)||
      under FGSM (its numerator)."""
    rows = summary["rows"]
    groups = _groups(rows)
    lr_vs_base, best, best_layer, cm_falls, norm_changes = [], [], [], [], []
    for (model, base), (base_name, lr_names) in groups.items():
        base_row = rows[base_name]
        comparisons = []
        for name in lr_names:
            lr_row = rows[name]
            comparison = _paired(lr_row["rg"], base_row["rg"])
            comparison.update(row=name, base_row=base_name, layer=lr_row["lr_layer"],
                              stricter=_stricter(comparison["mean"], base_row["rg_std"], lr_row["rg_std"]),
                              paper_difference=lr_row["paper"]["rg"] - base_row["paper"]["rg"])
            comparison["paper_holds"] = comparison["paper_difference"] > 0
            comparisons.append(comparison)
            for attack in lr_row["cm"]:
                k = lr_row["lr_layer"]
                change = _paired([c[k] for c in lr_row["cm"][attack]["per_seed"]],
                                 [c[k] for c in base_row["cm"][attack]["per_seed"]])
                cm_falls.append({
                    "row": name, "base_row": base_name, "layer": k, "attack": attack,
                    "base_cm": base_row["cm"][attack]["mean"][k], "lr_cm": lr_row["cm"][attack]["mean"][k],
                    "difference": change["mean"], "difference_std": change["std"],
                    # The regulariser pulls the CM down: "holds" when the LR variant's CM is lower.
                    "verdict": _verdict(-change["mean"], change["std"], change["n"]),
                })
            k = lr_row["lr_layer"]
            norm_changes.append({
                "row": name, "base_row": base_name, "layer": k,
                "clean_norm_ratio": _ratio(lr_row["clean_norm"], base_row["clean_norm"], k),
                "difference_norm_ratio": _ratio(lr_row["difference_norm"], base_row["difference_norm"], k),
            })
        lr_vs_base.extend(comparisons)
        if not comparisons:
            continue
        ours = max(comparisons, key=lambda c: rows[c["row"]]["rg_mean"])
        theirs = max(comparisons, key=lambda c: rows[c["row"]]["paper"]["rg"])
        best.append({"model": model, "base": base, "base_row": base_name, "row": ours["row"],
                     "difference": ours["mean"], "difference_std": ours["std"], "n": ours["n"],
                     "verdict": ours["verdict"], "stricter": ours["stricter"],
                     "paper_row": theirs["row"], "paper_difference": theirs["paper_difference"],
                     "paper_holds": theirs["paper_difference"] > 0})
        if len(comparisons) > 1:
            rivals = [c for c in comparisons if c["row"] != theirs["row"]]
            runner_up = max(rivals, key=lambda c: rows[c["row"]]["rg_mean"])
            margin = _paired(rows[theirs["row"]]["rg"], rows[runner_up["row"]]["rg"])
            best_layer.append({"model": model, "base": base, "paper_best": theirs["row"],
                               "paper_best_layer": theirs["layer"], "our_best": ours["row"],
                               "our_best_layer": ours["layer"], "holds": ours["row"] == theirs["row"],
                               "margin_over_runner_up": margin["mean"], "margin_std": margin["std"],
                               "runner_up": runner_up["row"],
                               "margin_verdict": _verdict(margin["mean"], margin["std"], margin["n"])})
    return {
        "rule": "beyond the seed spread: mean paired difference > sample std of the differences (n >= 2 seeds); "
                "stricter: mean difference > std(base) + std(variant)",
        "lr_vs_base": lr_vs_base,
        "best_lr_beats_base": best,
        "best_layer": best_layer,
        "cm_falls": cm_falls,
        "cm_parts": norm_changes,
    }


# ------------------------------------------------------------------ markdown


def to_markdown(summary: Dict) -> str:
    settings = summary["settings"]
    seeds = summary["seeds"]
    lines = [
        f"# Reproduction of {summary['paper_source']} ({summary['dataset']})",
        "",
        f"{len(summary['rows'])} rows x {len(seeds)} seed(s) ({', '.join(map(str, seeds))}), every run trained from "
        f"scratch; device {summary.get('device', '?')}; {_duration(summary.get('seconds', 0.0))}.",
        "",
        "## Settings (one for every row, no per-row tuning)",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value} |" for key, value in settings.items()]
    lines += ["", _units_note(summary), "", _main_table(summary), "", _claims_markdown(summary), "",
              _mvl_section(summary), "", _per_seed_section(summary), "",
              f"## The paper's table ({summary['paper_source']})", "",
              EvaluationTable.from_dict(summary["paper"]).to_markdown(), "",
              "## Figures", "",
              "- rg_scores.png: R&G score per row, ours (mean ± std over seeds) beside the paper's (like its Fig. 6).",
              "- cm_layers.png: mean relative error (CM) per learnable layer under FGSM and PGD for Normal, each "
              "base and its LR variants; a star marks the regularised layer (like the paper's Fig. 5).",
              ""]
    return "\n".join(lines)


def _main_table(summary: Dict) -> str:
    eps = summary["eps_grid"]
    n = len(summary["seeds"])
    spread = "mean ± sample std over" if n > 1 else "one run,"
    lines = [
        f"## FGSM accuracy (%) per eps and R&G score: ours ({spread} {n} seed{'s' if n > 1 else ''}), "
        f"the paper's in parentheses ({summary['paper_source']})",
        "",
        "| Training | " + " | ".join(f"{e:g}" for e in eps) + " | R&G | R&G - paper |",
        "|---|" + "---:|" * (len(eps) + 2),
    ]
    for name, row in summary["rows"].items():
        cells = [_cell(m, s, p) for m, s, p in zip(row["mean"], row["std"], row["paper"]["accuracies"])]
        cells.append(_cell(row["rg_mean"], row["rg_std"], row["paper"]["rg"]))
        cells.append(f"{row['rg_mean'] - row['paper']['rg']:+.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _claims_markdown(summary: Dict) -> str:
    claims = summary["claims"]
    n = len(summary["seeds"])
    lines = [
        "## Do the paper's claims hold here? (computed from the numbers above)",
        "",
        f"Rule: {claims['rule']}. With one seed there is no spread: the verdict says only the sign.",
        "",
        "### The best LR variant of each base beats the base",
        "",
        "| base | best LR variant here | R&G difference (paired) | beyond the seed spread? | stricter | "
        "paper: best variant, difference |",
        "|---|---|---:|---|---|---|",
    ]
    for item in claims["best_lr_beats_base"]:
        lines.append(f"| {item['base_row']} | {item['row']} | {_pm(item['difference'], item['difference_std'])} | "
                     f"{item['verdict']} | {_yes_no(item['stricter'])} | {item['paper_row']}, "
                     f"{item['paper_difference']:+.2f} ({'holds' if item['paper_holds'] else 'does not hold'}) |")
    held = [item for item in claims["best_lr_beats_base"] if item["verdict"].startswith("yes")]
    lines += ["", f"Holds beyond the seed spread for {len(held)} of {len(claims['best_lr_beats_base'])} base(s)"
              + (" (one seed: undecided)." if n < 2 else ".")]
    if claims["best_layer"]:
        lines += ["", "### The paper's best layer is the best LR variant here too", "",
                  "| base | paper's best | best here | holds? | margin of the paper's best over the best other variant "
                  "(paired) |", "|---|---|---|---|---|"]
        for item in claims["best_layer"]:
            lines.append(f"| {item['base']} ({item['model']}) | {item['paper_best']} | {item['our_best']} | "
                         f"{'yes' if item['holds'] else 'no'} | {_pm(item['margin_over_runner_up'], item['margin_std'])} "
                         f"vs {item['runner_up']}: {item['margin_verdict']} |")
        count = sum(item["holds"] for item in claims["best_layer"])
        lines += ["", f"Holds (best mean R&G) for {count} of {len(claims['best_layer'])} base(s)."]
    lines += ["", "### Every LR variant against its base (R&G)", "",
              "| LR variant | base | difference (paired) | beyond the seed spread? | stricter | paper's difference |",
              "|---|---|---:|---|---|---:|"]
    for item in claims["lr_vs_base"]:
        lines.append(f"| {item['row']} | {item['base_row']} | {_pm(item['mean'], item['std'])} | {item['verdict']} | "
                     f"{_yes_no(item['stricter'])} | {item['paper_difference']:+.2f} |")
    lines += ["", "### The regulariser lowers the CM of its layer (mean relative error of layer k)", "",
              "| LR variant | layer | attack | CM of the base | CM of the LR variant | change (paired) | lower beyond "
              "the seed spread? |", "|---|---|---|---:|---:|---:|---|"]
    for item in claims["cm_falls"]:
        lines.append(f"| {item['row']} | L{item['layer']} | {item['attack'].upper()} | {item['base_cm']:.4f} | "
                     f"{item['lr_cm']:.4f} | {_pm(item['difference'], item['difference_std'], 4)} | {item['verdict']} |")
    lines += ["", "Why the CM moved, layer k under FGSM: ratio LR variant / base (mean over seeds) of the clean output "
              "norm ||phi_k(x)|| (CM's denominator) and of the change ||phi_k(x) - phi_k(x_hat)|| (its numerator). "
              "A CM that falls through a larger denominator means a larger clean output, not a steadier layer.", "",
              "| LR variant | layer | clean norm ratio | change norm ratio |", "|---|---|---:|---:|"]
    for item in claims["cm_parts"]:
        ratios = ["-" if r is None else f"{r:.3g}" for r in (item["clean_norm_ratio"], item["difference_norm_ratio"])]
        lines.append(f"| {item['row']} | L{item['layer']} | {ratios[0]} | {ratios[1]} |")
    return "\n".join(lines)


def _mvl_section(summary: Dict) -> str:
    eta = summary["settings"]["eta"]
    lines = [f"## LSA of each trained model: most vulnerable layers (FGSM and PGD pooled, eta = {eta:g}), per seed", "",
             "| Training | " + " | ".join(f"seed {s}" for s in summary["seeds"]) + " |",
             "|---|" + "---|" * len(summary["seeds"])]
    for name, row in summary["rows"].items():
        lines.append(f"| {name} | " + " | ".join("[" + ", ".join(f"L{l}" for l in mvl) + "]" for mvl in row["mvl"]) + " |")
    return "\n".join(lines)


def _per_seed_section(summary: Dict) -> str:
    lines = ["## R&G score per seed", "", "| Training | " + " | ".join(f"seed {s}" for s in summary["seeds"]) + " |",
             "|---|" + "---:|" * len(summary["seeds"])]
    for name, row in summary["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row["rg"]) + " |")
    return "\n".join(lines)


def _units_note(summary: Dict) -> str:
    if summary["dataset"] == "moons":
        return ("eps values are in moons coordinates, the paper's units; the models see the moons mapped into "
                "[0, 1]^2 (lsa_fast.data), where they are eps / 5. Moons: n_train / n_test points drawn with "
                "the seed of the run.")
    return "eps values are in [0, 1] pixel units, as in the paper."


def _units(dataset: str) -> str:
    return "moons units" if dataset == "moons" else "pixel fractions"


# ------------------------------------------------------------------ figures


def plot_rg_scores(summary: Dict, path, dpi: int = 120) -> str:
    """The paper's Fig. 6: R&G per row, ours with seed error bars beside the paper's."""
    names = list(summary["rows"])
    figure = new_figure((max(8.0, 0.6 * len(names) + 2.0), 5.0), "plot_rg_scores")
    axes = figure.add_subplot(1, 1, 1)
    xs = list(range(len(names)))
    ours = [summary["rows"][n]["rg_mean"] for n in names]
    errors = [summary["rows"][n]["rg_std"] or 0.0 for n in names]
    paper = [summary["rows"][n]["paper"]["rg"] for n in names]
    width = 0.4
    seeds = len(summary["seeds"])
    axes.bar([x - width / 2 for x in xs], ours, width, yerr=errors, capsize=3, color="tab:blue",
             label=f"lsa_fast (mean ± std, {seeds} seed{'s' if seeds > 1 else ''})")
    axes.bar([x + width / 2 for x in xs], paper, width, color="tab:gray", alpha=0.7, label=summary["paper_source"])
    axes.set_xticks(xs)
    axes.set_xticklabels(names, rotation=60, ha="right", fontsize=9)
    axes.set_ylabel("R&G score (sum of FGSM accuracies, %)", fontsize=10)
    top = max(max(o + e for o, e in zip(ours, errors)), max(paper))
    axes.set_ylim(0.0, 1.2 * top)  # bars start at 0: their heights compare
    for x, value in zip(xs, ours):
        axes.text(x - width / 2, value / 2, f"{value:.0f}", rotation=90, ha="center", va="center", fontsize=8,
                  color="white")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize=9, loc="upper left", ncol=2)
    grid = ", ".join(f"{e:g}" for e in summary.get("eps_grid", []))
    axes.set_title(f"R&G scores on {summary['dataset']} (like the paper's Fig. 6): the sum of the FGSM accuracies "
                   f"(%) at eps {grid}" + (f" ({_units(summary['dataset'])})" if grid else ""), fontsize=10)
    figure.tight_layout()
    return save_figure(figure, path, dpi)


def plot_cm_layers(summary: Dict, path, dpi: int = 120) -> str:
    """The paper's Fig. 5 for every base: mean CM per learnable layer under each attack
    for Normal, the base and its LR variants (seed error bars); a star marks the layer
    each variant regularises."""
    rows = summary["rows"]
    groups = _groups(rows)
    attacks = list(next(iter(rows.values()))["cm"])
    columns = max(1, len(groups))
    figure = new_figure((5.0 * columns, 4.0 * len(attacks) + 1.2), "plot_cm_layers")  # clear error without matplotlib
    from matplotlib.lines import Line2D

    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    eps = summary["settings"]["cm_eps"]
    for i, attack in enumerate(attacks):
        for j, ((model, base), (base_name, lr_names)) in enumerate(groups.items()):
            axes = figure.add_subplot(len(attacks), columns, i * columns + j + 1)
            normal = next((name for name, row in rows.items() if row["model"] == model and row["base"] == "none"), None)
            lines = ([(normal, "0.5", "--")] if normal else []) + [(base_name, "k", "-")]
            lines += [(name, colours[c % len(colours)], "-") for c, name in enumerate(lr_names)]
            for name, colour, style in lines:
                cm = rows[name]["cm"][attack]
                xs = list(range(len(cm["mean"])))
                std = [s or 0.0 for s in cm["std"]]
                axes.errorbar(xs, cm["mean"], yerr=std, color=colour, linestyle=style, marker="o", markersize=3,
                              capsize=2, linewidth=1.5, label=rows[name]["training"])
                k = rows[name]["lr_layer"]
                if k is not None:
                    axes.scatter([k], [cm["mean"][k]], marker="*", s=160, color=colour, edgecolors="k", zorder=4)
            names = summary["layer_names"].get(model, [])
            axes.set_xticks(list(range(len(names))))
            axes.set_xticklabels([f"L{l}" for l in range(len(names))], fontsize=9)
            axes.tick_params(axis="y", labelsize=9)
            axes.set_ylim(bottom=0)
            axes.grid(True, alpha=0.3)
            axes.set_title(f"model {model}, {base.upper()} family: CM under {attack.upper()}, eps {eps:.3g}",
                           fontsize=10)
            if j == 0:
                axes.set_ylabel("mean CM (relative error)", fontsize=10)
            if i == len(attacks) - 1:
                axes.set_xlabel("learnable layer", fontsize=10)
            if i == 0:  # the same rows in every panel of a column
                handles, labels = axes.get_legend_handles_labels()
                star = Line2D([], [], linestyle="", marker="*", markersize=12, markerfacecolor="0.7",
                              markeredgecolor="k", label="layer the variant regularises")
                axes.legend(handles + [star], labels + [star.get_label()], fontsize=8, loc="upper left")
    seeds = len(summary["seeds"])
    figure.suptitle(f"Mean CM per learnable layer on {summary['dataset']} test samples (eps in "
                    f"{_units(summary['dataset'])}); error bars: std over {seeds} seed{'s' if seeds > 1 else ''}; "
                    f"dashed grey: Normal, black: the base, colours: its LR variants", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    return save_figure(figure, path, dpi)


# ------------------------------------------------------------------ one run


def _run_one(table: PaperTable, row: PaperRow, seed: int, settings: ReproduceSettings, train_set, test_set,
             device: torch.device, progress: bool) -> Dict:
    dataset = table.dataset
    config = _train_config(table, row, seed, settings)
    torch.manual_seed(seed)  # the initial weights: the same for every row of a seed
    model = build_model(row.model, **config.model_kwargs)
    pin = device.type == "cuda"
    loader = make_loader(train_set, settings.batch_size, shuffle=True, seed=seed, pin_memory=pin)
    trainer = ATLRTrainer(model, config, loader, device=device)
    # Per-epoch bars only where an epoch is long enough to watch (not on Moons).
    result = trainer.fit(progress=progress and len(loader) >= 100)
    model.eval()

    test_loader = make_loader(test_set, settings.eval_batch_size, pin_memory=pin)
    grid = [eps_to_input_units(dataset, eps) for eps in table.eps_grid]
    accuracies = evaluate(model, test_loader, "fgsm", grid, row=row.name).rows[row.name]

    cm_count = min(settings.cm_samples, len(test_set))
    cm_loader = make_loader(torch.utils.data.Subset(test_set, range(cm_count)), settings.eval_batch_size,
                            pin_memory=pin)
    cm_eps = eps_to_input_units(dataset, settings.cm_eps)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    report = analyze(model, cm_loader,
                     [make_attack("fgsm", cm_eps), make_attack("pgd", cm_eps, steps=settings.attack_steps,
                                                               generator=generator)],
                     eta=settings.eta, select="hidden", device=device, progress=False, dataset=dataset,
                     model_name=row.model)
    fgsm_result, pgd_result = report.perturbations
    clean_norm, difference_norm = _layer_norms(model, cm_loader, make_attack("fgsm", cm_eps), device)
    return {
        "seed": seed,
        "row": row.name,
        "model": row.model,
        "training": row.training,
        "accuracies": [float(a) for a in accuracies],
        "rg": float(sum(accuracies)),
        "cm": {"fgsm": list(fgsm_result.layer_mean), "pgd": list(pgd_result.layer_mean)},
        "mvl": report.mvl,
        "layer_names": report.layer_names,
        "clean_norm": clean_norm,
        "difference_norm": difference_norm,
        "train_accuracy": result.metrics[-1]["train_acc"] if result.metrics else None,
    }


def _train_config(table: PaperTable, row: PaperRow, seed: int, settings: ReproduceSettings) -> TrainConfig:
    """The row's TrainConfig: the shared settings plus only what the row's name says
    (its base and regularised layer) and the seed."""
    return TrainConfig(
        base=row.base, eps=eps_to_input_units(table.dataset, settings.train_eps), steps=settings.attack_steps,
        beta=settings.trades_beta, lr_layers=None if row.lr_layer is None else [row.lr_layer], gammas=settings.gamma,
        epochs=settings.epochs, batch_size=settings.batch_size, optimizer=settings.optimizer, lr=settings.lr,
        schedule=settings.schedule, weight_decay=settings.weight_decay, amp=settings.amp, seed=seed,
        model=row.model, model_kwargs=model_options(row.model, settings.model_kwargs.get(row.model, {})),
        dataset=table.dataset,
        extra={"paper_row": row.name},
    )


def _layer_norms(model, loader, attack, device: torch.device) -> Tuple[List[float], List[float]]:
    """Per learnable layer, the mean over samples of ||phi_l(x)|| and of ||phi_l(x) -
    phi_l(x_hat)|| under `attack`: CM's denominator and numerator, to tell whether a CM
    fell because the layer got steadier or because its clean output grew."""
    probe = LayerProbe(model, select="hidden")
    clean_sum = difference_sum = None
    count = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        x_hat = attack(model, x, y)
        with torch.no_grad():
            clean, perturbed = probe.capture_pair(x, x_hat)
        norms = torch.stack([a.flatten(1).float().norm(dim=1) for a in clean], dim=1).sum(dim=0)
        differences = torch.stack([(a - b).flatten(1).float().norm(dim=1) for a, b in zip(clean, perturbed)],
                                  dim=1).sum(dim=0)
        clean_sum = norms if clean_sum is None else clean_sum + norms
        difference_sum = differences if difference_sum is None else difference_sum + differences
        count += int(y.shape[0])
    return (clean_sum / count).tolist(), (difference_sum / count).tolist()


def _load_moons(settings: ReproduceSettings, seed: int):
    train = load_dataset("moons", train=True, n_samples=settings.n_train, noise=settings.noise, seed=seed)
    test = load_dataset("moons", train=False, n_samples=settings.n_test, noise=settings.noise, seed=seed)
    return train, test, seed


def _load_images(dataset: str, data_dir, settings: ReproduceSettings):
    from .data import default_data_dir

    root = default_data_dir() if data_dir is None else data_dir
    train = load_dataset(dataset, root, train=True, limit=settings.n_train)
    test = load_dataset(dataset, root, train=False, limit=settings.n_test)
    return train, test, None


def _cost(row: PaperRow, settings: ReproduceSettings) -> float:
    """Forward-backward passes per training sample: the ETA's weights."""
    passes = {"none": 1, "fgsm": 2, "fast": 2}.get(row.base, settings.attack_steps + 1)
    return float(passes + (1 if row.lr_layer is not None else 0))


# ------------------------------------------------------------------ helpers


def _groups(rows: Dict[str, Dict]) -> Dict[Tuple[str, str], Tuple[str, List[str]]]:
    """(model, base) -> (the base row, its LR rows), in table order."""
    groups: Dict[Tuple[str, str], Tuple[str, List[str]]] = {}
    for name, row in rows.items():
        if row["base"] != "none" and row["lr_layer"] is None:
            groups[(row["model"], row["base"])] = (name, [])
    for name, row in rows.items():
        key = (row["model"], row["base"])
        if row["lr_layer"] is not None and key in groups:
            groups[key][1].append(name)
    return groups


def _mean_std(values) -> Tuple[float, Optional[float]]:
    values = [float(v) for v in values]
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _paired(a: Sequence[float], b: Sequence[float]) -> Dict:
    differences = [x - y for x, y in zip(a, b)]
    mean, std = _mean_std(differences)
    return {"mean": mean, "std": std, "n": len(differences), "differences": differences,
            "verdict": _verdict(mean, std, len(differences))}


def _verdict(mean: float, std: Optional[float], n: int) -> str:
    """"yes" when the mean paired difference exceeds the std of the differences."""
    if n < 2 or std is None:
        return f"undecided (1 seed; the sign alone says {'yes' if mean > 0 else 'no'})"
    if mean > std:
        return "yes"
    if mean < -std:
        return "no: the opposite, beyond the spread"
    return "no: within the seed spread"


def _ratio(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], k: int) -> Optional[float]:
    """mean over seeds of a[seed][k] / mean over seeds of b[seed][k]; None for a zero
    denominator (a dead layer), which strict JSON could not hold as infinity."""
    top = sum(values[k] for values in a) / len(a)
    bottom = sum(values[k] for values in b) / len(b)
    return top / bottom if bottom > 0 else None


def _stricter(mean: float, std_a: Optional[float], std_b: Optional[float]) -> Optional[bool]:
    if std_a is None or std_b is None:
        return None
    return mean > std_a + std_b


def _cell(mean: float, std: Optional[float], paper: float) -> str:
    return f"{_pm(mean, std)} ({paper:g})"


def _pm(mean: float, std: Optional[float], digits: int = 2) -> str:
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _yes_no(value: Optional[bool]) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _parse_value(key: str, text: str, hint):
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    if optional:
        hint = next(k for k in typing.get_args(hint) if k is not type(None))
    kind = typing.get_origin(hint) or hint
    if optional and text.lower() in ("none", "null", ""):
        return None
    try:
        if kind is bool:
            return text.lower() in ("1", "true", "yes", "on")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is dict:
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
            return value
    except ValueError as error:
        raise ValueError(f"--set {key}={text}: not a valid {getattr(kind, '__name__', kind)} ({error})") from None
    return text


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "moons"
    run_reproduce(name, f"runs/reproduce-{name}")
