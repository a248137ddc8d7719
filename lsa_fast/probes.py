"""Capturing layer representations phi_l(x) with forward hooks.

A probe point is one *call* of a selected module, ordered by when the call returns
(a container comes after the modules it calls): a module called twice in one forward
gives two probe points ("relu", then "relu#1"). Modules are selected by type, by
qualified name or glob pattern, or by a predicate; activations applied as functions
(F.relu, torch.relu) are not modules and are never probed by type.

In-place modules (nn.ReLU(inplace=True), ...) are captured without a copy; a recorded
output is copied only when an in-place module is about to overwrite it, and any other
in-place change after recording is detected (version counter) and reported.
"""
from __future__ import annotations

import contextlib
import fnmatch
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = ["LayerProbe", "check_same_sequence", "ACTIVATION_TYPES", "LEARNABLE_TYPES"]

# The module types the reference package (LayersSustainabilityAnalysis 1.0.4) hooks by default.
ACTIVATION_TYPES = (nn.ReLU, nn.ELU, nn.LeakyReLU)
# "Learnable layer k" of the paper's figures: the outputs of the convolutions and linear layers.
LEARNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

_PRESETS = {"activations": ACTIVATION_TYPES, "learnable": LEARNABLE_TYPES, "hidden": LEARNABLE_TYPES}
# "hidden" is "learnable" less the last such module (the classifier that gives the
# logits): the paper's learnable layers L0, L1, ... that AT-LR-Lk regularises.

Selection = Union[str, Sequence[str], type, Tuple[type, ...], Callable[[str, nn.Module], bool]]


class LayerProbe:
    """Records the outputs of the selected modules during a forward of `model`.

    select:
      "activations" (default) - nn.ReLU, nn.ELU, nn.LeakyReLU modules (subclasses included);
      "learnable"             - nn.Conv1d/2d/3d and nn.Linear modules;
      "hidden"                - "learnable" less the last one (the output layer): the paper's L0, L1, ...;
      a name or glob pattern, or a list of them (fnmatch on qualified names, "*" crosses dots);
      a module type or tuple of types (isinstance);
      a predicate (qualified_name, module) -> bool.
    capture_grad: False stores detached tensors (the forward still runs under the caller's
      grad mode); True keeps the autograd graph so a loss on the outputs trains the model.
    stop_after: probe index k; the forward is stopped right after probe point k is recorded
      (through capture() / capture_pair(); use it when the logits are not needed).
    clone: copy every output when it is recorded. Not needed for nn.Module in-place ops
      (those are handled); needed only when a probe output is later changed in place by an
      op outside a module with inplace=True, which the probe detects and reports.

    Use as a context manager (hooks live only inside the `with`, also when it raises), or
    call capture(x) / capture_pair(x, x_hat) directly, which attach the hooks for one call.
    After a forward: `outputs` (tensors), `names` (qualified name, "#i" for the i-th repeated
    call), `modules` (the module of each probe point), all of the last forward of `model`.
    """

    def __init__(
        self,
        model: nn.Module,
        select: Selection = "activations",
        capture_grad: bool = False,
        stop_after: Optional[int] = None,
        clone: bool = False,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"LayerProbe: model must be a torch.nn.Module, got {type(model).__name__}")
        if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 0):
            raise ValueError(f"LayerProbe: stop_after must be None or a probe index >= 0, got {stop_after!r}")
        self.model = model
        self.select = select
        self.capture_grad = bool(capture_grad)
        self.stop_after = stop_after
        self.clone = bool(clone)
        self.selected: List[Tuple[str, nn.Module]] = _select_modules(model, select)
        self._handles: list = []
        self._reset()

    # ------------------------------------------------------------------ public face

    @property
    def outputs(self) -> List[torch.Tensor]:
        """The probe outputs of the last forward, in call order (RuntimeError if one of
        them was changed in place after it was recorded: see `clone`)."""
        _check_unchanged(self._outputs, self._versions, self._names)
        return list(self._outputs)

    @property
    def names(self) -> List[str]:
        return list(self._names)

    @property
    def modules(self) -> List[nn.Module]:
        return list(self._modules)

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> "LayerProbe":
        if self._handles:
            raise RuntimeError("LayerProbe: this probe is already active (nested `with` on the same probe)")
        try:
            # A new forward of the model starts a new record: the root's pre-hook resets it.
            self._handles.append(self.model.register_forward_pre_hook(self._on_forward_start))
            for name, module in self.selected:
                self._handles.append(module.register_forward_hook(partial(self._on_output, name)))
            for module in _inplace_modules(self.model):
                self._handles.append(module.register_forward_pre_hook(self._before_inplace))
        except BaseException:
            self._remove_hooks()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._remove_hooks()
        return False

    def capture(self, *inputs, **kwargs) -> List[torch.Tensor]:
        """Run model(*inputs, **kwargs) and return the probe outputs (a new list)."""
        with self._attached():
            self._run(inputs, kwargs)
        return self._finished_outputs()

    def capture_pair(self, clean, perturbed) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Capture model(clean) and model(perturbed); the two passes must call the same
        probe points in the same order (else ValueError saying where they differ)."""
        with self._attached():
            self._run((clean,), {})
            clean_outputs = self._finished_outputs()
            clean_record = (list(self._outputs), list(self._versions), list(self._names))
            self._run((perturbed,), {})
            perturbed_outputs = self._finished_outputs()
        check_same_sequence(clean_record[2], self._names)
        # The second forward must not have changed what the first one recorded.
        _check_unchanged(*clean_record)
        return clean_outputs, perturbed_outputs

    def __repr__(self) -> str:
        return (
            f"LayerProbe({type(self.model).__name__}, select={_describe(self.select)}, "
            f"{len(self.selected)} modules, capture_grad={self.capture_grad}, stop_after={self.stop_after})"
        )

    # ------------------------------------------------------------------ hooks

    def _reset(self):
        self._outputs: List[torch.Tensor] = []
        self._names: List[str] = []
        self._modules: List[nn.Module] = []
        self._versions: List[Optional[int]] = []
        self._calls: Dict[str, int] = {}
        # storage key -> indices of recorded outputs that still alias the model's tensors
        self._shared: Dict[tuple, List[int]] = {}

    def _on_forward_start(self, module, args):
        self._reset()

    def _on_output(self, name: str, module: nn.Module, args, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"LayerProbe: probe point {name!r} ({type(module).__name__}) returned a "
                f"{type(output).__name__}, not a tensor; select modules whose output is a tensor"
            )
        count = self._calls.get(name, 0)
        self._calls[name] = count + 1
        tensor = output if self.capture_grad else output.detach()
        key = None if (self.clone or tensor.is_inference()) else _storage_key(tensor)
        index = len(self._outputs)
        if key is None:
            # Copy now: asked for, or an inference tensor has no version counter (so a later
            # in-place change could not be detected), or the storage cannot be identified.
            tensor = tensor.clone()
            self._versions.append(None)
        else:
            # No copy: the tensor is the model's own. If an in-place module later takes it
            # (or a view of it) as input, _before_inplace copies it first; any other in-place
            # change bumps its version counter, which `outputs` checks.
            self._shared.setdefault(key, []).append(index)
            self._versions.append(tensor._version)
        self._outputs.append(tensor)
        self._names.append(name if count == 0 else f"{name}#{count}")
        self._modules.append(module)
        if self.stop_after is not None and index >= self.stop_after:
            raise _StopForward(self)

    def _before_inplace(self, module, args):
        # An in-place module overwrites its input: copy the recorded outputs sharing that
        # storage first, so they keep the value they had at their probe point. The copy is
        # differentiable (clone), so capture_grad=True still reaches the earlier layers.
        if not self._shared or not args or not isinstance(args[0], torch.Tensor):
            return
        for index in self._shared.pop(_storage_key(args[0]), ()):
            self._outputs[index] = self._outputs[index].clone()
            self._versions[index] = None

    # ------------------------------------------------------------------ helpers

    @contextlib.contextmanager
    def _attached(self):
        if self._handles:
            yield
        else:
            with self:
                yield

    def _run(self, inputs, kwargs):
        self._reset()
        try:
            self.model(*inputs, **kwargs)
        except _StopForward as stop:
            if stop.probe is not self:
                raise

    def _finished_outputs(self) -> List[torch.Tensor]:
        outputs = self.outputs
        if not outputs:
            listed = ", ".join(repr(name) for name, _ in self.selected[:5])
            more = ", ..." if len(self.selected) > 5 else ""
            raise ValueError(
                f"LayerProbe: the forward of {type(self.model).__name__} called none of the "
                f"{len(self.selected)} selected modules ({listed}{more}), so there is no probe point"
            )
        if self.stop_after is not None and len(outputs) <= self.stop_after:
            raise ValueError(
                f"LayerProbe: stop_after={self.stop_after} but the forward reached only "
                f"{len(outputs)} probe points (indices 0..{len(outputs) - 1})"
            )
        return outputs

    def _remove_hooks(self):
        while self._handles:
            self._handles.pop().remove()


def check_same_sequence(
    names_a: Sequence[str], names_b: Sequence[str], labels: Tuple[str, str] = ("clean", "perturbed")
) -> None:
    """Raise ValueError unless two passes called the same probe points in the same
    order (the layer index l must mean the same layer in both)."""
    a, b = list(names_a), list(names_b)
    if a == b:
        return
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            raise ValueError(
                f"probe sequences differ at probe point {index}: the {labels[0]} pass called "
                f"{x!r} but the {labels[1]} pass called {y!r} (the forward's control flow depends "
                f"on the input, so layer {index} would not be the same layer in both passes)"
            )
    common = min(len(a), len(b))
    longer, extra = (labels[0], a[common]) if len(a) > len(b) else (labels[1], b[common])
    raise ValueError(
        f"probe sequences differ in length: the {labels[0]} pass has {len(a)} probe points and the "
        f"{labels[1]} pass {len(b)}; the first {common} agree, then the {longer} pass goes on with {extra!r}"
    )


# ---------------------------------------------------------------------- internals


class _StopForward(Exception):
    """Raised from a hook to end the forward after the deepest probe point needed."""

    def __init__(self, probe: LayerProbe):
        super().__init__(
            f"LayerProbe stopped the forward after probe point {probe.stop_after} (stop_after); "
            "use probe.capture(x) or probe.capture_pair(x, x_hat), which catch this"
        )
        self.probe = probe


def _select_modules(model: nn.Module, select: Selection) -> List[Tuple[str, nn.Module]]:
    """(qualified name, module) pairs in registration order, each module once (a module
    registered under two names keeps the first name that matches)."""
    patterns = None
    if isinstance(select, str):
        if select in _PRESETS:
            types = _PRESETS[select]
            match = lambda name, module: isinstance(module, types)  # noqa: E731
        else:
            patterns = [select]
    elif isinstance(select, type) or (
        isinstance(select, tuple) and select and all(isinstance(t, type) for t in select)
    ):
        match = lambda name, module: isinstance(module, select)  # noqa: E731
    elif callable(select):
        match = lambda name, module: bool(select(name, module))  # noqa: E731
    elif isinstance(select, (list, tuple)) and select and all(isinstance(p, str) for p in select):
        patterns = list(select)
    else:
        raise TypeError(
            "LayerProbe: select must be 'activations', 'learnable', a name or glob pattern, a list "
            f"of them, a module type or tuple of types, or a predicate(name, module); got {select!r}"
        )

    named = list(model.named_modules(remove_duplicate=False))
    if patterns is not None:
        # The root (name "") is not a layer of itself: patterns match submodules only.
        names = [name for name, _ in named if name]
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
                raise ValueError(
                    f"LayerProbe: select pattern {pattern!r} matches no module of {type(model).__name__} "
                    f"(its modules are named like {names[:8]}; presets: {sorted(_PRESETS)})"
                )
        match = lambda name, module: bool(name) and any(fnmatch.fnmatchcase(name, p) for p in patterns)  # noqa: E731

    chosen: List[Tuple[str, nn.Module]] = []
    seen = set()
    for name, module in named:
        if id(module) in seen or not match(name, module):
            continue
        seen.add(id(module))
        chosen.append((name or "<root>", module))
    if select == "hidden":
        chosen = chosen[:-1]
    if not chosen:
        hint = ""
        if select == "activations":
            hint = (
                "; activations applied as functions (F.relu, torch.relu) are not modules and cannot "
                "be probed by type: use select='learnable', nn.ReLU modules, or select by name"
            )
        raise ValueError(
            f"LayerProbe: select={_describe(select)} matches no module of {type(model).__name__}{hint}"
        )
    return chosen


def _describe(select) -> str:
    if isinstance(select, str) and select in _PRESETS:
        return f"{select!r} ({', '.join('nn.' + t.__name__ for t in _PRESETS[select])})"
    if isinstance(select, type):
        return select.__name__
    if isinstance(select, tuple) and all(isinstance(t, type) for t in select):
        return "(" + ", ".join(t.__name__ for t in select) + ")"
    if callable(select):
        return f"predicate {getattr(select, '__qualname__', repr(select))}"
    return repr(select)


def _inplace_modules(model: nn.Module) -> List[nn.Module]:
    # nn.ReLU, ELU, LeakyReLU, Hardtanh, Dropout, ... all spell the flag `inplace`.
    return [m for m in model.modules() if getattr(m, "inplace", False) is True]


def _storage_key(tensor: torch.Tensor):
    """Identifies the memory a tensor (or any view of it) lives in; None if unknown."""
    try:
        return (tensor.device, tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError, TypeError):
        return None


def _check_unchanged(outputs, versions, names):
    for index, (tensor, version) in enumerate(zip(outputs, versions)):
        if version is not None and tensor._version != version:
            raise RuntimeError(
                f"LayerProbe: probe point {index} ({names[index]!r}) was modified in place after it was "
                "recorded, by an op outside an nn.Module with inplace=True (e.g. F.relu(x, inplace=True), "
                "x += y, or x.mul_() inside a custom module), so its recorded value is no longer the "
                "value at that probe point; create the LayerProbe with clone=True"
            )
