"""The paper's models: output shapes, probe-friendly layout, the name registry."""
import sys
import types

import pytest
import torch
from torch import nn

from lsa_fast.models import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    MODEL_DATASET,
    MnistCNN,
    MoonsMLP,
    Normalize,
    VGG,
    WideResNet,
    build_model,
    vgg19,
    wrn_28_10,
    wrn_34_10,
)

ACTIVATIONS = (nn.ReLU, nn.ELU, nn.LeakyReLU)


@pytest.fixture(autouse=True)
def _small_threads():
    # The test machine is shared; keep the conv nets from taking every core.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _forward_order(model, x, kinds):
    """Modules of the given kinds in the order their forward hooks fire."""
    order = []
    handles = [m.register_forward_hook(lambda mod, inp, out, name=n: order.append(name))
               for n, m in model.named_modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return order


def test_model_a_shape_and_layers():
    torch.manual_seed(0)
    model = MoonsMLP().eval()
    x = torch.rand(5, 2)
    assert model(x).shape == (5, 1)
    assert _forward_order(model, x, ACTIVATIONS) == ["act1", "act2", "act3"]
    assert _forward_order(model, x, nn.Linear) == ["fc1", "fc2", "fc3", "fc4"]
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [100, 100, 100, 1]
    assert all(isinstance(m, nn.ELU) for n, m in model.named_modules() if n.startswith("act"))


def test_model_b_shape_and_layers():
    torch.manual_seed(0)
    model = MnistCNN().eval()
    x = torch.rand(2, 1, 28, 28)
    assert model(x).shape == (2, 10)
    assert _forward_order(model, x, ACTIVATIONS) == ["relu1", "relu2", "relu3", "relu4"]
    assert _forward_order(model, x, (nn.Conv2d, nn.Linear)) == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    assert model.fc1.in_features == 64 * 3 * 3


def test_model_c_vgg19_shape_layers_and_normalize():
    torch.manual_seed(0)
    model = vgg19().eval()
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    convs = _forward_order(model, x, nn.Conv2d)
    assert len(convs) == 16 and convs[0] == "features.conv1_1" and convs[-1] == "features.conv5_4"
    assert len(_forward_order(model, x, ACTIVATIONS)) == 16
    assert model.classifier.in_features == 512
    normed = vgg19(normalize=(CIFAR10_MEAN, CIFAR10_STD))
    normed.load_state_dict(model.state_dict(), strict=False)
    normed.eval()
    expected = model((x - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1))
                     / torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))
    torch.testing.assert_close(normed(x), expected)


def test_model_d_small_wideresnet_shape_and_layers():
    torch.manual_seed(0)
    model = WideResNet(depth=10, widen_factor=1, dropout=0.1).eval()
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    relus = _forward_order(model, x, ACTIVATIONS)
    # one block per group (depth 10), two ReLUs per block, plus the final one
    assert relus == ["block1.0.relu1", "block1.0.relu2", "block2.0.relu1", "block2.0.relu2",
                     "block3.0.relu1", "block3.0.relu2", "relu"]
    assert model.fc.in_features == 64


def test_wideresnet_presets_have_the_standard_sizes():
    # Only build (no forward): counting parameters checks the architecture cheaply.
    wrn28, wrn34 = wrn_28_10(), wrn_34_10()
    n28 = sum(p.numel() for p in wrn28.parameters())
    n34 = sum(p.numel() for p in wrn34.parameters())
    assert 36.4e6 < n28 < 36.6e6  # WRN-28-10 has about 36.5M parameters
    assert 46.1e6 < n34 < 46.2e6  # WRN-34-10 has about 46.16M parameters
    assert len(wrn28.block1) == 4 and len(wrn34.block1) == 5


def test_wideresnet_bad_depth():
    with pytest.raises(ValueError, match="6n\\+4"):
        WideResNet(depth=12)


@pytest.mark.parametrize("factory", [MoonsMLP, MnistCNN, vgg19,
                                     lambda: WideResNet(depth=10, widen_factor=1)])
def test_activations_are_distinct_and_not_inplace(factory):
    model = factory()
    acts = [m for m in model.modules() if isinstance(m, ACTIVATIONS)]
    assert acts
    assert len({id(m) for m in acts}) == len(acts)
    assert not any(getattr(m, "inplace", False) for m in acts)


def test_build_model_names():
    assert isinstance(build_model("A"), MoonsMLP)
    assert isinstance(build_model("a"), MoonsMLP)
    assert isinstance(build_model("B"), MnistCNN)
    assert isinstance(build_model("c"), VGG)
    d = build_model("D", depth=10, widen_factor=2)
    assert isinstance(d, WideResNet) and d.fc.in_features == 128
    assert set(MODEL_DATASET) == {"A", "B", "C", "D"}
    assert MODEL_DATASET["A"] == "moons" and MODEL_DATASET["B"] == "mnist"


def test_build_model_presets(monkeypatch):
    # Avoid building two 40M-parameter nets: the presets only have to pass depth/width.
    seen = []

    def fake_init(self, depth=34, widen_factor=10, **kw):
        nn.Module.__init__(self)
        seen.append((depth, widen_factor, kw))

    monkeypatch.setattr(WideResNet, "__init__", fake_init)
    build_model("wrn-28-10")
    build_model("WRN_34_10", num_classes=100)
    assert seen == [(28, 10, {}), (34, 10, {"num_classes": 100})]


def test_build_model_import_path():
    mod = types.ModuleType("lsa_fast_test_user_models")

    class Tiny(nn.Module):
        def __init__(self, width=3):
            super().__init__()
            self.fc = nn.Linear(2, width)

        def forward(self, x):
            return self.fc(x)

    mod.Tiny = Tiny
    mod.make_tiny = lambda width=4: Tiny(width)
    mod.instance = Tiny(5)
    mod.not_a_model = 42
    mod.returns_junk = lambda: "junk"
    sys.modules[mod.__name__] = mod
    try:
        assert build_model("lsa_fast_test_user_models:Tiny").fc.out_features == 3
        assert build_model("lsa_fast_test_user_models:Tiny", width=7).fc.out_features == 7
        assert build_model("lsa_fast_test_user_models:make_tiny").fc.out_features == 4
        assert build_model("lsa_fast_test_user_models:instance") is mod.instance
        assert isinstance(build_model("torch.nn:Identity"), nn.Identity)
        with pytest.raises(ValueError, match="no attribute"):
            build_model("lsa_fast_test_user_models:Missing")
        with pytest.raises(ValueError, match="cannot import"):
            build_model("no_such_module_xyz:Model")
        with pytest.raises(ValueError, match="neither an nn.Module"):
            build_model("lsa_fast_test_user_models:not_a_model")
        with pytest.raises(ValueError, match="not an nn.Module"):
            build_model("lsa_fast_test_user_models:returns_junk")
        with pytest.raises(ValueError, match="takes no arguments"):
            build_model("lsa_fast_test_user_models:instance", width=2)
    finally:
        del sys.modules[mod.__name__]


@pytest.mark.parametrize("bad", ["E", "vgg", "", "wrn-16-4", ":x", "mod:"])
def test_build_model_bad_name_lists_valid_names(bad):
    with pytest.raises(ValueError) as info:
        build_model(bad)
    msg = str(info.value)
    assert "'A'" in msg and "'wrn-34-10'" in msg and "module:attr" in msg


def test_normalize_checks():
    with pytest.raises(ValueError, match="same non-zero length"):
        Normalize((0.5, 0.5), (1.0,))
    with pytest.raises(ValueError, match="positive"):
        Normalize((0.5,), (0.0,))
    x = torch.rand(2, 1, 4, 4)
    torch.testing.assert_close(Normalize((0.5,), (0.25,))(x), (x - 0.5) / 0.25)
    feats = torch.rand(3, 2)
    torch.testing.assert_close(Normalize((0.1, 0.2), (2.0, 4.0))(feats),
                               (feats - torch.tensor([0.1, 0.2])) / torch.tensor([2.0, 4.0]))
    with pytest.raises(ValueError, match="expected input \\[N, 2, ...\\]"):
        Normalize((0.1, 0.2), (2.0, 4.0))(torch.rand(3, 3))
    model = MoonsMLP(normalize=((0.5, 0.5), (0.2, 0.2)))
    assert model(torch.rand(4, 2)).shape == (4, 1)
