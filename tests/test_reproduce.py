"""`lsa-fast reproduce`: the paper's tables as data, `reproduce moons --quick` end to end
(17 rows and the sweep beside the paper's numbers, FGSM and PGD grids, valid files,
R&G = sum of cells, settings saved first, a smoke-run title, results independent of the
worker processes), the paired t intervals and verdicts from known numbers, and the
MNIST / CIFAR-10 paths (missing data fails clearly; a tiny synthetic MNIST runs end to
end)."""
import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from lsa_fast.cli import main
from lsa_fast.evaluation import PAPER_EPS_GRIDS
from lsa_fast.paper import PAPER_TABLES, TABLE_2, TABLE_3, TABLE_4, paper_table, parse_training
from lsa_fast.reproduce.paired import paired_difference, t_quantile
from lsa_fast.reproduce import ReproduceSettings, apply_overrides, run_variant, summarise, to_markdown, variants
from lsa_fast.reproduce.records import RunRecord

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
    # Two worker processes (the default on the CPU): the pool's path, whose results must
    # not depend on it (test_results_do_not_depend_on_the_workers).
    code = main(["reproduce", "moons", "--quick", "--seeds", "1", "--set", "epochs=2", "--workers", "2",
                 "--out", str(out), "--no-progress"])
    return code, out


QUICK_SWEEP = [f"AT-FGSM-LR-L2 (gamma {g}, {m})" for g, m in
               [(1, "adversarial"), (1, "numerator"), (3, "both"), (3, "adversarial"), (3, "numerator")]]


def test_reproduce_moons_quick_writes_valid_files(moons):
    code, out = moons
    assert code == 0
    summary = json.loads((out / "report.json").read_text())
    assert summary["format"] == "lsa_fast.reproduce/2"
    assert summary["paper_source"] == CITATION
    assert summary["seeds"] == [0]
    assert summary["settings"]["epochs"] == 2 and summary["settings"]["n_train"] == 300
    assert list(summary["rows"]) == list(TABLE_2.names) + QUICK_SWEEP
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted(run["row"] for run in runs) == sorted(summary["rows"])  # in the order they finished
    for name in ("rg_scores.png", "cm_layers.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
    assert summary["layer_names"]["A"] == ["act1", "act2", "act3"]  # the authors' probe points
    # Model A has one logit: no targeted stage, so the cheap bound of --quick is APGD-CE alone.
    assert summary["eval_attacks"] == {"fgsm": "FGSM", "pgd": "PGD-3",
                                       "autoattack": "APGD-CE (3 steps; not the full AutoAttack)"}
    assert summary["eval_grids"]["autoattack"] == [0.3]  # the training eps, in z units
    for row in summary["rows"].values():
        assert len(row["cm"]["fgsm"]["mean"]) == 3 and len(row["cm"]["pgd"]["mean"]) == 3
    sweep = summary["rows"]["AT-FGSM-LR-L2 (gamma 3, numerator)"]
    assert (sweep["gamma"], sweep["lr_grad"], sweep["base_row"], sweep["sweep"]) == (3.0, "numerator", "AT-FGSM", True)
    # Standardized moons: the record of each seed's data, eps in z units.
    assert summary["data"]["0"]["standardize"]["std"][0] > 0 and summary["data"]["0"]["unit_map"]["scale"] == 10.0
    assert summary["train_eps"] == {"dataset_units": 0.3, "input_units": pytest.approx(0.03)}


def test_reproduce_saves_its_settings_before_the_first_run(moons):
    _, out = moons
    saved = json.loads((out / "settings.json").read_text())
    summary = json.loads((out / "report.json").read_text())
    assert saved["settings"] == summary["settings"] and saved["written_at"] == summary["settings_written_at"]
    assert saved["rows"] == list(summary["rows"])
    assert (out / "settings.json").stat().st_mtime <= (out / "runs.jsonl").stat().st_mtime


def test_quick_report_is_titled_a_smoke_run(moons):
    _, out = moons
    markdown = (out / "report.md").read_text()
    assert markdown.startswith("# SMOKE RUN (--quick")
    summary = json.loads((out / "report.json").read_text())
    assert summary["smoke"] is True and summary["settings"]["smoke"] is True
    full = ReproduceSettings.defaults("moons")
    assert not full.smoke and full.seeds >= 5 and full.n_test == 10000 and full.eval_pgd_steps == 20
    report = to_markdown(summarise(TABLE_2, dataclasses.replace(full, seeds=2), _fake_runs(TABLE_2, full, 400.0)))
    assert report.startswith("# Reproduction of") and "SMOKE" not in report


def test_results_do_not_depend_on_the_workers(moons):
    """A run of the two-process pool equals the same run in this process."""
    _, out = moons
    runs = {run["row"]: run for run in map(json.loads, (out / "runs.jsonl").read_text().splitlines())}
    settings = ReproduceSettings(**{k: tuple(v) if isinstance(v, list) else v
                                    for k, v in json.loads((out / "settings.json").read_text())["settings"].items()})
    row = next(v for v in variants(TABLE_2, settings) if v.name == "AT-FGSM-LR-L2 (gamma 3, numerator)")
    again = run_variant("moons", row, 0, settings)
    assert again.accuracies == runs[row.name]["accuracies"] and again.cm == runs[row.name]["cm"]


def test_reproduce_moons_rg_is_the_sum_of_the_cells(moons):
    _, out = moons
    summary = json.loads((out / "report.json").read_text())
    for name, row in summary["rows"].items():
        for attack, result in row["evaluation"].items():
            for accuracies, rg in zip(result["accuracies"], result["rg"]):
                width = 1 if attack == "autoattack" else 6  # AutoAttack: the training eps alone
                assert len(accuracies) == width and rg == pytest.approx(sum(accuracies), abs=1e-9)
            assert result["rg_mean"] == pytest.approx(sum(result["mean"]), abs=1e-9)
    for attack, heading in (("fgsm", "## FGSM accuracy"), ("pgd", "## PGD-3 accuracy")):
        table = _main_table((out / "report.md").read_text(), heading)
        assert list(table) == list(TABLE_2.names)
        for name, cells in table.items():
            rg_mean = cells[len(TABLE_2.eps_grid)][0]
            ours = [mean for mean, _ in cells[:len(TABLE_2.eps_grid)]]
            assert rg_mean == pytest.approx(sum(ours), abs=0.01 * len(ours))
            assert rg_mean == pytest.approx(summary["rows"][name]["evaluation"][attack]["rg_mean"], abs=0.005)


def test_reproduce_moons_puts_the_papers_numbers_beside(moons):
    _, out = moons
    markdown = (out / "report.md").read_text()
    assert CITATION in markdown
    table = _main_table(markdown, "## FGSM accuracy")
    for row in TABLE_2.rows:
        papers = [paper for _, paper in table[row.name]]
        assert papers == pytest.approx(list(row.accuracies) + [row.rg])
    summary = json.loads((out / "report.json").read_text())
    assert summary["rows"]["AT-TRADE-LR-L2"]["paper"] == {"accuracies": list(TABLE_2.row("AT-TRADE-LR-L2").accuracies),
                                                        "rg": 505.83}
    assert summary["rows"][QUICK_SWEEP[0]]["paper"] is None


def test_reproduce_moons_reports_settings_and_verdicts(moons, capsys):
    _, out = moons
    markdown = (out / "report.md").read_text()
    assert "Settings (one for every row" in markdown and "| train_eps | 0.3 |" in markdown
    assert "Training eps 0.3 (= 0.03 in the models' [0, 1] input units)" in markdown
    claims = json.loads((out / "report.json").read_text())["claims"]
    bases = ["AT-FGSM", "AT-PGD", "AT-FAST", "AT-TRADE"]
    columns = ("fgsm", "pgd", "autoattack")
    assert [item["base_row"] for item in claims["best_lr_beats_base"]] == [b for b in bases for _ in columns]
    # One seed: no interval, so no verdict beyond "undecided".
    assert all(item[a]["verdict"] == "undecided (1 seed)" for item in claims["lr_vs_base"] for a in ("fgsm", "pgd"))
    assert all(item["paper_best_layer"] == 2 for item in claims["best_layer"])
    assert len(claims["lr_vs_base"]) == 12 + len(QUICK_SWEEP) and len(claims["cm_falls"]) == 24
    assert "## What holds" in markdown and "## gamma and gradient paths of LR-L2 (sweep)" in markdown
    assert "| AT-FGSM | 3 | numerator |" in markdown
    # Each gradient path against the table's (both) at the same gamma: 2 gammas x 2 other paths.
    paths = claims["lr_grad_vs_table"]
    assert sorted((item["gamma"], item["lr_grad"]) for item in paths) == [
        (1.0, "adversarial"), (1.0, "numerator"), (3.0, "adversarial"), (3.0, "numerator")]
    assert all(item["against"] == "both" and item["base_row"] == "AT-FGSM" for item in paths)
    assert "## Gradient paths compared: each lr_grad minus lr_grad both" in markdown


def _main_table(markdown, heading):
    """Row name -> [(our mean, paper's value or None)] for each eps and R&G, from report.md."""
    names = set(TABLE_2.names) | set(TABLE_3.names)
    section = markdown.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] in names:
            values = cells[1:-1] if "(" in cells[1] else cells[1:]
            parsed = [re.fullmatch(r"(-?[\d.]+)(?: ± [\d.]+)?(?: \((-?[\d.]+)\))?", c) for c in values]
            assert all(parsed), line
            rows[cells[0]] = [(float(m.group(1)), None if m.group(2) is None else float(m.group(2))) for m in parsed]
    return rows


# ---------------------------------------------------------------- paired differences from known numbers


def test_paired_difference_interval_on_known_numbers():
    # Differences 2, 4, 3, 5, 6: mean 4, std sqrt(2.5); t(0.975, 4) = 2.7764451.
    item = paired_difference([3.0, 5.0, 4.0, 6.0, 7.0], [1.0] * 5)
    assert item.mean == 4.0 and item.std == pytest.approx(2.5 ** 0.5) and item.n == 5
    half = 2.7764451052 * 2.5 ** 0.5 / 5 ** 0.5
    assert item.half_width == pytest.approx(half, rel=1e-9)
    assert (item.low, item.high) == pytest.approx((4 - half, 4 + half), rel=1e-9)
    assert item.verdict == "higher"
    assert paired_difference([1.0, 2.0, 3.0], [3.0, 3.5, 5.0]).verdict == "lower"
    assert paired_difference([1.0, 3.0, 2.0], [2.0, 2.0, 2.0]).verdict == "no difference detected"
    one = paired_difference([5.0], [1.0])
    assert one.verdict == "undecided (1 seed)" and one.low is None
    assert t_quantile(0.975, 1) == pytest.approx(12.7062047, rel=1e-7)
    assert t_quantile(0.975, 9) == pytest.approx(2.2621572, rel=1e-7)
    assert t_quantile(0.025, 9) == pytest.approx(-2.2621572, rel=1e-7)
    with pytest.raises(ValueError, match="seed by seed"):
        paired_difference([1.0, 2.0], [1.0])


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 4, 9, 29, 200):
        for p in (0.6, 0.9, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


def _fake_runs(table, settings, rg_default, rg_by_row=None, cm_by_row=None):
    """Runs of every row the settings define, whose accuracies are flat rows summing to
    the given R&G per seed (the same under FGSM and PGD)."""
    runs = []
    width = len(table.eps_grid)
    for variant in variants(table, settings):
        values = (rg_by_row or {}).get(variant.name, [rg_default + seed for seed in range(settings.seeds)])
        for seed, rg in enumerate(values):
            cm = (cm_by_row or {}).get(variant.name, [0.5, 0.5, 0.5])
            runs.append(RunRecord(seed=seed, row=variant.name, model=variant.model, training=variant.training,
                                  accuracies={"fgsm": [rg / width] * width, "pgd": [rg / width] * width},
                                  rg={"fgsm": rg, "pgd": rg}, collapsed=False, cm={"fgsm": cm, "pgd": cm},
                                  mvl=[0], layer_names=["a", "b", "c"], clean_norm=[1.0, 1.0, 1.0],
                                  difference_norm=cm, train_accuracy=90.0))
    return runs


def test_verdicts_follow_the_t_interval():
    settings = dataclasses.replace(ReproduceSettings.defaults("mnist", quick=True), seeds=3, extra_rows=())
    rg = {"Normal": [250.0, 260.0, 255.0], "AT-APGD": [400.0, 410.0, 405.0], "AT-APGD-LR-L0": [420.0, 425.0, 430.0]}
    summary = summarise(TABLE_3, settings, _fake_runs(TABLE_3, settings, 0.0, rg, {"AT-APGD-LR-L0": [0.2, 0.5, 0.5]}))
    item = summary.claims.lr_vs_base[0]
    assert item["row"] == "AT-APGD-LR-L0" and item["base_row"] == "AT-APGD"
    # Differences 20, 15, 25: mean 20, std 5, half width t(0.975, 2) * 5 / sqrt(3) = 12.42.
    assert item["fgsm"].mean == pytest.approx(20.0) and item["fgsm"].std == pytest.approx(5.0)
    assert item["fgsm"].half_width == pytest.approx(4.3026527 * 5 / 3 ** 0.5, rel=1e-6)
    assert item["fgsm"].verdict == "higher" and item["pgd"].verdict == "higher"
    assert item["paper_difference"] == pytest.approx(541.73 - 497.99)
    falls = summary.claims.cm_falls
    assert {f["attack"] for f in falls} == {"fgsm", "pgd"}
    assert all(f["change"].mean == pytest.approx(-0.3) and f["change"].verdict == "lower" for f in falls)
    assert summary.rows["Normal"].evaluation["fgsm"].rg_std == pytest.approx(5.0)
    statement = summary.claims.statements[0]
    assert statement.holds == "yes" and "LR-L0" in statement.claim

    rg["AT-APGD-LR-L0"] = [395.0, 420.0, 410.0]  # differences -5, +10, +5: the interval contains 0
    noisy = summarise(TABLE_3, settings, _fake_runs(TABLE_3, settings, 0.0, rg))
    assert noisy.claims.lr_vs_base[0]["fgsm"].verdict == "no difference detected"
    assert noisy.claims.statements[0].holds == "not shown (no difference detected)"
    rg["AT-APGD-LR-L0"] = [380.0, 390.0, 384.0]
    worse = summarise(TABLE_3, settings, _fake_runs(TABLE_3, settings, 0.0, rg))
    assert worse.claims.lr_vs_base[0]["fgsm"].verdict == "lower"
    assert worse.claims.statements[0].holds.startswith("no (lower")
    markdown = to_markdown(worse)
    assert "Khalooei et al., arXiv:2202.02626, Table 3" in markdown and "AT-APGD-LR-L0" in markdown
    assert "-20.33 [" in markdown  # the mean difference and its interval


def test_best_layer_claim_is_checked_against_the_papers_best():
    settings = ReproduceSettings.defaults("moons", quick=True)
    rg = {"AT-FGSM-LR-L0": [430.0, 431.0]}  # L0 best here, L2 best in the paper
    summary = summarise(TABLE_2, settings, _fake_runs(TABLE_2, settings, 400.0, rg))
    fgsm = next(item for item in summary.claims.best_layer if item["base_row"] == "AT-FGSM")
    assert fgsm["paper_best"] == "AT-FGSM-LR-L2" and fgsm["fgsm"]["our_best"] == "AT-FGSM-LR-L0"
    assert not fgsm["fgsm"]["holds"] and fgsm["fgsm"]["margin"].mean == pytest.approx(-30.0)


def test_summarise_refuses_missing_runs():
    settings = dataclasses.replace(ReproduceSettings.defaults("mnist", quick=True), extra_rows=())
    runs = _fake_runs(TABLE_3, dataclasses.replace(settings, seeds=2), 1.0)
    runs = [run for run in runs if not (run.row == "AT-APGD" and run.seed == 1)]
    with pytest.raises(ValueError, match="AT-APGD"):
        summarise(TABLE_3, settings, runs)


# ---------------------------------------------------------------- settings and CLI errors


def test_apply_overrides_reads_types():
    settings = apply_overrides(ReproduceSettings.defaults("moons"),
                               ["epochs=3", "gamma=0.25", "n_train=none", "optimizer=sgd", 'model_kwargs={"A": {}}',
                                "sweep_gammas=0.5,2", "sweep_bases=", "lr_grad=adversarial", "standardize=false"])
    assert (settings.epochs, settings.gamma, settings.n_train, settings.optimizer) == (3, 0.25, None, "sgd")
    assert settings.model_kwargs == {"A": {}}
    assert (settings.sweep_gammas, settings.sweep_bases, settings.lr_grad) == ((0.5, 2.0), (), "adversarial")
    assert settings.standardize is False
    with pytest.raises(ValueError, match="lr_grad"):
        apply_overrides(settings, ["lr_grad=clean"])
    with pytest.raises(ValueError, match="standardize=maybe"):
        apply_overrides(settings, ["standardize=maybe"])
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
                 "--no-progress", "--val-size", "16", "--seeds", "1", "--weights", "final"]) == 0
    summary = json.loads((out / "report.json").read_text())
    assert summary["paper_source"] == "Khalooei et al., arXiv:2202.02626, Table 3"
    assert list(summary["rows"]) == ["Normal", "AT-APGD", "AT-APGD-LR-L0", "AT-PGD", "AT-PGD-LR-L0"]
    assert set(summary["eval_attacks"]) == {"fgsm", "pgd", "autoattack"}
    assert summary["layer_names"]["B"][0] == "relu1"  # the authors' L0: conv1's activation
    for row in summary["rows"].values():
        for result in row["evaluation"].values():
            assert result["rg_mean"] == pytest.approx(sum(result["mean"]), abs=1e-9)
    table = _main_table((out / "report.md").read_text(), "## FGSM accuracy")
    assert [paper for _, paper in table["AT-APGD-LR-L0"]] == pytest.approx([98.97, 98.11, 97.36, 97.17, 94.6, 55.52,
                                                                           541.73])
    for name in ("rg_scores.png", "cm_layers.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)


def test_verdicts_are_given_per_attack_when_the_attacks_disagree():
    settings = dataclasses.replace(ReproduceSettings.defaults("mnist", quick=True), seeds=3, extra_rows=())
    rg = {"Normal": [250.0, 260.0, 255.0], "AT-APGD": [400.0, 410.0, 405.0], "AT-APGD-LR-L0": [420.0, 425.0, 430.0]}
    runs = _fake_runs(TABLE_3, settings, 0.0, rg)
    for run in runs:  # under PGD the LR row loses what it wins under FGSM
        if run.row == "AT-APGD-LR-L0":
            run.rg["pgd"] = run.rg["fgsm"] - 40.0 - run.seed
    statement = summarise(TABLE_3, settings, runs).claims.statements[0]
    assert statement.holds == "FGSM: yes; PGD-2: no (lower in 1 of 1)"


def test_reproduce_mnist_quick_on_real_digits(mnist_dir, tmp_path):
    """Issue 25: the five rows, paired seeds, FGSM / PGD grids and the AutoAttack column,
    for the final and the best-robust weights, with a verdict for every LR row."""
    out = tmp_path / "out"
    assert main(["reproduce", "mnist", "--quick", "--data", str(mnist_dir), "--out", str(out), "--device", "cpu",
                 "--no-progress"]) == 0
    summary = json.loads((out / "report.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["settings"]["val_size"] == 32
    assert list(summary["rows"]) == ["Normal", "AT-APGD", "AT-APGD-LR-L0", "AT-PGD", "AT-PGD-LR-L0"]
    columns = {"fgsm", "pgd", "autoattack", "fgsm@best", "pgd@best", "autoattack@best"}
    assert set(summary["eval_attacks"]) == columns
    assert summary["eval_grids"]["autoattack"] == [0.3] and "APGD-CE + APGD-T" in summary["eval_attacks"]["autoattack"]
    for name, row in summary["rows"].items():
        assert row["evaluation"]["autoattack"]["mean"][0] <= row["evaluation"]["pgd"]["mean"][0] + 1e-9
        assert all(epoch == 1 for epoch in row["best_epoch"])  # one epoch: the best is the only one
        assert row["extra"] == (name in ("AT-PGD", "AT-PGD-LR-L0")) and not row["sweep"]
    pairs = {(item["row"], item["base_row"]) for item in summary["claims"]["lr_vs_base"]}
    assert pairs == {("AT-APGD-LR-L0", "AT-APGD"), ("AT-PGD-LR-L0", "AT-PGD")}
    for item in summary["claims"]["lr_vs_base"]:
        assert all(item[key]["verdict"] for key in columns)
    claims = [statement["claim"] for statement in summary["claims"]["statements"]]
    assert any(claim.startswith("AT-PGD-LR-L0 beats its base AT-PGD") for claim in claims)
    markdown = (out / "report.md").read_text()
    assert "## Best-robust weights" in markdown and "(best-robust weights)" in markdown
    assert "robust accuracy (%) at eps 0.3" in markdown


def test_reproduce_cifar10_trains_on_the_device_loader_with_crop_flip(tmp_path, monkeypatch):
    """Issue 25 item 5: Table 4's protocol (random crop + flip), as lsa-fast train does."""
    import pickle

    import lsa_fast.reproduce.running as reproduce
    from lsa_fast.device_loader import DeviceLoader

    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        batch = {b"labels": rng.integers(0, 10, 4).tolist(), b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8)}
        (tmp_path / name).write_bytes(pickle.dumps(batch, protocol=2))
    loaders = []
    built = reproduce.make_device_loader

    def recording(*args, **kwargs):
        loaders.append(built(*args, **kwargs))
        return loaders[-1]

    monkeypatch.setattr(reproduce, "make_device_loader", recording)
    settings = dataclasses.replace(ReproduceSettings.defaults("cifar10", quick=True), n_train=12, n_test=8,
                                   batch_size=4, cm_samples=8, eval_batch_size=8, autoattack="none")
    images = reproduce._load_images("cifar10", tmp_path, settings)
    row = next(v for v in variants(TABLE_4, settings) if v.name == "D Normal")
    run = reproduce.run_variant("cifar10", row, 0, settings, "cpu", False, images)
    assert len(loaders) == 1 and isinstance(loaders[0], DeviceLoader) and loaders[0].augment == "crop-flip"
    assert len(run.accuracies["fgsm"]) == len(TABLE_4.eps_grid)
