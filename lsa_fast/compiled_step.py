"""The fast AT-LR training step (TrainConfig.compile): the same Algorithm 3 step as
ATLRTrainer.train_step, with the attack and the loss + backward compiled by
torch.compile and, on CUDA, the whole device work of a step replayed as one CUDA graph.

The step defines no attack iteration and no loss of its own: it compiles the attacks'
per-step functions (lsa_fast.attacks.steps: pgd_iteration, fgsm_step, trades_step) and
the loss of lsa_fast.train_loss (atlr_loss), which the eager trainer calls too.

What runs where:
- Random draws (PGD's and APGD's random starts, FGSM-RS's start, TRADES' initial noise) come
  from the trainer's attack generator eagerly, before the compiled code, in the
  order the eager attacks draw them: the same numbers as an eager run.
- One attack iteration (forward, input gradient, the fused projection step: the
  attack's per-step function under the step's autocast) is one compiled graph, called
  `steps` times; torch.autograd.grad is traced into the graph
  (torch._dynamo.config.trace_autograd_ops), so each call is a single graph.
- The loss is a second graph: the clean forward (stopped after the deepest
  regularised layer unless TRADES needs its logits), the adversarial forward, task
  loss + regulariser, and the backward into the parameters' .grad, traced too.
  Layer outputs are taken by forward hooks registered once on the probe modules
  (the trainer's LayerProbe(select=TrainConfig.probes) points), which the graph inlines.
- The optimiser step, gradient clipping, GradScaler and the schedule run eagerly
  after it (ATLRTrainer.apply_gradients), as in the eager step.
- mode "cudagraphs" on CUDA: after two warm-up steps of a batch shape, the attack +
  loss + backward of that shape is captured in one torch.cuda.CUDAGraph and replayed
  (inputs copied into static buffers; the graph writes the gradients into buffers
  that become the parameters' .grad). Only the first batch shape is graphed; the
  last, smaller batch of an epoch runs compiled without a graph (TrainConfig.drop_last
  drops it). fp16 (GradScaler) runs without graphs. APGD is graphed too: its step is
  a fixed-shape, sync-free iteration (lsa_fast/compiled_apgd.py).
  On CPU "cudagraphs" is the same as "inductor".
- No host sync: nothing reads a tensor's value; the first batch of every epoch runs
  the eager step instead, with the attacks' value checks (x in [0, 1], labels).
  Under DDP the steps that compile (the first of a step kind or batch shape) agree
  across ranks on whether compilation failed: one collective and one host sync.

Results equal the eager step within float tolerance (the same operations, fused
differently by the compiler); dropout inside a compiled model draws from inductor's
generator, so a model with dropout is equal in distribution, not bit for bit.
A model that does not compile into one graph (data-dependent Python control flow,
.item(), unsupported ops) falls back to the eager step with one warning; so does a
failed CUDA-graph capture (to the compiled step without graphs).

DDP: the compiled graphs run on the bare model; afterwards the gradients are
averaged over the ranks with one all-reduce (what DistributedDataParallel computes)
and the buffers (BatchNorm statistics) broadcast from rank 0, as DDP's
broadcast_buffers does (after the step rather than before the DDP forward):
lsa_fast.distributed.average_over_ranks. The DDP-wrapped model itself is not compiled:
on torch 2.14 (CPU, gloo) a forward + backward of a DDP module under
torch.compile(fullgraph=True) and trace_autograd_ops stops at DDP's forward
(dynamo cannot trace its Logger.set_runtime_stats_and_log), and without fullgraph the
parameters get no .grad at all.
"""
from __future__ import annotations

import types
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .attacks import attack_mode, value_checks_enabled
from .attacks.steps import (
    clean_probabilities,
    fgsm_rs_default_alpha,
    fgsm_rs_start,
    fgsm_step,
    pgd_default_alpha,
    pgd_iteration,
    random_start_point,
    trades_start,
    trades_step,
)
from .compiled_apgd import CompiledAPGD
from .distributed import average_over_ranks, on_any_rank
from .probes import LayerProbe, snapshot
from .train_loss import atlr_loss

__all__ = ["CompiledStep", "make_compiled_step", "resolve_compile_mode"]

# Real steps a batch shape runs (compiled, on a side stream) before its CUDA graph is captured.
GRAPH_WARMUP_STEPS = 2


def resolve_compile_mode(mode: str, device: torch.device) -> str:
    """TrainConfig.compile for a device: "auto" is cudagraphs on CUDA, inductor elsewhere."""
    if mode == "auto":
        return "cudagraphs" if device.type == "cuda" else "inductor"
    return mode


def make_compiled_step(trainer) -> Optional["CompiledStep"]:
    """The trainer's compiled step, or None for compile="none"."""
    if trainer.config.compile == "none":
        return None
    return CompiledStep(trainer, resolve_compile_mode(trainer.config.compile, trainer.device))


class CompiledStep:
    """Callable(x, y) -> the stats of StepLoss, after the optimiser step; or None when
    the trainer must run its eager step instead (the value-checked first batch of an
    epoch, or after a model failed to compile).

    mode: "inductor", "cudagraphs", "aot-eager", or "eager" (the same code, not
    compiled: what the tests compare with ATLRTrainer's eager step)."""

    def __init__(self, trainer, mode: str):
        if mode not in ("inductor", "cudagraphs", "aot-eager", "eager"):
            raise ValueError(f"CompiledStep: unknown mode {mode!r}")
        self.trainer = trainer
        self.mode = mode
        self.backend = {"inductor": "inductor", "cudagraphs": "inductor", "aot-eager": "aot_eager"}.get(mode)
        self.use_graphs = mode == "cudagraphs" and trainer.device.type == "cuda" and trainer.config.amp != "fp16"
        self.failed = False  # the model did not compile: every step is eager from now on
        if self.backend is not None and not hasattr(torch._dynamo.config, "trace_autograd_ops"):
            # The attack's torch.autograd.grad and the step's backward must be traced into the graphs.
            self.failed = True
            warnings.warn(f"compile: torch {torch.__version__} has no torch._dynamo.config.trace_autograd_ops, "
                          f"which traces the attack's torch.autograd.grad and the backward into the graphs; "
                          f"training eagerly", RuntimeWarning, stacklevel=3)
        self._tap: Optional[_FeatureTap] = None  # hooks on the probe modules, once a step regularises
        self._units: Dict[tuple, _StepUnits] = {}
        self._graphs: Dict[tuple, _GraphedStep] = {}
        self._graph_shape: Optional[tuple] = None  # the one batch shape that gets graphs

    def __call__(self, x: torch.Tensor, y: torch.Tensor, real: Optional[int] = None) -> Optional[torch.Tensor]:
        """real: how many leading samples count in the stats (ATLRTrainer.compute_loss's)."""
        if self.failed or value_checks_enabled():
            return None
        trainer = self.trainer
        base = trainer.active_base
        layers = tuple(trainer.mvl) if trainer.regulariser_active else ()
        key = (base, layers, trainer.attack_eps)  # a new eps (the eps ramp: once per epoch) compiles anew
        units = self._units.get(key)
        if units is None:  # what an earlier eps compiled is not used again
            self._units = {k: v for k, v in self._units.items() if k[2] == key[2]}
            self._graphs = {k: v for k, v in self._graphs.items() if k[2] == key[2]}
        first_call = units is None
        if first_call:
            units = self._units[key] = _StepUnits(self, base, layers)
        # A failed compile (first call of a step or of a batch shape) must leave the model and the
        # attack stream as the eager step would find them.
        new_shape = units.new_shape(x)
        saved = _save_state(trainer) if first_call or new_shape else None
        failure = None
        try:
            trainer.optimizer.zero_grad(set_to_none=True)
            x_start = units.draw_start(x)
            stats = self._run(units, key, x, y, x_start, real)
        except torch._dynamo.exc.TorchDynamoException as error:
            if saved is None:
                raise
            failure = _first_line(error)
        if saved is not None and trainer.world_size > 1 and on_any_rank(failure is not None, trainer.device):
            # Every rank must take the same path: the eager step's DDP collectives are not ours.
            failure = failure or "on another rank"
        if failure is not None:
            _restore(trainer, saved)
            self.failed = True
            warnings.warn(f"compile: {type(trainer.module).__name__} does not compile into one graph "
                          f"({failure}); training eagerly", RuntimeWarning, stacklevel=2)
            return None
        if trainer.world_size > 1:
            average_over_ranks(trainer.module, trainer.world_size)
        trainer.apply_gradients()
        return stats

    def _run(self, units: "_StepUnits", key: tuple, x, y, x_start, real) -> torch.Tensor:
        # A graph replays the step of one batch shape (and one count of real samples).
        shape = (tuple(x.shape), x.dtype, tuple(y.shape), y.dtype, real)
        if not self.use_graphs:
            return units.run(x, y, x_start, real)
        if self._graph_shape is None:
            self._graph_shape = shape
        if shape != self._graph_shape:
            return units.run(x, y, x_start, real)
        graphed = self._graphs.get(key)
        if graphed is None:
            run = lambda x, y, x_start: units.run(x, y, x_start, real)  # noqa: E731
            graphed = self._graphs[key] = _GraphedStep(run, list(self.trainer.module.parameters()))
        try:
            return graphed(x, y, x_start)
        except RuntimeError as error:
            if isinstance(error, torch._dynamo.exc.TorchDynamoException) or not graphed.capturing_failed:
                raise
            self.use_graphs = False
            warnings.warn(f"compile: CUDA graph capture failed ({_first_line(error)}); the step runs compiled "
                          f"without graphs", RuntimeWarning, stacklevel=3)
            # Nothing ran during the capture, but the parameters may hold its unfinished .grad tensors.
            self.trainer.optimizer.zero_grad(set_to_none=True)
            return units.run(x, y, x_start, real)


class _StepUnits:
    """The compiled pieces of one (base, regularised layers) step."""

    def __init__(self, owner: CompiledStep, base: str, layers: Tuple[int, ...]):
        trainer = owner.trainer
        config = trainer.config
        self.trainer, self.base, self.layers = trainer, base, layers
        self.module = trainer.module
        self.generator = trainer.attack_generator
        self.attack_mode = config.resolved_attack_mode()
        self.eps, self.steps = trainer.attack_eps, config.steps
        self.random_start = config.random_start
        self._shapes = set()
        compile_fn = _compiler(owner.backend, trainer.device)
        # Compiled graphs hold autocast's casts as ops and never use its cache; without it the
        # graphs of "inductor" and "cudagraphs" are the same, so one compile (cache) serves both.
        autocast = _autocast_factory(trainer, cache=owner.backend is None)
        module = self.module
        eps = self.eps
        if base == "fgsm":
            self.fgsm = compile_fn(_under(autocast, lambda x_adv, y: fgsm_step(module, x_adv, y, eps)))
        elif base in ("fast", "pgd"):
            default = fgsm_rs_default_alpha(eps) if base == "fast" else pgd_default_alpha(eps, config.steps)
            alpha = default if config.alpha is None else config.alpha
            self.iteration = compile_fn(_under(autocast, lambda x_adv, x, y: pgd_iteration(module, x_adv, x, y, eps,
                                                                                           alpha)))
        elif base == "apgd":
            self.apgd = CompiledAPGD(module, eps, config.steps, self.generator, compile_fn, autocast,
                                     mixed_precision=config.amp != "none")
        elif base == "trades":
            alpha = pgd_default_alpha(eps, config.steps) if config.alpha is None else config.alpha
            self.clean_probabilities = compile_fn(_clean_probabilities_fn(module, autocast))
            self.iteration = compile_fn(_under(autocast, lambda x_adv, x, p_clean: trades_step(
                module, x_adv, x, p_clean, eps, alpha)))
        gammas = list(trainer.gammas) if layers else []
        lr_grad = getattr(config, "lr_grad", "both")
        if layers and owner._tap is None:
            owner._tap = _FeatureTap(module, config.probes)
        self.loss_backward = compile_fn(_loss_backward_fn(
            module, owner._tap, base, list(layers), gammas, lr_grad, config.beta, trainer.binary, autocast))
        self.scale = trainer.scaler if trainer.scaler.is_enabled() else None

    def new_shape(self, x: torch.Tensor) -> bool:
        shape = (tuple(x.shape), x.dtype, x.is_contiguous())
        if shape in self._shapes:
            return False
        self._shapes.add(shape)
        return True

    def draw_start(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The attack's random start, drawn as the eager attack draws it (same stream, same order)."""
        base, eps = self.base, self.eps
        if base == "fast":
            return fgsm_rs_start(x, eps, self.generator)
        if base == "pgd" and eps > 0 and self.random_start:
            return random_start_point(x, eps, "linf", self.generator)
        if base == "trades" and eps > 0:
            return trades_start(x, self.generator)
        if base == "apgd":
            return self.apgd.draw_start(x)
        return None

    def run(self, x: torch.Tensor, y: torch.Tensor, x_start: Optional[torch.Tensor],
            real: Optional[int] = None) -> torch.Tensor:
        """Attack, loss, backward: the device work of a step; returns the stats."""
        x_hat = self.attack(x, y, x_start)
        scale = None if self.scale is None else self.scale.scale(torch.ones((), device=x.device))
        return self.loss_backward(x, x_hat, y, scale, real)

    def attack(self, x, y, x_start):
        base = self.base
        if base == "none":
            return x
        if base in ("pgd", "trades") and self.eps == 0:
            return x.clone()  # the eps-ball is the point x: the eager attacks return without a forward
        with attack_mode(self.module, self.attack_mode):
            if base == "apgd":
                return self.apgd(x, y, x_start)
            if base == "fgsm":
                return self.fgsm(_leaf(x), y)
            if base == "fast":
                return self.iteration(_leaf(x_start), x, y)
            if base == "pgd":
                x_adv = x_start if x_start is not None else x.clone()
                for _ in range(self.steps):
                    x_adv = self.iteration(_leaf(x_adv), x, y)
                return x_adv
            p_clean = self.clean_probabilities(x)
            x_adv = x_start
            for _ in range(self.steps):
                x_adv = self.iteration(_leaf(x_adv), x, p_clean)
            return x_adv


# ------------------------------------------------------------------ the compiled functions


def _leaf(x: torch.Tensor) -> torch.Tensor:
    """The attack's input as a leaf that requires grad, made outside the compiled graph:
    dynamo before torch 2.14 cannot trace requires_grad_ (seen on 2.11), and the graph
    needs only the gradient with respect to it."""
    return x.detach().requires_grad_(True)


def _under(autocast, step):
    """step(*args) under the trainer's autocast and with grad enabled (the eager attacks
    run inside compute_loss's autocast too)."""

    def run(*args):
        with torch.enable_grad(), autocast():
            return step(*args)

    return run


def _clean_probabilities_fn(module, autocast):
    def probabilities(x):
        with torch.no_grad(), autocast():
            logits = module(x)
        return clean_probabilities(logits)

    return probabilities


def _loss_backward_fn(module, tap: Optional["_FeatureTap"], base: str, layers: List[int], gammas: List[float],
                      lr_grad: str, beta: float, binary: bool, autocast):
    """lsa_fast.train_loss.atlr_loss (ATLRTrainer.compute_loss after the attack), then the
    backward (of total * scale under GradScaler); returns the stats [task * real, correct
    among the first real samples, regulariser * real] (real: the batch size when None)."""

    def forward(x, record, stop_after, adversarial):
        if not record:
            return module(x), None
        return tap.run(module, x, stop_after)

    def loss_backward(x, x_hat, y, scale, real):
        with autocast():
            step = atlr_loss(forward, base, x, x_hat, y, layers, gammas, lr_grad, beta, binary, real)
        (step.total if scale is None else step.total * scale).backward()
        return step.stats

    return loss_backward


# ------------------------------------------------------------------------- pieces


class _TapStop(Exception):
    """Ends a forward after the deepest regularised layer (like LayerProbe's stop_after)."""


class _FeatureTap:
    """Forward hooks on the trainer's probe modules, registered once (a compiled graph
    inlines them; hooks added and removed every step would recompile it). They record
    only inside run(); a module called twice is two probe points, as in LayerProbe."""

    def __init__(self, module, select):
        self.selected = LayerProbe(module, select=select).selected
        self.recording = False
        self.stop_after: Optional[int] = None
        self.outputs: List[torch.Tensor] = []
        self.handles = [m.register_forward_hook(self._record) for _, m in self.selected]

    def _record(self, module, args, output):
        if not self.recording:
            return
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"compile: probe module {type(module).__name__} returned a {type(output).__name__}, "
                            f"not a tensor")
        # as LayerProbe: the value the module returned, whatever later writes to its memory
        self.outputs.append(snapshot(output))
        if self.stop_after is not None and len(self.outputs) > self.stop_after:
            raise _TapStop()

    def run(self, module, x, stop_after: Optional[int] = None):
        """(logits or None if stopped, recorded layer outputs)."""
        self.outputs, self.recording, self.stop_after = [], True, stop_after
        logits = None
        try:
            logits = module(x)
        except _TapStop:
            pass
        outputs = self.outputs
        self.outputs, self.recording, self.stop_after = [], False, None
        return logits, outputs

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class _GraphedStep:
    """run(x, y, x_start) captured in a CUDA graph after GRAPH_WARMUP_STEPS real steps
    on a side stream (cuDNN/cuBLAS setup and the compiled code's first runs happen
    there, as torch.cuda.graphs asks). The capture step records, then replays: every
    real step runs exactly once."""

    def __init__(self, run: Callable, params: List[torch.Tensor]):
        self.run, self.params = run, params
        self.calls = 0
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.capturing_failed = False

    def __call__(self, x, y, x_start):
        if self.graph is None and self.calls < GRAPH_WARMUP_STEPS:
            self.calls += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                stats = self.run(x, y, x_start)
            torch.cuda.current_stream().wait_stream(side)
            return stats
        if self.graph is None:
            self._capture(x, y, x_start)
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        if self.static_start is not None:
            self.static_start.copy_(x_start)
        self.graph.replay()
        # An eager step in between (the first batch of an epoch) gave the parameters new .grad tensors.
        for param, grad in zip(self.params, self.grads):
            param.grad = grad
        return self.static_stats.clone()

    def _capture(self, x, y, x_start):
        self.static_x, self.static_y = x.clone(), y.clone()
        self.static_start = None if x_start is None else x_start.clone()
        for param in self.params:
            param.grad = None  # the captured backward allocates them in the graph's pool
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.static_stats = self.run(self.static_x, self.static_y, self.static_start)
        except RuntimeError:
            self.capturing_failed = True
            raise
        self.grads = [param.grad for param in self.params]
        self.graph = graph


def _compiler(backend: Optional[str], device: torch.device):
    """fn -> torch.compile(fn) as one graph (fullgraph), static shapes, autograd traced."""
    if backend is None:
        return lambda fn: fn
    # On CPU, inductor's switch of convolutions to channels-last made model C's attack
    # iteration 2.4x slower (oneDNN, batch 8); keeping the model's layout made it 1.7x
    # faster than eager. On CUDA the switch is left to inductor.
    options = {"layout_optimization": False} if backend == "inductor" and device.type == "cpu" else None

    def compile_fn(fn):
        # A private copy of the code object: dynamo keeps compiled graphs (and counts
        # recompilations) per code object, so each trainer's units keep their own.
        fn = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        compiled = torch.compile(fn, backend=backend, fullgraph=True, dynamic=False, options=options)

        def call(*args):
            with torch._dynamo.config.patch(trace_autograd_ops=True):
                return compiled(*args)

        return call

    return compile_fn


def _autocast_factory(trainer, cache: bool):
    device_type = trainer.device.type
    amp = trainer.config.amp
    if amp == "none":
        return lambda: torch.autocast(device_type, enabled=False)
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    # A CUDA graph must not hold autocast's cache of cast weights (torch.cuda.graphs' advice).
    return lambda: torch.autocast(device_type, dtype=dtype, cache_enabled=cache)


def _save_state(trainer):
    """What a step changes before its optimiser step: the attack stream and the buffers."""
    return (trainer.attack_generator.get_state(),
            [buffer.detach().clone() for buffer in trainer.module.buffers()])


def _restore(trainer, saved) -> None:
    generator_state, buffers = saved
    trainer.attack_generator.set_state(generator_state)
    with torch.no_grad():
        for buffer, value in zip(trainer.module.buffers(), buffers):
            buffer.copy_(value)
    trainer.optimizer.zero_grad(set_to_none=True)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__
