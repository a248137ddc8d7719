"""`lsa-fast reproduce`: the paper's tables as data, `reproduce moons --quick` end to end
(17 rows beside the paper's numbers, valid files, R&G = sum of cells), the verdicts on
the paper's claims from known numbers, and the MNIST / CIFAR-10 paths (missing data
fails clearly; a tiny synthetic MNIST runs end to end)."""
import json
import re

import numpy as np
import pytest
import torch

from lsa_fast.cli import main
from lsa_fast.evaluation import PAPER_EPS_GRIDS
from lsa_fast.paper import PAPER_TABLES, TABLE_2, TABLE_3, paper_table, parse_training
from lsa_fast.reproduce import ReproduceSettings, apply_overrides, summarise, to_markdown

torch.set_num_threads(1)  # a shared 2-core machine: keep each test on one core

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CITATION = "Khalooei et al., arXiv:2202.02626, Table 2"


# ---------------------------------------------------------------- the paper's tables


@pytest.mark.parametrize("dataset", list(PAPER_TABLES))
def test_paper_tables_are_consistent(dataset):
    table = paper_table(dataset)
    assert table.eps_grid == PAPER_EPS_GRIDS[dataset]
    assert len(set(table.names)) == len(table.rows)
    for row in table.rows:
        # Every printed R&G score is the sum of its row: a check on the transcription.
        assert sum(row.accuracies) == pytest.approx(row.rg, abs=0.006), row.name


def test_table_2_has_the_17_rows():
    expected = ["Normal"] + [f"AT-{b}" for b in ["FGSM", "PGD", "TRADE", "FAST"]]
    expected += [f"AT-{b}-LR-L{k}" for b in ["FGSM", "PGD", "FAST", "TRADE"] for k in range(3)]
    assert list(TABLE_2.names) == expected and len(expected) == 17
    assert {row.base for row in TABLE_2.rows} == {"none", "fgsm", "pgd", "trades", "fast"}
    assert TABLE_2.row("Normal").rg == 466.17
    assert TABLE_2.source == CITATION


def test_parse_training():
    assert parse_training("Normal") == ("none", None)
    assert parse_training("AT-PGD") == ("pgd", None)
    assert parse_training("AT-TRADE-LR-L2") == ("trades", 2)
    assert parse_training("AT-FAST-LR-L0") == ("fast", 0)
    assert parse_training("AT-APGD-LR-L1") == ("apgd", 1)
    with pytest.raises(ValueError, match="AT-XYZ"):
        parse_training("AT-XYZ")
    with pytest.raises(ValueError, match="no table"):
        paper_table("imagenet")


# ---------------------------------------------------------------- reproduce moons --quick


@pytest.fixture(scope="module")
def moons(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce-moons")
    code = main(["reproduce", "moons", "--quick", "--seeds", "1", "--set", "epochs=2", "--out", str(out),
                 "--no-progress"])
    return code, out


def test_reproduce_moons_quick_writes_valid_files(moons):
    code, out = moons
    assert code == 0
    summary = json.loads((out / "report.json").read_text())
    assert summary["format"] == "lsa_fast.reproduce/1"
    assert summary["paper_source"] == CITATION
    assert summary["seeds"] == [0]
    assert summary["settings"]["epochs"] == 2 and summary["settings"]["n_train"] == 300
    assert list(summary["rows"]) == list(TABLE_2.names)
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [run["row"] for run in runs] == list(TABLE_2.names)
    for name in ("rg_scores.png", "cm_layers.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
    assert summary["layer_names"]["A"] == ["fc1", "fc2", "fc3"]
    for row in summary["rows"].values():
        assert len(row["cm"]["fgsm"]["mean"]) == 3 and len(row["cm"]["pgd"]["mean"]) == 3


def test_reproduce_moons_rg_is_the_sum_of_the_cells(moons):
    _, out = moons
    summary = json.loads((out / "report.json").read_text())
    for name, row in summary["rows"].items():
        for accuracies, rg in zip(row["accuracies"], row["rg"]):
            assert len(accuracies) == 6 and rg == pytest.approx(sum(accuracies), abs=1e-9)
        assert row["rg_mean"] == pytest.approx(sum(row["mean"]), abs=1e-9)
        assert summary["per_seed_tables"]["0"]["rg"][name] == pytest.approx(row["rg"][0], abs=1e-9)
    table = _main_table((out / "report.md").read_text())
    assert list(table) == list(TABLE_2.names)
    for name, cells in table.items():
        ours = [mean for mean, _ in cells[:-1]]
        rg_mean, _ = cells[-1]
        assert rg_mean == pytest.approx(sum(ours), abs=0.01 * len(ours))
        assert rg_mean == pytest.approx(summary["rows"][name]["rg_mean"], abs=0.005)


def test_reproduce_moons_puts_the_papers_numbers_beside(moons):
    _, out = moons
    markdown = (out / "report.md").read_text()
    assert CITATION in markdown
    table = _main_table(markdown)
    for row in TABLE_2.rows:
        papers = [paper for _, paper in table[row.name]]
        assert papers == pytest.approx(list(row.accuracies) + [row.rg])
    summary = json.loads((out / "report.json").read_text())
    assert summary["rows"]["AT-TRADE-LR-L2"]["paper"] == {"accuracies": list(TABLE_2.row("AT-TRADE-LR-L2").accuracies),
                                                        "rg": 505.83}


def test_reproduce_moons_reports_settings_and_verdicts(moons, capsys):
    _, out = moons
    markdown = (out / "report.md").read_text()
    assert "Settings (one for every row" in markdown and "| train_eps | 0.3 |" in markdown
    claims = json.loads((out / "report.json").read_text())["claims"]
    assert [item["base_row"] for item in claims["best_lr_beats_base"]] == ["AT-FGSM", "AT-PGD", "AT-TRADE", "AT-FAST"]
    # One seed: no spread, so no verdict beyond the sign.
    assert all(item["verdict"].startswith("undecided") for item in claims["lr_vs_base"])
    # The paper's side is computed from its table: LR-L2 is its best variant for every base.
    assert all(item["paper_best_layer"] == 2 for item in claims["best_layer"])
    assert len(claims["lr_vs_base"]) == 12 and len(claims["cm_falls"]) == 24
    assert "Do the paper's claims hold here?" in markdown


def _main_table(markdown):
    """Row name -> [(our mean, paper's value)] for each eps and R&G, from report.md."""
    names = set(TABLE_2.names) | set(TABLE_3.names)
    section = markdown.split("## FGSM accuracy", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] in names:
            parsed = [re.fullmatch(r"(-?[\d.]+)(?: ± [\d.]+)? \((-?[\d.]+)\)", c) for c in cells[1:-1]]
            assert all(parsed), line
            rows[cells[0]] = [(float(m.group(1)), float(m.group(2))) for m in parsed]
    return rows


# ---------------------------------------------------------------- verdicts from known numbers


def _fake_runs(table, rg_by_row, cm_by_row=None):
    """Runs whose accuracies are flat rows summing to the given R&G per seed."""
    runs = []
    width = len(table.eps_grid)
    for name, values in rg_by_row.items():
        row = table.row(name)
        for seed, rg in enumerate(values):
            cm = (cm_by_row or {}).get(name, [0.5, 0.5, 0.5])
            runs.append({"seed": seed, "row": name, "model": row.model, "training": row.training,
                         "accuracies": [rg / width] * width, "rg": rg, "cm": {"fgsm": cm, "pgd": cm},
                         "mvl": [0], "layer_names": ["a", "b", "c"], "clean_norm": [1.0, 1.0, 1.0],
                         "difference_norm": cm, "train_accuracy": 90.0})
    return runs


def test_verdicts_follow_the_seed_spread():
    settings = ReproduceSettings.defaults("mnist", quick=True)
    rg = {"Normal": [250.0, 260.0, 255.0], "AT-APGD": [400.0, 410.0, 405.0], "AT-APGD-LR-L0": [420.0, 425.0, 430.0]}
    summary = summarise(TABLE_3, settings, _fake_runs(TABLE_3, rg, {"AT-APGD-LR-L0": [0.2, 0.5, 0.5]}))
    best = summary["claims"]["best_lr_beats_base"][0]
    assert best["row"] == "AT-APGD-LR-L0"
    assert best["difference"] == pytest.approx(20.0) and best["difference_std"] == pytest.approx(5.0)
    assert best["verdict"] == "yes" and best["stricter"] is True  # 20 > 5 + 5
    assert best["paper_difference"] == pytest.approx(541.73 - 497.99) and best["paper_holds"]
    falls = summary["claims"]["cm_falls"]
    assert {item["attack"] for item in falls} == {"fgsm", "pgd"}
    assert all(item["difference"] == pytest.approx(-0.3) and item["verdict"] == "yes" for item in falls)
    assert summary["rows"]["Normal"]["rg_std"] == pytest.approx(5.0)

    rg["AT-APGD-LR-L0"] = [395.0, 420.0, 410.0]  # differences -5, +10, +5: mean 3.3 < std 7.6
    noisy = summarise(TABLE_3, settings, _fake_runs(TABLE_3, rg))
    assert noisy["claims"]["best_lr_beats_base"][0]["verdict"] == "no: within the seed spread"
    rg["AT-APGD-LR-L0"] = [380.0, 390.0, 384.0]
    worse = summarise(TABLE_3, settings, _fake_runs(TABLE_3, rg))
    assert worse["claims"]["best_lr_beats_base"][0]["verdict"].startswith("no: the opposite")
    markdown = to_markdown(worse)
    assert "Khalooei et al., arXiv:2202.02626, Table 3" in markdown and "AT-APGD-LR-L0" in markdown


def test_best_layer_claim_is_checked_against_the_papers_best():
    settings = ReproduceSettings.defaults("moons", quick=True)
    rg = {name: [400.0, 402.0] for name in TABLE_2.names}
    rg["AT-FGSM-LR-L0"] = [430.0, 431.0]  # L0 best here, L2 best in the paper
    summary = summarise(TABLE_2, settings, _fake_runs(TABLE_2, rg))
    fgsm = next(item for item in summary["claims"]["best_layer"] if item["base"] == "fgsm")
    assert fgsm["paper_best"] == "AT-FGSM-LR-L2" and fgsm["our_best"] == "AT-FGSM-LR-L0" and not fgsm["holds"]
    assert fgsm["margin_over_runner_up"] == pytest.approx(-29.5)


def test_summarise_refuses_missing_runs():
    settings = ReproduceSettings.defaults("mnist", quick=True)
    runs = _fake_runs(TABLE_3, {"Normal": [1.0, 2.0], "AT-APGD": [1.0], "AT-APGD-LR-L0": [1.0, 2.0]})
    with pytest.raises(ValueError, match="AT-APGD"):
        summarise(TABLE_3, settings, runs)


# ---------------------------------------------------------------- settings and CLI errors


def test_apply_overrides_reads_types():
    settings = apply_overrides(ReproduceSettings.defaults("moons"),
                               ["epochs=3", "gamma=0.25", "n_train=none", "optimizer=sgd", 'model_kwargs={"A": {}}'])
    assert (settings.epochs, settings.gamma, settings.n_train, settings.optimizer) == (3, 0.25, None, "sgd")
    assert settings.model_kwargs == {"A": {}}
    with pytest.raises(ValueError, match="bogus"):
        apply_overrides(settings, ["bogus=1"])
    with pytest.raises(ValueError, match="epochs=x"):
        apply_overrides(settings, ["epochs=x"])
    with pytest.raises(ValueError, match="seeds"):
        ReproduceSettings(seeds=0)


def test_cli_rejects_a_bad_setting(tmp_path, capsys):
    assert main(["reproduce", "moons", "--set", "bogus=1", "--out", str(tmp_path / "x")]) == 2
    assert "bogus" in capsys.readouterr().err


@pytest.mark.parametrize("dataset,expected", [("mnist", "train-images-idx3-ubyte"), ("cifar10", "data_batch_1")])
def test_missing_data_directory_fails_clearly(tmp_path, capsys, dataset, expected):
    out = tmp_path / "out"
    assert main(["reproduce", dataset, "--data", "/nonexistent", "--out", str(out), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "/nonexistent" in error and expected in error and "lsa-fast reproduce: error" in error
    assert not out.exists()  # fails before writing anything


# ---------------------------------------------------------------- a tiny synthetic MNIST


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_reproduce_mnist_quick_on_synthetic_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 64), ("t10k", 32)):
        labels = rng.integers(0, 10, n)
        # A bright square whose place depends on the label: something a CNN can learn.
        images = rng.integers(0, 40, (n, 28, 28))
        for i, label in enumerate(labels):
            row, col = divmod(int(label), 5)
            images[i, 4 + 10 * row: 12 + 10 * row, 2 + 5 * col: 6 + 5 * col] = 230
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels)
    out = tmp_path / "out"
    assert main(["reproduce", "mnist", "--quick", "--data", str(tmp_path), "--out", str(out), "--device", "cpu",
                 "--no-progress"]) == 0
    summary = json.loads((out / "report.json").read_text())
    assert summary["paper_source"] == "Khalooei et al., arXiv:2202.02626, Table 3"
    assert list(summary["rows"]) == ["Normal", "AT-APGD", "AT-APGD-LR-L0"]
    assert summary["layer_names"]["B"][0] == "conv1"
    for row in summary["rows"].values():
        assert row["rg_mean"] == pytest.approx(sum(row["mean"]), abs=1e-9)
    table = _main_table((out / "report.md").read_text())
    assert [paper for _, paper in table["AT-APGD-LR-L0"]] == pytest.approx([98.97, 98.11, 97.36, 97.17, 94.6, 55.52,
                                                                           541.73])
    for name in ("rg_scores.png", "cm_layers.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
