"""The figures of a reproduction: R&G scores per row (the paper's Fig. 6) and the mean
relative error per layer (Fig. 5)."""
from __future__ import annotations

from typing import Dict, List, Tuple

from ..report import new_figure, save_figure
from .records import Report, RowSummary

__all__ = ["plot_rg_scores", "plot_cm_layers"]


def plot_rg_scores(report: Report, path, dpi: int = 120) -> str:
    """The paper's Fig. 6: R&G per table row under each evaluation attack, with seed
    error bars, beside the paper's (FGSM) R&G."""
    names = [name for name, row in report.rows.items() if not row.sweep]
    # The final weights' grid columns (an AutoAttack accuracy is no R&G score).
    attacks = [a for a in report.eval_attacks if len(report.grid(a)) > 1
               and "@" not in a]
    figure = new_figure((max(8.0, 0.8 * len(names) + 2.0), 5.0), "plot_rg_scores")
    axes = figure.add_subplot(1, 1, 1)
    xs = list(range(len(names)))
    bars = len(attacks) + 1
    width = 0.8 / bars
    seeds = len(report.seeds)
    colours = {"fgsm": "tab:blue", "pgd": "tab:orange"}
    top = 0.0
    for i, attack in enumerate(attacks):
        values = [report.rows[n].evaluation[attack].rg_mean for n in names]
        errors = [report.rows[n].evaluation[attack].rg_std or 0.0 for n in names]
        top = max(top, max(v + e for v, e in zip(values, errors)))
        axes.bar([x + (i - (bars - 1) / 2) * width for x in xs], values, width, yerr=errors, capsize=2,
                 color=colours.get(attack, None),
                 label=f"lsa_fast {report.eval_attacks[attack]} (mean ± std, {seeds} seed{'s' if seeds > 1 else ''})")
    paper = [(report.rows[n].paper or {}).get("rg", 0.0) for n in names]
    top = max(top, max(paper))
    axes.bar([x + (bars - 1) / 2 * width for x in xs], paper, width, color="tab:gray", alpha=0.7,
             label=f"{report.paper_source} (FGSM)")
    axes.set_xticks(xs)
    axes.set_xticklabels(names, rotation=60, ha="right", fontsize=9)
    axes.set_ylabel("R&G score (sum of the accuracies, %)", fontsize=10)
    axes.set_ylim(0.0, 1.2 * top)  # bars start at 0: their heights compare
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize=9, loc="upper left", ncol=2)
    grid = ", ".join(f"{e:g}" for e in report.eps_grid)
    smoke = "SMOKE RUN: " if report.smoke else ""
    axes.set_title(f"{smoke}R&G scores on {report.dataset} (like the paper's Fig. 6) at eps {grid} "
                   f"({_short_units(report)})", fontsize=10)
    figure.tight_layout()
    return save_figure(figure, path, dpi)


def plot_cm_layers(report: Report, path, dpi: int = 120) -> str:
    """The paper's Fig. 5 for every base: mean CM per layer under each attack for Normal,
    the base and its table LR rows (seed error bars); a star marks the layer each row
    regularises."""
    rows = {name: row for name, row in report.rows.items() if not row.sweep}
    groups = _groups(rows)
    attacks = list(next(iter(rows.values())).cm)
    columns = max(1, len(groups))
    figure = new_figure((5.0 * columns, 4.0 * len(attacks) + 1.2), "plot_cm_layers")  # clear error without matplotlib
    from matplotlib.lines import Line2D

    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    eps = report.settings["cm_eps"]
    for i, attack in enumerate(attacks):
        for j, ((model, base), (base_name, lr_names)) in enumerate(groups.items()):
            axes = figure.add_subplot(len(attacks), columns, i * columns + j + 1)
            normal = next((name for name, row in rows.items() if row.model == model and row.base == "none"), None)
            lines = ([(normal, "0.5", "--")] if normal else []) + [(base_name, "k", "-")]
            lines += [(name, colours[c % len(colours)], "-") for c, name in enumerate(lr_names)]
            for name, colour, style in lines:
                cm = rows[name].cm[attack]
                xs = list(range(len(cm.mean)))
                std = [s or 0.0 for s in cm.std]
                axes.errorbar(xs, cm.mean, yerr=std, color=colour, linestyle=style, marker="o", markersize=3,
                              capsize=2, linewidth=1.5, label=rows[name].training)
                k = rows[name].lr_layer
                if k is not None:
                    axes.scatter([k], [cm.mean[k]], marker="*", s=160, color=colour, edgecolors="k", zorder=4)
            names = report.layer_names.get(model, [])
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
                axes.set_xlabel(f"layer ({report.settings['probes']} probes)", fontsize=10)
            if i == 0:  # the same rows in every panel of a column
                handles, labels = axes.get_legend_handles_labels()
                star = Line2D([], [], linestyle="", marker="*", markersize=12, markerfacecolor="0.7",
                              markeredgecolor="k", label="layer the variant regularises")
                axes.legend(handles + [star], labels + [star.get_label()], fontsize=8, loc="upper left")
    seeds = len(report.seeds)
    smoke = "SMOKE RUN: " if report.smoke else ""
    figure.suptitle(f"{smoke}Mean CM per layer on {report.dataset} test samples (eps in {_short_units(report)}); "
                    f"error bars: std over {seeds} "
                    f"seed{'s' if seeds > 1 else ''}; dashed grey: Normal, black: the base, colours: its LR rows",
                    fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    return save_figure(figure, path, dpi)


def _short_units(report: Report) -> str:
    if report.dataset != "moons":
        return "pixel fractions"
    return "z units" if report.settings.get("standardize") else "moons units"


def _groups(rows: Dict[str, RowSummary]) -> Dict[Tuple[str, str], Tuple[str, List[str]]]:
    """(model, base) -> (the base row, its LR rows), in table order."""
    groups: Dict[Tuple[str, str], Tuple[str, List[str]]] = {}
    for name, row in rows.items():
        if row.base != "none" and row.lr_layer is None:
            groups[(row.model, row.base)] = (name, [])
    for name, row in rows.items():
        key = (row.model, row.base)
        if row.lr_layer is not None and key in groups:
            groups[key][1].append(name)
    return groups
