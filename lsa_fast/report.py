"""The result of Layer Sustainability Analysis (lsa_fast.analysis.analyze) and its
serialisations: JSON (exact round trip), a markdown summary, and one matplotlib
figure of the comparison measure per layer, like the paper's Fig. 2 and Fig. 5.

Every file is written atomically (a temporary file in the target's directory, then
os.replace), so a reader never sees half a report. matplotlib is optional: only
LSAReport.plot needs it.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import tempfile
from typing import Dict, List, Optional, Sequence, Union

__all__ = ["LSAReport", "PerturbationResult", "atomic_write_text", "atomic_write_bytes", "LSA_REPORT_FORMAT"]

# The format of an LSA report's JSON (LSAReport.load checks it); the report of `lsa-fast
# reproduce` is another file, with its own lsa_fast.reproduce.REPORT_FORMAT.
LSA_REPORT_FORMAT = "lsa_fast.LSAReport/1"

PathLike = Union[str, "os.PathLike[str]"]
# mkstemp creates 0600 files; a report is meant to be shared like any other output.
_FILE_MODE = 0o644


@dataclasses.dataclass
class PerturbationResult:
    """Per-layer statistics of CM[m, l] for one perturbation (or for the pooled
    adversarial perturbations, kind == "combined") and Algorithm 1 on them.

    layer_std is the population standard deviation over samples; mu and sigma are the
    mean and population standard deviation over all count x L entries; mvl is the sorted
    list of layers l with layer_mean[l] - mu > eta * sigma; eta_sweep maps each eta of
    the sweep to its MVL list. accuracy is in % (for "combined": samples correct on the
    clean input and under every adversarial perturbation)."""

    name: str
    kind: str  # "adversarial", "noise" or "combined"
    attack: Optional[str]  # canonical lsa_fast.attacks name, None for an unknown callable
    eps_input: Optional[float]  # strength in model-input units (what the attack used)
    eps_dataset: Optional[float]  # the same in the dataset's own units (the paper's)
    accuracy: Optional[float]
    count: int  # samples behind each layer's statistics
    layer_mean: List[float]
    layer_std: List[float]
    layer_min: List[float]
    layer_max: List[float]
    mu: float
    sigma: float
    mvl: List[int]
    eta_sweep: Dict[float, List[int]]
    members: List[str] = dataclasses.field(default_factory=list)  # "combined": what was pooled
    unmoved: Optional[float] = None  # fraction of samples whose input or logits it left unchanged

    def mvl_at(self, eta: float) -> List[int]:
        """Algorithm 1 at any eta, from the stored per-layer statistics (every layer
        has the same count, so sigma^2 = mean_l std_l^2 + mean_l (mean_l - mu)^2)."""
        num_layers = len(self.layer_mean)
        mu = sum(self.layer_mean) / num_layers
        variance = (sum(s * s for s in self.layer_std) + sum((m - mu) ** 2 for m in self.layer_mean)) / num_layers
        sigma = math.sqrt(variance)
        return [l for l, m in enumerate(self.layer_mean) if m - mu > eta * sigma]

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["eta_sweep"] = [{"eta": eta, "mvl": list(mvl)} for eta, mvl in self.eta_sweep.items()]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "PerturbationResult":
        data = dict(data)
        data["eta_sweep"] = {float(item["eta"]): [int(l) for l in item["mvl"]] for item in data["eta_sweep"]}
        data["mvl"] = [int(l) for l in data["mvl"]]
        data["count"] = int(data["count"])
        return cls(**data)


@dataclasses.dataclass
class LSAReport:
    """What analyze() found: per perturbation and layer the mean/std/min/max of CM, mu,
    sigma, the MVL list for eta and for every eta of the sweep, accuracies; `combined`
    is Algorithm 1 on the pooled CM of all adversarial perturbations (None if there
    are none). Layer l of every list is probe point l, named layer_names[l]."""

    layer_names: List[str]
    perturbations: List[PerturbationResult]
    combined: Optional[PerturbationResult]
    clean_accuracy: float
    num_samples: int
    eta: float
    eta_sweep: List[float]
    select: str
    model_name: Optional[str] = None
    model_class: Optional[str] = None
    dataset: Optional[str] = None
    eps_units: Optional[str] = None  # what eps_dataset counts in, e.g. "z units" for standardized moons
    world_size: int = 1
    warnings: List[str] = dataclasses.field(default_factory=list)  # what makes the results doubtful

    # ------------------------------------------------------------------ access

    def __getitem__(self, name: str) -> PerturbationResult:
        for result in self.perturbations:
            if result.name == name:
                return result
        if self.combined is not None and name == self.combined.name:
            return self.combined
        raise KeyError(f"LSAReport: no perturbation {name!r}; have {[p.name for p in self.perturbations]}")

    @property
    def mvl(self) -> List[int]:
        """The headline MVL list: the pooled adversarial one, else that of the only
        perturbation; for several noises alone, see mvl_lists()."""
        if self.combined is not None:
            return list(self.combined.mvl)
        if len(self.perturbations) == 1:
            return list(self.perturbations[0].mvl)
        raise ValueError("LSAReport.mvl: no adversarial perturbation to pool; use mvl_lists()")

    def mvl_lists(self) -> Dict[str, List[int]]:
        lists = {p.name: list(p.mvl) for p in self.perturbations}
        if self.combined is not None:
            lists[self.combined.name] = list(self.combined.mvl)
        return lists

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict:
        data = {"format": LSA_REPORT_FORMAT}
        for field in dataclasses.fields(self):
            data[field.name] = getattr(self, field.name)
        data["perturbations"] = [p.to_dict() for p in self.perturbations]
        data["combined"] = None if self.combined is None else self.combined.to_dict()
        data["layer_names"] = list(self.layer_names)
        data["eta_sweep"] = list(self.eta_sweep)
        # The headline list at the top level, for readers that want just that (the
        # trainer's lr_layers=<report.json>); derived, so from_dict ignores it.
        if self.combined is not None or len(self.perturbations) == 1:
            data["mvl"] = self.mvl
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "LSAReport":
        if not isinstance(data, dict) or data.get("format") != LSA_REPORT_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"LSAReport: not an LSA report (format {found!r}, expected {LSA_REPORT_FORMAT!r})")
        fields = {f.name for f in dataclasses.fields(cls)}
        try:
            kwargs = {key: value for key, value in data.items() if key in fields}
            kwargs["perturbations"] = [PerturbationResult.from_dict(p) for p in data["perturbations"]]
            if data.get("combined") is not None:
                kwargs["combined"] = PerturbationResult.from_dict(data["combined"])
            return cls(**kwargs)
        except (KeyError, TypeError) as error:
            raise ValueError(f"LSAReport: malformed report ({type(error).__name__}: {error})") from None

    def to_json(self, path: Optional[PathLike] = None, indent: int = 2) -> str:
        """The report as JSON text; with a path, also written there atomically."""
        # allow_nan=False: a NaN would make the file unreadable by strict JSON parsers.
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_json(cls, source: Union[PathLike, str, dict]) -> "LSAReport":
        """From a path, JSON text, or an already-parsed dict."""
        if isinstance(source, dict):
            return cls.from_dict(source)
        if isinstance(source, str) and source.lstrip().startswith("{"):
            return cls.from_dict(json.loads(source))
        with open(source) as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as error:
                raise ValueError(f"{os.fspath(source)}: not valid JSON ({error})") from None
        return cls.from_dict(data)

    # ------------------------------------------------------------------ markdown

    def to_markdown(self, digits: int = 4, details: bool = True) -> str:
        """Accuracies, the mean CM per layer for every perturbation (the paper's
        figures in numbers), mu, sigma, the MVL lists; with details, also the eta sweep
        and per perturbation the mean/std/min/max of every layer."""
        results = self.perturbations + ([self.combined] if self.combined is not None else [])
        fmt = lambda v: f"{v:.{digits}f}"  # noqa: E731
        about = [f"model {self.model_name or self.model_class or '?'}"]
        if self.dataset:
            about.append(f"dataset {self.dataset}")
        about += [f"{self.num_samples} samples", f"probes: {self.select} ({len(self.layer_names)} layers)", f"eta = {self.eta:g}"]
        if self.world_size > 1:
            about.append(f"{self.world_size} ranks")
        lines = ["# Layer Sustainability Analysis", "", " · ".join(about), ""]
        lines += [f"**Warning**: {warning}" for warning in self.warnings] + ([""] if self.warnings else [])

        lines += ["## Accuracy", "", "| perturbation | kind | eps (dataset units) | eps (input units) | accuracy (%) |", "|---|---|---:|---:|---:|"]
        lines.append(f"| clean | - | - | - | {self.clean_accuracy:.2f} |")
        for p in results:
            accuracy = "-" if p.accuracy is None else f"{p.accuracy:.2f}"
            lines.append(f"| {p.name} | {p.kind} | {_opt(p.eps_dataset)} | {_opt(p.eps_input)} | {accuracy} |")

        lines += ["", "## Comparison measure per layer (mean CM over samples)", ""]
        lines.append("| layer | name | " + " | ".join(p.name for p in results) + " |")
        lines.append("|---|---|" + "---:|" * len(results))
        for l, name in enumerate(self.layer_names):
            cells = [fmt(p.layer_mean[l]) + (" **MVL**" if l in p.mvl else "") for p in results]
            lines.append(f"| L{l} | {name} | " + " | ".join(cells) + " |")
        lines.append("| mu | | " + " | ".join(fmt(p.mu) for p in results) + " |")
        lines.append("| sigma | | " + " | ".join(fmt(p.sigma) for p in results) + " |")
        lines.append(f"| MVL (eta={self.eta:g}) | | " + " | ".join(_layers(p.mvl) for p in results) + " |")

        lines += ["", f"## Most vulnerable layers (eta = {self.eta:g})", ""]
        for p in results:
            named = ", ".join(f"L{l} ({self.layer_names[l]})" for l in p.mvl) or "none"
            lines.append(f"- {p.name}: {named}")
        if self.combined is not None:
            lines.append(f"- ({self.combined.name}: Algorithm 1 on the CM of {', '.join(self.combined.members)} pooled)")

        if not details:
            return "\n".join(lines)
        lines += ["", "## MVL for each eta", "", "| eta | " + " | ".join(p.name for p in results) + " |", "|---:|" + "---|" * len(results)]
        for eta in self.eta_sweep:
            lines.append(f"| {eta:g} | " + " | ".join(_layers(p.eta_sweep.get(eta, p.mvl_at(eta))) for p in results) + " |")

        lines += ["", "## Per-layer statistics of CM", ""]
        for p in results:
            what = "CM values per layer" if p.kind == "combined" else "samples"
            lines += [f"### {p.name} ({p.count} {what})", "", "| layer | name | mean | std | min | max |", "|---|---|---:|---:|---:|---:|"]
            for l, name in enumerate(self.layer_names):
                values = (p.layer_mean[l], p.layer_std[l], p.layer_min[l], p.layer_max[l])
                lines.append(f"| L{l} | {name} | " + " | ".join(fmt(v) for v in values) + " |")
            lines.append("")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()

    # ------------------------------------------------------------------ figure

    def plot(self, path: PathLike, title: Optional[str] = None, dpi: int = 120) -> str:
        """One figure: mean CM per layer for each perturbation (adversarial solid,
        noise dashed; each its own marker, drawn a little apart so that equal curves
        stay visible), each perturbation's MVL layers ringed, the pooled adversarial MVL
        shaded; written atomically to path (format from its suffix, PNG by default).
        Returns the path."""
        figure = new_figure((min(24.0, max(6.0, 0.6 * len(self.layer_names) + 3.0)) + 4.5, 4.5), "LSAReport.plot")
        axes = figure.add_subplot(1, 1, 1)
        xs = list(range(len(self.layer_names)))
        units = self.eps_units or f"{self.dataset} units"
        ringed = False
        count = len(self.perturbations)
        for i, p in enumerate(self.perturbations):
            adversarial = p.kind != "noise"
            label = f"{p.name} ({p.kind})"
            if p.eps_dataset is not None and p.eps_input is not None and p.eps_dataset != p.eps_input:
                label = f"{p.name} ({p.kind}; eps {p.eps_dataset:g} in {units})"
            shift = 0.06 * (i - (count - 1) / 2) if count > 1 else 0.0  # curves that coincide stay apart
            shifted = [x + shift for x in xs]
            line = axes.plot(shifted, p.layer_mean, marker=_MARKERS[i % len(_MARKERS)],
                             linestyle="-" if adversarial else "--", linewidth=2.0 if adversarial else 1.5,
                             markersize=7, alpha=0.9, label=label)[0]
            if p.mvl:
                axes.scatter([shifted[l] for l in p.mvl], [p.layer_mean[l] for l in p.mvl], s=220, facecolors="none",
                             edgecolors=line.get_color(), linewidths=2.0, zorder=3)
                ringed = True
        if ringed:  # one neutral legend entry for the rings of every colour
            axes.scatter([], [], s=220, facecolors="none", edgecolors="0.3", linewidths=2.0,
                         label=f"ring: in that perturbation's MVL (eta={self.eta:g})")
        if self.combined is not None and self.combined.mvl:
            for i, l in enumerate(self.combined.mvl):
                axes.axvspan(l - 0.3, l + 0.3, color="tab:red", alpha=0.07, linewidth=0,
                             label=None if i else f"band: MVL of the adversarial CM pooled (eta={self.eta:g})")
        axes.set_xticks(xs)
        axes.set_xticklabels([f"L{l}\n{name}" for l, name in enumerate(self.layer_names)], fontsize=9)
        axes.set_xlabel({"hidden": "learnable layer", "learnable": "learnable layer",
                         "activations": "hidden layer (activation output)"}.get(self.select, "probe point"))
        axes.set_ylabel("mean CM = ||phi(x) - phi(x')|| / ||phi(x)||")
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        default = f"LSA: model {self.model_name or self.model_class or '?'}"
        if self.dataset:
            default += f" on {self.dataset}"
        if self.combined is not None:
            pooled = " + ".join(self.combined.members) or "the adversarial perturbations"
            found = f"{_layers(self.combined.mvl)} (shaded)" if self.combined.mvl else "none"
            default += (f"\nMVL of the pooled adversarial CM ({pooled}), eta={self.eta:g}: {found}"
                        + ("; rings: each perturbation's own MVL" if ringed else ""))
        axes.set_title(title or default, fontsize=10)
        # Outside the axes: the curves of a deep model fill the whole plot area.
        axes.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        figure.tight_layout()

        return save_figure(figure, path, dpi)


# ---------------------------------------------------------------------------- figures


def new_figure(size, who: str):
    """A matplotlib Figure on an Agg canvas: no pyplot, so no GUI backend and no
    global state. A clear ImportError when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            f"{who} needs matplotlib, which is not installed: pip install matplotlib "
            "(or pip install lsa_fast[plot])"
        ) from None
    figure = Figure(figsize=size)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path: PathLike, dpi: int = 120) -> str:
    """Atomic write of a figure (format from the suffix, PNG by default)."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    buffer = io.BytesIO()
    figure.savefig(buffer, format=suffix, dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_decision_boundaries(models, x, y, path: PathLike, resolution: int = 200, dpi: int = 120,
                             notes: Optional[Dict[str, str]] = None, unit_map=None,
                             axis_names: Sequence[str] = ("x1", "x2")) -> str:
    """The paper's Fig. 7: the decision regions of 2-d binary models (one logit, class
    = logit > 0) with the points, one panel per model. models: a dict name -> model;
    x: inputs in [0, 1]^2 (what the models take), y: labels 0/1. notes: name -> a line
    under the panel's title (e.g. accuracies). unit_map: (low, scale) to draw points and
    axes in the dataset's own coordinates low + scale * x (moons), else input units.
    Returns the path."""
    import torch

    from .devices import kept_modes, model_device

    models = dict(models)
    notes = dict(notes or {})
    figure = new_figure((4.4 * len(models), 5.6), "plot_decision_boundaries")  # a clear error without matplotlib
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    x, y = x.detach().cpu().float(), y.detach().cpu()
    low = (x.min() - 0.05).clamp(min=0).item()  # the points' square, inside [0, 1]
    high = (x.max() + 0.05).clamp(max=1).item()
    ticks = torch.linspace(low, high, resolution)
    grid_y, grid_x = torch.meshgrid(ticks, ticks, indexing="ij")
    points = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)
    if unit_map is not None:  # drawn in the dataset's coordinates; the models still see [0, 1]^2
        offset, scale = torch.tensor(unit_map[0], dtype=torch.float32), float(unit_map[1])
        shown = x * scale + offset
        ticks_x, ticks_y = ticks * scale + offset[0], ticks * scale + offset[1]
    else:
        shown, ticks_x, ticks_y = x, ticks, ticks
    region_colours = ["#c6dbef", "#fdd0a2"]
    point_colours = ["#2166ac", "#b2182b"]
    for i, (name, model) in enumerate(models.items()):
        axes = figure.add_subplot(1, len(models), i + 1)
        with kept_modes(model, "eval"), torch.no_grad():
            logits = model(points.to(model_device(model))).reshape(-1).float().cpu()
        axes.contourf(ticks_x, ticks_y, (logits > 0).float().reshape(resolution, resolution), levels=[-0.5, 0.5, 1.5],
                      colors=region_colours, alpha=0.8)
        axes.contour(ticks_x, ticks_y, logits.reshape(resolution, resolution), levels=[0.0], colors="k", linewidths=1.0)
        for label in (0, 1):
            mask = y == label
            axes.scatter(shown[mask, 0], shown[mask, 1], color=point_colours[label], s=5, linewidths=0)
        axes.set_title(name + (f"\n{notes[name]}" if name in notes else ""), fontsize=10)
        axes.set_xlim(float(ticks_x[0]), float(ticks_x[-1]))
        axes.set_ylim(float(ticks_y[0]), float(ticks_y[-1]))
        axes.set_aspect("equal")
        axes.tick_params(labelsize=9)
        axes.set_xlabel(axis_names[0], fontsize=10)
        if i == 0:
            axes.set_ylabel(axis_names[1], fontsize=10)
    handles = [
        Line2D([], [], linestyle="", marker="o", color=point_colours[0], label="test point, class 0"),
        Line2D([], [], linestyle="", marker="o", color=point_colours[1], label="test point, class 1"),
        Patch(color=region_colours[0], label="predicted class 0"),
        Patch(color=region_colours[1], label="predicted class 1"),
        Line2D([], [], color="k", linewidth=1.0, label="decision boundary (logit = 0)"),
    ]
    # Room above the panels for titles of up to three lines, and below the x labels for the
    # legend (tight_layout misplaces titles of equal-aspect panels).
    lines = 1 + max((notes.get(name, "").count("\n") + 1 if name in notes else 0) for name in models)
    figure.subplots_adjust(left=0.07 if len(models) > 1 else 0.15, right=0.98, bottom=0.2,
                           top=1.0 - (0.06 + 0.045 * lines), wspace=0.25)
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 2 + len(models)), fontsize=9,
                  frameon=False, bbox_to_anchor=(0.5, 0.0))
    return save_figure(figure, path, dpi)


# ---------------------------------------------------------------------------- files


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write to a temporary file beside path, fsync, then os.replace over path."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------- helpers


_MARKERS = ("o", "^", "s", "D", "v", "P", "X", "<", ">", "h")


def _layers(mvl: Sequence[int]) -> str:
    return "[" + ", ".join(f"L{l}" for l in mvl) + "]"


def _opt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:g}"
