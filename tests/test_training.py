"""AT-LR trainer (Algorithm 3): every base +/- the regulariser learns Moons, the
regulariser's gradient flows through both branches, the clean forward stops early,
and bad configurations fail before any training."""
import json

import pytest
import torch

import lsa_fast.train_loss as training
from lsa_fast import reference
from lsa_fast.data import load_dataset, make_loader
from lsa_fast.models import build_model
from lsa_fast.schedules import lr_multiplier
from lsa_fast.analysis import eps_to_input_units
from lsa_fast.training import ATLRTrainer, TrainConfig, run_name
from train_loader import make_train_loader

torch.set_num_threads(1)

EPS = eps_to_input_units("moons", 0.3)  # the paper's Moons eps, in input units


@pytest.fixture(scope="module")
def moons():
    return (load_dataset("moons", n_samples=256, seed=0),
            load_dataset("moons", train=False, n_samples=512, seed=0))


def make_trainer(moons, seed=0, model=None, **overrides):
    train, test = moons
    options = dict(base="pgd", eps=EPS, steps=3, epochs=4, batch_size=64, optimizer="adam", lr=1e-2,
                   gammas=0.1, seed=seed)
    options.update(overrides)
    config = TrainConfig(**options)
    torch.manual_seed(seed)
    model = build_model("A") if model is None else model
    return ATLRTrainer(model, config, make_train_loader(train, config), make_loader(test, 512))


def first_batch(moons, n=64):
    train, _ = moons
    return train.tensors[0][:n], train.tensors[1][:n]


# ------------------------------------------------------------------------ learning

RUNS = [("none", None)] + [(base, layers) for base in ("fgsm", "fast", "pgd", "apgd", "trades")
                           for layers in (None, [2])]


@pytest.mark.parametrize("base,layers", RUNS, ids=[run_name(TrainConfig(base=b, lr_layers=l)) for b, l in RUNS])
def test_every_base_with_and_without_lr_learns_moons(moons, base, layers):
    result = make_trainer(moons, base=base, lr_layers=layers).fit()
    last = result.metrics[-1]
    assert not result.interrupted and result.epochs_completed == 4
    assert last["test_acc"] > 70.0, result.metrics  # chance is 50%
    if layers:
        assert result.mvl == layers
        assert all(m["regularizer"] > 0 for m in result.metrics)
    else:
        assert all(m["regularizer"] == 0 for m in result.metrics)


def test_auto_layers_train_normally_then_regularise_the_mvl(moons):
    result = make_trainer(moons, base="fgsm", lr_layers="auto", warmup_epochs=1, epochs=2).fit()
    warmup, regularised = result.metrics
    assert warmup["base"] == "none" and warmup["mvl"] is None and warmup["regularizer"] == 0
    assert regularised["base"] == "fgsm" and regularised["mvl"] == result.mvl
    assert result.mvl and all(0 <= l < 3 for l in result.mvl)
    assert regularised["regularizer"] > 0


def test_mvl_from_an_lsa_report_file(moons, tmp_path):
    report = tmp_path / "lsa.json"
    report.write_text(json.dumps({"format": "lsa_fast.LSAReport/1", "combined": {"mvl": [1, 2]}}))
    trainer = make_trainer(moons, base="fgsm", lr_layers=str(report), gammas=[0.1, 0.2], epochs=1)
    report.unlink()  # read once, when the config was made: checkpoints hold the list
    assert trainer.mvl == [1, 2] and trainer.config.lr_layers == [1, 2]
    assert trainer.config.extra["mvl_report"] == str(report)
    assert trainer.gammas == pytest.approx([0.1, 0.2])


def test_bf16_autocast_and_grad_clip_on_cpu(moons):
    result = make_trainer(moons, base="fgsm", lr_layers=[1], amp="bf16", grad_clip=1.0, epochs=1).fit()
    assert torch.isfinite(torch.tensor(result.metrics[0]["loss"]))


def test_channels_last_cnn_with_regulariser():
    torch.manual_seed(0)
    x = torch.rand(32, 1, 28, 28)
    y = torch.randint(0, 10, (32,))
    data = torch.utils.data.TensorDataset(x, y)
    config = TrainConfig(base="fgsm", eps=0.1, lr_layers=[0, 3], gammas=[0.5, 1.0], epochs=1, batch_size=16,
                         channels_last=True, grad_clip=5.0, schedule="cosine")
    trainer = ATLRTrainer(build_model("B"), config, make_train_loader(data, config))
    assert len(trainer.probe_names) == 4  # conv1, conv2, conv3, fc1 (fc2 gives the logits)
    result = trainer.fit()
    assert result.metrics[0]["regularizer"] > 0


def test_schedules_follow_at_practice():
    cyclic = lr_multiplier("cyclic", 100)
    assert cyclic(0) == 0 and cyclic(40) == pytest.approx(1.0) and cyclic(100) == 0  # Wong et al.
    piecewise = lr_multiplier("piecewise", 100)
    assert [piecewise(s) for s in (0, 49, 50, 74, 75, 99)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
    cosine = lr_multiplier("cosine", 100)
    assert cosine(0) == 1 and cosine(50) == pytest.approx(0.5)
    assert TrainConfig(base="fast").resolved_schedule() == "cyclic"
    assert TrainConfig(base="pgd").resolved_schedule() == "piecewise"
    assert TrainConfig(base="pgd", optimizer="adam").resolved_schedule() == "constant"
    assert TrainConfig(base="trades").resolved_attack_mode() == "eval"
    assert TrainConfig(base="pgd").resolved_attack_mode() == "train"


# ------------------------------------------------------- the regulariser's gradient


def test_lr_gradient_reaches_the_clean_and_the_adversarial_features(moons, monkeypatch):
    trainer = make_trainer(moons, base="fgsm", lr_layers=[0, 1], gammas=1.0)
    seen = {}
    original = training.layerwise_regularizer

    def recording(clean_feats, adv_feats, layers, *args, **kwargs):
        for name, features in (("clean", clean_feats), ("adv", adv_feats)):
            tensors = [features[l] for l in layers]
            for t in tensors:
                assert t.requires_grad, f"the {name} features reach the regulariser detached"
                t.retain_grad()
            seen[name] = tensors
        return original(clean_feats, adv_feats, layers, *args, **kwargs)

    monkeypatch.setattr(training, "layerwise_regularizer", recording)
    x, y = first_batch(moons)
    trainer.compute_loss(x, y).regularizer.backward()
    for name in ("clean", "adv"):
        assert len(seen[name]) == 2
        for t in seen[name]:
            assert t.grad is not None and t.grad.abs().sum() > 0, f"no gradient reaches the {name} features"


@pytest.mark.parametrize("probes", ["activations", "hidden"])
def test_lr_parameter_gradient_equals_both_branch_reference(moons, probes):
    """d LR / d theta equals the reference computed through both branches, and differs
    from the one with the clean branch detached (so a detached trainer fails here); the
    layers are the activation outputs by default (the authors' L1, L2), the Linear
    outputs before the activation with probes="hidden"."""
    trainer = make_trainer(moons, base="fgsm", lr_layers=[1, 2], gammas=[0.5, 2.0], probes=probes)
    model = trainer.module
    params = [p for layer in (model.fc1, model.fc2, model.fc3) for p in layer.parameters()]  # fc4: no LR path
    x, y = first_batch(moons)
    step = trainer.compute_loss(x, y)
    got = torch.autograd.grad(step.regularizer, params)

    def features(inputs):
        hidden = []
        h = inputs if model.normalize is None else model.normalize(inputs)
        for linear, act in ((model.fc1, model.act1), (model.fc2, model.act2), (model.fc3, model.act3)):
            h = linear(h)
            if probes == "hidden":
                hidden.append(h)
            h = act(h)
            if probes == "activations":
                hidden.append(h)
        return hidden

    def reference_lr(detach_clean):
        clean = features(x)
        adv = features(step.x_hat)
        if detach_clean:
            clean = [c.detach() for c in clean]
        cm = reference.relative_error([clean[1], clean[2]], [adv[1], adv[2]], "sample")
        return (cm.mean(0) * torch.tensor([0.5, 2.0])).sum()

    expected = torch.autograd.grad(reference_lr(False), params)
    detached = torch.autograd.grad(reference_lr(True), params)
    assert reference_lr(False).item() == pytest.approx(step.regularizer.item(), rel=1e-5)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    assert any(not torch.allclose(g, d, rtol=1e-3, atol=1e-6) for g, d in zip(got, detached))


def _count_calls(module):
    counter = {"n": 0}

    def hook(*_):
        counter["n"] += 1

    return counter, module.register_forward_hook(hook)


def test_clean_forward_stops_at_the_deepest_regularised_layer(moons):
    trainer = make_trainer(moons, base="pgd", steps=3, lr_layers=[0])
    fc2, handle2 = _count_calls(trainer.module.fc2)
    fc1, handle1 = _count_calls(trainer.module.fc1)
    try:
        trainer.compute_loss(*first_batch(moons))
    finally:
        handle1.remove(), handle2.remove()
    # 3 attack steps + adversarial forward reach fc2; fc1 also sees the (stopped) clean forward.
    assert fc2["n"] == 4 and fc1["n"] == 5


def test_trades_reuses_its_clean_forward(moons):
    trainer = make_trainer(moons, base="trades", steps=3, lr_layers=[2])
    out, handle = _count_calls(trainer.module.fc4)
    try:
        trainer.compute_loss(*first_batch(moons))
    finally:
        handle.remove()
    # trades_perturb: 1 validating forward + 3 steps; then one clean and one adversarial forward.
    assert out["n"] == 6


# ------------------------------------------------------------------ bad configs


@pytest.mark.parametrize("options,message", [
    (dict(base="pgdx"), "unknown base"),
    (dict(eps=-0.1), "eps must be >= 0"),
    (dict(steps=0), "steps must be >= 1"),
    (dict(lr_layers=[0, 1], gammas=[1.0, 2.0, 3.0]), "3 gammas for 2"),
    (dict(lr_layers=[-1]), "negative"),
    (dict(lr_layers=[1, 1]), "twice"),
    (dict(gammas=-1.0), "gamma must be a finite number >= 0"),
    (dict(base="none", lr_layers=[0]), "needs an attack"),
    (dict(lr_layers="auto", gammas=[1.0, 2.0]), "give one gamma"),
    (dict(lr_layers="auto", warmup_epochs=3, epochs=3), "epochs must exceed"),
    (dict(optimizer="rmsprop"), "unknown optimizer"),
    (dict(amp="fp8"), "unknown amp"),
    (dict(epochs=0), "epochs must be >= 1"),
    (dict(lr=0.0), "lr must be > 0"),
])
def test_bad_configurations_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options)


def test_missing_report_file_is_named():
    with pytest.raises(FileNotFoundError, match="no_such_report.json"):
        TrainConfig(lr_layers="no_such_report.json")


def test_layer_outside_the_probes_fails_before_training(moons):
    torch.manual_seed(0)
    model = build_model("A")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"layer index 3 is outside the 3 probe points.*L0=act1, L1=act2, L2=act3"):
        make_trainer(moons, model=model, lr_layers=[0, 3])
    with pytest.raises(ValueError, match=r"layer index 3 is outside the 3 probe points.*'hidden'.*L0=fc1, L1=fc2"):
        make_trainer(moons, model=model, lr_layers=[0, 3], probes="hidden")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fp16_needs_cuda(moons):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        make_trainer(moons, amp="fp16")


def test_config_round_trips_through_a_plain_dict():
    config = TrainConfig(base="trades", lr_layers="0,2", gammas="1,0.5", eps=0.06, model="A", dataset="moons",
                         data_options={"n_train": 100}, extra={"eps_dataset_units": 0.3})
    data = config.to_dict()
    json.dumps(data)
    assert data["lr_layers"] == [0, 2] and data["gammas"] == [1.0, 0.5]
    assert TrainConfig.from_dict(data) == config
    with pytest.raises(ValueError, match="unknown field"):
        TrainConfig.from_dict({**data, "lr_layer": [0]})
    assert run_name(config) == "AT-TRADES-LR-L0,2" and run_name(TrainConfig(base="none")) == "Normal"
