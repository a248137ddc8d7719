"""A drop-in for the reference package's class: replace

    from LayerSustainabilityAnalysis import LayerSustainabilityAnalysis

(PyPI LayersSustainabilityAnalysis 1.0.4) with

    from lsa_fast.compat import LayerSustainabilityAnalysis

Same methods, arguments, probe points (in the same order, duplicates included) and
results, computed by the fused relative_error op, and without the reference's leak: it
registers new hooks on every call and never removes them, so each call runs every hook
of every earlier call and keeps all their outputs alive (time and memory grow with the
number of calls). Here hooks exist only during a call.

Deliberate differences, each where the reference gives no usable answer:
- a model with no probe point raises ValueError (the reference returns []);
- a clean layer with zero norm gives ||diff|| / 1e-12 (the reference divides by 0: nan/inf);
- a clean and a perturbed pass that call different probe points raise ValueError;
- a probe output later changed in place keeps its value at the probe point (the
  reference records the tensor object, so it reports the changed value);
- fp16/bf16 inputs give float32 values (the reference returns float16 / fails on bf16).
"""
from __future__ import annotations

import warnings
from typing import Dict, List

import torch
from torch import nn

from .ops import relative_error
from .probes import LayerProbe

__all__ = ["LayerSustainabilityAnalysis"]

_MEASURES = ("relative-error", "MSE")


class LayerSustainabilityAnalysis:
    """The reference class's API. `selected_probs` holds the class names probed (edit it,
    as with the reference, to probe other types); the model is put in eval mode."""

    def __init__(self, pretrained_model: nn.Module):
        if not isinstance(pretrained_model, nn.Module):
            raise TypeError(
                f"LayerSustainabilityAnalysis: pretrained_model must be a torch.nn.Module, "
                f"got {type(pretrained_model).__name__}"
            )
        self.pretrained_model = pretrained_model
        self.pretrained_model.eval()
        self.selected_probs = ["ReLU", "ELU", "LeakyReLU"]

    def representation_tensors(self, img: torch.Tensor, verbose: bool = True) -> List[torch.Tensor]:
        """The outputs of the probe points for model(img), as the reference returns them:
        a list of tensors, still attached to the graph when grad mode is on."""
        probe, repeats = self._probe(capture_grad=True)
        outputs = probe.capture(img)
        order = _expand(probe.modules, repeats)
        if verbose:
            self._print(probe, order, outputs)
        return [outputs[i] for i in order]

    def representation_comparisons(
        self,
        img_clean: torch.Tensor,
        img_perturbed: torch.Tensor,
        measure: str = "relative-error",
        verbose: bool = True,
    ) -> list:
        """Batch-mode relative error ||phi_l(x) - phi_l(x_hat)||_F / ||phi_l(x)||_F per probe
        point, as a list of numpy scalars (np.float32 for float32 models), like the reference."""
        if measure not in _MEASURES:
            raise ValueError(
                f"LayerSustainabilityAnalysis: measure must be 'relative-error', got {measure!r}"
            )
        if measure == "MSE":
            warnings.warn(
                "LayerSustainabilityAnalysis: measure='MSE' is ignored, as in the reference package "
                "(its default): the relative error is returned",
                UserWarning,
                stacklevel=2,
            )
        probe, repeats = self._probe(capture_grad=False)
        with torch.no_grad():
            clean, perturbed = probe.capture_pair(img_clean, img_perturbed)
            cm = relative_error(clean, perturbed, mode="batch")
        order = _expand(probe.modules, repeats)
        if verbose:
            self._print(probe, order, clean)
        return list(cm.cpu().numpy()[order])

    # ------------------------------------------------------------------ helpers

    def _probe(self, capture_grad: bool):
        """A probe on the modules the reference would hook, with how many hooks it puts on each
        (a module hooked twice reports each call twice). Built per call, as the reference
        looks the modules up per call."""
        repeats = _reference_hook_counts(self.pretrained_model, list(self.selected_probs))
        if not repeats:
            raise ValueError(
                f"LayerSustainabilityAnalysis: {type(self.pretrained_model).__name__} has no module of "
                f"type {'/'.join(self.selected_probs)} where the reference package looks for probes "
                "(activations applied as functions, e.g. F.relu, are not modules); the reference "
                "would return an empty list"
            )
        probe = LayerProbe(
            self.pretrained_model, select=lambda name, module: module in repeats, capture_grad=capture_grad
        )
        return probe, repeats

    @staticmethod
    def _print(probe: LayerProbe, order: List[int], outputs: List[torch.Tensor]):
        for position, index in enumerate(order):
            module = probe.modules[index]
            shape = tuple(outputs[index].shape)
            print(f"probe {position}: {probe.names[index]} {module._get_name()} {shape}")
        print(f"{len(order)} representations")


def _reference_hook_counts(model: nn.Module, type_names: List[str]) -> Dict[nn.Module, int]:
    """How many forward hooks the reference's representation_* registers on each module in
    one call. Its rule, reproduced: for each direct child in order, if the child can be
    listed as modules (Sequential, ModuleList), hook its direct members whose class name is
    probed; at the first child that cannot (a Conv2d, Linear, ModuleDict, ...), hook every
    probed module of the whole model (Sequentials aside) and stop. Members hooked before
    that point are hooked twice (VGG-like models: features, then avgpool); when every
    child is a container, modules nested deeper than one level are not probed."""
    counts: Dict[nn.Module, int] = {}

    def add(module):
        counts[module] = counts.get(module, 0) + 1

    for child in model._modules.values():
        try:
            members = list(nn.ModuleList(list(child)))
        except Exception:  # the reference catches everything here too
            for module in model.modules():
                if not isinstance(module, nn.Sequential) and module._get_name() in type_names:
                    add(module)
            break
        for module in members:
            if module._get_name() in type_names:
                add(module)
    return counts


def _expand(modules: List[nn.Module], repeats: Dict[nn.Module, int]) -> List[int]:
    """Probe-point indices, each repeated as many times as the reference hooks its module."""
    return [index for index, module in enumerate(modules) for _ in range(repeats[module])]
