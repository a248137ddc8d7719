"""Capturing layer representations phi_l(x) with forward hooks.

A probe point is one *call* of a selected module, ordered by when the call returns
(a container comes after the modules it calls): a module called twice in one forward
gives two probe points ("relu", then "relu#1"). Modules are selected by type, by
qualified name or glob pattern, or by a predicate; activations applied as functions
(F.relu, torch.relu) are not modules and are never probed by type.

A probe point holds the value its module returned, whatever the model does with that
tensor afterwards: each output is recorded as a copy-on-write snapshot
(torch._lazy_clone), which shares the model's memory and costs no copy until someone
writes to that memory. A later write of any kind (nn.ReLU(inplace=True), `out += identity`
in a residual block, F.relu(x, inplace=True), x.data.mul_(), an out= argument, ...) goes
through PyTorch's mutable data access, which gives the writer a private copy first, so the
recorded value stays as returned (c10's copy-on-write storage). Reads by PyTorch's ops do
not copy; APIs that hand out a writable pointer (.numpy(), data_ptr()) copy once. Where a
snapshot is not available (a device or tensor subclass without copy-on-write storage, or
inside a torch.compile graph, where the compiler owns the memory) the output is copied.
Writes that bypass PyTorch's storage (a CUDA graph replay) are outside what a hook can see.
"""
from __future__ import annotations

import contextlib
import fnmatch
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .checks import is_int

__all__ = ["LayerProbe", "check_same_sequence", "snapshot", "ACTIVATION_TYPES", "LEARNABLE_TYPES"]

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
    clone: copy every output when it is recorded instead of taking a copy-on-write snapshot.
      Never needed for correct values (see the module docstring); it only moves the copy
      to the hook, also where the model would never write to the output.

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
        if stop_after is not None and (not is_int(stop_after) or stop_after < 0):
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
        """The probe outputs of the last forward, in call order, each the value its module
        returned (also when the model changed that tensor in place afterwards)."""
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
            clean_names = list(self._names)
            self._run((perturbed,), {})
            perturbed_outputs = self._finished_outputs()
        check_same_sequence(clean_names, self._names)
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
        self._calls: Dict[str, int] = {}

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
        index = len(self._outputs)
        self._outputs.append(tensor.clone() if self.clone else snapshot(tensor))
        self._names.append(name if count == 0 else f"{name}#{count}")
        self._modules.append(module)
        if self.stop_after is not None and index >= self.stop_after:
            raise _StopForward(self)

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


def snapshot(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's value now, kept whatever later writes to its memory: a copy-on-write
    clone (no copy unless the memory is written; differentiable, gradient = identity), or a
    plain copy where copy-on-write storage is not available."""
    if torch.compiler.is_compiling():
        # Dynamo cannot trace _lazy_clone; in a graph a clone is exact and may be optimised away.
        return tensor.clone()
    try:
        return torch._lazy_clone(tensor)
    except (AttributeError, NotImplementedError, RuntimeError, TypeError):
        return tensor.clone()
