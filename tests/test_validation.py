"""Validation split, best.pt, LSA during training and its figure (issue 25, items 2-3):
lsa_fast.validation, lsa_fast.best_checkpoint, lsa_fast.lsa_monitor,
lsa_fast.training_figure and the train / eval / analyze / plot commands."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lsa_fast import cli, reference
from lsa_fast.attacks import fgsm, pgd
from lsa_fast.best_checkpoint import BEST_NAME, BestKeeper, weights_file
from lsa_fast.checkpoint import load_checkpoint, save_checkpoint
from lsa_fast.evaluation import accuracy
from lsa_fast.lsa_monitor import LayerMonitor
from lsa_fast.probes import LayerProbe
from lsa_fast.train_config import TrainConfig
from lsa_fast.validation import check_val_size, split_validation, validation_accuracies

torch.set_num_threads(1)

TRAIN = ["train", "--model", "A", "--dataset", "moons", "--base", "fgsm", "--n-train", "256", "--n-test", "128",
         "--batch-size", "64", "--optimizer", "adam", "--lr", "0.01", "--epochs", "3", "--device", "cpu",
         "--no-progress", "--lr-layers", "1", "--val-size", "64", "--keep-best", "robust"]


def records(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def points(n=200, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=generator)
    return TensorDataset(x, (x[:, 0] * 3).long().clamp(max=2))


# ------------------------------------------------------------------ the split


def test_split_holds_out_a_seeded_disjoint_part_in_original_order():
    data = TensorDataset(torch.arange(100.0).reshape(100, 1), torch.arange(100))
    train, val, record = split_validation(data, 30, seed=3)
    assert len(train) == 70 and len(val) == 30 and record["size"] == 30 and record["seed"] == 3
    kept, held = train.tensors[1].tolist(), val.tensors[1].tolist()
    assert not set(kept) & set(held) and sorted(kept + held) == list(range(100))
    assert kept == sorted(kept) and held == sorted(held)  # original order, labels still with their inputs
    assert torch.equal(val.tensors[0].flatten(), val.tensors[1].float())
    again = split_validation(data, 30, seed=3)
    assert again[1].tensors[1].tolist() == held and again[2] == record
    other = split_validation(data, 30, seed=4)
    assert other[1].tensors[1].tolist() != held and other[2]["indices_sha256"] != record["indices_sha256"]
    assert split_validation(data, 0, seed=3) == (data, None, None)


@pytest.mark.parametrize("size, words", [(-1, ">= 0"), (100, "leaves nothing to train on"), (150, "100 samples")])
def test_bad_val_size_is_one_line(size, words):
    with pytest.raises(ValueError, match=words) as error:
        check_val_size(size, 100)
    assert "\n" not in str(error.value)


def test_validation_accuracies_are_clean_and_pgd10_in_eval_mode():
    model = mlp()
    data = points()
    result = validation_accuracies(model, data, eps=0.1, batch_size=64, seed=5)
    assert result["val_acc"] == pytest.approx(accuracy(model, data.tensors))
    generator = torch.Generator().manual_seed(5)
    correct = 0
    for start in range(0, 200, 64):
        x, y = data.tensors[0][start:start + 64], data.tensors[1][start:start + 64]
        x_hat = pgd(model, x, y, 0.1, steps=10, generator=generator)
        correct += int((model(x_hat).argmax(1) == y).sum())
    assert result["val_robust_acc"] == pytest.approx(100.0 * correct / 200)
    assert result["val_robust_acc"] <= result["val_acc"]
    assert model.training  # the mode is restored


# ------------------------------------------------------------------ best.pt


def test_best_keeper_keeps_the_first_best_and_survives_a_state_round_trip():
    keeper = BestKeeper("robust")
    seen = [keeper.update({"epoch": e, "val_robust_acc": v, "val_acc": 99.0})
            for e, v in enumerate([10.0, 30.0, 30.0, 20.0], start=1)]
    assert seen == [True, True, False, False] and (keeper.epoch, keeper.value) == (2, 30.0)
    restored = BestKeeper("robust")
    restored.load_state_dict(keeper.state_dict())
    assert restored.update({"epoch": 5, "val_robust_acc": 29.0}) is False
    assert restored.update({"epoch": 6, "val_robust_acc": 31.0}) is True
    assert BestKeeper("clean").update({"epoch": 1, "val_robust_acc": 50.0}) is False  # no val_acc: nothing to keep
    assert BestKeeper("none").state_dict() is None


def test_keep_best_without_validation_is_refused():
    with pytest.raises(ValueError, match="--val-size"):
        TrainConfig(keep_best="robust")


# ------------------------------------------------------------------ the monitor


def test_monitor_cm_is_relative_error_of_the_probed_layers():
    model = mlp()
    x, y = points(64).tensors
    config = TrainConfig(base="fgsm", eps=0.1, eta=0.0, epochs=4, lsa_every=2)
    monitor = LayerMonitor(x, y, config, "validation")
    assert monitor.measure(model, 1) == {}  # not due
    measured = monitor.measure(model, 2)
    probe = LayerProbe(model, select="activations")
    x_hat = fgsm(model, x, y, 0.1)
    with torch.no_grad():
        clean, attacked = probe.capture_pair(x, x_hat)
    expected = reference.relative_error(clean, attacked)
    assert measured["layer_cm"] == pytest.approx(expected.mean(0).tolist(), rel=1e-5)
    assert len(measured["layer_cm_noise"]) == 2 and all(v > 0 for v in measured["layer_cm_noise"])
    stats = reference.cm_statistics(expected, 0.0)
    assert measured["layer_mvl"] == torch.nonzero(stats.mvl).flatten().tolist()
    assert monitor.measure(model, 4)  # the last epoch is always measured
    assert monitor.measure(model, 2) == measured  # the same attack draw every time


# ------------------------------------------------------------------ end to end (CLI)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("val") / "run"
    assert cli.main(TRAIN + ["--out", str(out)]) == 0
    return out


def test_train_writes_validation_metrics_layer_cm_best_pt_and_the_figure(run_dir):
    metrics = records(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["val_size"] == 64 and config["keep_best"] == "robust"
    assert config["extra"]["validation"]["size"] == 64
    assert config["extra"]["data_fingerprint"]["validation"]["samples"] == 64
    assert config["extra"]["lsa_monitor"]["batch"] == "validation"
    assert config["extra"]["lsa_monitor"]["samples"] == 64
    layers = len(config["extra"]["lsa_monitor"]["layers"])
    for m in metrics:
        assert 0 <= m["val_robust_acc"] <= m["val_acc"] <= 100
        assert len(m["layer_cm"]) == len(m["layer_cm_noise"]) == layers
        assert all(0 <= l < layers for l in m["layer_mvl"])
    best = max(metrics, key=lambda m: (m["val_robust_acc"], -m["epoch"]))
    assert metrics[-1]["best"] == {"metric": "val_robust_acc", "epoch": best["epoch"], "value": best["val_robust_acc"]}
    state = load_checkpoint(run_dir / BEST_NAME)
    assert state["epoch"] == best["epoch"] and state["best"]["epoch"] == best["epoch"]
    assert (run_dir / "training_lsa.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_keeps_the_best_so_far_and_ends_as_the_uninterrupted_run(run_dir, tmp_path):
    out = tmp_path / "run"
    assert cli.main(TRAIN + ["--out", str(out), "--stop-after-epoch", "1"]) == 0
    assert (out / BEST_NAME).is_file()
    assert cli.main(["train", "--resume", str(out), "--no-progress"]) == 0
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("time_s", "images_per_s")} for m in ms]
    assert strip(records(out)) == strip(records(run_dir))
    assert load_checkpoint(out / BEST_NAME)["epoch"] == load_checkpoint(run_dir / BEST_NAME)["epoch"]


def test_resume_with_another_validation_split_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(TRAIN + ["--out", str(out), "--stop-after-epoch", "1"]) == 0
    state = load_checkpoint(out / "checkpoint.pt")
    state["config"]["extra"]["data_fingerprint"]["validation"]["sha256"] = "0" * 64
    save_checkpoint({k: v for k, v in state.items() if k not in ("path", "format", "version")}, out / "checkpoint.pt")
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(out), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "validation split" in error and "not the data the run recorded" in error


@pytest.mark.parametrize("extra, words", [
    (["--val-size", "-1"], "--val-size must be >= 0"),
    (["--val-size", "256"], "leaves nothing to train on"),
    (["--val-size", "0"], "--keep-best robust chooses by validation accuracy"),
])
def test_bad_validation_options_fail_before_any_work(tmp_path, capsys, extra, words):
    out = tmp_path / "run"
    assert cli.main(TRAIN + ["--out", str(out)] + extra) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert words in lines[-1]
    assert not (out / "checkpoint.pt").exists()


def test_eval_and_analyze_take_weights_best(run_dir, tmp_path, capsys):
    assert cli.main(["eval", "--checkpoint", str(run_dir), "--weights", "best", "--device", "cpu"]) == 0
    assert "R&G" in capsys.readouterr().out
    assert cli.main(["analyze", "--checkpoint", str(run_dir), "--weights", "best", "--device", "cpu",
                     "--perturbations", "fgsm:0.1", "--out", str(tmp_path / "lsa"), "--no-progress"]) == 0
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("final.pt", "config.json"):
        (plain / name).write_bytes((run_dir / name).read_bytes())
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(plain), "--weights", "best", "--device", "cpu"]) == 2
    assert "holds no best.pt" in capsys.readouterr().err
    assert weights_file(plain, "final") == plain / "final.pt"


def test_plot_command_writes_the_figure(run_dir, tmp_path, capsys):
    out = tmp_path / "figs" / "fig.png"
    assert cli.main(["plot", str(run_dir), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["plot", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_real_mnist_run_writes_best_pt_layer_cm_and_the_figure(mnist_dir, tmp_path):
    out = tmp_path / "mnist"
    assert cli.main(["train", "--model", "B", "--dataset", "mnist", "--data", str(mnist_dir), "--limit", "192",
                     "--base", "fgsm", "--epochs", "1", "--batch-size", "64", "--optimizer", "adam", "--device",
                     "cpu", "--no-progress", "--val-size", "64", "--keep-best", "robust", "--out", str(out)]) == 0
    metrics = records(out)
    assert len(metrics[0]["layer_cm"]) == 4 and metrics[0]["samples"] == 128  # model B: four ReLUs
    assert (out / BEST_NAME).is_file() and (out / "training_lsa.png").is_file()


class FunctionalReLU(nn.Module):
    """No activation module: nothing for the default probes to hook."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_a_model_without_probe_points_trains_without_the_monitor():
    from lsa_fast.data import make_loader
    from lsa_fast.training import ATLRTrainer

    torch.manual_seed(0)
    data = points(64)
    config = TrainConfig(base="none", epochs=1, batch_size=32, optimizer="adam")
    with pytest.warns(UserWarning, match="LSA during training is off"):
        trainer = ATLRTrainer(FunctionalReLU(), config, make_loader(data, 32), make_loader(data, 32), device="cpu")
    record = trainer.fit().metrics[0]
    assert "layer_cm" not in record and "test_acc" in record and "lsa_monitor" not in config.extra
