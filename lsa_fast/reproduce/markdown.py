"""report.md of a reproduction: the main tables beside the paper's numbers, the paired
differences, the sweep, the claims' verdicts, the layers' CM and the per-seed numbers."""
from __future__ import annotations

from typing import Optional

from ..evaluation import EvaluationTable
from .paired import interval_text
from .records import Report

__all__ = ["to_markdown", "main_table", "claims_summary", "duration"]


def to_markdown(report: Report) -> str:
    settings = report.settings
    seeds = report.seeds
    smoke = "SMOKE RUN (--quick: tiny sizes, the numbers mean nothing): " if report.smoke else ""
    table_rows = [name for name, row in report.rows.items() if not row.sweep]
    lines = [
        f"# {smoke}Reproduction of {report.paper_source} ({report.dataset})",
        "",
        f"{len(table_rows)} table rows and {len(report.rows) - len(table_rows)} sweep rows x {len(seeds)} seed(s) "
        f"({', '.join(map(str, seeds))}), every run trained from scratch; device {report.device or '?'}, "
        f"{report.workers or 1} worker(s); {duration(report.seconds or 0.0)}.",
        "",
        "## What holds",
        "",
        claims_summary(report),
        "",
        "## Settings (one for every row, no per-row tuning; fixed before any run)",
        "",
        f"Saved in settings.json before the first run started ({report.settings_written_at or '?'}).",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value} |" for key, value in settings.items()]
    lines += ["", _units_note(report), ""]
    for attack in report.eval_attacks:
        lines += [main_table(report, attack), ""]
    lines += [_differences_section(report), "", _sweep_section(report), "", _gradient_paths_section(report), "",
              _best_section(report), "",
              _cm_section(report), "", _collapse_section(report), "", _mvl_section(report), "",
              _best_epochs_section(report), "",
              _per_seed_section(report), "",
              f"## The paper's table ({report.paper_source})", "",
              EvaluationTable.from_dict(report.paper).to_markdown(), "",
              "## Figures", "",
              "- rg_scores.png: R&G per table row under each evaluation attack (mean ± std over seeds) beside the "
              "paper's FGSM R&G (like its Fig. 6).",
              "- cm_layers.png: mean relative error (CM) per layer under FGSM and PGD for Normal, each base and its "
              "LR rows; a star marks the regularised layer (like the paper's Fig. 5).",
              ""]
    return "\n".join(lines)


def claims_summary(report: Report) -> str:
    """The paper's claims, one line each: the paper's support, ours, and whether it holds."""
    claims = report.claims
    lines = [f"Rule: {claims.rule}.", ""]
    lines += [f"- **{item.claim}**: paper {item.paper}; here {item.ours}. Holds: **{item.holds}**."
              for item in claims.statements]
    return "\n".join(lines)


def main_table(report: Report, attack: str) -> str:
    eps = report.grid(attack)
    n = len(report.seeds)
    spread = "mean ± sample std over" if n > 1 else "one run,"
    paper = attack == "fgsm"
    title = report.eval_attacks[attack]
    single = len(eps) == 1  # one eps (AutoAttack): its accuracy, no R&G
    what = f"robust accuracy (%) at eps {eps[0]:g}" if single else "accuracy (%) per eps and R&G score"
    lines = [
        f"## {title} {what}: ours ({spread} {n} seed{'s' if n > 1 else ''})"
        + (f", the paper's in parentheses ({report.paper_source})" if paper else " (not in the paper)"),
        "",
        "| Training | " + " | ".join(f"{e:g}" for e in eps) + ("" if single else " | R&G") + " |"
        + (" R&G - paper |" if paper else ""),
        "|---|" + "---:|" * (len(eps) + (0 if single else 1) + (1 if paper else 0)),
    ]
    for name, row in report.rows.items():
        if row.sweep:
            continue
        result = row.evaluation[attack]
        reference = row.paper if paper else None
        if single:
            lines.append(f"| {name} | {_pm(result.mean[0], result.std[0])} |")
            continue
        if reference:
            cells = [_cell(m, s, p) for m, s, p in zip(result.mean, result.std, reference["accuracies"])]
            cells.append(_cell(result.rg_mean, result.rg_std, reference["rg"]))
            cells.append(f"{result.rg_mean - reference['rg']:+.2f}")
        else:
            cells = [_pm(m, s) for m, s in zip(result.mean, result.std)] + [_pm(result.rg_mean, result.rg_std)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _differences_section(report: Report) -> str:
    claims = report.claims
    attacks = list(report.eval_attacks)
    lines = ["## LR row minus its base: R&G difference per seed pair, mean [95% interval] and verdict", "",
             f"Rule: {claims.rule}.", "",
             "| LR row | base | " + " | ".join(f"{report.eval_attacks[a]}: difference | verdict" for a in attacks)
             + " | paper (FGSM) |", "|---|---|" + "---:|---|" * len(attacks) + "---:|"]
    for item in claims.lr_vs_base:
        if item["sweep"]:
            continue
        cells = [f"{interval_text(item[a])} | {item[a].verdict}" for a in attacks]
        paper = "-" if item["paper_difference"] is None else f"{item['paper_difference']:+.2f}"
        lines.append(f"| {item['row']} | {item['base_row']} | " + " | ".join(cells) + f" | {paper} |")
    return "\n".join(lines)


def _sweep_section(report: Report) -> str:
    claims = report.claims
    settings = report.settings
    attacks = list(report.eval_attacks)
    sweep_bases = set(settings.get("sweep_bases") or ())
    items = [item for item in claims.lr_vs_base if item["base"] in sweep_bases
             and item["layer"] == settings.get("sweep_layer")]
    if not items or not any(item["sweep"] for item in items):
        return "## Sweep\n\nNo sweep in these settings."
    lines = [f"## gamma and gradient paths of LR-L{settings['sweep_layer']} (sweep): R&G minus the base, "
             f"mean [95% interval]", "",
             "lr_grad: both = the paper's equation (gradient through phi(x) and phi(x_hat)); adversarial = the clean "
             "features detached; numerator = the denominator ||phi(x)|| detached. collapsed: runs (of "
             f"{len(report.seeds)}) whose model predicts one class for every test point.", "",
             "| base | gamma | lr_grad | " + " | ".join(f"{report.eval_attacks[a]} | verdict" for a in attacks)
             + " | collapsed |", "|---|---:|---|" + "---:|---|" * len(attacks) + "---:|"]
    order = {mode: i for i, mode in enumerate(settings.get("sweep_lr_grads") or ())}
    for item in sorted(items, key=lambda i: (i["base_row"], i["gamma"], order.get(i["lr_grad"], 9))):
        cells = [f"{interval_text(item[a])} | {item[a].verdict}" for a in attacks]
        lines.append(f"| {item['base_row']} | {item['gamma']:g} | {item['lr_grad']} | " + " | ".join(cells)
                     + f" | {item['collapsed']} |")
    return "\n".join(lines)


def _gradient_paths_section(report: Report) -> str:
    items = report.claims.lr_grad_vs_table or []
    if not items:
        return "## Gradient paths compared\n\nNo sweep of the gradient paths in these settings."
    attacks = list(report.eval_attacks)
    against = items[0]["against"]
    lines = [f"## Gradient paths compared: each lr_grad minus lr_grad {against} (the same base, layer, gamma and "
             f"seed), R&G, mean [95% interval]", "",
             "| base | layer | gamma | lr_grad | " + " | ".join(f"{report.eval_attacks[a]} | verdict" for a in attacks)
             + " |", "|---|---|---:|---|" + "---:|---|" * len(attacks)]
    for item in sorted(items, key=lambda i: (i["base_row"], i["gamma"], i["lr_grad"])):
        cells = [f"{interval_text(item[a])} | {item[a].verdict}" for a in attacks]
        lines.append(f"| {item['base_row']} | L{item['layer']} | {item['gamma']:g} | {item['lr_grad']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def _best_section(report: Report) -> str:
    claims = report.claims
    lines = ["## The best LR layer of each base, and the paper's best layer", "",
             "| base | attack | best LR row here | difference to the base [95%] | verdict |", "|---|---|---|---:|---|"]
    for item in claims.best_lr_beats_base:
        lines.append(f"| {item['base_row']} | {report.eval_attacks[item['attack']]} | {item['row']} | "
                     f"{interval_text(item['difference'])} | {item['difference'].verdict} |")
    if claims.best_layer:
        lines += ["", "| base | paper's best | attack | best here | margin of the paper's best over the best other "
                      "[95%] |", "|---|---|---|---|---|"]
        for item in claims.best_layer:
            for attack in report.eval_attacks:
                ours = item[attack]
                lines.append(f"| {item['base_row']} | {item['paper_best']} | {report.eval_attacks[attack]} | "
                             f"{ours['our_best']} | {interval_text(ours['margin'])} vs {ours['runner_up']}: "
                             f"{ours['margin'].verdict} |")
    return "\n".join(lines)


def _cm_section(report: Report) -> str:
    claims = report.claims
    lines = ["## The regulariser and the CM of its layer (mean relative error of layer k)", "",
             "| LR row | layer | attack | CM of the base | CM of the LR row | change [95%] | verdict |",
             "|---|---|---|---:|---:|---:|---|"]
    for item in claims.cm_falls:
        change = item["change"]
        interval = (f"{change.mean:+.4f}" if change.low is None
                    else f"{change.mean:+.4f} [{change.low:+.4f}, {change.high:+.4f}]")
        lines.append(f"| {item['row']} | L{item['layer']} | {item['attack'].upper()} | {item['base_cm']:.4f} | "
                     f"{item['lr_cm']:.4f} | {interval} | {change.verdict} |")
    lines += ["", "Why the CM moved, layer k under FGSM: ratio LR row / base (mean over seeds) of the clean output "
              "norm ||phi_k(x)|| (CM's denominator) and of the change ||phi_k(x) - phi_k(x_hat)|| (its numerator). "
              "A CM that falls through a larger denominator means a larger clean output, not a steadier layer.", "",
              "| LR row | layer | clean norm ratio | change norm ratio |", "|---|---|---:|---:|"]
    for item in claims.cm_parts:
        ratios = ["-" if r is None else f"{r:.3g}" for r in (item["clean_norm_ratio"], item["difference_norm_ratio"])]
        lines.append(f"| {item['row']} | L{item['layer']} | {ratios[0]} | {ratios[1]} |")
    return "\n".join(lines)


def _collapse_section(report: Report) -> str:
    collapsed = {name: sum(row.collapsed) for name, row in report.rows.items() if any(row.collapsed)}
    lines = ["## Collapsed runs (a constant classifier: one class for every test point)", ""]
    if not collapsed:
        return "\n".join(lines + ["None."])
    lines += ["| row | collapsed runs |", "|---|---:|"]
    lines += [f"| {name} | {count} of {len(report.seeds)} |" for name, count in collapsed.items()]
    return "\n".join(lines)


def _mvl_section(report: Report) -> str:
    eta = report.settings["eta"]
    lines = [f"## LSA of each trained model: most vulnerable layers (FGSM and PGD pooled, eta = {eta:g}), per seed", "",
             "| Training | " + " | ".join(f"seed {s}" for s in report.seeds) + " |",
             "|---|" + "---|" * len(report.seeds)]
    for name, row in report.rows.items():
        if not row.sweep:
            lines.append(f"| {name} | " + " | ".join("[" + ", ".join(f"L{l}" for l in mvl) + "]" for mvl in row.mvl)
                         + " |")
    return "\n".join(lines)


def _best_epochs_section(report: Report) -> str:
    """Which epoch's weights the '(best-robust weights)' columns hold, per seed."""
    rows = {name: row for name, row in report.rows.items() if any(e is not None for e in row.best_epoch or [])}
    if not rows:
        return ""
    size = report.settings.get("val_size")
    lines = [f"## Best-robust weights: the epoch with the highest PGD-10 accuracy on the {size} held-out training "
             f"samples (validation), per seed: epoch (validation robust accuracy %)", "",
             "| Training | " + " | ".join(f"seed {s}" for s in report.seeds) + " |",
             "|---|" + "---|" * len(report.seeds)]
    for name, row in rows.items():
        cells = [f"{e} ({v:.2f})" if e is not None else "-" for e, v in zip(row.best_epoch, row.best_val_robust_acc)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _per_seed_section(report: Report) -> str:
    lines = []
    for attack, title in report.eval_attacks.items():
        single = len(report.grid(attack)) == 1
        lines += [f"## {'Accuracy (%)' if single else 'R&G score'} per seed under {title}", "",
                  "| Training | " + " | ".join(f"seed {s}" for s in report.seeds) + " |",
                  "|---|" + "---:|" * len(report.seeds)]
        for name, row in report.rows.items():
            lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row.evaluation[attack].rg) + " |")
        lines.append("")
    return "\n".join(lines).rstrip()


def _units_note(report: Report) -> str:
    settings = report.settings
    train = report.train_eps
    names = "; ".join(f"model {model}: " + ", ".join(f"L{i} = {name}" for i, name in enumerate(names))
                      for model, names in report.layer_names.items())
    text = (f"Units: {report.units}. Training eps {train['dataset_units']:g} (= {train['input_units']:g} in the "
            f"models' [0, 1] input units); eps grid {', '.join(f'{e:g}' for e in report.eps_grid)}. ")
    if report.dataset == "moons":
        text += (f"Moons: {settings['n_train']} training and {settings['n_test']} test points drawn with the seed of "
                 f"each run, noise {settings['noise']:g}. ")
    text += (f"Probes: {settings['probes']} (LR-Lk regularises layer k of: {names}). Evaluation: "
             + "; ".join(report.eval_attacks.values()) + ".")
    return text


def duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _cell(mean: float, std: Optional[float], paper: float) -> str:
    return f"{_pm(mean, std)} ({paper:g})"


def _pm(mean: float, std: Optional[float], digits: int = 2) -> str:
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"
