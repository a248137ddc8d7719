"""The figure of a training run (`lsa-fast plot RUN`, and training_lsa.png at the end of
`lsa-fast train`): left, the CM of every probed layer over the epochs (solid: under
the training attack; dashed: under Gaussian noise), the regularised layers drawn
thick with a star; right, the clean and robust validation accuracy (and the test
accuracy) over the epochs, the best epoch marked. Read from the run directory's
metrics.jsonl and config.json (lsa_fast.lsa_monitor says what the values are)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

from .report import new_figure, save_figure

__all__ = ["FIGURE_NAME", "read_run", "plot_training"]

FIGURE_NAME = "training_lsa.png"


def read_run(run: Union[str, "os.PathLike[str]"]):
    """(config dict, metrics records) of a run directory; one-line errors for a
    directory that is not a run."""
    run = Path(run).expanduser()
    config_path, metrics_path = run / "config.json", run / "metrics.jsonl"
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run directory")
    if not config_path.is_file() or not metrics_path.is_file():
        raise FileNotFoundError(f"{run}: not a run directory (no config.json and metrics.jsonl; made by lsa-fast train)")
    config = json.loads(config_path.read_text())
    metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    return config, metrics


def plot_training(config: Dict[str, Any], metrics: Sequence[Dict[str, Any]], path, dpi: int = 120) -> str:
    """Draw the figure of one run (config: its config.json; metrics: its records) to
    `path` (PNG, written atomically); returns the path."""
    measured = [m for m in metrics if m.get("layer_cm")]
    if not measured and not any("val_acc" in m or "test_acc" in m for m in metrics):
        raise ValueError("plot: the run's metrics hold no layer_cm and no accuracy to draw (train with "
                         "--lsa-every K >= 1, and --val-size N for the validation accuracy)")
    figure = new_figure((12.0, 5.6), "lsa-fast plot")
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    _draw_cm(left, config, measured)
    _draw_accuracy(right, config, metrics)
    extra = config.get("extra") or {}
    name = extra.get("row") or _run_name(config, metrics)
    eps = extra.get("eps_dataset_units", config.get("eps"))
    figure.suptitle(f"{name}: model {config.get('model')} on {config.get('dataset')}, training eps {eps:g} "
                    f"(dataset units), seed {config.get('seed')}", fontsize=11)
    figure.tight_layout()
    return save_figure(figure, path, dpi)


def _run_name(config: Dict[str, Any], metrics: Sequence[Dict[str, Any]]) -> str:
    base = config.get("base", "none")
    if base == "none":
        return "Normal"
    layers = _regularised(config, metrics)
    return f"AT-{base.upper()}" + ("-LR-L" + ",".join(str(l) for l in layers) if layers else "")


def _regularised(config: Dict[str, Any], metrics: Sequence[Dict[str, Any]]) -> List[int]:
    layers = config.get("lr_layers")
    if isinstance(layers, list):
        return [int(l) for l in layers]
    for record in reversed(list(metrics)):  # lr_layers auto: the layers LSA chose
        if record.get("mvl"):
            return [int(l) for l in record["mvl"]]
    return []


def _draw_cm(axes, config: Dict[str, Any], measured: Sequence[Dict[str, Any]]) -> None:
    monitor = (config.get("extra") or {}).get("lsa_monitor") or {}
    if not measured:
        axes.text(0.5, 0.5, "no layer CM recorded", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
        return
    epochs = [int(m["epoch"]) for m in measured]
    layers = len(measured[0]["layer_cm"])
    names = monitor.get("layers") or [None] * layers
    regularised = set(_regularised(config, measured))
    colours = [f"C{i % 10}" for i in range(layers)]
    for l in range(layers):
        thick = l in regularised
        label = f"L{l}" + (f" ({names[l]})" if l < len(names) and names[l] else "") + (" — regularised" if thick else "")
        axes.plot(epochs, [m["layer_cm"][l] for m in measured], color=colours[l], linewidth=2.6 if thick else 1.4,
                  marker="*" if thick else "o", markersize=9 if thick else 4, label=label)
        if all(m.get("layer_cm_noise") for m in measured):
            axes.plot(epochs, [m["layer_cm_noise"][l] for m in measured], color=colours[l], linestyle="--",
                      linewidth=1.0, alpha=0.8)
    attack = str(monitor.get("attack", "the training attack")).upper()
    axes.plot([], [], color="gray", linestyle="-", label=f"under {attack} at the training eps")
    axes.plot([], [], color="gray", linestyle="--", label="under Gaussian noise (std = eps)")
    axes.set_xlabel("epoch")
    axes.set_ylabel("CM = ‖φ(x) − φ(x̂)‖ / ‖φ(x)‖ (ratio, batch mean)")
    batch = f"{monitor.get('samples', '?')} {monitor.get('batch', '')} samples".strip()
    axes.set_title(f"layer CM per epoch ({batch})", fontsize=10)
    _epoch_axis(axes)
    axes.set_ylim(bottom=0.0)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)  # below: never over a line


def _draw_accuracy(axes, config: Dict[str, Any], metrics: Sequence[Dict[str, Any]]) -> None:
    extra = config.get("extra") or {}
    eps = extra.get("eps_dataset_units", config.get("eps"))
    lines = (("val_acc", "validation, clean", "tab:blue", "-"),
             ("val_robust_acc", f"validation, PGD-10 at eps {eps:g}", "tab:red", "-"),
             ("test_acc", "test, clean", "tab:gray", ":"))
    drawn = False
    for key, label, colour, style in lines:
        points = [(int(m["epoch"]), float(m[key])) for m in metrics if m.get(key) is not None]
        if points:
            axes.plot(*zip(*points), color=colour, linestyle=style, marker="o", markersize=4, label=label)
            drawn = True
    best = next((m["best"] for m in reversed(list(metrics)) if isinstance(m.get("best"), dict)), None)
    if best and best.get("epoch") is not None:
        axes.axvline(best["epoch"], color="black", linestyle="--", linewidth=0.8,
                     label=f"best.pt: epoch {best['epoch']} ({best['metric']} {best['value']:.2f}%)")
    if not drawn:
        axes.text(0.5, 0.5, "no accuracy recorded", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("epoch")
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0.0, 100.0)
    axes.set_title("accuracy per epoch", fontsize=10)
    _epoch_axis(axes)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)


def _epoch_axis(axes) -> None:
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
