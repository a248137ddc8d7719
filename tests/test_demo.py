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


def test_demo_uses_the_authors_definitions(demo):
    """Standardized moons (eps in z units), the activation outputs as probes (LSA and
    the regulariser alike), and a speckle strength taken as it is (relative: x (1 + n))."""
    from lsa_fast.demo import DemoSettings

    _, out = demo
    summary = json.loads((out / "report.json").read_text())
    settings = DemoSettings.quick()
    assert summary["settings"]["standardize"] is True
    assert summary["layer_names"] == ["act1", "act2", "act3"]
    results = {p["name"].split(":")[0]: p for p in summary["lsa"]["perturbations"]}
    assert results["speckle"]["eps_input"] == pytest.approx(settings.noise_std)  # not divided by 5 (or 10)
    assert results["fgsm"]["eps_input"] == pytest.approx(settings.lsa_eps / 10)  # z units -> [0, 1] inputs
    config = json.loads((out / "at-pgd-lr" / "config.json").read_text())
    assert config["probes"] == "activations" and config["lr_layers"] == summary["mvl"]
    assert config["data_options"]["standardize"] and config["model_kwargs"] == {"normalize": "moons-standardized"}
