"""Checkpoints: atomic files that torch.load(weights_only=True) reads, clear errors for
truncated and foreign files, exact resume (bit for bit on CPU) between epochs and
after a SIGTERM inside an epoch, and the CLI end to end (train, resume, eval)."""
import json
import random
import signal

import numpy as np
import pytest
import torch

from lsa_fast import cli
from lsa_fast.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from lsa_fast.data import load_dataset, make_loader
from lsa_fast.models import build_model
from lsa_fast.training import ATLRTrainer, TrainConfig
from train_loader import make_train_loader

torch.set_num_threads(1)

CONFIG = dict(base="pgd", eps=0.06, steps=3, lr_layers=[1, 2], gammas=[0.1, 0.2], epochs=4, batch_size=64,
              optimizer="sgd", lr=0.05, schedule="piecewise", seed=3)


@pytest.fixture(scope="module")
def moons():
    return load_dataset("moons", n_samples=256, seed=0), load_dataset("moons", train=False, n_samples=256, seed=0)


def trainer_for(moons, out_dir, init_seed=0, loader="sampler", **overrides):
    train, test = moons
    config = TrainConfig(**{**CONFIG, **overrides})
    torch.manual_seed(init_seed)
    model = build_model("A")
    if loader == "sampler":
        train_loader = make_train_loader(train, config)
    else:  # a plain shuffling DataLoader whose order comes from its generator
        train_loader = make_loader(train, 64, shuffle=True, seed=11)
    return ATLRTrainer(model, config, train_loader, make_loader(test, 256), out_dir=out_dir)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def strip_times(metrics):
    return [{k: v for k, v in m.items() if k not in ("time_s", "images_per_s")} for m in metrics]


# ------------------------------------------------------------------- resume


def test_resume_between_epochs_is_bitwise_identical(moons, tmp_path):
    full = trainer_for(moons, tmp_path / "full")
    full.fit()

    first = trainer_for(moons, tmp_path / "split")
    result = first.fit(stop_after_epoch=2)
    assert result.epochs_completed == 2 and not (tmp_path / "split" / "final.pt").exists()
    # Fresh weights (another init seed): everything must come from the checkpoint.
    second = trainer_for(moons, tmp_path / "split", init_seed=99)
    second.resume(tmp_path / "split")
    assert second.epoch == 2
    second.fit()

    assert_same_weights(full.module.state_dict(), second.module.state_dict())
    assert strip_times(full.metrics) == strip_times(second.metrics)
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
    final = load_checkpoint(tmp_path / "split")  # a directory resolves to its final.pt
    assert final["path"].endswith("final.pt") and final["epoch"] == 4
    assert_same_weights(final["model"], full.module.state_dict())


def test_sigterm_inside_an_epoch_checkpoints_and_resumes_exactly(moons, tmp_path):
    full = trainer_for(moons, tmp_path / "full", loader="plain", epochs=3, lsa_every=0)
    full.fit()

    # lsa_every=0: the per-epoch LSA monitor's forwards would move call 22 (the run's results do not
    # depend on it: the monitor runs after the epoch, on its own generator).
    interrupted = trainer_for(moons, tmp_path / "cut", loader="plain", epochs=3, lsa_every=0)
    calls = {"n": 0}

    def send_sigterm(module, inputs, output):
        calls["n"] += 1
        # 4 complete forwards per batch (3 PGD steps, the adversarial pass; the clean pass
        # stops early): call 22 is in batch 2 of epoch 2 (4 batches per epoch).
        if calls["n"] == 22:
            signal.raise_signal(signal.SIGTERM)

    handle = interrupted.module.register_forward_hook(send_sigterm)
    result = interrupted.fit()
    handle.remove()
    assert result.interrupted and result.final is None
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert state["epoch"] == 1 and state["step_in_epoch"] == 2

    resumed = trainer_for(moons, tmp_path / "cut", loader="plain", epochs=3, init_seed=5, lsa_every=0)
    resumed.resume(tmp_path / "cut")
    assert resumed.fit().epochs_completed == 3
    assert_same_weights(full.module.state_dict(), resumed.module.state_dict())
    assert strip_times(full.metrics) == strip_times(resumed.metrics)


def test_resume_with_another_configuration_is_refused(moons, tmp_path):
    trainer_for(moons, tmp_path / "run", epochs=1).fit()
    other = trainer_for(moons, tmp_path / "other", epochs=1, lr=0.5)
    with pytest.raises(ValueError, match="different configuration.*lr"):
        other.resume(tmp_path / "run")


# ----------------------------------------------------------------- the files


def test_checkpoint_is_atomic_and_loads_with_weights_only(tmp_path):
    path = tmp_path / "sub" / "c.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "config": {"base": "fgsm"}, "epoch": 1,
                     "rng": [capture_rng_state({"g": torch.Generator().manual_seed(1)})]}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.pt"]  # no temporary left behind
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "lsa_fast.checkpoint" and raw["epoch"] == 1
    assert load_checkpoint(path)["model"]["w"].tolist() == [1.0, 1.0]


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"model": {"w": torch.randn(1000)}, "config": {}, "epoch": 0}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"c\.pt: truncated"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"c\.pt: empty file"):
        load_checkpoint(path)


@pytest.mark.parametrize("content,message", [
    ({"w": torch.ones(1)}, "not an lsa_fast checkpoint"),
    (torch.ones(3), "not an lsa_fast checkpoint"),
    ({"format": "lsa_fast.checkpoint", "version": 1, "epoch": 0}, "missing"),
    ({"format": "lsa_fast.checkpoint", "version": 7, "model": {}, "config": {}, "epoch": 0}, "version 7"),
])
def test_foreign_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "foreign.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match=rf"foreign\.pt: .*{message}"):
        load_checkpoint(path)


def test_pickled_objects_and_text_files_are_refused(tmp_path):
    pickled = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole module: needs unsafe unpickling
    with pytest.raises(ValueError, match=r"module\.pt: refusing to load"):
        load_checkpoint(pickled)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match=r"notes\.pt: a text file \(17 bytes\), not a checkpoint; expected"):
        load_checkpoint(text)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        load_checkpoint(tmp_path)


def test_rng_state_round_trip(tmp_path):
    generator = torch.Generator().manual_seed(5)
    state = capture_rng_state({"attack": generator})
    save_checkpoint({"model": {}, "config": {}, "epoch": 0, "rng": [state]}, tmp_path / "r.pt")
    draws = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=generator))
    restore_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"][0], {"attack": generator})
    again = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=generator))
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1])
    assert draws[2] == again[2] and torch.equal(draws[3], again[3])


# ----------------------------------------------------------------------- CLI

TRAIN = ["train", "--model", "A", "--dataset", "moons", "--base", "fast", "--lr-layers", "2", "--gamma", "0.1",
         "--eps", "0.3", "--n-train", "256", "--n-test", "256", "--batch-size", "64", "--optimizer", "adam",
         "--lr", "0.01", "--epochs", "3", "--no-progress"]


def test_cli_train_resume_and_eval(tmp_path, capsys):
    assert cli.main(TRAIN + ["--out", str(tmp_path / "full")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("AT-FAST-LR-L2: test acc") and str(tmp_path / "full" / "final.pt") in last

    assert cli.main(TRAIN + ["--out", str(tmp_path / "split"), "--stop-after-epoch", "1"]) == 0
    assert "--resume" in capsys.readouterr().out
    # The same command line again with --resume appended is accepted; a changed one is not.
    assert cli.main(TRAIN + ["--lr", "0.5", "--resume", str(tmp_path / "split")]) == 2
    assert "--learning-rate: 0.5 (the run has 0.01)" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(tmp_path / "split"), "--epochs", "2"]) == 2  # raising extends
    assert "--epochs: 2 (the run has 3; raise it to extend the run)" in capsys.readouterr().err
    assert cli.main(TRAIN + ["--resume", str(tmp_path / "split")]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(tmp_path / "split")]) == 0  # complete: says so
    assert "already complete" in capsys.readouterr().out
    assert_same_weights(load_checkpoint(tmp_path / "full" / "final.pt")["model"],
                        load_checkpoint(tmp_path / "split" / "final.pt")["model"])
    config = json.loads((tmp_path / "split" / "config.json").read_text())
    assert config["eps"] == pytest.approx(0.06) and config["extra"]["eps_dataset_units"] == 0.3

    assert cli.main(TRAIN + ["--out", str(tmp_path / "full")]) == 2  # would overwrite a run
    assert "already holds a run" in capsys.readouterr().err

    table = tmp_path / "eval.json"
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "split"), "--eps-grid", "0,0.1,0.2",
                     "--limit", "128", "--out", str(table)]) == 0
    out = capsys.readouterr().out
    assert "| Method | 0 | 0.1 | 0.2 | R&G |" in out and "| AT-FAST-LR-L2 |" in out
    saved = json.loads(table.read_text())
    assert saved["eps_grid"] == [0.0, 0.1, 0.2]
    assert out.strip().splitlines()[-1] == f"R&G = {saved['rg']['AT-FAST-LR-L2']:.2f}"


def test_cli_errors_are_clean(tmp_path, capsys):
    assert cli.main(TRAIN + ["--out", str(tmp_path / "x"), "--lr-layers", "5"]) == 2
    assert "layer index 5 is outside the 3 probe points" in capsys.readouterr().err
    assert not (tmp_path / "x" / "checkpoint.pt").exists()
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "nothing.pt")]) == 2
    assert "nothing.pt" in capsys.readouterr().err


def test_a_generator_state_of_another_device_type_is_left_and_reported():
    """A run saved on one device type and resumed on another: the attack generator's
    saved state does not fit (a CUDA state is 16 bytes, a CPU one 5056); it is reported,
    not forced (torch: 'RNG state is wrong size')."""
    from lsa_fast.checkpoint import capture_rng_state, restore_rng_state

    gen = torch.Generator().manual_seed(3)
    state = capture_rng_state({"attack": gen})
    assert restore_rng_state(state, {"attack": torch.Generator()}) == []
    state["generators"]["attack"] = torch.zeros(16, dtype=torch.uint8)  # as a CUDA generator's state
    other = torch.Generator().manual_seed(5)
    before = other.get_state()
    assert restore_rng_state(state, {"attack": other}) == ["attack"]
    assert torch.equal(other.get_state(), before)


@pytest.mark.cuda
def test_a_cpu_run_resumes_on_cuda(tmp_path):
    from lsa_fast import cli

    common = ["--model", "A", "--dataset", "moons", "--base", "fgsm", "--n-train", "128", "--n-test", "64",
              "--batch-size", "32", "--optimizer", "adam", "--epochs", "2", "--no-progress"]
    assert cli.main(["train", *common, "--device", "cpu", "--stop-after-epoch", "1", "--out", str(tmp_path / "r")]) == 0
    with pytest.warns(UserWarning, match="another device type"):
        assert cli.main(["train", "--resume", str(tmp_path / "r"), "--device", "cuda", "--no-progress"]) == 0
    assert (tmp_path / "r" / "final.pt").is_file()
