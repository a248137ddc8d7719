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
from lsa_fast.progress import BatchProgress, format_duration

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


def test_durations_read_as_people_write_them():
    assert format_duration(3.25) == "3.2 s"
    assert format_duration(125) == "2 min 05 s"
    assert format_duration(7300) == "2 h 01 min"


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
