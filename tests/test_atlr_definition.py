"""AT-LR as the authors define it (issue 14): the probe points are the activation
outputs by default (analyze, train, the regulariser), Lk names the layer the paper's
figures name on models A-D (the authors' package counts the same calls), old configs
keep their hidden-layer indices, the regulariser's gradient paths are a recorded
option, standardized Moons are recorded and rebuilt exactly, and a constant
classifier is recognised."""
import json

import pytest
import torch
from torch import nn

from lsa_fast import cli
from lsa_fast import train_loss as training
from lsa_fast.analysis import analyze, eps_to_input_units
from lsa_fast.data import load_dataset, make_loader, moons_standardization
from lsa_fast.evaluation import constant_prediction, evaluate
from lsa_fast.models import build_model, model_options
from lsa_fast.probes import LayerProbe
from lsa_fast.run_data import load_split, moons_units, record
from lsa_fast.training import ATLRTrainer, TrainConfig
from train_loader import make_train_loader

torch.set_num_threads(1)

TINY_TRAIN = ["train", "--model", "A", "--dataset", "moons", "--base", "fgsm", "--n-train", "128", "--n-test", "64",
              "--batch-size", "64", "--optimizer", "adam", "--lr", "0.01", "--epochs", "1", "--device", "cpu",
              "--no-progress"]


@pytest.fixture(scope="module")
def moons():
    return load_dataset("moons", train=True, n_samples=256), load_dataset("moons", train=False, n_samples=128)


# ---------------------------------------------------------------- probe points


# Per model: the authors' probe points (activation modules, in call order) and the
# Conv/Linear outputs but the last ("hidden"): how many, and the first ones (the paper's L0, L1, ...).
MODELS = {
    "A": ({}, (2,), 3, ["act1", "act2", "act3"], 3, ["fc1", "fc2"]),
    "B": ({}, (1, 28, 28), 4, ["relu1", "relu2", "relu3", "relu4"], 4, ["conv1", "conv2"]),
    "C": ({}, (3, 32, 32), 16, ["features.relu1_1", "features.relu1_2"], 16, ["features.conv1_1", "features.conv1_2"]),
    # WRN-34-2 (width 2 keeps the test fast; from width 2 on the layers are those of
    # WRN-34-10, three 1x1 shortcut convolutions included): two
    # ReLU calls per block (15 blocks) and the last one; the 1x1 shortcut convolutions
    # are no activations, so they shift nothing.
    "D": ({"depth": 34, "widen_factor": 2}, (3, 32, 32), 31, ["block1.0.relu1", "block1.0.relu2"], 34,
          ["conv1", "block1.0.conv1"]),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_lk_names_the_papers_layer_on_models_a_to_d(name):
    kwargs, shape, n_act, first_act, n_hidden, first_hidden = MODELS[name]
    torch.manual_seed(0)
    model = build_model(name, **model_options(name, kwargs)).eval()
    x = torch.rand(2, *shape)
    activations = LayerProbe(model, select="activations")
    outputs = activations.capture(x)
    assert len(outputs) == n_act and activations.names[:len(first_act)] == first_act
    assert all(isinstance(m, (nn.ReLU, nn.ELU)) for m in activations.modules)
    hidden = LayerProbe(model, select="hidden")
    hidden.capture(x)
    assert len(hidden.names) == n_hidden and hidden.names[:len(first_hidden)] == first_hidden
    if name == "D":
        assert activations.names[-1] == "relu"
        assert sum("shortcut" in n for n in hidden.names) == 3  # counted by "hidden" only

    # The authors' package records the same calls in the same order: its layer k is ours.
    reference = pytest.importorskip("LayerSustainabilityAnalysis")
    theirs = reference.LayerSustainabilityAnalysis(model).representation_tensors(x, verbose=False)
    assert len(theirs) == n_act
    for ours, their in zip(outputs, theirs):
        torch.testing.assert_close(ours, their.detach())


def test_analyze_and_the_trainer_default_to_the_activation_outputs(moons):
    train, test = moons
    model = build_model("A")
    report = analyze(model, make_loader(test, 64), ["fgsm:0.02"], progress=False)
    assert report.layer_names == ["act1", "act2", "act3"] and report.select == "activations"
    assert TrainConfig().probes == "activations"
    config = TrainConfig(base="fgsm", eps=0.02, lr_layers=[0], epochs=1, batch_size=64)
    trainer = ATLRTrainer(build_model("A"), config, make_train_loader(train, config))
    assert trainer.probe_names == ["act1", "act2", "act3"]


def test_old_configs_keep_their_hidden_layer_indices(moons):
    train, _ = moons
    old = TrainConfig(base="fgsm", eps=0.02, lr_layers=[1], epochs=1, batch_size=64).to_dict()
    del old["probes"], old["lr_grad"]  # what a run wrote before the fields existed
    config = TrainConfig.from_dict(old)
    assert config.probes == "hidden" and config.lr_grad == "both"  # their meaning then
    trainer = ATLRTrainer(build_model("A"), config, make_train_loader(train, config))
    assert trainer.probe_names == ["fc1", "fc2", "fc3"]
    # A config that records its preset keeps it.
    assert TrainConfig.from_dict(TrainConfig(probes="activations").to_dict()).probes == "activations"
    with pytest.raises(ValueError, match="probes"):
        TrainConfig(probes="convs")


def test_analyze_command_follows_the_runs_recorded_preset(tmp_path, capsys):
    torch.manual_seed(0)
    model = build_model("A")
    for probes, names in (("hidden", "fc1"), (None, "act1")):
        checkpoint = tmp_path / f"{probes}.pt"
        config = {"model": "A", "dataset": "moons", **({"probes": probes} if probes else {})}
        torch.save({"model": model.state_dict(), "config": config}, checkpoint)
        out = tmp_path / f"out-{probes}"
        assert cli.main(["analyze", "--checkpoint", str(checkpoint), "--limit", "32", "--perturbations", "fgsm:0.1",
                         "--out", str(out), "--no-progress"]) == 0
        report = json.loads((out / "report.json").read_text())
        assert report["layer_names"][0] == names
    capsys.readouterr()


# ---------------------------------------------------------------- lr_grad


def test_lr_grad_is_plumbed_to_the_regulariser_and_recorded(moons, monkeypatch):
    train, _ = moons
    with pytest.raises(ValueError, match="lr_grad"):
        TrainConfig(lr_grad="clean")
    seen = []
    original = training.layerwise_regularizer

    def recording(*args, **kwargs):
        seen.append(kwargs.get("lr_grad"))
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "layerwise_regularizer", recording)
    for mode in ("both", "adversarial", "numerator"):
        config = TrainConfig(base="fgsm", eps=0.02, lr_layers=[2], lr_grad=mode, epochs=1, batch_size=64)
        assert config.to_dict()["lr_grad"] == mode
        trainer = ATLRTrainer(build_model("A"), config, make_train_loader(train, config))
        x, y = train.tensors[0][:64], train.tensors[1][:64]
        trainer.compute_loss(x, y)
        assert seen[-1] == mode


def test_train_command_records_probes_lr_grad_and_standardized_moons(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(TINY_TRAIN + ["--lr-layers", "1", "--lr-grad", "adversarial", "--probes", "hidden",
                                  "--standardize", "--eps", "0.3", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["lr_grad"] == "adversarial" and config["probes"] == "hidden" and config["lr_layers"] == [1]
    mean, std = moons_standardization(128, 0.2, 0)
    assert config["data_options"]["standardize"] == {"mean": mean, "std": std}
    assert config["data_options"]["unit_map"] == {"low": [-5.0, -5.0], "scale": 10.0}
    assert config["model_kwargs"] == {"normalize": "moons-standardized"}  # model A sees the z-scores
    assert config["eps"] == pytest.approx(0.03)  # 0.3 z units
    capsys.readouterr()

    # eval rebuilds the standardized test set: its table is the model's on that data.
    assert cli.main(["eval", "--checkpoint", str(out), "--eps", "0,0.3", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "standardized z = " in captured.err
    model = build_model("A", **config["model_kwargs"])
    model.load_state_dict(torch.load(out / "final.pt", weights_only=True)["model"])
    test = load_split("moons", config["data_options"], train=False)
    expected = evaluate(model.eval(), make_loader(test, 256), "fgsm", [0.0, 0.03], row="x").rows["x"]
    assert f"| {' | '.join(f'{a:.2f}' for a in expected)} |" in captured.out


# ---------------------------------------------------------------- standardized moons


def test_standardized_moons_are_z_scored_with_the_training_split():
    options = record("moons", {"n_train": 500, "n_test": 300, "noise": 0.2, "seed": 3, "standardize": True})
    assert moons_units(options) == "standardized" and moons_units(record("moons", {})) == "raw"
    train = load_split("moons", options, train=True).tensors[0].double()
    test = load_split("moons", options, train=False).tensors[0].double()
    z_train, z_test = train * 10 - 5, test * 10 - 5  # the inverse of the standardized unit map
    torch.testing.assert_close(z_train.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(z_train.std(0, correction=0), torch.ones(2, dtype=torch.float64), atol=1e-6, rtol=0)
    # The test split goes through the training split's statistics, not its own.
    raw_test = load_dataset("moons", train=False, n_samples=300, noise=0.2, seed=3, to_unit=False).tensors[0].double()
    mean, std = (torch.tensor(v, dtype=torch.float64) for v in moons_standardization(500, 0.2, 3))
    torch.testing.assert_close(z_test, (raw_test - mean) / std, atol=1e-5, rtol=0)
    assert eps_to_input_units("moons", 0.3, moons_units="standardized") == pytest.approx(0.03)
    # A record whose map differs from this lsa_fast's would feed the models other inputs.
    with pytest.raises(ValueError, match="mapped into"):
        load_split("moons", {**options, "unit_map": {"low": [-2.0, -2.25], "scale": 5.0}}, train=False)


# ---------------------------------------------------------------- collapse


def test_constant_prediction_recognises_a_collapsed_classifier(moons):
    _, test = moons
    collapsed = nn.Sequential(nn.Linear(2, 1))
    with torch.no_grad():
        collapsed[0].weight.zero_()
        collapsed[0].bias.fill_(-3.0)  # one logit < 0: class 0 everywhere
    assert constant_prediction(collapsed, make_loader(test, 50)) == 0
    torch.manual_seed(0)
    varied = nn.Sequential(nn.Linear(2, 1))
    with torch.no_grad():
        varied[0].weight.copy_(torch.tensor([[10.0, 0.0]]))
        varied[0].bias.fill_(-5.0)  # the sign changes across x1 in [0, 1]
    assert constant_prediction(varied, make_loader(test, 50)) is None
