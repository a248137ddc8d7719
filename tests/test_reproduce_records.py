"""The reproduce records (lsa_fast.reproduce.records): report.json and runs.jsonl become
records where they are read and the same bytes where they are written."""
import dataclasses
import json
from pathlib import Path

import pytest

from lsa_fast.paper import TABLE_3
from lsa_fast.reproduce import ReproduceSettings, summarise, to_markdown, variants
from lsa_fast.reproduce.records import (
    Claims,
    ColumnSummary,
    PairedDifference,
    Report,
    RowSummary,
    RunRecord,
    Statement,
)

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@pytest.mark.parametrize("name", ["reproduce-moons", "reproduce-mnist"])
def test_stored_reports_round_trip_byte_for_byte(name):
    text = (RESULTS / name / "report.json").read_text()
    report = Report.from_json(json.loads(text))
    assert isinstance(report.claims, Claims) and isinstance(report.claims.statements[0], Statement)
    assert isinstance(report.claims.lr_vs_base[0]["fgsm"], PairedDifference)
    row = next(iter(report.rows.values()))
    assert isinstance(row, RowSummary) and isinstance(row.evaluation["fgsm"], ColumnSummary)
    assert json.dumps(report.to_json(), indent=2, allow_nan=False) + "\n" == text


def test_stored_mnist_report_renders_to_its_markdown():
    folder = RESULTS / "reproduce-mnist"
    report = Report.from_json(json.loads((folder / "report.json").read_text()))
    assert to_markdown(report) == (folder / "report.md").read_text()


def test_stored_runs_read_as_records():
    lines = (RESULTS / "reproduce-mnist" / "runs.jsonl").read_text().splitlines()
    for line in lines:
        assert json.dumps(RunRecord.from_json(json.loads(line)).to_json()) == line
    # Older runs lack the best-robust fields: they read with their defaults.
    old = json.loads((RESULTS / "reproduce-moons" / "runs.jsonl").read_text().splitlines()[0])
    assert "best_epoch" not in old and RunRecord.from_json(old).best_epoch is None


def test_a_summary_survives_its_json():
    settings = dataclasses.replace(ReproduceSettings.defaults("mnist", quick=True), seeds=3, extra_rows=())
    runs = [RunRecord(seed=seed, row=variant.name, model=variant.model, training=variant.training,
                      accuracies={"fgsm": [80.0 + seed + i] * 6, "pgd": [70.0 + seed * i] * 6},
                      rg={"fgsm": 6 * (80.0 + seed + i), "pgd": 6 * (70.0 + seed * i)},
                      cm={"fgsm": [0.5, 0.4 + 0.1 * i, 0.3], "pgd": [0.5, 0.5, 0.5]}, mvl=[0],
                      layer_names=["a", "b", "c"], clean_norm=[1.0] * 3, difference_norm=[0.5] * 3,
                      train_accuracy=90.0)
            for i, variant in enumerate(variants(TABLE_3, settings)) for seed in range(3)]
    report = summarise(TABLE_3, settings, runs)
    again = Report.from_json(json.loads(json.dumps(report.to_json())))
    assert again == report
    assert to_markdown(again) == to_markdown(report)


def test_unknown_or_missing_keys_are_one_line_errors():
    line = json.loads((RESULTS / "reproduce-mnist" / "runs.jsonl").read_text().splitlines()[0])
    with pytest.raises(ValueError, match=r"RunRecord: unknown keys \['colour'\]"):
        RunRecord.from_json({**line, "colour": "red"})
    del line["row"]
    with pytest.raises(ValueError, match=r"RunRecord: missing keys \['row'\]"):
        RunRecord.from_json(line)
