"""Every `lsa-fast` command checks its output location and --device before any work
(one line, exit 2), writes its files 0644, says what a file is when it is not a
checkpoint, warns when an attack did not move the inputs, builds models through one
factory with --model-option, and prints speeds that never read "0 img/s"."""
import json
import os
import pickle
import stat

import numpy as np
import pytest
import torch

from cli_errors import one_error
from lsa_fast import cli
from lsa_fast.checkpoint import load_checkpoint
from lsa_fast.models import CIFAR10_MEAN, CIFAR10_STD, build_model
from lsa_fast.training import format_throughput

torch.set_num_threads(1)

TRAIN = ["train", "--model", "A", "--dataset", "moons", "--base", "fgsm", "--n-train", "128", "--n-test", "64",
         "--batch-size", "64", "--optimizer", "adam", "--lr", "0.01", "--epochs", "1", "--device", "cpu",
         "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert cli.main(TRAIN + ["--out", str(out)]) == 0
    return out


# ------------------------------------------------------------ outputs, before work


def test_unusable_outputs_are_one_line_before_any_work(tmp_path, capsys, run):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    # --data points nowhere: had the command started its work, that would be the error.
    nowhere = ["--data", str(tmp_path / "no-data")]
    cases = [
        (["analyze", "--model", "B", "--out", str(a_file)] + nowhere, "exists and is not a directory"),
        (["train", "--model", "B", "--out", str(a_file)] + nowhere, "exists and is not a directory"),
        (["train", "--model", "B", "--out", str(a_file / "run")] + nowhere,
         f"{a_file} is a file, so nothing can be written inside it"),
        (["reproduce", "mnist", "--out", str(a_file)] + nowhere, "exists and is not a directory"),
        (["demo", "--out", str(a_file)], "exists and is not a directory"),
        (["eval", "--checkpoint", str(run), "--out", str(tmp_path)] + nowhere, "is a directory; --out names a file"),
        (["eval", "--checkpoint", str(run), "--out", str(a_file / "t.json")] + nowhere, "is a file"),
        (["eval", "--checkpoint", str(run), "--attack", "autoattack", "--eps", "0.3", "--out", str(tmp_path)]
         + nowhere, "is a directory; --out names a file"),
        (["eval", "--checkpoint", str(run), "--attack", "autoattack", "--eps", "0.3", "--out",
          str(a_file / "t.json")] + nowhere, "is a file"),
    ]
    for argv, message in cases:
        one_error(capsys, cli.main(argv), message, f"lsa-fast {argv[0]}: error: --out")
    # A report file of analyze that is a directory.
    (tmp_path / "lsa" / "report.json").mkdir(parents=True)
    one_error(capsys, cli.main(["analyze", "--model", "B", "--out", str(tmp_path / "lsa")] + nowhere),
              "report.json is a directory, so the report.json cannot be written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "lsa"]  # nothing was created


# ------------------------------------------------------------------- devices


def test_device_is_checked_the_same_way_by_every_command(tmp_path, capsys, run):
    commands = [TRAIN + ["--out", str(tmp_path / "t")],
                ["eval", "--checkpoint", str(run)],
                ["eval", "--checkpoint", str(run), "--attack", "autoattack", "--eps", "0.3"],
                ["analyze", "--model", "A", "--out", str(tmp_path / "a")],
                ["reproduce", "moons", "--quick", "--out", str(tmp_path / "r")],
                ["demo", "--quick", "--out", str(tmp_path / "d")]]
    missing = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    why = "CUDA is not available on this machine" if not torch.cuda.is_available() else "this machine has"
    for argv in commands:
        one_error(capsys, cli.main(argv + ["--device", "gpu0"]),
                  "--device 'gpu0': not a device; use auto, cpu, cuda or cuda:N")
        one_error(capsys, cli.main(argv + ["--device", missing]), f"--device {missing}: {why}")
    assert list(tmp_path.iterdir()) == []  # reproduce wrote no runs.jsonl, nobody made a directory


# ------------------------------------------------------------------- files


def test_eval_table_is_0644_whatever_the_umask(tmp_path, capsys, run):
    previous = os.umask(0o077)
    try:
        assert cli.main(["eval", "--checkpoint", str(run), "--eps-grid", "0,0.1", "--out",
                         str(tmp_path / "sub" / "table.json")]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "sub" / "table.json").stat().st_mode) == 0o644
    assert json.loads((tmp_path / "sub" / "table.json").read_text())["eps_grid"] == [0.0, 0.1]


def test_eval_refuses_more_samples_than_the_test_set_holds(capsys, run):
    one_error(capsys, cli.main(["eval", "--checkpoint", str(run), "--eps-grid", "0", "--limit", "65"]),
              "--n-examples 65: more than the 64 samples of the test set")


def test_a_file_that_is_not_a_checkpoint_is_named_for_what_it_is(tmp_path, capsys, run):
    lsa = tmp_path / "run-lsa"
    assert cli.main(["analyze", "--checkpoint", str(run), "--perturbations", "fgsm:0.1", "--limit", "32",
                     "--out", str(lsa), "--no-progress"]) == 0
    capsys.readouterr()
    report = lsa / "report.json"
    for argv in (["eval", "--checkpoint", str(report)],
                 ["analyze", "--checkpoint", str(report), "--out", str(tmp_path / "x")],
                 ["train", "--resume", str(report)]):
        err = one_error(capsys, cli.main(argv), f"{report}: a JSON file (an LSA report of lsa-fast analyze",
                        "not a checkpoint; expected a checkpoint written by lsa-fast train")
        assert "weights_only" not in err and "file an issue" not in err


# --------------------------------------------------------------------- analyze


def test_analyze_warns_when_the_attack_leaves_the_inputs_unchanged(tmp_path, capsys):
    dead = build_model("A")
    with torch.no_grad():
        for name, tensor in dead.named_parameters():
            if name.endswith("weight"):
                tensor.zero_()  # a collapsed model: constant logits, input gradient exactly 0
    torch.save(dead.state_dict(), tmp_path / "dead.pt")
    torch.save(build_model("A").state_dict(), tmp_path / "alive.pt")
    argv = ["analyze", "--model", "A", "--perturbations", "fgsm:0.1,pgd:0.1,gaussian:0.1", "--limit", "64",
            "--no-progress"]

    assert cli.main(argv + ["--checkpoint", str(tmp_path / "dead.pt"), "--out", str(tmp_path / "dead")]) == 0
    err = capsys.readouterr().err
    for attack in ("fgsm:0.1", "pgd:0.1"):
        assert (f"lsa-fast analyze: warning: {attack} left the input or the logits of 100% of the 64 "
                f"samples exactly unchanged, so its CM values say nothing about the layers") in err
    assert "gaussian:0.1 left" not in err  # noise is not an attack that could have moved it
    assert err.count("the model looks collapsed") == 1  # a constant classifier, named once
    report = json.loads((tmp_path / "dead" / "report.json").read_text())
    assert len(report["warnings"]) == 2 and report["perturbations"][0]["unmoved"] == 1.0
    assert "**Warning**: fgsm:0.1 left the input" in (tmp_path / "dead" / "report.md").read_text()

    assert cli.main(argv + ["--checkpoint", str(tmp_path / "alive.pt"), "--out", str(tmp_path / "alive")]) == 0
    assert "left the input" not in capsys.readouterr().err
    report = json.loads((tmp_path / "alive" / "report.json").read_text())
    assert report["warnings"] == [] and report["perturbations"][0]["unmoved"] == 0.0


# ------------------------------------------------------------- model factory


def write_cifar(folder, per_batch=4):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        batch = {b"labels": rng.integers(0, 10, per_batch).tolist(),
                 b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def test_one_model_factory_with_model_options(tmp_path, capsys):
    # Model D as lsa-fast reproduce builds it (CIFAR-10 normalisation inside), smaller by options.
    write_cifar(tmp_path / "cifar")
    out = tmp_path / "wrn"
    assert cli.main(["train", "--model", "D", "--model-option", "depth=10", "--model-option", "widen_factor=1",
                     "--data", str(tmp_path / "cifar"), "--base", "none", "--epochs", "1", "--batch-size", "8",
                     "--device", "cpu", "--no-progress", "--out", str(out)]) == 0
    state = load_checkpoint(out / "final.pt")
    assert state["config"]["dataset"] == "cifar10"
    assert state["config"]["model_kwargs"] == {"normalize": [list(CIFAR10_MEAN), list(CIFAR10_STD)], "depth": 10,
                                               "widen_factor": 1}
    assert state["model"]["normalize.mean"].tolist() == pytest.approx(list(CIFAR10_MEAN))
    assert state["model"]["block1.0.conv1.weight"].shape[0] == 16  # widen_factor 1
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(out), "--eps-grid", "0"]) == 0  # rebuilt from the record

    out = tmp_path / "small-a"
    assert cli.main(TRAIN + ["--model-option", "hidden=16", "--out", str(out)]) == 0
    assert load_checkpoint(out / "final.pt")["model"]["fc1.weight"].shape == (16, 2)
    capsys.readouterr()
    one_error(capsys, cli.main(TRAIN + ["--model-option", "depth=3", "--out", str(tmp_path / "x")]),
              "--model-option depth: model A takes no option 'depth'; its options: in_features, hidden, normalize")
    one_error(capsys, cli.main(TRAIN + ["--model-option", "hidden", "--out", str(tmp_path / "x")]),
              "--model-option 'hidden': expected KEY=VALUE")
    # Weights of a model built without normalisation: the error says which option fits them.
    torch.save(build_model("D", depth=10, widen_factor=1).state_dict(), tmp_path / "plain.pt")
    small_d = ["--model", "D", "--model-option", "depth=10", "--model-option", "widen_factor=1"]
    one_error(capsys, cli.main(["analyze", "--checkpoint", str(tmp_path / "plain.pt"), "--out", str(tmp_path / "x")]
                               + small_d), "add --model-option normalize=none")
    assert cli.main(["analyze", "--checkpoint", str(tmp_path / "plain.pt"), "--out", str(tmp_path / "lsa-d"),
                     "--data", str(tmp_path / "cifar"), "--perturbations", "fgsm:0.03", "--no-progress",
                     "--model-option", "normalize=none"] + small_d) == 0
    capsys.readouterr()
    # A WideResNet implies CIFAR-10, as in analyze: the error is the missing data, not --dataset.
    one_error(capsys, cli.main(["train", "--model", "wrn-28-10", "--data", str(tmp_path / "none"), "--out",
                                str(tmp_path / "x")]), "CIFAR-10 (train split): missing")


def test_reproduce_builds_its_models_with_the_same_factory():
    from lsa_fast.paper import paper_table
    from lsa_fast.reproduce import ReproduceSettings, variants
    from lsa_fast.reproduce.running import _train_config

    table = paper_table("cifar10")
    settings = ReproduceSettings.defaults("cifar10")
    configs = {row.model: _train_config(table, row, 0, settings, {}) for row in variants(table, settings)}
    normalize = [list(CIFAR10_MEAN), list(CIFAR10_STD)]
    assert configs["C"].model_kwargs == {"normalize": normalize}
    assert configs["D"].model_kwargs == {"normalize": normalize, "depth": 34, "widen_factor": 10}


# ----------------------------------------------------------------- throughput


def test_slow_epochs_show_seconds_per_image(tmp_path, monkeypatch, capsys):
    (tmp_path / "slow_model.py").write_text(
        "import time\nfrom torch import nn\n\n"
        "class Slow(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(2, 1)\n\n"
        "    def forward(self, x):\n"
        "        if self.training:\n            time.sleep(2.2)  # one training image: 0.45 img/s\n"
        "        return self.fc(x)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main(["train", "--model", "slow_model:Slow", "--dataset", "moons", "--base", "none", "--n-train", "1",
                     "--n-test", "4", "--batch-size", "1", "--epochs", "1", "--device", "cpu", "--no-progress",
                     "--out", str(tmp_path / "run")]) == 0
    epoch_line = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch 1/1"))
    assert epoch_line.endswith(" s/img") and "0 img/s" not in epoch_line
    assert float(epoch_line.rsplit(", ", 1)[1].split()[0]) >= 2.2


@pytest.mark.parametrize("rate,text", [(0.45, "2.2 s/img"), (0.01, "100 s/img"), (1.0, "1 img/s"),
                                       (12.34, "12.3 img/s"), (1234.4, "1234 img/s"), (0.0, "0 img/s")])
def test_format_throughput(rate, text):
    assert format_throughput(rate) == text
