"""Probes, the comparison measure and the analysis on architectures nobody here wrote:
torchvision and timm models (test-only dependencies), random init, batch 2, small inputs.

For every model, every probe preset and every leaf module ("leaves": any module output,
the BatchNorm before a residual `+=` included): each probe point equals an independent
capture (plain forward hooks that clone) taken in the same forward, relative_error on the
probe points equals an fp64 computation, and no hook is left behind; input gradients
through capture_grad equal those through the cloned outputs; analyze() runs on each.
The corpus holds the patterns hooks must survive: residual `+=` then an in-place ReLU
(ResNet), BatchNorm and activation in one module (timm's BatchNormAct2d), in-place
activations after BatchNorm (DenseNet), concatenation (DenseNet), squeeze-excitation scaling
(MobileNetV3, EfficientNet), depthwise convolutions and LayerNorm (ConvNeXt), attention
whose out_proj module is never called (torchvision's ViT, nn.MultiheadAttention).
"""
import functools
import math
import warnings

import pytest
import torch
from torch import nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # the extension may be absent: fallback is fine
    import lsa_fast
from lsa_fast.probes import ACTIVATION_TYPES, LEARNABLE_TYPES, LayerProbe
from lsa_fast.reference import DEFAULT_EPS

BATCH = 2
PRESETS = ["activations", "learnable", "hidden"]
SELECTIONS = PRESETS + ["leaves"]


def _is_leaf(name, module):
    # every module without submodules; nn.MultiheadAttention returns a tuple, not a tensor
    return not any(True for _ in module.children()) and not isinstance(module, nn.MultiheadAttention)


def _torchvision(name, **kwargs):
    torchvision = pytest.importorskip("torchvision")
    return getattr(torchvision.models, name)(weights=None, **kwargs)


def _timm(name, **kwargs):
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False, **kwargs)


# name -> (builder, input side). vit_b_16 as torchvision builds it accepts 224 x 224 only.
CORPUS = {
    "resnet18": (lambda: _torchvision("resnet18", num_classes=10), 32),
    "resnet50": (lambda: _torchvision("resnet50", num_classes=10), 32),
    "mobilenet_v3_small": (lambda: _torchvision("mobilenet_v3_small", num_classes=10), 32),
    "efficientnet_b0": (lambda: _torchvision("efficientnet_b0", num_classes=10), 32),
    "densenet121": (lambda: _torchvision("densenet121", num_classes=10), 32),
    "convnext_tiny": (lambda: _torchvision("convnext_tiny", num_classes=10), 32),
    "vit_b_16": (lambda: _torchvision("vit_b_16", num_classes=10), 224),
    "timm_resnet18": (lambda: _timm("resnet18", num_classes=10), 32),
    "timm_regnetx_002": (lambda: _timm("regnetx_002", num_classes=10), 32),
    "timm_efficientnet_b0": (lambda: _timm("efficientnet_b0", num_classes=10), 32),
    "timm_vit_tiny": (lambda: _timm("vit_tiny_patch16_224", img_size=32, num_classes=10), 32),
}
# Models whose activations are GELU/SiLU/Hardswish modules only: the "activations" preset
# (ReLU, ELU, LeakyReLU) must say that it matches nothing.
NO_DEFAULT_ACTIVATIONS = {"efficientnet_b0", "convnext_tiny", "vit_b_16", "timm_efficientnet_b0", "timm_vit_tiny"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_the_models_freed_after():
    # Batch-2 forwards gain nothing from threads, and on a machine shared with other jobs
    # OpenMP threads waiting at barriers for a descheduled peer cost 10-100x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    _model_and_inputs.cache_clear()  # ~0.7 GB of weights, built once for this file


@functools.lru_cache(maxsize=None)
def _model_and_inputs(name):
    builder, side = CORPUS[name]
    torch.manual_seed(0)
    model = builder().eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(BATCH, 3, side, side, generator=gen)
    x_hat = (x + 0.03 * torch.randn(x.shape, generator=gen).sign()).clamp(0, 1)
    return model, x, x_hat


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )


def _select(preset):
    """LayerProbe's select argument for a preset or "leaves"."""
    return _is_leaf if preset == "leaves" else preset


def _independent_selection(model, preset):
    """The preset's modules, chosen here by type without LayerProbe's code."""
    if preset == "leaves":
        match = lambda module: _is_leaf("", module)  # noqa: E731
    else:
        types = ACTIVATION_TYPES if preset == "activations" else LEARNABLE_TYPES
        match = lambda module: isinstance(module, types)  # noqa: E731
    chosen, seen = [], set()
    for module in model.modules():
        if match(module) and id(module) not in seen:
            seen.add(id(module))
            chosen.append(module)
    return chosen[:-1] if preset == "hidden" else chosen


class _CloneHooks:
    """Copies of the selected modules' outputs, one list per forward of the model."""

    def __init__(self, model, modules):
        self.forwards = []
        self._handles = [model.register_forward_pre_hook(lambda m, args: self.forwards.append([]))]
        for module in modules:
            self._handles.append(module.register_forward_hook(self._record))

    def _record(self, module, args, output):
        self.forwards[-1].append((module, output.clone() if torch.is_grad_enabled() else output.detach().clone()))

    def remove(self):
        for handle in self._handles:
            handle.remove()


def _fp64_relative_error(clean, perturbed, mode):
    values = []
    for a, b in zip(clean, perturbed):
        a, b = a.double(), b.double()
        dims = tuple(range(1, a.dim())) if mode == "sample" else tuple(range(a.dim()))
        diff = torch.linalg.vector_norm(a - b, dim=dims)
        values.append(diff / torch.linalg.vector_norm(a, dim=dims).clamp_min(DEFAULT_EPS))
    return torch.stack(values, dim=-1)


@pytest.mark.parametrize("preset", SELECTIONS)
@pytest.mark.parametrize("name", list(CORPUS))
def test_probe_points_equal_an_independent_capture_and_relative_error_equals_fp64(name, preset):
    model, x, x_hat = _model_and_inputs(name)
    hooks_before = _hook_count(model)
    if preset == "activations" and name in NO_DEFAULT_ACTIVATIONS:
        with pytest.raises(ValueError, match=r"select='activations'.*matches no module"):
            LayerProbe(model, select=preset)
        return
    with torch.no_grad():
        plain_logits = model(x)
    oracle = _CloneHooks(model, _independent_selection(model, preset))
    try:
        probe = LayerProbe(model, select=_select(preset))
        with torch.no_grad():
            clean, perturbed = probe.capture_pair(x, x_hat)
    finally:
        oracle.remove()
    assert _hook_count(model) == hooks_before
    assert len(oracle.forwards) == 2
    for outputs, record in ((clean, oracle.forwards[0]), (perturbed, oracle.forwards[1])):
        assert len(outputs) == len(record) > 0
        assert probe.modules == [module for module, _ in record]
        for index, (got, (_, want)) in enumerate(zip(outputs, record)):
            assert torch.equal(got, want), f"{name} {preset}: probe point {index} ({probe.names[index]}) differs"

    # The probe changed nothing in the forward: the logits are those of a plain forward.
    with torch.no_grad(), LayerProbe(model, select=_select(preset)):
        torch.testing.assert_close(model(x), plain_logits, rtol=1e-5, atol=1e-6)

    oracle_clean = [t for _, t in oracle.forwards[0]]
    oracle_perturbed = [t for _, t in oracle.forwards[1]]
    for mode in ("sample", "batch"):
        cm = lsa_fast.relative_error(clean, perturbed, mode=mode)
        want = _fp64_relative_error(oracle_clean, oracle_perturbed, mode)
        assert cm.dtype == torch.float32 and cm.shape == want.shape
        torch.testing.assert_close(cm.double(), want, rtol=2e-5, atol=1e-7)
    assert _hook_count(model) == hooks_before


@pytest.mark.parametrize("name", [name for name in CORPUS if name != "vit_b_16"])  # 224 x 224: slow backward
def test_input_gradients_through_capture_grad_equal_those_through_cloned_outputs(name):
    model, x, _ = _model_and_inputs(name)
    hooks_before = _hook_count(model)
    oracle = _CloneHooks(model, _independent_selection(model, "leaves"))
    x_probe = x.clone().requires_grad_()
    try:
        outputs = LayerProbe(model, select=_is_leaf, capture_grad=True).capture(x_probe)
    finally:
        oracle.remove()
    (record,) = oracle.forwards
    assert len(outputs) == len(record)
    gen = torch.Generator().manual_seed(2)
    weights = [torch.randn(t.shape, generator=gen) for t in outputs]
    (got,) = torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, outputs)), x_probe, retain_graph=True)
    (want,) = torch.autograd.grad(sum((w * t).sum() for w, (_, t) in zip(weights, record)), x_probe)
    # float32 sums of ~100 terms in another order: a tolerance relative to the largest entry
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    assert _hook_count(model) == hooks_before
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", list(CORPUS))
def test_analyze_runs_and_leaves_no_hook(name):
    model, x, _ = _model_and_inputs(name)
    hooks_before = _hook_count(model)
    y = torch.arange(BATCH) % 10
    report = lsa_fast.analyze(model, (x, y), ["fgsm:0.03", "gaussian:0.05"], select="hidden", progress=False)
    probe = LayerProbe(model, select="hidden")
    with torch.no_grad():
        probe.capture(x)
    assert report.layer_names == probe.names and len(probe.names) > 0
    for result in report.perturbations:
        assert result.count == BATCH and len(result.layer_mean) == len(probe.names)
        assert all(math.isfinite(v) and v >= 0 for v in result.layer_mean + result.layer_std)
    assert _hook_count(model) == hooks_before
    assert not model.training  # the mode it was given
    assert all(p.grad is None for p in model.parameters())
