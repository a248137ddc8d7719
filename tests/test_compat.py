"""lsa_fast.compat.LayerSustainabilityAnalysis against the reference package itself
(pip package LayersSustainabilityAnalysis, a test-only dependency: if it is missing
this file fails to import, on purpose)."""
import copy
import gc
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from LayerSustainabilityAnalysis import LayerSustainabilityAnalysis as ReferenceLSA

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # the extension may be absent: fallback is fine
    import lsa_fast  # noqa: F401
from lsa_fast.compat import LayerSustainabilityAnalysis


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


class SmallCNN(nn.Module):
    """First child is a Conv2d: the reference walks every module of the model."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(24, 5)
        self.out_act = nn.LeakyReLU(0.1)

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.out_act(self.fc(self.pool(x).flatten(1)))


class EluLeaky(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(12, 10), nn.Linear(10, 10), nn.Linear(10, 4)
        self.elu, self.leaky = nn.ELU(), nn.LeakyReLU(0.2)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc3(self.leaky(self.fc2(self.elu(self.fc1(x)))))


class VGGLike(nn.Module):
    """Containers first, then a plain module: the reference hooks the container members twice."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(4, 6), nn.ELU(), nn.Linear(6, 3))

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


class AllContainers(nn.Module):
    """Only containers as children: the reference probes their direct members only."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.ReLU()))
        self.classifier = nn.ModuleList([nn.Linear(8, 3), nn.LeakyReLU()])

    def forward(self, x):
        x = self.features(x)
        for layer in self.classifier:
            x = layer(x)
        return x


MODELS = [mlp, SmallCNN, EluLeaky, VGGLike, AllContainers]
EXPECTED_LENGTHS = {"mlp": 2, "SmallCNN": 3, "EluLeaky": 2, "VGGLike": 3, "AllContainers": 2}


def _pair(batch=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 2, 2, generator=gen)
    return x, (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)


@pytest.mark.parametrize("factory", MODELS, ids=lambda f: f.__name__)
def test_comparisons_equal_the_reference(factory):
    torch.manual_seed(0)
    model = factory()
    x, x_hat = _pair()
    want = ReferenceLSA(copy.deepcopy(model)).representation_comparisons(x, x_hat, measure="relative-error", verbose=False)
    got = LayerSustainabilityAnalysis(model).representation_comparisons(x, x_hat, measure="relative-error", verbose=False)
    assert len(got) == len(want) == EXPECTED_LENGTHS[factory.__name__]
    assert [type(v) for v in got] == [type(v) for v in want] == [np.float32] * len(want)
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-4, atol=0)
    assert not model.training  # the constructor puts the model in eval mode, as the reference does
    assert _hook_count(model) == 0


@pytest.mark.parametrize("factory", [SmallCNN, VGGLike], ids=lambda f: f.__name__)
def test_representation_tensors_equal_the_reference(factory):
    torch.manual_seed(0)
    model = factory()
    x, _ = _pair()
    want = ReferenceLSA(copy.deepcopy(model)).representation_tensors(x, verbose=False)
    got = LayerSustainabilityAnalysis(model).representation_tensors(x, verbose=False)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert isinstance(a, torch.Tensor) and a.requires_grad == b.requires_grad
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)
    assert _hook_count(model) == 0


def test_edited_selected_probs_are_honoured_like_the_reference():
    torch.manual_seed(0)
    model = SmallCNN()
    model.relu2 = nn.ReLU()  # see the next test for an in-place one after a probed conv
    x, x_hat = _pair()
    reference = ReferenceLSA(copy.deepcopy(model))
    ours = LayerSustainabilityAnalysis(model)
    reference.selected_probs = ours.selected_probs = ["Conv2d", "Linear"]
    want = reference.representation_comparisons(x, x_hat, verbose=False)
    got = ours.representation_comparisons(x, x_hat, verbose=False)
    assert len(got) == 3
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-4)


def test_output_overwritten_in_place_keeps_its_probe_value_unlike_the_reference():
    # conv2 -> ReLU(inplace=True): the reference keeps the conv2 tensor object, which the
    # ReLU then overwrites, so it reports relu(conv2); ours reports conv2 itself.
    torch.manual_seed(0)
    model = SmallCNN()
    x, x_hat = _pair()
    reference = ReferenceLSA(copy.deepcopy(model))
    ours = LayerSustainabilityAnalysis(model)
    reference.selected_probs = ours.selected_probs = ["Conv2d"]
    want = reference.representation_comparisons(x, x_hat, verbose=False)
    got = ours.representation_comparisons(x, x_hat, verbose=False)
    with torch.no_grad():
        a = model.conv2(model.relu1(model.conv1(x)))
        b = model.conv2(model.relu1(model.conv1(x_hat)))
    true_value = float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(a))
    after_relu = float(torch.linalg.vector_norm(a.relu() - b.relu()) / torch.linalg.vector_norm(a.relu()))
    assert got[0] == pytest.approx(want[0], rel=1e-4)
    assert got[1] == pytest.approx(true_value, rel=1e-4)
    assert want[1] == pytest.approx(after_relu, rel=1e-4)
    assert abs(true_value - after_relu) > 1e-3 * true_value


def test_is_batch_mode_relative_error():
    torch.manual_seed(0)
    model = mlp()
    x, x_hat = _pair()
    got = LayerSustainabilityAnalysis(model).representation_comparisons(x, x_hat, verbose=False)
    with torch.no_grad():
        a = model[2](model[1](model[0](x)))
        b = model[2](model[1](model[0](x_hat)))
    want = float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(a))
    assert got[0] == pytest.approx(want, rel=1e-5)


def test_measure_argument():
    model = mlp()
    x, x_hat = _pair()
    lsa = LayerSustainabilityAnalysis(model)
    with pytest.warns(UserWarning, match="measure='MSE' is ignored"):
        lsa.representation_comparisons(x, x_hat, measure="MSE", verbose=False)
    with pytest.raises(ValueError, match="measure must be 'relative-error'"):
        lsa.representation_comparisons(x, x_hat, measure="cosine", verbose=False)


def test_model_without_probes_is_a_clear_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(ValueError, match="no module of type ReLU/ELU/LeakyReLU"):
        LayerSustainabilityAnalysis(model).representation_comparisons(*_pair(), verbose=False)


def test_verbose_prints_the_probe_points(capsys):
    LayerSustainabilityAnalysis(VGGLike()).representation_comparisons(*_pair(), verbose=True)
    printed = capsys.readouterr().out
    assert "probe 0: features.1 ReLU" in printed and "probe 1: features.1 ReLU" in printed
    assert "3 representations" in printed


def test_the_reference_leaks_hooks_that_we_do_not():
    x, x_hat = _pair()
    reference_model = mlp()
    reference = ReferenceLSA(reference_model)
    for _ in range(3):
        reference.representation_comparisons(x, x_hat, verbose=False)
    assert len(reference_model[2]._forward_hooks) == 3  # one more per call, never removed
    model = mlp()
    ours = LayerSustainabilityAnalysis(model)
    for _ in range(3):
        ours.representation_comparisons(x, x_hat, verbose=False)
    assert _hook_count(model) == 0


def test_flat_over_a_thousand_calls():
    torch.manual_seed(0)
    model = mlp()
    x, x_hat = _pair(batch=4)
    lsa = LayerSustainabilityAnalysis(model)

    def live_tensors():
        gc.collect()
        return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))

    lsa.representation_comparisons(x, x_hat, verbose=False)
    before = live_tensors()
    seconds = []
    for _ in range(1000):
        start = time.perf_counter()
        lsa.representation_comparisons(x, x_hat, verbose=False)
        seconds.append(time.perf_counter() - start)
        assert _hook_count(model) == 0
    assert live_tensors() <= before  # nothing retained call after call
    # medians, so a neighbour's burst on the shared machine does not decide
    early, late = np.median(seconds[10:110]), np.median(seconds[900:1000])
    assert late < 2 * early, f"per-call time grew from {early * 1e6:.0f} us to {late * 1e6:.0f} us"
