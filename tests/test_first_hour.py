"""A researcher's first hour (issue 26): a collapsed model is called collapsed by `eval`
and `analyze` before their tables, both show progress (a bar with an ETA on a terminal,
a line per stage in a log) and end with the speed, the help texts say what the options
do, and the figures read right (titles inside the figure, units of the run, the pooled
MVL named as such, coinciding curves kept apart)."""
import io

import pytest
import torch

from lsa_fast import cli
from lsa_fast.checkpoint import load_checkpoint, save_checkpoint
from lsa_fast.collapse import collapse_warning, majority_share
from lsa_fast.progress import BatchProgress

torch.set_num_threads(1)

TRAIN = ["train", "--model", "A", "--dataset", "moons", "--base", "fgsm", "--n-train", "128", "--n-test", "100",
         "--batch-size", "32", "--optimizer", "adam", "--lr", "0.01", "--epochs", "1", "--device", "cpu",
         "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny trained run, and a copy whose model answers class 1 for every input."""
    root = tmp_path_factory.mktemp("runs")
    assert cli.main(TRAIN + ["--out", str(root / "run")]) == 0
    collapsed = root / "collapsed"
    collapsed.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        (collapsed / name).write_bytes((root / "run" / name).read_bytes())
    state = load_checkpoint(root / "run" / "final.pt")
    last = sorted(k for k in state["model"] if k.endswith(".weight"))[-1][: -len(".weight")]
    state["model"][f"{last}.weight"].zero_()
    state["model"][f"{last}.bias"].fill_(5.0)  # logit 5 > 0: class 1 everywhere
    save_checkpoint({k: v for k, v in state.items() if k not in ("path", "format", "version")},
                    collapsed / "final.pt")
    return root / "run", collapsed


# ------------------------------------------------------------------ collapse


def test_collapse_is_accuracy_at_the_majority_share():
    labels = torch.tensor([0, 1, 1, 1, 2, 2, 1, 0, 1, 1])  # class 1: 60 %
    assert majority_share(labels) == (1, 60.0)
    assert collapse_warning(61.0, labels) is None
    line = collapse_warning(60.0, labels, "test", constant=1)
    assert "collapsed" in line and "60.00%" in line and "(1: 60.00% of 10 samples)" in line
    assert "predicts class 1 for every sample" in line and "--eps-warmup-epochs" in line and "\n" not in line
    assert "no better than always answering" in collapse_warning(42.0, labels)


def test_eval_and_analyze_name_a_collapsed_model_once_before_their_tables(runs, capsys, tmp_path):
    run, collapsed = runs
    assert cli.main(["eval", "--checkpoint", str(collapsed), "--eps", "0,0.1"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("looks collapsed") == 1 and "predicts class 1 for every sample" in captured.err
    assert "lsa-fast eval: warning:" in captured.err
    assert cli.main(["analyze", "--checkpoint", str(collapsed), "--perturbations", "fgsm:0.1", "--out",
                     str(tmp_path / "lsa"), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("looks collapsed") == 1 and "lsa-fast analyze: warning:" in captured.err
    # A model that learned says nothing of the kind.
    assert cli.main(["eval", "--checkpoint", str(run), "--eps", "0,0.1"]) == 0
    assert "collapsed" not in capsys.readouterr().err


# ------------------------------------------------------------------ progress


def test_eval_and_analyze_report_progress_in_a_log_and_end_with_the_speed(runs, capsys, tmp_path):
    run, _ = runs
    assert cli.main(["eval", "--checkpoint", str(run), "--eps", "0,0.1", "--batch-size", "10"]) == 0
    err = capsys.readouterr().err.splitlines()
    stages = [line for line in err if line.startswith("eval fgsm (2 eps): batch ")]
    assert len(stages) == 10 and "ETA" in stages[0] and "ETA" not in stages[-1]  # 10 batches: one line each
    assert stages[-1].startswith("eval fgsm (2 eps): batch 10/10, ")
    assert err[-1].startswith("eval fgsm (2 eps): 100 images in ") and err[-1].endswith("img/s)")
    assert cli.main(["eval", "--checkpoint", str(run), "--eps", "0", "--no-progress"]) == 0
    assert "img/s" not in capsys.readouterr().err

    assert cli.main(["analyze", "--checkpoint", str(run), "--perturbations", "fgsm:0.1", "--batch-size", "50",
                     "--out", str(tmp_path / "lsa")]) == 0
    err = capsys.readouterr().err
    assert "LSA: batch 1/2, " in err and "ETA" in err and "LSA: 100 images in " in err


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_bar_with_an_eta():
    pytest.importorskip("tqdm")
    stream = _Terminal()
    bar = BatchProgress("eval", 4, stream=stream)
    for _ in range(4):
        bar.update(8)
    line = bar.close()
    text = stream.getvalue()
    assert "\r" in text and "<" in text and "batch" in text  # tqdm's [elapsed<remaining] is the ETA
    assert line.startswith("eval: 32 images in ") and line in text


# ------------------------------------------------------------------ help texts


def test_help_texts_say_what_the_options_do(capsys):
    with pytest.raises(SystemExit):
        cli.main(["analyze", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "every learnable layer" not in text and "activation outputs" in text
    assert "a run directory of `lsa-fast train`" in text
    assert "samples per batch (default 256)" in text
    assert "default fgsm:0.1,pgd:0.1,gaussian:0.1" in text
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--eps EPS,..., --eps-grid EPS,..." in text and "--no-progress" in text


def test_eval_names_the_option_the_readme_uses(runs, capsys):
    run, _ = runs
    assert cli.main(["eval", "--checkpoint", str(run), "--eps", "0.1,-0.2"]) == 2
    assert "--eps: eps must be a finite number >= 0, got -0.2" in capsys.readouterr().err


# ------------------------------------------------------------------ figures


def _extent(artist, renderer):
    return artist.get_window_extent(renderer)


@pytest.fixture
def drawn(monkeypatch):
    """Every figure the report module saves, drawn (for text extents) instead of written."""
    pytest.importorskip("matplotlib")
    import lsa_fast.report

    figures = []

    def keep(figure, path, dpi=120):
        figure.canvas.draw()
        figures.append(figure)
        return str(path)

    monkeypatch.setattr(lsa_fast.report, "save_figure", keep)
    return figures


def test_decision_boundary_titles_fit_and_the_legend_clears_the_labels(drawn):
    from lsa_fast.data import load_dataset
    from lsa_fast.models import build_model
    from lsa_fast.report import plot_decision_boundaries

    x, y = load_dataset("moons", train=False, n_samples=64).tensors
    models = {name: build_model("A") for name in ("Normal", "AT-PGD", "AT-PGD-LR-L2")}
    notes = {name: "clean acc 86.7%, FGSM eps 0.3: 76.0%\nR&G 463.7" for name in models}
    plot_decision_boundaries(models, x, y, "db.png", notes=notes, axis_names=("z1 (standardized)", "z2"))
    figure = drawn[0]
    renderer = figure.canvas.get_renderer()
    whole = figure.bbox
    legend = _extent(figure.legends[0], renderer)
    for axes in figure.axes:
        title = _extent(axes.title, renderer)
        assert whole.y0 <= title.y0 and title.y1 <= whole.y1, axes.get_title()  # all three lines inside
        assert title.y0 >= _extent(axes, renderer).y1 - 1  # above the panel
        assert legend.y1 <= _extent(axes.xaxis.label, renderer).y0  # the legend below the x label


def test_lsa_figure_in_the_runs_units_with_the_pooled_mvl_named_and_curves_apart(drawn):
    from lsa_fast.analysis import analyze
    from lsa_fast.attacks import make_attack
    from lsa_fast.data import load_dataset
    from lsa_fast.models import build_model

    torch.manual_seed(0)
    model = build_model("A", normalize="moons-standardized")
    x, y = load_dataset("moons", train=False, n_samples=64).tensors
    # Two perturbations with the same CM per layer: their curves coincide.
    perturbations = {"fgsm:0.3": make_attack("fgsm", 0.03), "fgsm-again:0.3": make_attack("fgsm", 0.03)}
    report = analyze(model, (x, y), perturbations, eta=0.5, dataset="moons", progress=False,
                     moons_units="standardized")
    assert report.eps_units == "z units"
    report.plot("lsa.png")
    axes = drawn[0].axes[0]
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    assert "fgsm:0.3 (adversarial; eps 0.3 in z units)" in labels
    assert "pooled adversarial CM (fgsm:0.3 + fgsm-again:0.3)" in axes.get_title()
    first, second = [line for line in axes.get_lines() if line.get_label().startswith("fgsm")]
    assert list(first.get_ydata()) == list(second.get_ydata())
    assert first.get_marker() != second.get_marker() and list(first.get_xdata()) != list(second.get_xdata())


# ------------------------------------------------------------------ the trainer (issue 26, items 2, 3, 5)


def _moons_trainer(config, out_dir, n=128):
    from lsa_fast.data import load_dataset, make_loader
    from lsa_fast.models import build_model
    from lsa_fast.training import ATLRTrainer

    torch.manual_seed(0)
    train = make_loader(load_dataset("moons", n_samples=n), config.batch_size, shuffle=True, seed=0)
    test = make_loader(load_dataset("moons", train=False, n_samples=64), 64)
    return ATLRTrainer(build_model("A"), config, train, test, out_dir=out_dir)


def test_the_eps_ramp_rises_linearly_from_zero_and_resumes_exactly(tmp_path):
    import json

    from lsa_fast.training import TrainConfig

    config = TrainConfig(base="pgd", eps=0.06, steps=2, epochs=4, eps_warmup_epochs=2, batch_size=32,
                         optimizer="adam", lr=0.01)
    assert [config.eps_at(k) for k in range(4)] == [0.0, 0.03, 0.06, 0.06]
    assert TrainConfig(eps=0.06).eps_at(0) == 0.06  # no ramp by default
    with pytest.raises(ValueError, match="eps_warmup_epochs"):
        TrainConfig(eps_warmup_epochs=-1)
    full = _moons_trainer(config, tmp_path / "full")
    full.fit()
    metrics = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [m["eps"] for m in metrics] == [0.0, 0.03, 0.06, 0.06]
    assert [m["base"] for m in metrics] == ["none", "pgd", "pgd", "pgd"]  # eps 0: a clean epoch
    assert json.loads((tmp_path / "full" / "config.json").read_text())["eps_warmup_epochs"] == 2

    split = _moons_trainer(config, tmp_path / "split")
    split.fit(stop_after_epoch=2)  # stopped inside the ramp
    resumed = _moons_trainer(config, tmp_path / "split")
    resumed.resume(tmp_path / "split")
    resumed.fit()
    for name, tensor in full.module.state_dict().items():
        assert torch.equal(tensor, resumed.module.state_dict()[name]), name


def test_the_compiled_step_compiles_once_per_ramp_epoch_not_per_batch(tmp_path, monkeypatch):
    import lsa_fast.compiled_step as compiled_step
    from lsa_fast.training import TrainConfig

    built = []
    original = compiled_step._StepUnits.__init__

    def counting(self, owner, base, layers):
        built.append((base, owner.trainer.attack_eps))
        original(self, owner, base, layers)

    monkeypatch.setattr(compiled_step._StepUnits, "__init__", counting)
    config = TrainConfig(base="fgsm", eps=0.06, epochs=3, eps_warmup_epochs=2, batch_size=32, optimizer="adam",
                         lr=0.01, compile="aot-eager")
    trainer = _moons_trainer(config, tmp_path / "run")
    assert trainer.steps_per_epoch == 4
    trainer.fit()
    assert built == [("none", 0.0), ("fgsm", 0.03), ("fgsm", 0.06)]  # one per eps, 12 batches in all
    assert [m["eps"] for m in trainer.metrics] == [0.0, 0.03, 0.06]


def test_each_epoch_line_gives_the_learning_rates_it_used(tmp_path, capsys):
    from lsa_fast.training import TrainConfig

    config = TrainConfig(base="fgsm", eps=0.06, epochs=2, batch_size=32, optimizer="adam", lr=0.01,
                         schedule="cosine")
    trainer = _moons_trainer(config, tmp_path / "run")
    trainer.fit()
    first, second = trainer.metrics
    assert first["learning_rate_used"][0] == pytest.approx(0.01)  # the first step's: the peak
    assert second["learning_rate_used"][0] == pytest.approx(0.005)  # half-way through the cosine
    assert second["learning_rate"] == pytest.approx(0.0, abs=1e-12)  # after the epoch, as before
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch 2/2")]
    last_used = f"{second['learning_rate_used'][1]:.3g}"
    assert lines and f"learning rate 0.005 to {last_used}," in lines[0] and last_used != "0"


def test_train_names_a_collapsed_model_once_per_epoch(tmp_path, capsys):
    from lsa_fast.training import TrainConfig

    config = TrainConfig(base="fgsm", eps=0.06, epochs=2, batch_size=32, optimizer="sgd", lr=1e-9, momentum=0.0)
    trainer = _moons_trainer(config, tmp_path / "run")
    last = [module for module in trainer.module.modules() if isinstance(module, torch.nn.Linear)][-1]
    with torch.no_grad():  # one class everywhere; a learning rate of 1e-9 keeps it there
        last.weight.zero_()
        last.bias.fill_(5.0)
    trainer.fit()
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "looks collapsed" in line]
    assert len(warnings) == 2 and warnings[0].startswith("warning: epoch 1: ")
    assert "--eps-warmup-epochs" in warnings[0]


def test_train_names_a_collapsed_model_on_its_validation_split(tmp_path, capsys):
    from lsa_fast.data import load_dataset, make_loader
    from lsa_fast.models import build_model
    from lsa_fast.training import ATLRTrainer, TrainConfig
    from lsa_fast.validation import split_validation

    config = TrainConfig(base="fgsm", eps=0.06, epochs=1, batch_size=32, optimizer="sgd", lr=1e-9, momentum=0.0,
                         val_size=40, lsa_every=0)
    train, validation, _ = split_validation(load_dataset("moons", n_samples=168), 40, seed=0)
    torch.manual_seed(0)
    model = build_model("A")
    last = [module for module in model.modules() if isinstance(module, torch.nn.Linear)][-1]
    with torch.no_grad():  # one class everywhere, and no test split to say so: the validation split does
        last.weight.zero_()
        last.bias.fill_(5.0)
    ATLRTrainer(model, config, make_loader(train, 32, shuffle=True, seed=0), None, out_dir=tmp_path / "run",
                val_set=validation).fit()
    captured = capsys.readouterr()
    said = captured.out + captured.err
    assert "val acc " in said and "(robust " in said
    warnings = [line for line in said.splitlines() if "looks collapsed" in line]
    assert len(warnings) == 1 and "its validation accuracy" in warnings[0]


def test_resume_of_a_finished_run_says_how_to_extend_it_and_touches_no_file(runs, capsys):
    run, _ = runs
    before = {path.name: path.stat().st_mtime_ns for path in run.iterdir()}
    assert cli.main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "already complete (1 epochs)" in out and f"lsa-fast train --resume {run} --epochs 2" in out
    assert {path.name: path.stat().st_mtime_ns for path in run.iterdir()} == before


def test_the_quick_mnist_recipe_learns_on_the_test_subset(mnist_dir, tmp_path, capsys):
    """The README's quick MNIST recipe (eps 0.3 after an eps ramp, PGD-3, Adam), scaled
    down to the 2 000 + 1 000 images of tests/data/mnist: clearly above chance (10 %)."""
    argv = ["train", "--model", "B", "--dataset", "mnist", "--data", str(mnist_dir), "--base", "pgd", "--eps", "0.3",
            "--eps-warmup-epochs", "2", "--steps", "2", "--epochs", "3", "--limit", "1000", "--optimizer", "adam",
            "--learning-rate", "0.001", "--no-progress", "--out", str(tmp_path / "mnist")]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    accuracy = float(captured.out.split("test acc ")[1].split("%")[0])
    assert accuracy > 40.0, captured.err  # 60.9 % here
    assert "eps 0 (ramp)" in captured.err and "looks collapsed" not in captured.err


def test_train_help_ends_with_the_readme_mnist_recipes(capsys):
    from pathlib import Path

    from lsa_fast.commands.recipes import MNIST_QUICK, MNIST_TABLE_3

    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    readme = Path(__file__).resolve().parents[1] / "README.md"
    for command in (MNIST_QUICK, MNIST_TABLE_3):
        assert command in text  # verbatim: the epilog is not re-wrapped
        if readme.is_file():  # (absent beside an installed wheel)
            assert command + "\n" in readme.read_text()
    assert "--eps-warmup-epochs 2" in MNIST_QUICK and "--limit 5000" in MNIST_QUICK


def test_the_demo_says_which_layer_it_regularises_without_contradicting_itself():
    from lsa_fast.analysis import analyze
    from lsa_fast.attacks import make_attack
    from lsa_fast.data import load_dataset
    from lsa_fast.demo import _layers_to_regularise
    from lsa_fast.models import build_model

    torch.manual_seed(0)
    x, y = load_dataset("moons", train=False, n_samples=64).tensors
    attacks = {"fgsm:0.3": make_attack("fgsm", 0.06), "pgd:0.3": make_attack("pgd", 0.06)}
    empty = analyze(build_model("A"), (x, y), attacks, eta=100.0, dataset="moons", progress=False)
    layers, why = _layers_to_regularise(empty, 100.0)
    means = empty.combined.layer_mean
    assert empty.mvl == [] and layers == [means.index(max(means))]
    assert why.startswith("No most vulnerable layer at eta = 100") and "largest mean CM" in why
    found = analyze(build_model("A"), (x, y), attacks, eta=-100.0, dataset="moons", progress=False)
    layers, why = _layers_to_regularise(found, -100.0)
    assert layers == found.mvl == [0, 1, 2] and why.startswith("Most vulnerable layers (pooled adversarial CM")
