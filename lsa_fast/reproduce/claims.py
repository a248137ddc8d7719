"""The report of a reproduction (report.json) and the verdicts on the paper's claims.

Verdicts are paired: an LR row minus its base row, seed by seed (the same data, initial
weights, batch order and attack streams), with a Student t interval over the seeds
(lsa_fast.reproduce.paired) under FGSM and under PGD. "higher" / "lower" when the
interval lies above / below 0, "no difference detected" when it contains 0.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

from ..analysis import eps_to_input_units
from ..evaluation import EvaluationTable
from ..paper import PaperTable
from .paired import interval_text, mean_std, paired_difference
from .records import Claims, ColumnSummary, CurveSummary, Report, RowSummary, RunRecord, Statement
from .robustness import AUTOATTACK, titles
from .settings import variants

__all__ = ["REPORT_FORMAT", "summarise", "paper_claims"]

# The format of report.json and settings.json (readers check it). An LSA report
# (lsa_fast.report.LSA_REPORT_FORMAT) is another file with its own format.
REPORT_FORMAT = "lsa_fast.reproduce/2"


ATTACK_TITLES = {"fgsm": "FGSM", "pgd": "PGD"}


def summarise(table: PaperTable, settings, runs: Sequence[RunRecord]) -> Report:
    """report.json's content from the per-run records: per row and per evaluation attack
    the per-seed accuracies, mean and sample std (n - 1; None for one seed) of every
    cell and of the R&G score; the CM curves, collapsed runs, the paper's numbers beside
    (table rows), and the claims (paper_claims)."""

    seeds = sorted({run.seed for run in runs})
    attacks = list(runs[0].accuracies) if runs else []
    rows: Dict[str, RowSummary] = {}
    for variant in variants(table, settings):
        mine = sorted((run for run in runs if run.row == variant.name), key=lambda run: run.seed)
        if [run.seed for run in mine] != seeds:
            raise ValueError(f"summarise: row {variant.name!r} has runs for seeds {[r.seed for r in mine]}, "
                             f"expected {seeds}")
        paper_row = table.row(variant.paper_row) if variant.paper_row else None
        evaluated = {}
        for attack in attacks:
            accuracies = [run.accuracies[attack] for run in mine]
            cells = [mean_std(column) for column in zip(*accuracies)]
            rg = [run.rg[attack] for run in mine]
            rg_mean, rg_std = mean_std(rg)
            evaluated[attack] = ColumnSummary(accuracies=accuracies, mean=[m for m, _ in cells],
                                              std=[s for _, s in cells], rg=rg, rg_mean=rg_mean, rg_std=rg_std)
        cm = {}
        for attack in mine[0].cm:
            curves = [run.cm[attack] for run in mine]
            stats = [mean_std(layer) for layer in zip(*curves)]
            cm[attack] = CurveSummary(curves, [m for m, _ in stats], [s for _, s in stats])
        rows[variant.name] = RowSummary(
            model=variant.model,
            training=variant.training,
            base=variant.base,
            lr_layer=variant.lr_layer,
            gamma=variant.gamma,
            lr_grad=variant.lr_grad,
            base_row=variant.base_row,
            sweep=variant.sweep,
            extra=variant.extra,
            best_epoch=[run.best_epoch for run in mine],
            best_val_robust_acc=[run.best_val_robust_acc for run in mine],
            evaluation=evaluated,
            cm=cm,
            mvl=[run.mvl for run in mine],
            collapsed=[run.collapsed for run in mine],
            clean_norm=[run.clean_norm for run in mine],
            difference_norm=[run.difference_norm for run in mine],
            train_accuracy=[run.train_accuracy for run in mine],
            seconds=[run.seconds for run in mine],
            paper=None if paper_row is None else {"accuracies": list(paper_row.accuracies), "rg": paper_row.rg},
        )
    layer_names: Dict[str, List[str]] = {}
    data: Dict[str, Dict] = {}
    for run in runs:
        layer_names.setdefault(run.model, run.layer_names)
        if run.data_options:
            data.setdefault(str(run.seed), run.data_options)
    units = settings.moons_units if table.dataset == "moons" else "raw"
    report = Report(
        format=REPORT_FORMAT,
        dataset=table.dataset,
        paper_table=table.number,
        paper_source=table.source,
        smoke=bool(settings.smoke),
        settings=settings.to_dict(),
        seeds=seeds,
        eval_attacks=titles(settings, attacks, lambda attack: _attack_title(attack, settings)),
        eps_grid=list(table.eps_grid),
        # A column's eps: the paper's grid, or the training eps alone (AutoAttack).
        eval_grids={attack: [settings.train_eps] if attack.partition("@")[0] == AUTOATTACK else list(table.eps_grid)
                    for attack in attacks},
        eps_grid_input_units=[eps_to_input_units(table.dataset, eps, moons_units=units) for eps in table.eps_grid],
        train_eps={"dataset_units": settings.train_eps,
                   "input_units": eps_to_input_units(table.dataset, settings.train_eps, moons_units=units)},
        units=_units(table.dataset, units),
        layer_names=layer_names,
        data=data,
        rows=rows,
        paper=_paper_evaluation_table(table).to_dict(),
    )
    return dataclasses.replace(report, claims=paper_claims(report))


def paper_claims(report: Report) -> Claims:
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
    rows = report.rows
    confidence = report.settings.get("confidence", 0.95)
    attacks = list(report.eval_attacks)
    lr_vs_base, best, best_layer, cm_falls, norm_changes = [], [], [], [], []
    for name, row in rows.items():
        if row.base_row is None:
            continue
        base = rows[row.base_row]
        item = {"row": name, "base_row": row.base_row, "model": row.model, "base": row.base,
                "layer": row.lr_layer, "gamma": row.gamma, "lr_grad": row.lr_grad, "sweep": row.sweep,
                "collapsed": sum(row.collapsed), "paper_difference": None}
        for attack in attacks:
            item[attack] = paired_difference(row.evaluation[attack].rg, base.evaluation[attack].rg,
                                             confidence)
        if row.paper is not None and base.paper is not None:
            item["paper_difference"] = row.paper["rg"] - base.paper["rg"]
        lr_vs_base.append(item)
        if row.sweep:
            continue
        k = row.lr_layer
        for attack in row.cm:
            change = paired_difference([c[k] for c in row.cm[attack].per_seed],
                                       [c[k] for c in base.cm[attack].per_seed], confidence)
            cm_falls.append({"row": name, "base_row": row.base_row, "layer": k, "attack": attack,
                             "base_cm": base.cm[attack].mean[k], "lr_cm": row.cm[attack].mean[k],
                             "change": change})
        norm_changes.append({"row": name, "base_row": row.base_row, "layer": k,
                             "clean_norm_ratio": _ratio(row.clean_norm, base.clean_norm, k),
                             "difference_norm_ratio": _ratio(row.difference_norm, base.difference_norm, k)})

    table_items = [item for item in lr_vs_base if not item["sweep"]]
    for base_name in dict.fromkeys(item["base_row"] for item in table_items):
        mine = [item for item in table_items if item["base_row"] == base_name]
        for attack in attacks:
            ours = max(mine, key=lambda item: rows[item["row"]].evaluation[attack].rg_mean)
            best.append({"base_row": base_name, "attack": attack, "row": ours["row"], "layer": ours["layer"],
                         "difference": ours[attack]})
        with_paper = [item for item in mine if item["paper_difference"] is not None]
        if len(mine) > 1 and with_paper:
            theirs = max(with_paper, key=lambda item: item["paper_difference"])
            entry = {"base_row": base_name, "paper_best": theirs["row"], "paper_best_layer": theirs["layer"]}
            for attack in attacks:
                ours = max(mine, key=lambda item: rows[item["row"]].evaluation[attack].rg_mean)
                rivals = [item for item in mine if item["row"] != theirs["row"]]
                runner_up = max(rivals, key=lambda item: rows[item["row"]].evaluation[attack].rg_mean)
                margin = paired_difference(rows[theirs["row"]].evaluation[attack].rg,
                                           rows[runner_up["row"]].evaluation[attack].rg, confidence)
                entry[attack] = {"our_best": ours["row"], "holds": ours["row"] == theirs["row"],
                                 "runner_up": runner_up["row"], "margin": margin}
            best_layer.append(entry)

    claims = Claims(
        rule=f"paired differences (LR row minus its base row, the same seed) over {len(report.seeds)} seed(s), "
             f"{100 * confidence:g}% Student t interval; 'higher' / 'lower' when the interval excludes 0, "
             f"'no difference detected' when it contains 0",
        lr_vs_base=lr_vs_base,
        best_lr_beats_base=best,
        best_layer=best_layer,
        cm_falls=cm_falls,
        cm_parts=norm_changes,
        normal=_normal_check(rows),
        lr_grad_vs_table=_gradient_paths(report, confidence),
        statements=[],
    )
    return dataclasses.replace(claims, statements=_statements(report, claims))


def _normal_check(rows: Dict[str, RowSummary]) -> Optional[Dict]:
    """Our Normal row's FGSM R&G and clean accuracy beside the paper's (None without the
    paper's Normal row or an FGSM column)."""
    normal = next((row for row in rows.values() if row.base == "none"), None)
    if normal is None or normal.paper is None or "fgsm" not in normal.evaluation:
        return None
    ours = normal.evaluation["fgsm"]
    return {"rg_mean": ours.rg_mean, "rg_std": ours.rg_std, "paper": normal.paper["rg"],
            "difference": ours.rg_mean - normal.paper["rg"], "clean_mean": ours.mean[0],
            "paper_clean": normal.paper["accuracies"][0]}


def _gradient_paths(report: Report, confidence: float) -> List[Dict]:
    """Per sweep base and gamma, every other gradient path against the table's
    (settings.lr_grad): the LR row with one minus the LR row with the other, paired on
    the seed, under every evaluation attack."""
    rows = report.rows
    attacks = list(report.eval_attacks)
    table_mode = report.settings.get("lr_grad", "both")
    lr_rows = {(row.base_row, row.lr_layer, row.gamma, row.lr_grad): name
               for name, row in rows.items() if row.base_row is not None}
    items = []
    for (base_row, layer, gamma, mode), name in lr_rows.items():
        reference = lr_rows.get((base_row, layer, gamma, table_mode))
        if mode == table_mode or reference is None or not (rows[name].sweep or rows[reference].sweep):
            continue
        item = {"base_row": base_row, "layer": layer, "gamma": gamma, "lr_grad": mode, "against": table_mode,
                "row": name, "reference_row": reference}
        for attack in attacks:
            item[attack] = paired_difference(rows[name].evaluation[attack].rg,
                                             rows[reference].evaluation[attack].rg, confidence)
        items.append(item)
    return items


def _statements(report: Report, claims: Claims) -> List[Statement]:
    """The paper's claims in sentences, each with the paper's support and our verdict."""
    attacks = list(report.eval_attacks)
    table_items = [item for item in claims.lr_vs_base if not item["sweep"]]
    statements = []
    paper_best = _paper_best(table_items)
    if paper_best:
        ours = {attack: _count(item[attack].verdict for item in paper_best) for attack in attacks}
        layers = sorted({item["layer"] for item in paper_best})
        which = f"LR-L{layers[0]}" if len(layers) == 1 else "the paper's best LR row"
        statements.append(Statement(
            claim=f"{which} (the paper's best LR row of each base) beats its base, for every base",
            paper=f"{sum(1 for item in paper_best if item['paper_difference'] > 0)} of {len(paper_best)} bases "
                  f"(FGSM: " + ", ".join(f"{item['paper_difference']:+.2f}" for item in paper_best) + ")",
            ours="; ".join(f"{report.eval_attacks[a]}: {_counts_text(ours[a], len(paper_best))}"
                           for a in attacks),
            holds=_by_attack(report, {a: _holds([ours[a]], len(paper_best)) for a in attacks}),
        ))
    if len(table_items) > len(paper_best):
        paper_up = sum(1 for item in table_items if (item["paper_difference"] or 0) > 0)
        ours = {attack: _count(item[attack].verdict for item in table_items) for attack in attacks}
        statements.append(Statement(
            claim="every LR row of the table against its base (a count: the paper does not claim every layer helps)",
            paper=f"{paper_up} of {len(table_items)} LR rows above their base (FGSM)",
            ours="; ".join(f"{report.eval_attacks[a]}: {_counts_text(ours[a], len(table_items))}"
                           for a in attacks),
            holds="a count, not a claim",
        ))
    for item in table_items:  # rows beside the paper's table (settings.extra_rows): each its own claim
        if not report.rows[item["row"]].extra:
            continue
        verdicts = {a: _holds([_count([item[a].verdict])], 1) for a in attacks}
        statements.append(Statement(
            claim=f"{item['row']} beats its base {item['base_row']} (the paper's regulariser on a base its table "
                  f"does not report)",
            paper="not reported",
            ours="; ".join(f"{report.eval_attacks[a]}: {interval_text(item[a])} ({item[a].verdict})"
                           for a in attacks),
            holds=_by_attack(report, verdicts),
        ))
    if claims.best_layer:
        total = len(claims.best_layer)
        layer = claims.best_layer[0]["paper_best_layer"]
        counts = {a: sum(1 for item in claims.best_layer if item[a]["holds"]) for a in attacks}
        statements.append(Statement(
            claim=f"LR-L{layer} is the best layer for every base" if all(
             item["paper_best_layer"] == layer for item in claims.best_layer) else
            "the paper's best layer is the best layer here",
            paper=f"{total} of {total} bases",
            ours="; ".join(f"{report.eval_attacks[a]}: best mean R&G for {counts[a]} of {total}"
                           for a in attacks),
            holds=_by_attack(report, {a: "yes" if counts[a] == total else ("no" if counts[a] == 0 else "partly")
                                       for a in attacks}),
        ))
    if claims.cm_falls:
        total = len(claims.cm_falls)
        lower = sum(1 for item in claims.cm_falls if item["change"].verdict == "lower")
        higher = sum(1 for item in claims.cm_falls if item["change"].verdict == "higher")
        statements.append(Statement(
            claim="the regulariser lowers the CM (relative error) of the layer it regularises",
            paper="Figs. 2 and 5",
            ours=f"lower in {lower}, higher in {higher}, no difference detected in {total - lower - higher} of "
                 f"{total} (row, attack) pairs",
            holds="yes" if lower == total else ("no" if lower == 0 else "partly"),
        ))
    sweep = [item for item in claims.lr_vs_base if item["gamma"] is not None and item["base_row"] and (
        item["sweep"] or any(other["sweep"] and other["base_row"] == item["base_row"] and other["layer"] == item["layer"]
                             for other in claims.lr_vs_base))]
    if any(item["sweep"] for item in sweep):
        for attack in attacks:
            counts = _count(item[attack].verdict for item in sweep)
            statements.append(Statement(
                claim=f"some gamma and gradient path of the sweep makes LR beat its base "
                      f"({report.eval_attacks[attack]})",
                paper="gamma and the gradient paths are not reported",
                ours=_counts_text(counts, len(sweep)) + " sweep points (no correction for trying several)",
                holds=_holds([counts], len(sweep), any_suffices=True),
            ))
    normal = claims.normal
    if normal is not None:
        statements.append(Statement(
            claim="our Normal row matches the paper's (a check of data, units and training, not a claim)",
            paper=f"R&G {normal['paper']:.2f}, clean {normal['paper_clean']:.2f}%",
            ours=f"R&G {normal['rg_mean']:.2f}, clean {normal['clean_mean']:.2f}% "
                 f"(difference {normal['difference']:+.2f})",
            holds="yes (within 3%)" if abs(normal["difference"]) <= 0.03 * normal["paper"] else "no",
        ))
    return statements


def _attack_title(attack: str, settings) -> str:
    if attack == "pgd":
        return f"PGD-{settings.eval_pgd_steps}"
    return ATTACK_TITLES.get(attack, attack.upper())


def _units(dataset: str, moons_units: str) -> str:
    if dataset != "moons":
        return "pixel fractions ([0, 1] images), as in the paper"
    if moons_units == "standardized":
        return ("z units of the standardized moons (each axis z-scored with the training split's mean and std, "
                "as a StandardScaler before training does; the models see z mapped into [0, 1]^2 by (z + 5) / 10)")
    return "moons coordinates (the models see them mapped into [0, 1]^2 by (x - (-2, -2.25)) / 5)"


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


def _by_attack(report: Report, verdicts: Dict[str, str]) -> str:
    """One verdict when every attack gives it, else 'FGSM: ...; PGD-20: ...'."""
    if len(set(verdicts.values())) == 1:
        return next(iter(verdicts.values()))
    return "; ".join(f"{report.eval_attacks[attack]}: {verdict}" for attack, verdict in verdicts.items())


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


def _paper_evaluation_table(table: PaperTable) -> EvaluationTable:
    """The paper's table as an EvaluationTable (its markdown is report.md's last table)."""
    return EvaluationTable(eps_grid=table.eps_grid, rows={r.name: list(r.accuracies) for r in table.rows},
                           attack=table.attack)
