"""What a reproduction does: ReproduceSettings (shared by every row of the table: no
per-row tuning), the rows it trains (Variant, variants: the paper's rows, the extra rows
beside them (MNIST: the PGD base), plus, on Moons, the sweep rows) and `--set key=value`
overrides."""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Dict, List, Optional, Sequence, Tuple

from ..checks import check_int, check_number
from ..paper import PaperTable, paper_table, parse_training
from .records import RowTraining
from .robustness import check_autoattack_settings
from ..train_config import LR_GRAD_MODES, PROBE_PRESETS

__all__ = ["EVAL_ATTACKS", "ReproduceSettings", "Variant", "variants", "apply_overrides"]


# The attacks every run is evaluated under, each over the paper's eps grid.
EVAL_ATTACKS = ("fgsm", "pgd")


@dataclasses.dataclass
class ReproduceSettings:
    """Everything a reproduction does, shared by every row of the table. eps values
    (train_eps, cm_eps) are in the dataset's units (standardized moons: z units; else
    moons coordinates, [0, 1] pixels); n_train / n_test: Moons points drawn, or the first
    N images (None: all). attack_steps: PGD, APGD and TRADES steps in training and for
    the PGD of the CM curves; eval_pgd_steps: the PGD of the evaluation grid. probes:
    what LR-Lk counts; lr_grad: the regulariser's gradient paths of the table's rows.
    sweep_*: the extra LR rows (Moons). cm_samples: test samples behind the CM curves.
    confidence: of the paired t intervals. model_kwargs: per model name, options beyond
    the model's defaults (lsa_fast.models.model_options). smoke: a --quick run (its
    numbers mean nothing; the report says so in its title)."""

    dataset: str = "moons"
    seeds: int = 10  # paired intervals over 10 seeds: t(0.975, 9) = 2.26
    n_train: Optional[int] = 2000
    n_test: Optional[int] = 10000
    noise: float = 0.2  # Moons only
    standardize: bool = True  # Moons only: z-scored, the paper's units
    batch_size: int = 128
    epochs: int = 30
    optimizer: str = "adam"
    lr: float = 1e-2
    schedule: str = "cosine"
    weight_decay: Optional[float] = None  # None: the trainer's default for the optimiser
    train_eps: float = 0.3
    attack_steps: int = 10
    eps_warmup_epochs: int = 0  # TrainConfig.eps_warmup_epochs of the adversarial rows (the eps ramp; 0: none, the paper's)
    trades_beta: float = 6.0
    gamma: float = 1.0
    lr_grad: str = "both"
    probes: str = "activations"
    amp: str = "none"
    compile: str = "none"  # TrainConfig.compile of every training run ("auto": compiled, CUDA graphs on GPU)
    eval_pgd_steps: int = 20
    eta: float = 0.5  # Algorithm 1's threshold, for the MVL of each model reported beside
    cm_eps: float = 0.3
    cm_samples: int = 1000
    eval_batch_size: int = 1000
    sweep_bases: Tuple[str, ...] = ("fgsm", "pgd")
    sweep_layer: int = 2
    sweep_gammas: Tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)
    sweep_lr_grads: Tuple[str, ...] = LR_GRAD_MODES
    confidence: float = 0.95
    model_kwargs: Dict[str, Dict] = dataclasses.field(default_factory=dict)
    extra_rows: Tuple[str, ...] = ()  # training names beside the paper's table (no paper numbers), e.g. AT-PGD
    val_size: int = 0  # training samples held out; > 0: the best robust epoch's weights are evaluated too
    autoattack: str = "standard"  # the AutoAttack column: standard, apgd (APGD-CE + APGD-T only) or none
    aa_samples: int = 1000  # the first N test samples under AutoAttack
    aa_steps: int = 100  # APGD steps of autoattack="apgd" (and of the fallback)
    weights: str = "both"  # evaluated: final, best (the best robust validation epoch's) or both (needs val_size)
    smoke: bool = False

    @classmethod
    def defaults(cls, dataset: str, quick: bool = False) -> "ReproduceSettings":
        """The settings of `dataset`; quick: tiny sizes for smoke tests (numbers meaningless)."""
        table = paper_table(dataset)
        if table.dataset == "moons":
            settings = cls()
            if quick:
                settings = dataclasses.replace(settings, seeds=2, n_train=300, n_test=300, batch_size=64, epochs=4,
                                               attack_steps=3, eval_pgd_steps=3, cm_samples=300, eval_batch_size=300,
                                               sweep_bases=("fgsm",), sweep_gammas=(1.0, 3.0), autoattack="apgd",
                                               aa_samples=100, aa_steps=3, smoke=True)
            return settings
        if table.dataset == "mnist":
            settings = cls(dataset="mnist", seeds=3, n_train=None, n_test=None, standardize=False, batch_size=128,
                           epochs=10, optimizer="adam", lr=1e-3, schedule="constant", train_eps=0.3, attack_steps=10,
                           eta=1.0, cm_eps=0.3, cm_samples=1000, eval_batch_size=500, sweep_bases=(),
                           extra_rows=("AT-PGD", "AT-PGD-LR-L0"), val_size=5000)
            if quick:
                settings = dataclasses.replace(settings, seeds=2, n_train=160, n_test=64, batch_size=64, epochs=1,
                                               attack_steps=2, eval_pgd_steps=2, cm_samples=32, eval_batch_size=64,
                                               val_size=32, autoattack="apgd", aa_samples=32, aa_steps=2, smoke=True)
            return settings
        settings = cls(dataset="cifar10", seeds=1, n_train=None, n_test=None, standardize=False, batch_size=128,
                       epochs=30, optimizer="sgd", lr=0.1, schedule="piecewise", train_eps=8 / 255, attack_steps=10,
                       eta=1.0, cm_eps=8 / 255, cm_samples=1000, eval_batch_size=256, sweep_bases=(),
                       model_kwargs={"D": {"depth": 34, "widen_factor": 10}})
        if quick:
            settings = dataclasses.replace(settings, n_train=128, n_test=64, batch_size=64, epochs=1, attack_steps=2,
                                           eval_pgd_steps=2, cm_samples=32, eval_batch_size=64,
                                           model_kwargs={"D": {"depth": 10, "widen_factor": 1}}, autoattack="apgd",
                                           aa_samples=32, aa_steps=2, smoke=True)
        return settings

    def __post_init__(self):
        self.dataset = paper_table(self.dataset).dataset
        for name in ("seeds", "cm_samples", "eval_batch_size", "batch_size", "epochs", "attack_steps", "eval_pgd_steps"):
            check_int("ReproduceSettings", name, getattr(self, name), 1)
        for name in ("train_eps", "cm_eps", "gamma", "trades_beta", "noise"):
            check_number("ReproduceSettings", name, getattr(self, name), 0)
        if self.standardize and self.dataset != "moons":
            raise ValueError(f"ReproduceSettings: standardize applies to moons only, not {self.dataset}")
        if self.lr_grad not in LR_GRAD_MODES:
            raise ValueError(f"ReproduceSettings: lr_grad must be one of {', '.join(LR_GRAD_MODES)}, got {self.lr_grad!r}")
        if self.probes not in PROBE_PRESETS:
            raise ValueError(f"ReproduceSettings: probes must be one of {', '.join(PROBE_PRESETS)}, got {self.probes!r}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"ReproduceSettings: confidence must lie in (0, 1), got {self.confidence!r}")
        self.sweep_bases = tuple(str(b) for b in self.sweep_bases)
        self.sweep_gammas = tuple(float(g) for g in self.sweep_gammas)
        self.sweep_lr_grads = tuple(str(m) for m in self.sweep_lr_grads)
        bad = [m for m in self.sweep_lr_grads if m not in LR_GRAD_MODES]
        if bad:
            raise ValueError(f"ReproduceSettings: sweep_lr_grads holds {bad[0]!r}; valid: {', '.join(LR_GRAD_MODES)}")
        if any(not (math.isfinite(g) and g >= 0) for g in self.sweep_gammas):
            raise ValueError(f"ReproduceSettings: sweep_gammas must be finite numbers >= 0, got {self.sweep_gammas}")
        self.extra_rows = tuple(str(name) for name in self.extra_rows)
        for name in self.extra_rows:
            parse_training(name)  # a typo fails here
        check_autoattack_settings(self)
        if self.n_train is not None and self.val_size >= self.n_train:
            raise ValueError(f"ReproduceSettings: val_size {self.val_size} leaves nothing to train on (n_train "
                             f"{self.n_train})")
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"ReproduceSettings: model_kwargs must be a dict model -> kwargs, got {self.model_kwargs!r}")

    @property
    def moons_units(self) -> str:
        return "standardized" if self.standardize else "raw"

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Variant(RowTraining):
    """One row of the reproduction (named `name`), what it trains: a paper row
    (paper_row: its name in the paper's table) at the settings' gamma and lr_grad, or a
    sweep row (paper_row None) at its own. base_row: the row it is compared with (its
    base's), None for Normal and bases."""

    name: str
    paper_row: Optional[str]
    base_row: Optional[str]
    extra: bool = False  # a row beside the paper's table (settings.extra_rows): reported like a table row

    @property
    def sweep(self) -> bool:
        return self.paper_row is None and not self.extra


def variants(table: PaperTable, settings: ReproduceSettings) -> List[Variant]:
    """The rows a reproduction trains: the paper's table, then the sweep (in table order,
    sweep rows after the table; a sweep point equal to a table row is that row)."""
    base_rows = {(row.model, row.base): row.name for row in table.rows if row.base != "none" and row.lr_layer is None}
    rows = []
    for row in table.rows:
        lr = row.lr_layer is not None
        rows.append(Variant(name=row.name, model=row.model, training=row.training, base=row.base,
                            lr_layer=row.lr_layer, gamma=settings.gamma if lr else None,
                            lr_grad=settings.lr_grad if lr else None, paper_row=row.name,
                            base_row=base_rows.get((row.model, row.base)) if lr else None))
    names = {row.name for row in table.rows}
    model = table.models[0]
    for training in settings.extra_rows:  # beside the table: its base row first, then its LR rows
        base, layer = parse_training(training)
        if training in names:
            continue
        names.add(training)
        if layer is None:
            base_rows.setdefault((model, base), training)
        elif (model, base) not in base_rows:
            raise ValueError(f"ReproduceSettings: extra row {training!r} needs its base row AT-{base.upper()} "
                             f"before it (in the table or in extra_rows)")
        lr = layer is not None
        rows.append(Variant(name=training, model=model, training=training, base=base, lr_layer=layer,
                            gamma=settings.gamma if lr else None, lr_grad=settings.lr_grad if lr else None,
                            paper_row=None, base_row=base_rows[(model, base)] if lr else None, extra=True))
    for base in settings.sweep_bases:
        matches = [row for row in table.rows if row.base == base and row.lr_layer == settings.sweep_layer]
        if not matches:
            raise ValueError(f"ReproduceSettings: the sweep needs an LR-L{settings.sweep_layer} row of base {base!r} in "
                             f"{table.source}; there is none")
        row = matches[0]
        for gamma in settings.sweep_gammas:
            for mode in settings.sweep_lr_grads:
                if gamma == settings.gamma and mode == settings.lr_grad:
                    continue  # the table's own row
                name = f"{row.name} (gamma {gamma:g}, {mode})"
                if name in names:
                    continue
                names.add(name)
                rows.append(Variant(name=name, model=row.model, training=row.training, base=row.base,
                                    lr_layer=row.lr_layer, gamma=gamma, lr_grad=mode, paper_row=None,
                                    base_row=base_rows[(row.model, row.base)]))
    return rows


def apply_overrides(settings: ReproduceSettings, items: Sequence[str]) -> ReproduceSettings:
    """`KEY=VALUE` strings (the CLI's --set) -> a new settings object; values are read
    by the field's type (int, float, str, bool, None as 'none', dicts as JSON, tuples as
    comma-separated items, '' for none)."""
    fields = {field.name: field for field in dataclasses.fields(ReproduceSettings)}
    hints = typing.get_type_hints(ReproduceSettings)
    changes = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(fields))}")
        if key in ("dataset", "smoke"):
            raise ValueError(f"--set {key}=...: the command sets it (reproduce moons|mnist|cifar10, --quick)")
        changes[key] = _parse_value(key, text.strip(), hints[key])
    return dataclasses.replace(settings, **changes)


def _parse_value(key: str, text: str, hint):
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    if optional:
        hint = next(k for k in typing.get_args(hint) if k is not type(None))
    kind = typing.get_origin(hint) or hint
    if optional and text.lower() in ("none", "null", ""):
        return None
    try:
        if kind is bool:
            if text.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError("expected true or false")
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
        if kind is tuple:
            item = typing.get_args(hint)[0]
            parts = [part.strip() for part in text.split(",") if part.strip()]
            return tuple(float(part) if item is float else part for part in parts)
    except ValueError as error:
        raise ValueError(f"--set {key}={text}: not a valid {getattr(kind, '__name__', kind)} ({error})") from None
    return text
