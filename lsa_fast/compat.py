"""A drop-in for the reference package's class: replace

    from LayerSustainabilityAnalysis import LayerSustainabilityAnalysis

(PyPI LayersSustainabilityAnalysis 1.0.4) with

    from lsa_fast.compat import LayerSustainabilityAnalysis

Same methods (representation_tensors, representation_comparisons, and the helpers
plot_representation_cm, imshow, np_normalize_output), arguments, probe points (in the
same order, duplicates included) and results, computed by the fused relative_error op, so a
script written for the package runs unchanged; and without the reference's leak: it
registers new hooks on every call and never removes them, so each call runs every hook
of every earlier call and keeps all their outputs alive (time and memory grow with the
number of calls). Here hooks exist only during a call.

Deliberate differences, each where the reference gives no usable answer:
- a model with no probe point raises ValueError (the reference returns []);
- a clean layer with zero norm gives ||diff|| / 1e-12 (the reference divides by 0: nan/inf);
- a clean and a perturbed pass that call different probe points raise ValueError;
- a probe output later changed in place (a residual `out += identity`, an in-place ReLU)
  keeps its value at the probe point (the reference records the tensor object, so it
  reports the changed value);
- fp16/bf16 inputs give float32 values (the reference returns float16 / fails on bf16);
- the helpers are static methods: called on the class they behave as the reference's; called
  on an instance, the reference passes the instance as their first argument (a plot titled
  "<...LayerSustainabilityAnalysis object at 0x...>", or a TypeError for imshow);
- np_normalize_output of a constant array gives zeros (the reference divides 0 by 0: nan);
- plot_representation_cm writes save_img once, atomically, also for an empty list.
"""
from __future__ import annotations

import io
import os
import warnings
from typing import Dict, List

import numpy as np
import torch
from torch import nn

from .ops import relative_error
from .probes import LayerProbe

__all__ = ["LayerSustainabilityAnalysis"]


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
        measure="relative-error",
        verbose: bool = True,
    ) -> list:
        """Batch-mode relative error ||phi_l(x) - phi_l(x_hat)||_F / ||phi_l(x)||_F per probe
        point, as a list of numpy scalars (np.float32 for float32 models), like the reference.
        measure: any value, as the reference accepts (its default is 'MSE'); the reference
        always computes the relative error, and so does this, with a warning (shown once per
        calling line by Python's default warning filter) for any other value."""
        if not (isinstance(measure, str) and measure == "relative-error"):
            warnings.warn(
                f"LayerSustainabilityAnalysis: measure={measure!r} is ignored, as in the reference "
                "package (whose default is 'MSE'): the relative error is returned",
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

    # ------------------------------------------------------------------ the reference's helpers
    # Plain functions in the reference's class body (no self), called on the class:
    # LayerSustainabilityAnalysis.plot_representation_cm(lst_comparison_measures=...).

    @staticmethod
    def plot_representation_cm(
        plot_title="LSA result : Comparison measure of model",
        plot_label="measure",
        plot_style="-o",
        lst_comparison_measures=(),
        xlabel="layer",
        ylabel="relative-error",
        save_img=None,
        fig=None,
    ):
        """Adds one curve (comparison measure per layer) to pyplot's current axes, as the
        reference does: markers at 0..L-1, legend, labels, title, y in [0, 2], each nonzero
        value written above its point; several calls draw several curves on one plot.
        save_img: a path the figure is saved to (atomically, bbox_inches='tight').
        fig: accepted and not used, as in the reference."""
        plt = _pyplot("plot_representation_cm")
        measures = lst_comparison_measures
        if isinstance(measures, torch.Tensor):
            measures = measures.detach().cpu()
        values = np.asarray([float(v) for v in measures], dtype=np.float64)
        layers = np.arange(len(values))
        plt.plot(layers, values, plot_style, label=plot_label)
        plt.xticks(layers)
        plt.legend()
        plt.xlabel(xlabel)
        plt.ylabel(ylabel)
        plt.title(plot_title)
        plt.ylim([0, 2])
        for layer, value in zip(layers, values):
            text = f"{value:.4f}"
            if text != "0.0000":  # the reference leaves (near-)zero values unlabelled
                plt.annotate(text, (layer, value), textcoords="offset points", xytext=(0, 10), ha="center")
        if save_img:
            _save_current_figure(plt, save_img)

    @staticmethod
    def imshow(img):
        """Shows a [C, H, W] image in [-1, 1] (x / 2 + 0.5 maps it to [0, 1]) with
        pyplot, gray colour map, printing the shapes as the reference does."""
        plt = _pyplot("imshow")
        print(img.shape)
        img = img / 2 + 0.5
        array = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        print(array.shape)
        if array.ndim != 3:
            raise ValueError(f"LayerSustainabilityAnalysis.imshow: img must be [C, H, W], got shape {array.shape}")
        plt.imshow(np.transpose(array, (1, 2, 0)), cmap="gray")
        plt.show()

    @staticmethod
    def np_normalize_output(img):
        """(img - min) / max of that, over all elements: values in [0, 1] (a single
        value is divided by itself, as in the reference); a constant array gives zeros."""
        array = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        if array.size > 1:
            array = array - np.min(array)
        top = np.max(array)
        if top == 0:
            return array * 0.0  # the reference's 0 / 0 = nan
        return array / top

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


def _pyplot(who: str):
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            f"LayerSustainabilityAnalysis.{who} needs matplotlib, which is not installed: pip install matplotlib "
            "(or pip install lsa_fast[plot])"
        ) from None
    return plt


def _save_current_figure(plt, path) -> None:
    from .report import atomic_write_bytes

    path = os.fspath(path)
    buffer = io.BytesIO()
    suffix = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    plt.gcf().savefig(buffer, format=suffix, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


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
