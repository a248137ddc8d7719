"""report.md of a reproduction: the main tables beside the paper's numbers, the paired
differences, the sweep, the claims' verdicts, the layers' CM and the per-seed numbers."""
from __future__ import annotations

from typing import Dict, Optional

from ..evaluation import EvaluationTable

__all__ = ["to_markdown", "main_table", "claims_summary", "duration"]


def to_markdown(summary: Dict) -> str:
    settings = summary["settings"]
    seeds = summary["seeds"]
    smoke = "SMOKE RUN (--quick: tiny sizes, the numbers mean nothing): " if summary.get("smoke") else ""
    table_rows = [name for name, row in summary["rows"].items() if not row["sweep"]]
    lines = [
        f"# {smoke}Reproduction of {summary['paper_source']} ({summary['dataset']})",
        "",
        f"{len(table_rows)} table rows and {len(summary['rows']) - len(table_rows)} sweep rows x {len(seeds)} seed(s) "
        f"({', '.join(map(str, seeds))}), every run trained from scratch; device {summary.get('device', '?')}, "
        f"{summary.get('workers', 1)} worker(s); {duration(summary.get('seconds', 0.0))}.",
        "",
        "## What holds",
        "",
        claims_summary(summary),
        "",
        "## Settings (one for every row, no per-row tuning; fixed before any run)",
        "",
        f"Saved in settings.json before the first run started ({summary.get('settings_written_at', '?')}).",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value} |" for key, value in settings.items()]
    lines += ["", _units_note(summary), ""]
    for attack in summary["eval_attacks"]:
        lines += [main_table(summary, attack), ""]
    lines += [_differences_section(summary), "", _sweep_section(summary), "", _gradient_paths_section(summary), "",
              _best_section(summary), "",
              _cm_section(summary), "", _collapse_section(summary), "", _mvl_section(summary), "",
              _per_seed_section(summary), "",
              f"## The paper's table ({summary['paper_source']})", "",
              EvaluationTable.from_dict(summary["paper"]).to_markdown(), "",
              "## Figures", "",
              "- rg_scores.png: R&G per table row under each evaluation attack (mean ± std over seeds) beside the "
              "paper's FGSM R&G (like its Fig. 6).",
              "- cm_layers.png: mean relative error (CM) per layer under FGSM and PGD for Normal, each base and its "
              "LR rows; a star marks the regularised layer (like the paper's Fig. 5).",
              ""]
    return "\n".join(lines)


def claims_summary(summary: Dict) -> str:
    """The paper's claims, one line each: the paper's support, ours, and whether it holds."""
    claims = summary["claims"]
    lines = [f"Rule: {claims['rule']}.", ""]
    lines += [f"- **{item['claim']}**: paper {item['paper']}; here {item['ours']}. Holds: **{item['holds']}**."
              for item in claims["statements"]]
    return "\n".join(lines)


def main_table(summary: Dict, attack: str) -> str:
    eps = summary["eps_grid"]
    n = len(summary["seeds"])
    spread = "mean ± sample std over" if n > 1 else "one run,"
    paper = attack == "fgsm"
    title = summary["eval_attacks"][attack]
    lines = [
        f"## {title} accuracy (%) per eps and R&G score: ours ({spread} {n} seed{'s' if n > 1 else ''})"
        + (f", the paper's in parentheses ({summary['paper_source']})" if paper else " (the paper reports FGSM only)"),
        "",
        "| Training | " + " | ".join(f"{e:g}" for e in eps) + " | R&G |" + (" R&G - paper |" if paper else ""),
        "|---|" + "---:|" * (len(eps) + (2 if paper else 1)),
    ]
    for name, row in summary["rows"].items():
        if row["sweep"]:
            continue
        result = row["evaluation"][attack]
        reference = row["paper"] if paper else None
        if reference:
            cells = [_cell(m, s, p) for m, s, p in zip(result["mean"], result["std"], reference["accuracies"])]
            cells.append(_cell(result["rg_mean"], result["rg_std"], reference["rg"]))
            cells.append(f"{result['rg_mean'] - reference['rg']:+.2f}")
        else:
            cells = [_pm(m, s) for m, s in zip(result["mean"], result["std"])] + [_pm(result["rg_mean"], result["rg_std"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _differences_section(summary: Dict) -> str:
    claims = summary["claims"]
    attacks = list(summary["eval_attacks"])
    lines = ["## LR row minus its base: R&G difference per seed pair, mean [95% interval] and verdict", "",
             f"Rule: {claims['rule']}.", "",
             "| LR row | base | " + " | ".join(f"{summary['eval_attacks'][a]}: difference | verdict" for a in attacks)
             + " | paper (FGSM) |", "|---|---|" + "---:|---|" * len(attacks) + "---:|"]
    for item in claims["lr_vs_base"]:
        if item["sweep"]:
            continue
        cells = [f"{_interval(item[a])} | {item[a]['verdict']}" for a in attacks]
        paper = "-" if item["paper_difference"] is None else f"{item['paper_difference']:+.2f}"
        lines.append(f"| {item['row']} | {item['base_row']} | " + " | ".join(cells) + f" | {paper} |")
    return "\n".join(lines)


def _sweep_section(summary: Dict) -> str:
    claims = summary["claims"]
    settings = summary["settings"]
    attacks = list(summary["eval_attacks"])
    sweep_bases = set(settings.get("sweep_bases") or ())
    items = [item for item in claims["lr_vs_base"] if item["base"] in sweep_bases
             and item["layer"] == settings.get("sweep_layer")]
    if not items or not any(item["sweep"] for item in items):
        return "## Sweep\n\nNo sweep in these settings."
    lines = [f"## gamma and gradient paths of LR-L{settings['sweep_layer']} (sweep): R&G minus the base, "
             f"mean [95% interval]", "",
             "lr_grad: both = the paper's equation (gradient through phi(x) and phi(x_hat)); adversarial = the clean "
             "features detached; numerator = the denominator ||phi(x)|| detached. collapsed: runs (of "
             f"{len(summary['seeds'])}) whose model predicts one class for every test point.", "",
             "| base | gamma | lr_grad | " + " | ".join(f"{summary['eval_attacks'][a]} | verdict" for a in attacks)
             + " | collapsed |", "|---|---:|---|" + "---:|---|" * len(attacks) + "---:|"]
    order = {mode: i for i, mode in enumerate(settings.get("sweep_lr_grads") or ())}
    for item in sorted(items, key=lambda i: (i["base_row"], i["gamma"], order.get(i["lr_grad"], 9))):
        cells = [f"{_interval(item[a])} | {item[a]['verdict']}" for a in attacks]
        lines.append(f"| {item['base_row']} | {item['gamma']:g} | {item['lr_grad']} | " + " | ".join(cells)
                     + f" | {item['collapsed']} |")
    return "\n".join(lines)


def _gradient_paths_section(summary: Dict) -> str:
    items = summary["claims"].get("lr_grad_vs_table") or []
    if not items:
        return "## Gradient paths compared\n\nNo sweep of the gradient paths in these settings."
    attacks = list(summary["eval_attacks"])
    against = items[0]["against"]
    lines = [f"## Gradient paths compared: each lr_grad minus lr_grad {against} (the same base, layer, gamma and "
             f"seed), R&G, mean [95% interval]", "",
             "| base | layer | gamma | lr_grad | " + " | ".join(f"{summary['eval_attacks'][a]} | verdict" for a in attacks)
             + " |", "|---|---|---:|---|" + "---:|---|" * len(attacks)]
    for item in sorted(items, key=lambda i: (i["base_row"], i["gamma"], i["lr_grad"])):
        cells = [f"{_interval(item[a])} | {item[a]['verdict']}" for a in attacks]
        lines.append(f"| {item['base_row']} | L{item['layer']} | {item['gamma']:g} | {item['lr_grad']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def _best_section(summary: Dict) -> str:
    claims = summary["claims"]
    lines = ["## The best LR layer of each base, and the paper's best layer", "",
             "| base | attack | best LR row here | difference to the base [95%] | verdict |", "|---|---|---|---:|---|"]
    for item in claims["best_lr_beats_base"]:
        lines.append(f"| {item['base_row']} | {summary['eval_attacks'][item['attack']]} | {item['row']} | "
                     f"{_interval(item['difference'])} | {item['difference']['verdict']} |")
    if claims["best_layer"]:
        lines += ["", "| base | paper's best | attack | best here | margin of the paper's best over the best other "
                      "[95%] |", "|---|---|---|---|---|"]
        for item in claims["best_layer"]:
            for attack in summary["eval_attacks"]:
                ours = item[attack]
                lines.append(f"| {item['base_row']} | {item['paper_best']} | {summary['eval_attacks'][attack]} | "
                             f"{ours['our_best']} | {_interval(ours['margin'])} vs {ours['runner_up']}: "
                             f"{ours['margin']['verdict']} |")
    return "\n".join(lines)


def _cm_section(summary: Dict) -> str:
    claims = summary["claims"]
    lines = ["## The regulariser and the CM of its layer (mean relative error of layer k)", "",
             "| LR row | layer | attack | CM of the base | CM of the LR row | change [95%] | verdict |",
             "|---|---|---|---:|---:|---:|---|"]
    for item in claims["cm_falls"]:
        change = item["change"]
        interval = (f"{change['mean']:+.4f}" if change["low"] is None
                    else f"{change['mean']:+.4f} [{change['low']:+.4f}, {change['high']:+.4f}]")
        lines.append(f"| {item['row']} | L{item['layer']} | {item['attack'].upper()} | {item['base_cm']:.4f} | "
                     f"{item['lr_cm']:.4f} | {interval} | {change['verdict']} |")
    lines += ["", "Why the CM moved, layer k under FGSM: ratio LR row / base (mean over seeds) of the clean output "
              "norm ||phi_k(x)|| (CM's denominator) and of the change ||phi_k(x) - phi_k(x_hat)|| (its numerator). "
              "A CM that falls through a larger denominator means a larger clean output, not a steadier layer.", "",
              "| LR row | layer | clean norm ratio | change norm ratio |", "|---|---|---:|---:|"]
    for item in claims["cm_parts"]:
        ratios = ["-" if r is None else f"{r:.3g}" for r in (item["clean_norm_ratio"], item["difference_norm_ratio"])]
        lines.append(f"| {item['row']} | L{item['layer']} | {ratios[0]} | {ratios[1]} |")
    return "\n".join(lines)


def _collapse_section(summary: Dict) -> str:
    collapsed = {name: sum(row["collapsed"]) for name, row in summary["rows"].items() if any(row["collapsed"])}
    lines = ["## Collapsed runs (a constant classifier: one class for every test point)", ""]
    if not collapsed:
        return "\n".join(lines + ["None."])
    lines += ["| row | collapsed runs |", "|---|---:|"]
    lines += [f"| {name} | {count} of {len(summary['seeds'])} |" for name, count in collapsed.items()]
    return "\n".join(lines)


def _mvl_section(summary: Dict) -> str:
    eta = summary["settings"]["eta"]
    lines = [f"## LSA of each trained model: most vulnerable layers (FGSM and PGD pooled, eta = {eta:g}), per seed", "",
             "| Training | " + " | ".join(f"seed {s}" for s in summary["seeds"]) + " |",
             "|---|" + "---|" * len(summary["seeds"])]
    for name, row in summary["rows"].items():
        if not row["sweep"]:
            lines.append(f"| {name} | " + " | ".join("[" + ", ".join(f"L{l}" for l in mvl) + "]" for mvl in row["mvl"])
                         + " |")
    return "\n".join(lines)


def _per_seed_section(summary: Dict) -> str:
    lines = []
    for attack, title in summary["eval_attacks"].items():
        lines += [f"## R&G score per seed under {title}", "",
                  "| Training | " + " | ".join(f"seed {s}" for s in summary["seeds"]) + " |",
                  "|---|" + "---:|" * len(summary["seeds"])]
        for name, row in summary["rows"].items():
            lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row["evaluation"][attack]["rg"]) + " |")
        lines.append("")
    return "\n".join(lines).rstrip()


def _units_note(summary: Dict) -> str:
    settings = summary["settings"]
    train = summary["train_eps"]
    names = "; ".join(f"model {model}: " + ", ".join(f"L{i} = {name}" for i, name in enumerate(names))
                      for model, names in summary["layer_names"].items())
    text = (f"Units: {summary['units']}. Training eps {train['dataset_units']:g} (= {train['input_units']:g} in the "
            f"models' [0, 1] input units); eps grid {', '.join(f'{e:g}' for e in summary['eps_grid'])}. ")
    if summary["dataset"] == "moons":
        text += (f"Moons: {settings['n_train']} training and {settings['n_test']} test points drawn with the seed of "
                 f"each run, noise {settings['noise']:g}. ")
    text += (f"Probes: {settings['probes']} (LR-Lk regularises layer k of: {names}). Evaluation: "
             + "; ".join(summary["eval_attacks"].values()) + ".")
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


def _interval(item: Dict) -> str:
    if item["low"] is None:
        return f"{item['mean']:+.2f}"
    return f"{item['mean']:+.2f} [{item['low']:+.2f}, {item['high']:+.2f}]"


def _cell(mean: float, std: Optional[float], paper: float) -> str:
    return f"{_pm(mean, std)} ({paper:g})"


def _pm(mean: float, std: Optional[float], digits: int = 2) -> str:
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"
