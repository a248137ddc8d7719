"""lsa_fast.compat.LayerSustainabilityAnalysis against the reference package itself
(pip package LayersSustainabilityAnalysis, a test-only dependency: if it is missing
the comparisons skip and the tests of compat alone still run)."""
import copy
import gc
import textwrap
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn


with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # the extension may be absent: fallback is fine
    import lsa_fast  # noqa: F401
from lsa_fast.compat import LayerSustainabilityAnalysis


@pytest.fixture(scope="module")
def ReferenceLSA():  # noqa: N802 - the package's class
    """The reference package's class, for the tests that compare with it."""
    return pytest.importorskip("LayerSustainabilityAnalysis").LayerSustainabilityAnalysis


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
def test_comparisons_equal_the_reference(factory, ReferenceLSA):
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
def test_representation_tensors_equal_the_reference(factory, ReferenceLSA):
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


def test_edited_selected_probs_are_honoured_like_the_reference(ReferenceLSA):
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


def test_output_overwritten_in_place_keeps_its_probe_value_unlike_the_reference(ReferenceLSA):
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


@pytest.mark.parametrize("measure", ["MSE", "cosine", None, 3])
def test_any_measure_is_accepted_and_ignored_like_the_reference(measure, ReferenceLSA):
    # The reference's default is measure='MSE', and it computes the relative error whatever
    # the value: so do we, with a warning instead of an error.
    torch.manual_seed(0)
    model = mlp()
    x, x_hat = _pair()
    lsa = LayerSustainabilityAnalysis(model)
    want = lsa.representation_comparisons(x, x_hat, measure="relative-error", verbose=False)
    with pytest.warns(UserWarning, match=f"measure={measure!r} is ignored"):
        got = lsa.representation_comparisons(x, x_hat, measure=measure, verbose=False)
    reference = ReferenceLSA(copy.deepcopy(model)).representation_comparisons(x, x_hat, measure=measure, verbose=False)
    assert got == want
    np.testing.assert_allclose(np.array(got), np.array(reference), rtol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default measure does not warn
        lsa.representation_comparisons(x, x_hat, verbose=False)


def test_measure_warning_is_shown_once_per_calling_line():
    model = mlp()
    x, x_hat = _pair()
    lsa = LayerSustainabilityAnalysis(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default action for UserWarning
        for _ in range(3):
            lsa.representation_comparisons(x, x_hat, measure="MSE", verbose=False)
    assert len([w for w in caught if "is ignored" in str(w.message)]) == 1


def test_model_without_probes_is_a_clear_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(ValueError, match="no module of type ReLU/ELU/LeakyReLU"):
        LayerSustainabilityAnalysis(model).representation_comparisons(*_pair(), verbose=False)


def test_verbose_prints_the_probe_points(capsys):
    LayerSustainabilityAnalysis(VGGLike()).representation_comparisons(*_pair(), verbose=True)
    printed = capsys.readouterr().out
    assert "probe 0: features.1 ReLU" in printed and "probe 1: features.1 ReLU" in printed
    assert "3 representations" in printed


def test_the_reference_leaks_hooks_that_we_do_not(ReferenceLSA):
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


# ---------------------------------------------------------------------- a script for the package, unchanged


class PackageDemoCNN(nn.Module):
    """A small MNIST-like CNN in the reference's favourite layout: Sequentials of layers."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 2 * 2, 16), nn.ReLU(), nn.Linear(16, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def _readme_python_blocks():
    from importlib import metadata

    meta = metadata.metadata("LayersSustainabilityAnalysis")
    text = meta.get_payload() or meta.get("Description", "")
    import re

    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _as_compat(source: str) -> str:
    line = "from LayerSustainabilityAnalysis import "
    assert source.count(line) == 1, "the script should import the package once"
    return source.replace(line, "from lsa_fast.compat import ")


def test_the_packages_readme_usage_runs_on_both(capsys, ReferenceLSA):
    blocks = [b for b in _readme_python_blocks() if "representation_comparisons" in b]
    assert len(blocks) == 1, "the installed package's README has one usage block"
    torch.manual_seed(0)
    model = PackageDemoCNN()
    x = torch.rand(4, 1, 8, 8)
    x_hat = (x + 0.1 * torch.randn(x.shape)).clamp(0, 1)
    results = {}
    for name, source in (("reference", blocks[0]), ("compat", _as_compat(blocks[0]))):
        namespace = {"model": copy.deepcopy(model), "selected_clean_sample": x, "selected_pertubed_sample": x_hat}
        exec(compile(source, f"<README usage, {name}>", "exec"), namespace)
        results[name] = namespace["lst_comparison_measures"]
    capsys.readouterr()  # verbose=True is the README's default: both print
    assert len(results["compat"]) == len(results["reference"]) == 3
    np.testing.assert_allclose(np.array(results["compat"]), np.array(results["reference"]), rtol=1e-4)


SCRIPT = textwrap.dedent("""
    import numpy as np
    import matplotlib.pyplot as plt
    from LayerSustainabilityAnalysis import LayerSustainabilityAnalysis as LSA

    lsa = LSA(pretrained_model=model)
    cm_fgsm = lsa.representation_comparisons(img_clean=x, img_perturbed=x_fgsm, verbose=False)
    cm_noise = lsa.representation_comparisons(x, x_noise, 'MSE', False)
    plt.figure()
    LSA.plot_representation_cm(lst_comparison_measures=cm_fgsm, plot_label='FGSM')
    LSA.plot_representation_cm(plot_title='LSA of the demo CNN', plot_label='gaussian', plot_style='--x',
                               lst_comparison_measures=cm_noise, xlabel='probe', save_img=save_path)
    normalized = LSA.np_normalize_output(np.array(cm_fgsm))
    plt.figure()
    LSA.imshow(x[0] * 2 - 1)
""")


def _pyplot_state(plt):
    """What the script drew: per figure, the axes' curves, texts, limits and images."""
    state = []
    for number in plt.get_fignums():
        axes = plt.figure(number).axes[0]
        state.append({
            "lines": [(list(l.get_xdata()), [float(v) for v in l.get_ydata()], l.get_linestyle(), l.get_marker(),
                       l.get_label()) for l in axes.lines],
            "texts": [(t.get_text(), tuple(float(v) for v in t.xy)) for t in axes.texts],
            "legend": [t.get_text() for t in axes.get_legend().get_texts()] if axes.get_legend() else None,
            "labels": (axes.get_title(), axes.get_xlabel(), axes.get_ylabel()),
            "limits": axes.get_ylim(),
            "xticks": list(axes.get_xticks()),
            "images": [(np.asarray(i.get_array()), i.get_cmap().name) for i in axes.images],
        })
    return state


def test_a_script_written_for_the_package_runs_unchanged_and_draws_the_same(tmp_path, capsys, ReferenceLSA):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.manual_seed(0)
    model = PackageDemoCNN()
    x = torch.rand(4, 1, 8, 8)
    inputs = {"x": x, "x_fgsm": (x + 0.2 * torch.randn(x.shape).sign()).clamp(0, 1),
              "x_noise": (x + 0.05 * torch.randn(x.shape)).clamp(0, 1)}
    runs = {}
    for name, source in (("reference", SCRIPT), ("compat", _as_compat(SCRIPT))):
        plt.close("all")
        namespace = dict(inputs, model=copy.deepcopy(model), save_path=str(tmp_path / f"{name}.png"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ours says measure='MSE' is ignored; Agg says show() is a no-op
            exec(compile(source, f"<script, {name}>", "exec"), namespace)
        runs[name] = (namespace, _pyplot_state(plt), capsys.readouterr().out)
    plt.close("all")
    (ours, our_plots, our_print), (theirs, their_plots, their_print) = runs["compat"], runs["reference"]
    for key in ("cm_fgsm", "cm_noise", "normalized"):
        np.testing.assert_allclose(np.asarray(ours[key], dtype=np.float64),
                                   np.asarray(theirs[key], dtype=np.float64), rtol=1e-4, atol=1e-6)
    assert len(our_plots) == len(their_plots) == 2
    curves, image = our_plots
    assert [line[4] for line in curves["lines"]] == ["FGSM", "gaussian"]
    assert curves["labels"] == ("LSA of the demo CNN", "probe", "relative-error") and curves["limits"] == (0.0, 2.0)
    for mine, theirs_ in zip(our_plots, their_plots):
        assert mine.keys() == theirs_.keys()
        for key in ("legend", "labels", "limits", "xticks"):
            assert mine[key] == theirs_[key], key
        for a, b in zip(mine["lines"], theirs_["lines"]):
            assert a[0] == b[0] and a[2:] == b[2:]
            np.testing.assert_allclose(a[1], b[1], rtol=1e-4)
        assert [t[0] for t in mine["texts"]] == [t[0] for t in theirs_["texts"]]
        assert len(mine["images"]) == len(theirs_["images"])
        for (a, cmap_a), (b, cmap_b) in zip(mine["images"], theirs_["images"]):
            assert cmap_a == cmap_b == "gray"
            np.testing.assert_array_equal(a, b)
    assert image["images"][0][0].shape == (8, 8)
    assert our_print == their_print == "torch.Size([1, 8, 8])\n(1, 8, 8)\n"  # imshow prints the shapes
    saved = {name: plt.imread(tmp_path / f"{name}.png") for name in runs}
    assert saved["compat"].shape == saved["reference"].shape
    np.testing.assert_allclose(saved["compat"], saved["reference"], atol=2 / 255)


def test_helpers_are_callable_on_the_class_and_on_an_instance(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lsa = LayerSustainabilityAnalysis(mlp())
    plt.close("all")
    lsa.plot_representation_cm(lst_comparison_measures=[0.5, 0.0, 1.5], save_img=tmp_path / "cm.png")
    axes = plt.gca()
    assert axes.get_title() == "LSA result : Comparison measure of model"  # not the instance's repr
    assert [t.get_text() for t in axes.texts] == ["0.5000", "1.5000"]  # zero values are left unlabelled
    assert (tmp_path / "cm.png").stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == ["cm.png"]  # no temporary file left
    plt.close("all")
    with pytest.raises(ValueError, match=r"imshow: img must be \[C, H, W\], got shape \(5, 5\)"):
        LayerSustainabilityAnalysis.imshow(torch.zeros(5, 5))


@pytest.mark.parametrize("value", [
    np.array([1.0, 3.0, 5.0]), np.array([[1, 2], [3, 4]]), [0.2, -0.4, 0.1], 3.0, np.float32(-2.0),
    np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32),
])
def test_np_normalize_output_equals_the_reference(value, ReferenceLSA):
    got = LayerSustainabilityAnalysis.np_normalize_output(value)
    want = ReferenceLSA.np_normalize_output(value)
    assert np.asarray(got).dtype == np.asarray(want).dtype
    np.testing.assert_array_equal(got, want)


def test_np_normalize_output_of_a_constant_is_zeros_not_nan():
    got = LayerSustainabilityAnalysis.np_normalize_output(np.full(4, 2.0))
    np.testing.assert_array_equal(got, np.zeros(4))
    np.testing.assert_array_equal(LayerSustainabilityAnalysis.np_normalize_output(torch.tensor([1.0, 3.0])), [0.0, 1.0])


# ---------------------------------------------------------------------- residual networks


def test_resnet_probes_give_the_true_values_where_the_reference_reports_changed_tensors(ReferenceLSA):
    # torchvision's BasicBlock: bn2's output gets `+= identity`, then an in-place ReLU. The
    # reference reports the changed tensors; ours the values bn2 returned.
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32)
    x_hat = (x + 0.05 * torch.randn(x.shape)).clamp(0, 1)

    def true_values(inp):
        records = []
        handles = [m.register_forward_hook(lambda m, a, out: records.append(out.clone()))
                   for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        with torch.no_grad():
            model(inp)
        for handle in handles:
            handle.remove()
        return records

    clean, perturbed = true_values(x), true_values(x_hat)
    want = [float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(a)) for a, b in zip(clean, perturbed)]
    reference = ReferenceLSA(copy.deepcopy(model))
    ours = LayerSustainabilityAnalysis(model)
    reference.selected_probs = ours.selected_probs = ["BatchNorm2d"]
    got = ours.representation_comparisons(x, x_hat, verbose=False)
    theirs = reference.representation_comparisons(x, x_hat, verbose=False)
    assert len(got) == len(theirs) == len(want) == 20
    np.testing.assert_allclose(got, want, rtol=1e-4)
    # The reference reports the tensors as changed later: every bn1 (then an in-place ReLU)
    # and every block's bn2 (then += identity and the ReLU); the downsample BNs stay right.
    changed = [i for i, (a, b) in enumerate(zip(theirs, want)) if abs(a - b) > 1e-3 * b]
    assert len(changed) == 17
    assert _hook_count(model) == 0
    # The default probes (the ReLUs) are not written after they return: all three agree.
    reference = ReferenceLSA(copy.deepcopy(model))
    np.testing.assert_allclose(LayerSustainabilityAnalysis(model).representation_comparisons(x, x_hat, verbose=False),
                               reference.representation_comparisons(x, x_hat, verbose=False), rtol=1e-4)
