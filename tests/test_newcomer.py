"""A newcomer's path (issue 13), through the real `lsa-fast` command in subprocesses:
run directories that reproduce their own numbers, model/dataset mismatches and other
mistakes as one-line errors, figures that never cost the results, Ctrl-C like SIGTERM,
extending a finished run, the regulariser and the learning rate named apart, and
figures a reader understands. Every command is checked for its exit code and for the
absence of a traceback."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lsa_fast.checkpoint import load_checkpoint, save_checkpoint
from lsa_fast.data import load_dataset, make_loader, moons_standardization
from lsa_fast.models import build_model
from lsa_fast.training import ATLRTrainer, TrainConfig

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = ["--model", "A", "--dataset", "moons", "--base", "fgsm", "--n-train", "256", "--n-test", "128",
              "--batch-size", "64", "--optimizer", "adam", "--learning-rate", "0.01", "--no-progress"]


def env(*first_on_path):
    path = os.pathsep.join([*map(str, first_on_path), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")


def start(*args, cwd, path=()):
    """`lsa-fast ARGS` (lsa_fast.cli:main, the console script's function) in a subprocess."""
    return subprocess.Popen([sys.executable, "-m", "lsa_fast.cli", *map(str, args)], cwd=cwd, env=env(*path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    assert "Traceback" not in out + err, err
    return process.returncode, out, err


def lsa_fast(*args, cwd, path=()):
    return finish(start(*args, cwd=cwd, path=path))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    code, stdout, stderr = lsa_fast("demo", "--quick", "--out", out, "--no-progress", cwd=out)
    assert code == 0, stderr
    return out, stdout + stderr


# ------------------------------------------------ 1, 7: runs that reproduce their numbers


def test_demo_run_directories_reproduce_the_demo_numbers(demo):
    out, _ = demo
    summary = json.loads((out / "report.json").read_text())
    settings = summary["settings"]
    grid = ",".join(f"{eps:g}" for eps in summary["evaluation"]["eps_grid"])
    runs = dict(zip(("normal", "at-pgd", "at-pgd-lr"), summary["evaluation"]["rows"]))
    evals = {directory: start("eval", "--checkpoint", out / directory, "--attack", "fgsm", "--eps", grid, cwd=out)
             for directory in runs}
    for directory, row in runs.items():
        data = json.loads((out / directory / "config.json").read_text())["data_options"]
        # The demo's moons are standardized with its training split's statistics, recorded as numbers.
        mean, std = moons_standardization(settings["n_train"], settings["noise"], settings["seed"])
        assert data == {"n_train": settings["n_train"], "n_test": settings["n_test"], "noise": settings["noise"],
                        "seed": settings["seed"], "standardize": {"mean": mean, "std": std},
                        "unit_map": {"low": [-5.0, -5.0], "scale": 10.0}}
        code, stdout, stderr = finish(evals[directory])
        assert code == 0, stderr
        assert f"moons test split: {settings['n_test']} samples (noise {settings['noise']:g}, data seed 0" in stderr
        cells = [f"{value:.2f}" for value in summary["evaluation"]["rows"][row]]
        assert f"| {row} | " + " | ".join(cells) in stdout
        assert stdout.strip().splitlines()[-1] == f"R&G = {summary['rg_scores'][row]:.2f}"

    # analyze rebuilds the same test set: the demo's (deterministic) FGSM statistics again.
    code, _, stderr = lsa_fast("analyze", "--checkpoint", out / "normal", "--perturbations", "fgsm:0.3", "--eta",
                               "0.5", "--out", out / "check", "--no-progress", cwd=out)
    assert code == 0 and "[the run's data]" in stderr
    again = json.loads((out / "check" / "report.json").read_text())
    demo_lsa = json.loads((out / "lsa_report.json").read_text())
    assert again["clean_accuracy"] == demo_lsa["clean_accuracy"]
    assert again["perturbations"][0]["layer_mean"] == pytest.approx(demo_lsa["perturbations"][0]["layer_mean"],
                                                                    rel=1e-6)


def test_demo_labels_every_eps_in_moons_units(demo):
    out, _ = demo
    report = json.loads((out / "lsa_report.json").read_text())
    for result in report["perturbations"]:
        name, eps = result["name"].split(":")
        assert float(eps) == pytest.approx(result["eps_dataset"]), result["name"]
    assert [r["name"] for r in report["perturbations"]][:3] == ["fgsm:0.3", "pgd:0.3", "gaussian:0.3"]
    assert "fgsm:0.06" not in (out / "report.md").read_text()


# ------------------------------------------------------------ 3, 8: one-line errors


def test_mistakes_are_one_line_errors(demo, tmp_path):
    out, _ = demo
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((out / "normal" / "final.pt").read_bytes()[:4000])
    cases = {
        # argv: what the one line must say
        ("train", "--model", "B", "--dataset", "moons", "--out", tmp_path / "b"): "model B does not fit dataset moons",
        ("analyze", "--model", "B", "--dataset", "moons", "--out", tmp_path / "c"):
            "model B does not fit dataset moons",
        ("train", "--model", "A", "--dataset", "mnist", "--data", tmp_path, "--out", tmp_path / "a"):
            "model A does not fit dataset mnist",
        ("train", "--model", "Z", "--out", tmp_path / "z"): "unknown model 'Z'",
        ("eval", "--checkpoint", out / "normal", "--eps", "-0.1,0.2"): "--eps: eps must be a finite number >= 0, got -0.1",
        ("eval", "--checkpoint", out / "normal", "--eps", "0.1,,0.2"): "empty item in '0.1,,0.2'",
        ("eval", "--checkpoint", truncated): "truncated checkpoint (4000 bytes on disk; the zip archive is incomplete)",
        # The model/dataset check comes before the weights (not a weights-mismatch hint).
        ("eval", "--checkpoint", out / "normal", "--model", "B"): "model B does not fit dataset moons",
        ("analyze", "--checkpoint", out / "normal", "--model", "B", "--out", tmp_path / "d"):
            "model B does not fit dataset moons",
        ("eval", "--checkpoint", out / "normal", "--model-option", "hidden=7"):
            "tensor(s) of another shape (first: fc1.weight",
        ("train", "--model", "A", "--momentum", "1.5", "--out", tmp_path / "m"): "--momentum must lie in [0, 1)",
        ("analyze", "--model", "Q", "--out", tmp_path / "q"): "unknown model 'Q'",
        ("train", "--model", "B", "--data", tmp_path, "--out", tmp_path / "mnist"): "MNIST (train split): missing",
    }
    argvs = list(cases)
    results = {}
    for first in range(0, len(argvs), 4):  # a few at a time: each is a Python with torch
        running = {argv: start(*argv, cwd=tmp_path) for argv in argvs[first:first + 4]}
        results.update({argv: finish(process) for argv, process in running.items()})
    for argv, expected in cases.items():
        code, stdout, stderr = results[argv]
        line = stderr.strip()
        assert code == 2 and "\n" not in line, (argv, stderr)
        assert expected in line, (argv, line)
        for internal in ("TrainConfig", "build_model", "ATLRTrainer", "was transferred", "size mismatch fo"):
            assert internal not in line, (argv, line)
        assert len(line) < 700, (argv, len(line))
    for name in ("b", "c", "a", "z", "m", "q", "mnist", "d"):
        assert not (tmp_path / name).exists()  # nothing written before the check


# ----------------------------------------------------- 4: figures never cost the results


def test_without_matplotlib_demo_and_reproduce_keep_their_results(tmp_path):
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    demo = start("demo", "--quick", "--out", tmp_path / "demo", "--no-progress", cwd=tmp_path, path=[shadow.parent])
    reproduce = start("reproduce", "moons", "--quick", "--seeds", "1", "--out", tmp_path / "rep", "--no-progress",
                      cwd=tmp_path, path=[shadow.parent])
    for process, directory, figures in ((demo, "demo", ("lsa.png", "decision_boundaries.png")),
                                        (reproduce, "rep", ("rg_scores.png", "cm_layers.png"))):
        code, stdout, stderr = finish(process)
        assert code == 0, stderr
        assert "figures skipped (" in stderr and "matplotlib" in stderr
        report = json.loads((tmp_path / directory / "report.json").read_text())
        assert report["rg_scores" if directory == "demo" else "rows"]
        assert (tmp_path / directory / "report.md").is_file()
        assert not any((tmp_path / directory / name).exists() for name in figures)


# ------------------------------------------------------- 6: LR is the regulariser only


def test_console_and_metrics_name_regulariser_and_learning_rate_apart(demo):
    out, output = demo
    epoch_lines = [line for line in output.splitlines() if line.startswith("epoch ")]
    assert epoch_lines and all("regulariser" in line and "learning rate" in line for line in epoch_lines)
    assert not any(" LR " in line for line in epoch_lines)
    for line in (out / "at-pgd-lr" / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert "learning_rate" in record and "lr" not in record and record["regularizer"] > 0


def test_old_checkpoints_metrics_are_read_with_the_new_names(tmp_path):
    train = make_loader(load_dataset("moons", n_samples=128), 64, shuffle=True)
    config = TrainConfig(base="fgsm", eps=0.06, epochs=2, batch_size=64, optimizer="adam", lr=0.01)
    ATLRTrainer(build_model("A"), config, train, out_dir=tmp_path).fit(stop_after_epoch=1)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    state["metrics"] = [{("lr" if k == "learning_rate" else k): v for k, v in m.items()} for m in state["metrics"]]
    del state["path"], state["format"], state["version"]
    save_checkpoint(state, tmp_path / "checkpoint.pt")  # as written before the rename
    trainer = ATLRTrainer(build_model("A"), config, train, out_dir=tmp_path)
    trainer.resume(tmp_path)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(r) for r in records] == [sorted(records[1])] * 2 and "learning_rate" in records[0]


# ---------------------------------------------------------------- 9: Ctrl-C = SIGTERM


def test_ctrl_c_saves_mid_epoch_and_says_so_in_one_line(tmp_path):
    run = tmp_path / "run"
    process = start("train", *TINY_TRAIN, "--n-train", "4096", "--batch-size", "8", "--base", "pgd", "--steps", "5",
                    "--epochs", "1", "--out", run, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not (run / "config.json").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # config.json: written when training starts
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    code, stdout, stderr = finish(process)
    assert code == 130, stderr
    assert "stopped by SIGINT (Ctrl-C) in epoch 1 after batch" in stderr and "--resume" in stdout
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] == 0 and 0 < state["step_in_epoch"] < 512  # inside the epoch, not lost

    code, stdout, stderr = lsa_fast("train", "--resume", run, "--no-progress", cwd=tmp_path)
    assert code == 0 and f"batch {state['step_in_epoch'] + 1}" in stderr and (run / "final.pt").is_file()


def test_a_second_ctrl_c_aborts_at_once(tmp_path):
    train = make_loader(load_dataset("moons", n_samples=256), 32, shuffle=True)
    config = TrainConfig(base="fgsm", eps=0.06, epochs=2, batch_size=32, optimizer="adam", lr=0.01)
    trainer = ATLRTrainer(build_model("A"), config, train, out_dir=tmp_path)
    calls = {"n": 0}

    def press_ctrl_c(module, inputs, output):
        calls["n"] += 1
        if calls["n"] in (3, 4):  # twice within one batch
            signal.raise_signal(signal.SIGINT)

    trainer.module.register_forward_hook(press_ctrl_c)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    assert not (tmp_path / "checkpoint.pt").exists()  # aborted before the stop's checkpoint


# --------------------------------------------------------- 10: extending a finished run


def test_a_finished_run_is_extended_by_raising_epochs(tmp_path):
    run = tmp_path / "run"
    code, _, stderr = lsa_fast("train", *TINY_TRAIN, "--epochs", "2", "--schedule", "cosine", "--out", run,
                               cwd=tmp_path)
    assert code == 0, stderr
    two_epochs = load_checkpoint(run / "final.pt")["model"]
    code, stdout, stderr = lsa_fast("train", "--resume", run, "--epochs", "3", cwd=tmp_path)
    assert code == 0, stderr
    assert "\r" not in stderr and "batch/s" not in stderr  # a pipe, not a terminal: no progress bar
    assert "extending" in stderr and "from 2 to 3 epochs" in stderr and "stretched over 3 epochs" in stderr
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 3 and config["extra"]["extended_from"] == [2]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    three_epochs = load_checkpoint(run / "final.pt")
    assert three_epochs["epoch"] == 3
    assert any(not torch.equal(two_epochs[k], three_epochs["model"][k]) for k in two_epochs)  # it trained on
    # The cosine schedule of 2 epochs ended at 0; stretched over 3 it ends epoch 3 at 0 again.
    assert metrics[1]["learning_rate"] == pytest.approx(0.0, abs=1e-12)
    assert metrics[2]["learning_rate"] == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------ 11: figures a reader understands


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib Figure of every plot call, instead of a file."""
    pytest.importorskip("matplotlib")
    import lsa_fast.report
    import lsa_fast.reproduce.figures

    drawn = []

    def keep(figure, path, dpi=120):
        drawn.append(figure)
        return str(path)

    monkeypatch.setattr(lsa_fast.report, "save_figure", keep)
    monkeypatch.setattr(lsa_fast.reproduce.figures, "save_figure", keep)
    return drawn


def legend_texts(legend):
    return [(text.get_text(), text.get_fontsize()) for text in legend.get_texts()]


def test_reproduce_figures_start_bars_at_zero_and_explain_their_marks(figures):
    from lsa_fast.paper import paper_table
    from lsa_fast.reproduce import ReproduceSettings, plot_cm_layers, plot_rg_scores, summarise
    from lsa_fast.reproduce.records import RunRecord

    table = paper_table("moons")
    runs = []
    for name in table.names:
        row = table.row(name)
        for seed, rg in enumerate((380.0, 420.0)):
            runs.append(RunRecord(seed=seed, row=name, model=row.model, training=row.training,
                                  accuracies={"fgsm": [rg / 6] * 6, "pgd": [rg / 7] * 6},
                                  rg={"fgsm": rg, "pgd": rg * 6 / 7}, cm={"fgsm": [0.3, 0.5, 0.8], "pgd": [0.3, 0.6, 0.9]},
                                  mvl=[2], layer_names=["act1", "act2", "act3"], clean_norm=[1.0] * 3,
                                  difference_norm=[0.3, 0.5, 0.8], train_accuracy=90.0))
    settings = dataclasses.replace(ReproduceSettings.defaults("moons", quick=True), sweep_bases=())
    summary = summarise(table, settings, runs)
    plot_rg_scores(summary, "rg.png")
    plot_cm_layers(summary, "cm.png")
    rg_figure, cm_figure = figures

    axes = rg_figure.axes[0]
    assert axes.get_ylim()[0] == 0.0 and axes.get_ylim()[1] > max(row.rg for row in table.rows)
    assert "R&G" in axes.get_ylabel() and "z units" in axes.get_title()  # standardized moons
    assert all(size >= 8 for _, size in legend_texts(axes.get_legend()))
    assert all(label.get_fontsize() >= 8 for label in axes.get_xticklabels())

    panels = cm_figure.axes
    assert all(panel.get_ylim()[0] == 0.0 for panel in panels)
    legends = [panel.get_legend() for panel in panels if panel.get_legend() is not None]
    assert legends and all(size >= 8 for legend in legends for _, size in legend_texts(legend))
    assert all("layer the variant regularises" in [text for text, _ in legend_texts(legend)] for legend in legends)
    assert "std over 2 seeds" in cm_figure._suptitle.get_text()


def test_lsa_and_decision_boundary_figures_label_everything(figures):
    from lsa_fast.analysis import analyze
    from lsa_fast.attacks import make_attack
    from lsa_fast.data import MOONS_LOW, MOONS_SCALE
    from lsa_fast.report import plot_decision_boundaries

    torch.manual_seed(0)
    model = build_model("A")
    x, y = load_dataset("moons", train=False, n_samples=64).tensors
    perturbations = {"fgsm:0.3": make_attack("fgsm", 0.06), "gaussian:0.3": make_attack("gaussian", 0.06)}
    report = analyze(model, (x, y), perturbations, eta=-10.0, dataset="moons", progress=False)  # eta < 0: all in MVL
    report.plot("lsa.png")
    labels = [text for text, _ in legend_texts(figures[0].axes[0].get_legend())]
    assert any(label.startswith("band: MVL of the adversarial CM pooled") for label in labels)
    assert any(label.startswith("ring: ") for label in labels)
    assert "fgsm:0.3 (adversarial; eps 0.3 in moons units)" in labels

    plot_decision_boundaries({"Normal": model}, x, y, "db.png", notes={"Normal": "clean acc 50.0%"},
                             unit_map=(MOONS_LOW, MOONS_SCALE), axis_names=("x1 (moons units)", "x2 (moons units)"))
    figure = figures[1]
    axes = figure.axes[0]
    assert axes.get_xlabel() == "x1 (moons units)" and axes.get_ylabel() == "x2 (moons units)"
    assert "clean acc 50.0%" in axes.get_title()
    assert axes.get_xlim()[0] < 0 < axes.get_xlim()[1]  # moons coordinates, not [0, 1]
    entries = [text for text, _ in legend_texts(figure.legends[0])]
    assert {"test point, class 0", "test point, class 1", "decision boundary (logit = 0)"} <= set(entries)
