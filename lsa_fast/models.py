"""The paper's models (Khalooei et al., arXiv:2202.02626, Table 1) and a name registry.

Every model takes inputs in [0, 1]; any normalisation happens inside the model (the
torchattacks convention), so attacks can clip to [0, 1] without knowing the dataset.

Layout rules that the probes rely on (lsa_fast.probes finds layers with forward hooks):
- every activation is its own module instance (a shared instance would be one module
  called several times, which makes probe points harder to name);
- activations are not inplace, so a hooked output is never overwritten by a later layer;
- attribute names say what a layer is (``conv1``, ``relu1``, ``fc2``...), and modules are
  registered in the order they are called, so ``named_modules()`` follows the forward.
"""
from __future__ import annotations

import importlib
import inspect
import json
from collections import OrderedDict
from typing import Union, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from .checks import dataset_key

__all__ = [
    "MODEL_DATASET",
    "MODEL_NAMES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "build_model",
    "model_options",
    "recorded_model_options",
    "weights_mismatch_hint",
    "parse_model_options",
    "model_dataset",
    "Normalize",
    "MoonsMLP",
    "MnistCNN",
    "VGG",
    "VGG19_CFG",
    "vgg19",
    "WideResNet",
    "WideBasicBlock",
    "wrn_28_10",
    "wrn_34_10",
]

# The dataset each paper model was trained on (Table 1).
MODEL_DATASET: Dict[str, str] = {"A": "moons", "B": "mnist", "C": "cifar10", "D": "cifar10"}

# Channel statistics of the CIFAR-10 training set, for `normalize=(CIFAR10_MEAN, CIFAR10_STD)`.
CIFAR10_MEAN: Tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: Tuple[float, float, float] = (0.2471, 0.2435, 0.2616)

# The usual CIFAR VGG-19 configuration: channel counts, "M" = 2x2 max pooling.
VGG19_CFG: Tuple = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                    512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a model by name.

    ``name`` is one of "A", "B", "C", "D", "wrn-28-10", "wrn-34-10" (case-insensitive;
    "_" and "-" are interchangeable), or "package.module:attr" for a user model: the
    module is imported and ``attr`` (dotted paths allowed) is called with ``kwargs`` when
    it is a class or function, or returned as is when it is already an ``nn.Module``.
    ``kwargs`` go to the constructor (e.g. ``build_model("D", depth=16, widen_factor=4)``).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"build_model: model name must be a non-empty string, got {name!r}; "
                         f"valid names: {_valid_names()}")
    name = name.strip()
    if ":" in name:
        return _build_from_import_path(name, kwargs)
    key = name.lower().replace("_", "-")
    factory = _REGISTRY.get(key)
    if factory is None:
        raise ValueError(f"build_model: unknown model {name!r}; valid names: {_valid_names()}")
    return factory(**kwargs)


# What a paper model is built with unless its options say otherwise (model_options): the
# CIFAR-10 models normalise their [0, 1] inputs inside, as lsa-fast reproduce trains them.
PAPER_MODEL_OPTIONS: Dict[str, Dict] = {
    "c": {"normalize": "cifar10"},
    "d": {"normalize": "cifar10"},
    "wrn-28-10": {"normalize": "cifar10"},
    "wrn-34-10": {"normalize": "cifar10"},
}

# Named input normalisations a `normalize` option may give instead of [mean, std].
NORMALIZATIONS: Dict[str, Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]] = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "none": None,
}


def model_options(name: str, given: Optional[Dict] = None) -> Dict:
    """The constructor options model `name` is built with: the paper's defaults
    (PAPER_MODEL_OPTIONS) updated by `given`, each checked against what the model takes,
    a named normalisation ("cifar10", "none") written out as [mean, std]. The result is
    plain JSON, recorded in checkpoints, so that build_model(name, **options) rebuilds
    the same model whatever the defaults become. Used by lsa-fast train, reproduce,
    eval and analyze alike."""
    given = dict(given or {})
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model_options: model name must be a non-empty string, got {name!r}")
    if ":" in name:  # a user model: its own defaults
        return given
    key = name.strip().lower().replace("_", "-")
    if key not in _REGISTRY:
        raise ValueError(f"build_model: unknown model {name!r}; valid names: {_valid_names()}")
    accepted = _accepted_options(key)
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise ValueError(f"--model-option {unknown[0]}: model {name} takes no option {unknown[0]!r}; its options: "
                         f"{', '.join(accepted)}")
    options = {**PAPER_MODEL_OPTIONS.get(key, {}), **given}
    if "normalize" in options and not (key == "a" and options["normalize"] in MOONS_NORMALIZATIONS):  # A's own
        options["normalize"] = _normalization(options["normalize"])
    return options


def recorded_model_options(name: str, recorded_model: Optional[str], recorded: Optional[Dict],
                           given: Optional[Dict] = None) -> Dict:
    """The options to rebuild a model a checkpoint holds: the checkpoint's own (a run
    records all of them) when `name` is the model it names, else model_options(name);
    `given` options (checked) override either."""
    given = dict(given or {})
    checked = model_options(name, given)
    if recorded_model is not None and str(recorded_model) == name and isinstance(recorded, dict):
        return {**recorded, **{key: checked[key] for key in given}}
    return checked


def weights_mismatch_hint(error: Exception) -> str:
    """A hint for a load_state_dict error that only the input normalisation explains:
    the weights of a model built with(out) `normalize` do not fit one built the other way."""
    text = str(error)
    if "normalize.mean" not in text:
        return ""
    if "Missing key" in text:
        return " (the weights come from a model without input normalisation: add --model-option normalize=none)"
    return " (the weights come from a model with input normalisation: add --model-option normalize=cifar10)"


def parse_model_options(items, option: str = "--model-option") -> Dict:
    """["depth=16", "normalize=none", ...] -> {"depth": 16, "normalize": "none"}: each
    value read as JSON (numbers, true/false, null, lists), else kept as text."""
    options: Dict = {}
    for item in items or ():
        key, sep, text = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise ValueError(f"{option} {item!r}: expected KEY=VALUE, e.g. {option} depth=16")
        if key in options:
            raise ValueError(f"{option} {key} is given twice")
        try:
            options[key] = json.loads(text)
        except ValueError:
            options[key] = text.strip()
    return options


def model_dataset(name: str) -> Optional[str]:
    """The dataset a model name implies: the paper's (A moons, B mnist, C/D cifar10),
    cifar10 for the WideResNets, None for other models."""
    key = str(name).strip().upper().replace("_", "-")
    if key in MODEL_DATASET:
        return MODEL_DATASET[key]
    if key.startswith("WRN-"):
        return "cifar10"
    return None


class Normalize(nn.Module):
    """(x - mean) / std per channel (dimension 1), kept inside the model so inputs stay
    in [0, 1]; works on [N, C] feature batches and [N, C, H, W] image batches alike."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() != std_t.numel() or mean_t.numel() == 0:
            raise ValueError(f"Normalize: mean and std need the same non-zero length, got "
                             f"{mean_t.numel()} and {std_t.numel()}")
        if bool((std_t <= 0).any()):
            raise ValueError(f"Normalize: std must be positive, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.mean.numel():
            raise ValueError(f"Normalize: expected input [N, {self.mean.numel()}, ...], got "
                             f"{list(x.shape)}")
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.to(x.dtype).view(shape)) / self.std.to(x.dtype).view(shape)


# Model A's named input maps: the inverse of lsa_fast.data's map of moons in those units.
MOONS_NORMALIZATIONS = {"moons": "raw", "moons-standardized": "standardized"}


class MoonsMLP(nn.Module):
    """Model A: 2 -> 100 -> 100 -> 100 -> 1 with ELU; one logit per sample, shape [N, 1].

    normalize="moons" (the default) maps the [0, 1]^2 inputs of lsa_fast.data back to
    moons coordinates inside the model (x * MOONS_SCALE + MOONS_LOW), so the layers see
    what the paper's model A sees while attacks keep the [0, 1] convention;
    "moons-standardized" maps them back to z-scores (the inputs of standardized moons,
    x * MOONS_STANDARDIZED_SCALE + MOONS_STANDARDIZED_LOW)."""

    def __init__(self, in_features: int = 2, hidden: int = 100,
                 normalize: Union[str, None, Tuple[Sequence[float], Sequence[float]]] = "moons"):
        super().__init__()
        if isinstance(normalize, str):
            from .data import moons_unit_map

            if normalize not in MOONS_NORMALIZATIONS:
                raise ValueError(f"MoonsMLP: normalize={normalize!r}: expected one of "
                                 f"{', '.join(MOONS_NORMALIZATIONS)}, None or (mean, std)")
            low, scale = moons_unit_map(MOONS_NORMALIZATIONS[normalize])
            normalize = ([-v / scale for v in low], [1.0 / scale] * 2)
        self.normalize = Normalize(*normalize) if normalize is not None else None
        self.fc1 = nn.Linear(in_features, hidden)
        self.act1 = nn.ELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ELU()
        self.fc3 = nn.Linear(hidden, hidden)
        self.act3 = nn.ELU()
        self.fc4 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize is not None:
            x = self.normalize(x)
        x = self.act1(self.fc1(x))
        x = self.act2(self.fc2(x))
        x = self.act3(self.fc3(x))
        return self.fc4(x)


class MnistCNN(nn.Module):
    """Model B (MNIST, 1x28x28): three 5x5 convs with ReLU and two max-pools, then 100 -> 10."""

    def __init__(self, num_classes: int = 10,
                 normalize: Optional[Tuple[Sequence[float], Sequence[float]]] = None):
        super().__init__()
        self.normalize = Normalize(*normalize) if normalize is not None else None
        self.conv1 = nn.Conv2d(1, 16, 5)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 5)
        self.relu2 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 64, 5)
        self.relu3 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        # 28 -conv5-> 24 -conv5-> 20 -pool-> 10 -conv5-> 6 -pool-> 3
        self.fc1 = nn.Linear(64 * 3 * 3, 100)
        self.relu4 = nn.ReLU()
        self.fc2 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize is not None:
            x = self.normalize(x)
        x = self.relu1(self.conv1(x))
        x = self.pool1(self.relu2(self.conv2(x)))
        x = self.pool2(self.relu3(self.conv3(x)))
        x = self.relu4(self.fc1(self.flatten(x)))
        return self.fc2(x)


class VGG(nn.Module):
    """CIFAR-style VGG: 3x3 conv + BatchNorm + ReLU per entry of ``cfg``, "M" = max-pool.

    After five pools a 32x32 input is 1x1, so the classifier is a single Linear(512, C).
    Layers are named ``features.conv{stage}_{i}`` / ``bn{stage}_{i}`` / ``relu{stage}_{i}`` /
    ``pool{stage}``, matching the usual VGG naming (conv3_4 = 4th conv of stage 3).
    """

    def __init__(self, cfg: Sequence = VGG19_CFG, num_classes: int = 10, in_channels: int = 3,
                 normalize: Optional[Tuple[Sequence[float], Sequence[float]]] = None):
        super().__init__()
        self.normalize = Normalize(*normalize) if normalize is not None else None
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        channels, stage, index = in_channels, 1, 1
        for entry in cfg:
            if entry == "M":
                layers[f"pool{stage}"] = nn.MaxPool2d(2)
                stage, index = stage + 1, 1
                continue
            if not isinstance(entry, int) or entry <= 0:
                raise ValueError(f"VGG: cfg entries must be positive ints or 'M', got {entry!r}")
            suffix = f"{stage}_{index}"
            layers[f"conv{suffix}"] = nn.Conv2d(channels, entry, 3, padding=1)
            layers[f"bn{suffix}"] = nn.BatchNorm2d(entry)
            layers[f"relu{suffix}"] = nn.ReLU()
            channels, index = entry, index + 1
        self.features = nn.Sequential(layers)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize is not None:
            x = self.normalize(x)
        return self.classifier(self.flatten(self.features(x)))


def vgg19(num_classes: int = 10,
          normalize: Optional[Tuple[Sequence[float], Sequence[float]]] = None) -> VGG:
    """Model C: VGG-19 for CIFAR-10 (32x32 inputs)."""
    return VGG(VGG19_CFG, num_classes=num_classes, normalize=normalize)


class WideBasicBlock(nn.Module):
    """Pre-activation basic block of Zagoruyko & Komodakis (2016): BN-ReLU-conv3x3 twice.

    When the width or stride changes, the shortcut is a 1x1 conv applied to the block's
    *activated* input (as in the original WRN code); otherwise it is the identity on the
    raw input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
                         if in_planes != out_planes or stride != 1 else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(pre)))
        if self.dropout is not None:
            out = self.dropout(out)
        out = self.conv2(out)
        skip = x if self.shortcut is None else self.shortcut(pre)
        return out + skip


class WideResNet(nn.Module):
    """Model D: WRN-depth-k for 32x32 inputs; depth = 6n + 4 (n blocks per group)."""

    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10,
                 dropout: float = 0.0, in_channels: int = 3,
                 normalize: Optional[Tuple[Sequence[float], Sequence[float]]] = None):
        super().__init__()
        if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet: depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, "
                             f"...), got {depth!r}")
        if not isinstance(widen_factor, int) or widen_factor < 1:
            raise ValueError(f"WideResNet: widen_factor must be a positive int, got {widen_factor!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"WideResNet: dropout must be in [0, 1), got {dropout!r}")
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.normalize = Normalize(*normalize) if normalize is not None else None
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.block1 = self._group(widths[0], widths[1], blocks, 1, dropout)
        self.block2 = self._group(widths[1], widths[2], blocks, 2, dropout)
        self.block3 = self._group(widths[2], widths[3], blocks, 2, dropout)
        self.bn = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        # Adaptive so that inputs other than 32x32 still work; 32x32 gives an 8x8 average.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[3], num_classes)
        self._init_weights()

    @staticmethod
    def _group(in_planes: int, out_planes: int, blocks: int, stride: int,
               dropout: float) -> nn.Sequential:
        layers = [WideBasicBlock(in_planes if i == 0 else out_planes, out_planes,
                                 stride if i == 0 else 1, dropout) for i in range(blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # He init for convs (fan_out, as in the WRN reference), unit BN, zero biases.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize is not None:
            x = self.normalize(x)
        x = self.conv1(x)
        x = self.block3(self.block2(self.block1(x)))
        x = self.relu(self.bn(x))
        return self.fc(self.flatten(self.pool(x)))


def wrn_28_10(**kwargs) -> WideResNet:
    """WRN-28-10 (the usual CIFAR-10 WideResNet of adversarial-training papers)."""
    return WideResNet(depth=28, widen_factor=10, **kwargs)


def wrn_34_10(**kwargs) -> WideResNet:
    """WRN-34-10 (the TRADES / Madry-style CIFAR-10 WideResNet)."""
    return WideResNet(depth=34, widen_factor=10, **kwargs)


# ---------------------------------------------------------------------------- helpers

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {
    "a": MoonsMLP,
    "b": MnistCNN,
    "c": vgg19,
    # "D" is a WideResNet whose depth/width are parameters; the default is WRN-34-10.
    "d": WideResNet,
    "wrn-28-10": wrn_28_10,
    "wrn-34-10": wrn_34_10,
}

MODEL_NAMES: Tuple[str, ...] = ("A", "B", "C", "D", "wrn-28-10", "wrn-34-10")


def _valid_names() -> str:
    return ", ".join(repr(n) for n in MODEL_NAMES) + ", or 'package.module:attr'"


def _accepted_options(key: str) -> Tuple[str, ...]:
    factory = _REGISTRY[key]
    parameters = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        # wrn_28_10(**kwargs) -> WideResNet with depth and width fixed
        fixed = {"depth", "widen_factor"}
        parameters = {k: v for k, v in inspect.signature(WideResNet).parameters.items() if k not in fixed}
    return tuple(k for k, p in parameters.items()
                 if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))


def _normalization(value):
    if isinstance(value, str):
        named = dataset_key(value)  # the statistics of a dataset: cifar10, CIFAR-10, ...; or none
        if named not in NORMALIZATIONS:
            raise ValueError(f"--model-option normalize={value}: expected one of {', '.join(NORMALIZATIONS)} or "
                             f"[[mean, ...], [std, ...]]")
        value = NORMALIZATIONS[named]
    if value is None:
        return None
    try:
        mean, std = value
        return [[float(v) for v in mean], [float(v) for v in std]]
    except (TypeError, ValueError):
        raise ValueError(f"--model-option normalize={json.dumps(value)}: expected one of "
                         f"{', '.join(NORMALIZATIONS)} or [[mean, ...], [std, ...]]") from None


def _build_from_import_path(spec: str, kwargs: dict) -> nn.Module:
    module_name, _, attr_path = spec.partition(":")
    module_name, attr_path = module_name.strip(), attr_path.strip()
    if not module_name or not attr_path or ":" in attr_path:
        raise ValueError(f"build_model: {spec!r} is not of the form 'package.module:attr'; "
                         f"valid names: {_valid_names()}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"build_model: cannot import module {module_name!r} from {spec!r}: "
                         f"{exc}") from exc
    obj = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"build_model: module {module_name!r} has no attribute "
                             f"{attr_path!r} (from {spec!r})") from None
    if isinstance(obj, nn.Module):
        if kwargs:
            raise ValueError(f"build_model: {spec!r} is already a model instance; it takes no "
                             f"arguments, got {sorted(kwargs)}")
        return obj
    if not callable(obj):
        raise ValueError(f"build_model: {spec!r} is a {type(obj).__name__}, neither an "
                         f"nn.Module nor a class/function that builds one")
    model = obj(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"build_model: {spec!r} returned a {type(model).__name__}, "
                         f"not an nn.Module")
    return model
