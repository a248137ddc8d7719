"""The typed records that pass between the reproduce modules, and their JSON form:
RunRecord (a run: a line of runs.jsonl), PairedDifference (a paired t interval and its
verdict), Statement (a claim of the paper in a sentence, and whether it holds here),
Claims (the verdicts on the paper's claims), RowSummary (a table row's numbers over
the seeds: a ColumnSummary per evaluation column, a CurveSummary per CM attack) and
Report (report.json: the rows' summaries, the settings and the claims).

A record is made from JSON (from_json) where a file is read and turned back into JSON
(to_json) where one is written; in between, the modules pass records. to_json gives the
keys in the order the files have always had them, so runs.jsonl and report.json keep
their exact bytes. Imports nothing of lsa_fast.reproduce: every module may use it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Type, TypeVar

__all__ = ["RowTraining", "RunRecord", "PairedDifference", "Statement", "Claims", "ColumnSummary", "CurveSummary",
           "RowSummary", "Report"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RowTraining:
    """What a row of the reproduction trains: the model, the row's training label (as the
    paper writes it, e.g. AT-FGSM-LR-L2), the base attack ("none" for Normal) and the
    regulariser's layer, gamma and gradient path (None without one). The rows to run
    (settings.Variant) and their summaries (RowSummary) both begin with it."""

    model: str
    training: str
    base: str
    lr_layer: Optional[int]
    gamma: Optional[float]
    lr_grad: Optional[str]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunRecord:
    """One finished run, a table row trained and evaluated at one seed: a line of runs.jsonl.

    accuracies: per column (column_key(attack, weights)), the accuracy (%) at each eps
    of the column's grid; rg: their sum per column. cm: per attack ("fgsm", "pgd"), the
    mean relative error of every probed layer; clean_norm / difference_norm: per layer,
    ||phi_k(x)|| and ||phi_k(x) - phi_k(x_hat)|| under FGSM."""

    seed: int
    row: str
    model: str
    training: str
    gamma: Optional[float] = None
    lr_grad: Optional[str] = None
    accuracies: Dict[str, List[float]]
    rg: Dict[str, float]
    collapsed: bool = False
    cm: Dict[str, List[float]]
    mvl: List[int]
    layer_names: List[str]
    clean_norm: List[float]
    difference_norm: List[float]
    train_accuracy: Optional[float] = None
    best_epoch: Optional[int] = None
    best_val_robust_acc: Optional[float] = None
    val_robust_acc: Optional[List[Optional[float]]] = None
    data_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: Optional[float] = None  # the run's wall time
    paper_rg: Optional[float] = None  # the paper's FGSM R&G of the row, where it has the row

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "RunRecord":
        """A runs.jsonl line's dict; keys it lacks take their defaults."""
        return _from_json(cls, data)

    def to_json(self) -> Dict[str, Any]:
        return _to_json(self)


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """variant[i] - base[i] over the seeds (lsa_fast.reproduce.paired.paired_difference):
    mean, sample std (None for one seed), n, the t interval at `confidence` (low, high,
    half_width; None for one seed), the differences and the verdict ("higher", "lower",
    "no difference detected", "undecided (1 seed)")."""

    mean: float
    std: Optional[float]
    n: int
    confidence: float
    low: Optional[float]
    high: Optional[float]
    half_width: Optional[float]
    differences: List[float]
    verdict: str


@dataclasses.dataclass(frozen=True)
class Statement:
    """One of the paper's claims in a sentence: the paper's support, ours, and whether it
    holds here (per evaluation attack where they disagree)."""

    claim: str
    paper: str
    ours: str
    holds: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Claims:
    """The paper's claims checked on our numbers (lsa_fast.reproduce.claims.paper_claims):
    the rule of the verdicts, the comparisons (dicts whose intervals are
    PairedDifference records, one per evaluation column) and the statements."""

    rule: str
    lr_vs_base: List[Dict[str, Any]]  # every LR row against its base row
    best_lr_beats_base: List[Dict[str, Any]]  # per base and column, its best LR row against it
    best_layer: List[Dict[str, Any]]  # per base, whether the paper's best layer is the best here
    cm_falls: List[Dict[str, Any]]  # per LR row and attack, the CM of its layer against the base's
    cm_parts: List[Dict[str, Any]]  # that layer's clean and change norms, LR row / base
    normal: Optional[Dict[str, Any]]  # our Normal row's R&G against the paper's
    lr_grad_vs_table: List[Dict[str, Any]]  # each gradient path of the sweep against the table's
    statements: List[Statement]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Claims":
        return _from_json(cls, {key: _revive(value) for key, value in data.items()})

    def to_json(self) -> Dict[str, Any]:
        return _to_json(self)


@dataclasses.dataclass(frozen=True)
class ColumnSummary:
    """A row's evaluation column over the seeds: per seed the accuracy (%) at every eps
    of the column's grid, their mean and sample std per eps (std None for one seed),
    the per-seed R&G (the sum over the grid) and its mean and std."""

    accuracies: List[List[float]]
    mean: List[float]
    std: List[Optional[float]]
    rg: List[float]
    rg_mean: float
    rg_std: Optional[float]


@dataclasses.dataclass(frozen=True)
class CurveSummary:
    """A row's CM per layer under one attack: every seed's curve, and the mean and
    sample std per layer."""

    per_seed: List[List[float]]
    mean: List[float]
    std: List[Optional[float]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RowSummary(RowTraining):
    """One row of the table (or of the sweep) over the seeds, in report.json's "rows".

    evaluation: per column, its ColumnSummary; cm: per attack, the CM curves
    (CurveSummary). Per seed: mvl, collapsed,
    clean_norm, difference_norm, train_accuracy, seconds, best_epoch and
    best_val_robust_acc. paper: the paper's accuracies and R&G of the row, None where
    its table has no such row. extra, best_epoch and best_val_robust_acc are left out
    of the JSON when None (reports before them lack them)."""

    base_row: Optional[str]  # the row this LR row is compared with; None for a base row
    sweep: bool
    extra: Optional[bool] = None  # a row beside the paper's table (settings.extra_rows)
    best_epoch: Optional[List[Optional[int]]] = None
    best_val_robust_acc: Optional[List[Optional[float]]] = None
    evaluation: Dict[str, ColumnSummary]
    cm: Dict[str, CurveSummary]
    mvl: List[List[int]]
    collapsed: List[bool]
    clean_norm: List[List[float]]
    difference_norm: List[List[float]]
    train_accuracy: List[Optional[float]]
    seconds: List[Optional[float]]
    paper: Optional[Dict[str, Any]]

    _LEFT_OUT_WHEN_NONE = ("extra", "best_epoch", "best_val_robust_acc")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "RowSummary":
        fields = dict(data)
        fields["evaluation"] = {key: _from_json(ColumnSummary, value) for key, value in data["evaluation"].items()}
        fields["cm"] = {key: _from_json(CurveSummary, value) for key, value in data["cm"].items()}
        return _from_json(cls, fields)

    def to_json(self) -> Dict[str, Any]:
        return _to_json(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Report:
    """report.json. rows: per row name, its numbers over the seeds (per evaluation
    column the per-seed accuracies, their mean and std, the R&G; the CM curves; the
    paper's numbers beside). claims: the verdicts (Claims). The run's
    own fields (device, workers, settings_written_at, seconds) are set once it ends;
    those and eval_grids (which reports before it lack) are left out of the JSON when
    None, as they were."""

    format: str
    dataset: str
    paper_table: Any
    paper_source: str
    smoke: bool
    settings: Dict[str, Any]
    seeds: List[int]
    eval_attacks: Dict[str, str]  # column -> its title
    eps_grid: List[float]
    eval_grids: Optional[Dict[str, List[float]]] = None  # column -> its eps (the paper's grid, or the training eps)
    eps_grid_input_units: List[float]
    train_eps: Dict[str, float]
    units: str
    layer_names: Dict[str, List[str]]
    data: Dict[str, Any]
    rows: Dict[str, RowSummary]
    paper: Dict[str, Any]
    claims: Optional[Claims] = None
    device: Optional[str] = None
    workers: Optional[int] = None
    settings_written_at: Optional[str] = None
    seconds: Optional[float] = None

    _LEFT_OUT_WHEN_NONE = ("eval_grids", "claims", "device", "workers", "settings_written_at", "seconds")

    def grid(self, attack: str) -> List[float]:
        """The eps of a column: eval_grids', else (older reports) the paper's grid."""
        return (self.eval_grids or {}).get(attack, self.eps_grid)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Report":
        """report.json's dict; the claims' intervals and sentences become records."""
        fields = dict(data)
        if isinstance(fields.get("rows"), dict):
            fields["rows"] = {name: RowSummary.from_json(row) for name, row in fields["rows"].items()}
        if fields.get("claims") is not None:
            fields["claims"] = Claims.from_json(fields["claims"])
        return _from_json(cls, fields)

    def to_json(self) -> Dict[str, Any]:
        return _to_json(self)


_Record = TypeVar("_Record")


def _to_json(record) -> Dict[str, Any]:
    """The record's fields in order, as plain JSON values; a field named in the class's
    _LEFT_OUT_WHEN_NONE is left out when None."""
    left_out = getattr(record, "_LEFT_OUT_WHEN_NONE", ())
    return {field.name: _plain(getattr(record, field.name)) for field in dataclasses.fields(record)
            if getattr(record, field.name) is not None or field.name not in left_out}


def _plain(value):
    if dataclasses.is_dataclass(value):
        return _to_json(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _from_json(cls: Type[_Record], data: Mapping[str, Any]) -> _Record:
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}")
    missing = sorted(field.name for field in dataclasses.fields(cls) if field.name not in data
                     and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING)
    if missing:
        raise ValueError(f"{cls.__name__}: missing keys {missing}")
    return cls(**data)


def _revive(value):
    """A part of the claims' JSON with every PairedDifference and Statement as its record
    (recognised by its exact keys, the only dicts with those)."""
    if isinstance(value, list):
        return [_revive(item) for item in value]
    if not isinstance(value, dict):
        return value
    for record in (PairedDifference, Statement):
        if list(value) == [field.name for field in dataclasses.fields(record)]:
            return record(**value)
    return {key: _revive(item) for key, item in value.items()}
