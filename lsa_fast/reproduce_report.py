"""The report of `lsa-fast reproduce` (lsa_fast.reproduce): summaries of the per-run
records, the verdicts on the paper's claims, report.md and the figures.

Verdicts are paired: an LR row minus its base row, seed by seed (the same data, initial
weights, batch order and attack streams), with a Student t interval over the seeds
(lsa_fast.paired) under FGSM and under PGD. "higher" / "lower" when the interval lies
above / below 0, "no difference detected" when it contains 0.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from .analysis import eps_to_input_units
from .evaluation import EvaluationTable
from .paired import mean_std, paired_difference
from .paper import PaperTable
from .reproduce_robustness import AUTOATTACK, titles
from .report import new_figure, save_figure

__all__ = ["REPORT_FORMAT", "summarise", "paper_claims", "to_markdown", "main_table", "claims_summary",
           "plot_rg_scores", "plot_cm_layers", "duration"]

REPORT_FORMAT = "lsa_fast.reproduce/2"
ATTACK_TITLES = {"fgsm": "FGSM", "pgd": "PGD"}


# ------------------------------------------------------------------ summaries


def summarise(table: PaperTable, settings, runs: Sequence[Dict]) -> Dict:
    """report.json's content from the per-run records: per row and per evaluation attack
    the per-seed accuracies, mean and sample std (n - 1; None for one seed) of every
    cell and of the R&G score; the CM curves, collapsed runs, the paper's numbers beside
    (table rows), and the claims (paper_claims)."""
    from .reproduce import variants  # the rows the settings define, in report order

    seeds = sorted({run["seed"] for run in runs})
    attacks = list(runs[0]["accuracies"]) if runs else []
    rows: Dict[str, Dict] = {}
    for variant in variants(table, settings):
        mine = sorted((run for run in runs if run["row"] == variant.name), key=lambda run: run["seed"])
        if [run["seed"] for run in mine] != seeds:
            raise ValueError(f"summarise: row {variant.name!r} has runs for seeds {[r['seed'] for r in mine]}, "
                             f"expected {seeds}")
        paper_row = table.row(variant.paper_row) if variant.paper_row else None
        evaluated = {}
        for attack in attacks:
            accuracies = [run["accuracies"][attack] for run in mine]
            cells = [mean_std(column) for column in zip(*accuracies)]
            rg = [run["rg"][attack] for run in mine]
            rg_mean, rg_std = mean_std(rg)
            evaluated[attack] = {"accuracies": accuracies, "mean": [m for m, _ in cells], "std": [s for _, s in cells],
                                 "rg": rg, "rg_mean": rg_mean, "rg_std": rg_std}
        cm = {}
        for attack in mine[0]["cm"]:
            curves = [run["cm"][attack] for run in mine]
            stats = [mean_std(layer) for layer in zip(*curves)]
            cm[attack] = {"per_seed": curves, "mean": [m for m, _ in stats], "std": [s for _, s in stats]}
        rows[variant.name] = {
            "model": variant.model,
            "training": variant.training,
            "base": variant.base,
            "lr_layer": variant.lr_layer,
            "gamma": variant.gamma,
            "lr_grad": variant.lr_grad,
            "base_row": variant.base_row,
            "sweep": variant.sweep,
            "extra": variant.extra,
            "best_epoch": [run.get("best_epoch") for run in mine],
            "best_val_robust_acc": [run.get("best_val_robust_acc") for run in mine],
            "evaluation": evaluated,
            "cm": cm,
            "mvl": [run["mvl"] for run in mine],
            "collapsed": [bool(run.get("collapsed")) for run in mine],
            "clean_norm": [run["clean_norm"] for run in mine],
            "difference_norm": [run["difference_norm"] for run in mine],
            "train_accuracy": [run["train_accuracy"] for run in mine],
            "seconds": [run.get("seconds") for run in mine],
            "paper": None if paper_row is None else {"accuracies": list(paper_row.accuracies), "rg": paper_row.rg},
        }
    layer_names: Dict[str, List[str]] = {}
    data: Dict[str, Dict] = {}
    for run in runs:
        layer_names.setdefault(run["model"], run["layer_names"])
        if run.get("data_options"):
            data.setdefault(str(run["seed"]), run["data_options"])
    units = settings.moons_units if table.dataset == "moons" else "raw"
    summary = {
        "format": REPORT_FORMAT,
        "dataset": table.dataset,
        "paper_table": table.number,
        "paper_source": table.source,
        "smoke": bool(settings.smoke),
        "settings": settings.to_dict(),
        "seeds": seeds,
        "eval_attacks": titles(settings, attacks, lambda attack: _attack_title(attack, settings)),
        "eps_grid": list(table.eps_grid),
        # A column's eps: the paper's grid, or the training eps alone (AutoAttack).
        "eval_grids": {attack: [settings.train_eps] if attack.partition("@")[0] == AUTOATTACK else list(table.eps_grid)
                       for attack in attacks},
        "eps_grid_input_units": [eps_to_input_units(table.dataset, eps, moons_units=units) for eps in table.eps_grid],
        "train_eps": {"dataset_units": settings.train_eps,
                      "input_units": eps_to_input_units(table.dataset, settings.train_eps, moons_units=units)},
        "units": _units(table.dataset, units),
        "layer_names": layer_names,
        "data": data,
        "rows": rows,
        "paper": table.to_evaluation_table().to_dict(),
    }
    summary["claims"] = paper_claims(summary)
    return summary


def paper_claims(summary: Dict) -> Dict:
    """The paper's claims, checked on our numbers with paired t intervals (LR row minus
    its base row, the same seed) at the settings' confidence, under every evaluation
    attack:

    - lr_vs_base: every LR row (table and sweep) against its base; the paper's FGSM
      difference beside the table's rows.
    - best_lr_beats_base: per base and attack, the table's LR row with the best mean
      R&G against the base (chosen on the same seeds: its margin is biased upwards).
    - best_layer: per base with several LR rows, whether the paper's best layer has the
      best mean R&G here too.
    - cm_falls: per table LR row, whether the mean CM of its regularised layer under FGSM
      and PGD falls below the base's; cm_parts says why: the ratio (LR row / base, mean
      over seeds) of that layer's clean output norm ||phi_k(x)|| (CM's denominator) and of
      ||phi_k(x) - phi_k(x_hat)|| under FGSM (its numerator).
    - normal: our Normal row's FGSM R&G against the paper's (a check of the units).
    - lr_grad_vs_table: in the sweep, each gradient path against the table's, at the same
      base, layer and gamma.
    - statements: each claim in a sentence with its verdict (claims_summary prints them)."""
    rows = summary["rows"]
    confidence = summary["settings"].get("confidence", 0.95)
    attacks = list(summary["eval_attacks"])
    lr_vs_base, best, best_layer, cm_falls, norm_changes = [], [], [], [], []
    for name, row in rows.items():
        if row["base_row"] is None:
            continue
        base = rows[row["base_row"]]
        item = {"row": name, "base_row": row["base_row"], "model": row["model"], "base": row["base"],
                "layer": row["lr_layer"], "gamma": row["gamma"], "lr_grad": row["lr_grad"], "sweep": row["sweep"],
                "collapsed": sum(row["collapsed"]), "paper_difference": None}
        for attack in attacks:
            item[attack] = paired_difference(row["evaluation"][attack]["rg"], base["evaluation"][attack]["rg"],
                                             confidence)
        if row["paper"] is not None and base["paper"] is not None:
            item["paper_difference"] = row["paper"]["rg"] - base["paper"]["rg"]
        lr_vs_base.append(item)
        if row["sweep"]:
            continue
        k = row["lr_layer"]
        for attack in row["cm"]:
            change = paired_difference([c[k] for c in row["cm"][attack]["per_seed"]],
                                       [c[k] for c in base["cm"][attack]["per_seed"]], confidence)
            cm_falls.append({"row": name, "base_row": row["base_row"], "layer": k, "attack": attack,
                             "base_cm": base["cm"][attack]["mean"][k], "lr_cm": row["cm"][attack]["mean"][k],
                             "change": change})
        norm_changes.append({"row": name, "base_row": row["base_row"], "layer": k,
                             "clean_norm_ratio": _ratio(row["clean_norm"], base["clean_norm"], k),
                             "difference_norm_ratio": _ratio(row["difference_norm"], base["difference_norm"], k)})

    table_items = [item for item in lr_vs_base if not item["sweep"]]
    for base_name in dict.fromkeys(item["base_row"] for item in table_items):
        mine = [item for item in table_items if item["base_row"] == base_name]
        for attack in attacks:
            ours = max(mine, key=lambda item: rows[item["row"]]["evaluation"][attack]["rg_mean"])
            best.append({"base_row": base_name, "attack": attack, "row": ours["row"], "layer": ours["layer"],
                         "difference": ours[attack]})
        with_paper = [item for item in mine if item["paper_difference"] is not None]
        if len(mine) > 1 and with_paper:
            theirs = max(with_paper, key=lambda item: item["paper_difference"])
            entry = {"base_row": base_name, "paper_best": theirs["row"], "paper_best_layer": theirs["layer"]}
            for attack in attacks:
                ours = max(mine, key=lambda item: rows[item["row"]]["evaluation"][attack]["rg_mean"])
                rivals = [item for item in mine if item["row"] != theirs["row"]]
                runner_up = max(rivals, key=lambda item: rows[item["row"]]["evaluation"][attack]["rg_mean"])
                margin = paired_difference(rows[theirs["row"]]["evaluation"][attack]["rg"],
                                           rows[runner_up["row"]]["evaluation"][attack]["rg"], confidence)
                entry[attack] = {"our_best": ours["row"], "holds": ours["row"] == theirs["row"],
                                 "runner_up": runner_up["row"], "margin": margin}
            best_layer.append(entry)

    normal = next((row for row in rows.values() if row["base"] == "none"), None)
    normal_check = None
    if normal is not None and normal["paper"] is not None and "fgsm" in normal["evaluation"]:
        ours = normal["evaluation"]["fgsm"]
        normal_check = {"rg_mean": ours["rg_mean"], "rg_std": ours["rg_std"], "paper": normal["paper"]["rg"],
                        "difference": ours["rg_mean"] - normal["paper"]["rg"], "clean_mean": ours["mean"][0],
                        "paper_clean": normal["paper"]["accuracies"][0]}
    claims = {
        "rule": f"paired differences (LR row minus its base row, the same seed) over {len(summary['seeds'])} seed(s), "
                f"{100 * confidence:g}% Student t interval; 'higher' / 'lower' when the interval excludes 0, "
                f"'no difference detected' when it contains 0",
        "lr_vs_base": lr_vs_base,
        "best_lr_beats_base": best,
        "best_layer": best_layer,
        "cm_falls": cm_falls,
        "cm_parts": norm_changes,
        "normal": normal_check,
        "lr_grad_vs_table": _gradient_paths(summary, confidence),
    }
    claims["statements"] = _statements(summary, claims)
    return claims


def _gradient_paths(summary: Dict, confidence: float) -> List[Dict]:
    """Per sweep base and gamma, every other gradient path against the table's
    (settings.lr_grad): the LR row with one minus the LR row with the other, paired on
    the seed, under every evaluation attack."""
    rows = summary["rows"]
    attacks = list(summary["eval_attacks"])
    table_mode = summary["settings"].get("lr_grad", "both")
    lr_rows = {(row["base_row"], row["lr_layer"], row["gamma"], row["lr_grad"]): name
               for name, row in rows.items() if row["base_row"] is not None}
    items = []
    for (base_row, layer, gamma, mode), name in lr_rows.items():
        reference = lr_rows.get((base_row, layer, gamma, table_mode))
        if mode == table_mode or reference is None or not (rows[name]["sweep"] or rows[reference]["sweep"]):
            continue
        item = {"base_row": base_row, "layer": layer, "gamma": gamma, "lr_grad": mode, "against": table_mode,
                "row": name, "reference_row": reference}
        for attack in attacks:
            item[attack] = paired_difference(rows[name]["evaluation"][attack]["rg"],
                                             rows[reference]["evaluation"][attack]["rg"], confidence)
        items.append(item)
    return items


def _statements(summary: Dict, claims: Dict) -> List[Dict]:
    """The paper's claims in sentences, each with the paper's support and our verdict."""
    attacks = list(summary["eval_attacks"])
    table_items = [item for item in claims["lr_vs_base"] if not item["sweep"]]
    statements = []
    paper_best = _paper_best(table_items)
    if paper_best:
        ours = {attack: _count(item[attack]["verdict"] for item in paper_best) for attack in attacks}
        layers = sorted({item["layer"] for item in paper_best})
        which = f"LR-L{layers[0]}" if len(layers) == 1 else "the paper's best LR row"
        statements.append({
            "claim": f"{which} (the paper's best LR row of each base) beats its base, for every base",
            "paper": f"{sum(1 for item in paper_best if item['paper_difference'] > 0)} of {len(paper_best)} bases "
                     f"(FGSM: " + ", ".join(f"{item['paper_difference']:+.2f}" for item in paper_best) + ")",
            "ours": "; ".join(f"{summary['eval_attacks'][a]}: {_counts_text(ours[a], len(paper_best))}"
                              for a in attacks),
            "holds": _by_attack(summary, {a: _holds([ours[a]], len(paper_best)) for a in attacks}),
        })
    if len(table_items) > len(paper_best):
        paper_up = sum(1 for item in table_items if (item["paper_difference"] or 0) > 0)
        ours = {attack: _count(item[attack]["verdict"] for item in table_items) for attack in attacks}
        statements.append({
            "claim": "every LR row of the table against its base (a count: the paper does not claim every layer helps)",
            "paper": f"{paper_up} of {len(table_items)} LR rows above their base (FGSM)",
            "ours": "; ".join(f"{summary['eval_attacks'][a]}: {_counts_text(ours[a], len(table_items))}"
                              for a in attacks),
            "holds": "a count, not a claim",
        })
    for item in table_items:  # rows beside the paper's table (settings.extra_rows): each its own claim
        if not summary["rows"][item["row"]].get("extra"):
            continue
        verdicts = {a: _holds([_count([item[a]["verdict"]])], 1) for a in attacks}
        statements.append({
            "claim": f"{item['row']} beats its base {item['base_row']} (the paper's regulariser on a base its table "
                     f"does not report)",
            "paper": "not reported",
            "ours": "; ".join(f"{summary['eval_attacks'][a]}: {_interval(item[a])} ({item[a]['verdict']})"
                              for a in attacks),
            "holds": _by_attack(summary, verdicts),
        })
    if claims["best_layer"]:
        total = len(claims["best_layer"])
        layer = claims["best_layer"][0]["paper_best_layer"]
        counts = {a: sum(1 for item in claims["best_layer"] if item[a]["holds"]) for a in attacks}
        statements.append({
            "claim": f"LR-L{layer} is the best layer for every base" if all(
                item["paper_best_layer"] == layer for item in claims["best_layer"]) else
            "the paper's best layer is the best layer here",
            "paper": f"{total} of {total} bases",
            "ours": "; ".join(f"{summary['eval_attacks'][a]}: best mean R&G for {counts[a]} of {total}"
                              for a in attacks),
            "holds": _by_attack(summary, {a: "yes" if counts[a] == total else ("no" if counts[a] == 0 else "partly")
                                          for a in attacks}),
        })
    if claims["cm_falls"]:
        total = len(claims["cm_falls"])
        lower = sum(1 for item in claims["cm_falls"] if item["change"]["verdict"] == "lower")
        higher = sum(1 for item in claims["cm_falls"] if item["change"]["verdict"] == "higher")
        statements.append({
            "claim": "the regulariser lowers the CM (relative error) of the layer it regularises",
            "paper": "Figs. 2 and 5",
            "ours": f"lower in {lower}, higher in {higher}, no difference detected in {total - lower - higher} of "
                    f"{total} (row, attack) pairs",
            "holds": "yes" if lower == total else ("no" if lower == 0 else "partly"),
        })
    sweep = [item for item in claims["lr_vs_base"] if item["gamma"] is not None and item["base_row"] and (
        item["sweep"] or any(other["sweep"] and other["base_row"] == item["base_row"] and other["layer"] == item["layer"]
                             for other in claims["lr_vs_base"]))]
    if any(item["sweep"] for item in sweep):
        for attack in attacks:
            counts = _count(item[attack]["verdict"] for item in sweep)
            statements.append({
                "claim": f"some gamma and gradient path of the sweep makes LR beat its base "
                         f"({summary['eval_attacks'][attack]})",
                "paper": "gamma and the gradient paths are not reported",
                "ours": _counts_text(counts, len(sweep)) + " sweep points (no correction for trying several)",
                "holds": _holds([counts], len(sweep), any_suffices=True),
            })
    normal = claims.get("normal")
    if normal is not None:
        statements.append({
            "claim": "our Normal row matches the paper's (a check of data, units and training, not a claim)",
            "paper": f"R&G {normal['paper']:.2f}, clean {normal['paper_clean']:.2f}%",
            "ours": f"R&G {normal['rg_mean']:.2f}, clean {normal['clean_mean']:.2f}% "
                    f"(difference {normal['difference']:+.2f})",
            "holds": "yes (within 3%)" if abs(normal["difference"]) <= 0.03 * normal["paper"] else "no",
        })
    return statements


# ------------------------------------------------------------------ markdown


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
              _best_epochs_section(summary), "",
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
    eps = summary.get("eval_grids", {}).get(attack, summary["eps_grid"])
    n = len(summary["seeds"])
    spread = "mean ± sample std over" if n > 1 else "one run,"
    paper = attack == "fgsm"
    title = summary["eval_attacks"][attack]
    single = len(eps) == 1  # one eps (AutoAttack): its accuracy, no R&G
    what = f"robust accuracy (%) at eps {eps[0]:g}" if single else "accuracy (%) per eps and R&G score"
    lines = [
        f"## {title} {what}: ours ({spread} {n} seed{'s' if n > 1 else ''})"
        + (f", the paper's in parentheses ({summary['paper_source']})" if paper else " (not in the paper)"),
        "",
        "| Training | " + " | ".join(f"{e:g}" for e in eps) + ("" if single else " | R&G") + " |"
        + (" R&G - paper |" if paper else ""),
        "|---|" + "---:|" * (len(eps) + (0 if single else 1) + (1 if paper else 0)),
    ]
    for name, row in summary["rows"].items():
        if row["sweep"]:
            continue
        result = row["evaluation"][attack]
        reference = row["paper"] if paper else None
        if single:
            lines.append(f"| {name} | {_pm(result['mean'][0], result['std'][0])} |")
            continue
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


def _best_epochs_section(summary: Dict) -> str:
    """Which epoch's weights the '(best-robust weights)' columns hold, per seed."""
    rows = {name: row for name, row in summary["rows"].items() if any(e is not None for e in row.get("best_epoch", []))}
    if not rows:
        return ""
    size = summary["settings"].get("val_size")
    lines = [f"## Best-robust weights: the epoch with the highest PGD-10 accuracy on the {size} held-out training "
             f"samples (validation), per seed: epoch (validation robust accuracy %)", "",
             "| Training | " + " | ".join(f"seed {s}" for s in summary["seeds"]) + " |",
             "|---|" + "---|" * len(summary["seeds"])]
    for name, row in rows.items():
        cells = [f"{e} ({v:.2f})" if e is not None else "-" for e, v in zip(row["best_epoch"], row["best_val_robust_acc"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _per_seed_section(summary: Dict) -> str:
    lines = []
    for attack, title in summary["eval_attacks"].items():
        single = len(summary.get("eval_grids", {}).get(attack, summary["eps_grid"])) == 1
        lines += [f"## {'Accuracy (%)' if single else 'R&G score'} per seed under {title}", "",
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


def _units(dataset: str, moons_units: str) -> str:
    if dataset != "moons":
        return "pixel fractions ([0, 1] images), as in the paper"
    if moons_units == "standardized":
        return ("z units of the standardized moons (each axis z-scored with the training split's mean and std, "
                "as a StandardScaler before training does; the models see z mapped into [0, 1]^2 by (z + 5) / 10)")
    return "moons coordinates (the models see them mapped into [0, 1]^2 by (x - (-2, -2.25)) / 5)"


def _short_units(summary: Dict) -> str:
    if summary["dataset"] != "moons":
        return "pixel fractions"
    return "z units" if summary["settings"].get("standardize") else "moons units"


def _attack_title(attack: str, settings) -> str:
    if attack == "pgd":
        return f"PGD-{settings.eval_pgd_steps}"
    return ATTACK_TITLES.get(attack, attack.upper())


# ------------------------------------------------------------------ figures


def plot_rg_scores(summary: Dict, path, dpi: int = 120) -> str:
    """The paper's Fig. 6: R&G per table row under each evaluation attack, with seed
    error bars, beside the paper's (FGSM) R&G."""
    names = [name for name, row in summary["rows"].items() if not row["sweep"]]
    # The final weights' grid columns (an AutoAttack accuracy is no R&G score).
    attacks = [a for a in summary["eval_attacks"] if len(summary.get("eval_grids", {}).get(a, [0, 0])) > 1
               and "@" not in a]
    figure = new_figure((max(8.0, 0.8 * len(names) + 2.0), 5.0), "plot_rg_scores")
    axes = figure.add_subplot(1, 1, 1)
    xs = list(range(len(names)))
    bars = len(attacks) + 1
    width = 0.8 / bars
    seeds = len(summary["seeds"])
    colours = {"fgsm": "tab:blue", "pgd": "tab:orange"}
    top = 0.0
    for i, attack in enumerate(attacks):
        values = [summary["rows"][n]["evaluation"][attack]["rg_mean"] for n in names]
        errors = [summary["rows"][n]["evaluation"][attack]["rg_std"] or 0.0 for n in names]
        top = max(top, max(v + e for v, e in zip(values, errors)))
        axes.bar([x + (i - (bars - 1) / 2) * width for x in xs], values, width, yerr=errors, capsize=2,
                 color=colours.get(attack, None),
                 label=f"lsa_fast {summary['eval_attacks'][attack]} (mean ± std, {seeds} seed{'s' if seeds > 1 else ''})")
    paper = [(summary["rows"][n]["paper"] or {}).get("rg", 0.0) for n in names]
    top = max(top, max(paper))
    axes.bar([x + (bars - 1) / 2 * width for x in xs], paper, width, color="tab:gray", alpha=0.7,
             label=f"{summary['paper_source']} (FGSM)")
    axes.set_xticks(xs)
    axes.set_xticklabels(names, rotation=60, ha="right", fontsize=9)
    axes.set_ylabel("R&G score (sum of the accuracies, %)", fontsize=10)
    axes.set_ylim(0.0, 1.2 * top)  # bars start at 0: their heights compare
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize=9, loc="upper left", ncol=2)
    grid = ", ".join(f"{e:g}" for e in summary.get("eps_grid", []))
    smoke = "SMOKE RUN: " if summary.get("smoke") else ""
    axes.set_title(f"{smoke}R&G scores on {summary['dataset']} (like the paper's Fig. 6) at eps {grid} "
                   f"({_short_units(summary)})", fontsize=10)
    figure.tight_layout()
    return save_figure(figure, path, dpi)


def plot_cm_layers(summary: Dict, path, dpi: int = 120) -> str:
    """The paper's Fig. 5 for every base: mean CM per layer under each attack for Normal,
    the base and its table LR rows (seed error bars); a star marks the layer each row
    regularises."""
    rows = {name: row for name, row in summary["rows"].items() if not row["sweep"]}
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
                axes.set_xlabel(f"layer ({summary['settings']['probes']} probes)", fontsize=10)
            if i == 0:  # the same rows in every panel of a column
                handles, labels = axes.get_legend_handles_labels()
                star = Line2D([], [], linestyle="", marker="*", markersize=12, markerfacecolor="0.7",
                              markeredgecolor="k", label="layer the variant regularises")
                axes.legend(handles + [star], labels + [star.get_label()], fontsize=8, loc="upper left")
    seeds = len(summary["seeds"])
    smoke = "SMOKE RUN: " if summary.get("smoke") else ""
    figure.suptitle(f"{smoke}Mean CM per layer on {summary['dataset']} test samples (eps in {_short_units(summary)}); "
                    f"error bars: std over {seeds} "
                    f"seed{'s' if seeds > 1 else ''}; dashed grey: Normal, black: the base, colours: its LR rows",
                    fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    return save_figure(figure, path, dpi)


# ------------------------------------------------------------------ helpers


def duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


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


def _paper_best(items: Sequence[Dict]) -> List[Dict]:
    """Per base, the table's LR row with the paper's largest R&G gain over that base."""
    best: Dict[str, Dict] = {}
    for item in items:
        if item["paper_difference"] is None:
            continue
        current = best.get(item["base_row"])
        if current is None or item["paper_difference"] > current["paper_difference"]:
            best[item["base_row"]] = item
    return list(best.values())


def _count(verdicts) -> Dict[str, int]:
    counts = {"higher": 0, "lower": 0, "no difference detected": 0, "undecided (1 seed)": 0}
    for verdict in verdicts:
        counts[verdict] += 1
    return counts


def _counts_text(counts: Dict[str, int], total: int) -> str:
    if counts["undecided (1 seed)"]:
        return f"undecided for {counts['undecided (1 seed)']} of {total} (one seed: no interval)"
    return (f"higher for {counts['higher']}, lower for {counts['lower']}, no difference detected for "
            f"{counts['no difference detected']} of {total}")


def _by_attack(summary: Dict, verdicts: Dict[str, str]) -> str:
    """One verdict when every attack gives it, else 'FGSM: ...; PGD-20: ...'."""
    if len(set(verdicts.values())) == 1:
        return next(iter(verdicts.values()))
    return "; ".join(f"{summary['eval_attacks'][attack]}: {verdict}" for attack, verdict in verdicts.items())


def _holds(counts: Sequence[Dict[str, int]], total: int, any_suffices: bool = False) -> str:
    """yes (every case higher; any_suffices: one case higher), partly, no (some lower,
    none higher), not shown (no difference detected anywhere), undecided (one seed)."""
    if any(c["undecided (1 seed)"] for c in counts):
        return "undecided (one seed)"
    if all(c["higher"] == total for c in counts) or (any_suffices and any(c["higher"] for c in counts)):
        return "yes"
    if any(c["higher"] for c in counts):
        return "partly (higher in " + ", ".join(str(c["higher"]) for c in counts) + f" of {total})"
    if any(c["lower"] for c in counts):
        return "no (lower in " + ", ".join(str(c["lower"]) for c in counts) + f" of {total})"
    return "not shown (no difference detected)"


def _ratio(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], k: int) -> Optional[float]:
    """mean over seeds of a[seed][k] / mean over seeds of b[seed][k]; None for a zero
    denominator (a dead layer), which strict JSON could not hold as infinity."""
    top = sum(values[k] for values in a) / len(a)
    bottom = sum(values[k] for values in b) / len(b)
    return top / bottom if bottom > 0 else None


def _interval(item: Dict) -> str:
    if item["low"] is None:
        return f"{item['mean']:+.2f}"
    return f"{item['mean']:+.2f} [{item['low']:+.2f}, {item['high']:+.2f}]"


def _cell(mean: float, std: Optional[float], paper: float) -> str:
    return f"{_pm(mean, std)} ({paper:g})"


def _pm(mean: float, std: Optional[float], digits: int = 2) -> str:
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"
