"""`lsa-fast demo --quick` end to end through the CLI: the report directory it writes
is valid, and its table's R&G score is the sum of its cells."""
import json
import re

import pytest
import torch

from lsa_fast.cli import main
from lsa_fast.evaluation import PAPER_EPS_GRIDS

torch.set_num_threads(1)  # a shared 2-core machine: keep each test on one core

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--quick", "--out", str(out), "--no-progress"])
    return code, out


def test_demo_quick_writes_valid_report(demo, capsys):
    code, out = demo
    assert code == 0
    with open(out / "report.json") as handle:
        summary = json.load(handle)
    for name in ("lsa.png", "decision_boundaries.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC), f"{name} is not a PNG"
        assert len(data) > 1000
    markdown = (out / "report.md").read_text()
    assert "R&G" in markdown and "Most vulnerable layers" in markdown
    assert summary["mvl"] and all(isinstance(l, int) for l in summary["mvl"])
    rows = summary["evaluation"]["rows"]
    assert list(rows)[:2] == ["Normal", "AT-PGD"] and list(rows)[2].startswith("AT-PGD-LR-L")
    assert summary["evaluation"]["eps_grid"] == list(PAPER_EPS_GRIDS["moons"])


def test_demo_rg_is_the_sum_of_the_cells(demo):
    _, out = demo
    summary = json.loads((out / "report.json").read_text())
    for name, accuracies in summary["evaluation"]["rows"].items():
        assert len(accuracies) == len(PAPER_EPS_GRIDS["moons"])
        assert all(0.0 <= a <= 100.0 for a in accuracies)
        assert summary["rg_scores"][name] == pytest.approx(sum(accuracies), abs=1e-9)
    # The markdown table says the same (2 decimals per cell).
    table = _markdown_rows((out / "report.md").read_text(), list(summary["evaluation"]["rows"]))
    assert set(table) == set(summary["evaluation"]["rows"])
    for name, values in table.items():
        *cells, rg = values
        assert rg == pytest.approx(sum(cells), abs=0.01 * len(cells))
        assert rg == pytest.approx(summary["rg_scores"][name], abs=0.005)


def _markdown_rows(markdown, names):
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] in names:
            rows[cells[0]] = [float(re.match(r"-?[\d.]+", c).group()) for c in cells[1:]]
    return rows
