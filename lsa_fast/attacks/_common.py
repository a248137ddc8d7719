"""What every attack shares: argument checks with clear errors, the loss chosen from
the model's output shape, input gradients that leave the model's parameters alone,
and the model's train/eval mode during the attack.

Model mode: like torchattacks, an attack runs the model in eval mode by default
(model_mode="eval"), so BatchNorm statistics are not updated and dropout is off;
"train" runs it in train mode, "keep" leaves the caller's mode alone. Whatever the
choice, every submodule's `training` flag is restored afterwards, exactly.

One-logit models (output [N] or [N, 1]) are binary classifiers: the loss is
BCE-with-logits on y as a float, the predicted class is logit > 0. Models with C >= 2
logits use cross-entropy and predict argmax.

Independence of the batch: a sample's adversarial depends only on the model, that
sample, its label and the random numbers drawn for it, never on the other samples of
its batch (up to float rounding). What makes it so:
- the objective whose input gradient an attack takes is the SUM of per-sample losses,
  so sample i's gradient is its own (a batch mean would shrink it by 1/B: the L2
  normalisation's guard then stops small-gradient samples, and an fp32 gradient
  can underflow);
- every step size, projection, checkpoint and restart decision is per sample;
- randomness: with one torch.Generator the batch's numbers come from one stream in
  batch order, so which numbers sample i gets depends on its position. Pass
  `generator` as a sequence of B generators, one per sample, and sample i draws
  only from generator[i], in the same order as it would alone: then
  attack(x, y, generator=gens)[i] equals attack(x[i:i+1], y[i:i+1], generator=[g_i])
  with g_i in the state gens[i] was in;
- the model runs as given: in eval mode (the default) each sample's logits are its
  own; in train mode (model_mode="train"/"keep" on a training model) BatchNorm uses
  the batch's statistics and couples the samples, and dropout draws from torch's
  global generator: then no attack can be independent of its batch.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..checks import is_int, is_number
from ..devices import kept_modes

MODEL_MODES = ("eval", "train", "keep")
NORMS = ("linf", "l2")

LossArg = Union[None, str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
GeneratorArg = Union[None, torch.Generator, Sequence[torch.Generator]]


# ----------------------------------------------------------------------------- checks


def check_eps(fn: str, eps, name: str = "eps") -> float:
    """eps is a finite real number >= 0 (a Python number: a tensor would cost a sync)."""
    if not is_number(eps):
        raise TypeError(f"{fn}: {name} must be a real number, got {type(eps).__name__}")
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{fn}: {name} must be a finite number >= 0, got {eps}")
    return eps


def check_steps(fn: str, steps, name: str = "steps") -> int:
    if not is_int(steps):
        raise TypeError(f"{fn}: {name} must be an integer, got {type(steps).__name__}")
    if steps < 1:
        raise ValueError(f"{fn}: {name} must be >= 1, got {steps}")
    return int(steps)


def check_choice(fn: str, name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{fn}: {name} must be one of {choices}, got {value!r}")
    return value


def check_x(fn: str, x) -> torch.Tensor:
    """Structure of x only (dtype, rank, batch); its values are checked with the model's
    output in check_values, so that an attack pays one host sync for all its checks."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: x must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{fn}: x must be a floating tensor with values in [0, 1], got dtype {x.dtype}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"{fn}: x must have a non-empty batch dimension first, got shape {tuple(x.shape)}")
    return x.detach()


def check_y(fn: str, x: torch.Tensor, y) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{fn}: y must be a tensor of labels, got {type(y).__name__}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{fn}: y must be a 1-D tensor with one label per sample ({x.shape[0]}), got shape {tuple(y.shape)}"
        )
    if y.device != x.device:
        raise ValueError(f"{fn}: y is on {y.device} but x is on {x.device}")
    return y.detach()


def check_model_mode(fn: str, model_mode: str) -> str:
    return check_choice(fn, "model_mode", model_mode, MODEL_MODES)


def check_generator(fn: str, generator: GeneratorArg, x: torch.Tensor) -> GeneratorArg:
    """None, one torch.Generator, or a sequence of one torch.Generator per sample,
    each on x's device."""
    if generator is None:
        return None
    single = isinstance(generator, torch.Generator)
    if not single and not isinstance(generator, (list, tuple)):
        raise TypeError(
            f"{fn}: generator must be a torch.Generator or a list of one per sample, got {type(generator).__name__}"
        )
    generators = [generator] if single else list(generator)
    if not single and len(generators) != x.shape[0]:
        raise ValueError(f"{fn}: got {len(generators)} generators for a batch of {x.shape[0]} samples (one per sample)")
    for i, g in enumerate(generators):
        if not isinstance(g, torch.Generator):
            raise TypeError(f"{fn}: generator[{i}] is a {type(g).__name__}, not a torch.Generator")
        if g.device.type != x.device.type:
            raise ValueError(f"{fn}: the generator is on {g.device} but x is on {x.device}")
    return generator if single else generators


class AttackInputs(NamedTuple):
    """What check_attack returns: the checked batch, labels, budget and generator(s)."""

    x: torch.Tensor
    y: Optional[torch.Tensor]  # None for an attack without labels
    eps: float
    generator: GeneratorArg


def check_attack(fn: str, x, y, eps, model_mode: str, generator: GeneratorArg, *, norm: Optional[str] = None,
                 norms: Sequence[str] = NORMS, labels: bool = True) -> AttackInputs:
    """The checks every attack makes of its batch and budget, in this order: eps, norm
    (when the attack takes one), x, y (when it takes labels), model_mode, generator.
    Returns them as the attack uses them."""
    eps = check_eps(fn, eps)
    if norm is not None:
        check_choice(fn, "norm", norm, norms)
    x = check_x(fn, x)
    y = check_y(fn, x, y) if labels else None
    check_model_mode(fn, model_mode)
    return AttackInputs(x, y, eps, check_generator(fn, generator, x))


def check_counts(fn: str, **counts) -> Tuple[int, ...]:
    """Each named count (steps, n_restarts, ...) as an int >= 1, in the order given."""
    return tuple(check_steps(fn, value, name) for name, value in counts.items())


def check_logits(fn: str, logits, batch: int) -> torch.Tensor:
    """Shape-level checks of the model's output (no sync)."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{fn}: the model must return a tensor of logits, got {type(logits).__name__}")
    if logits.dim() not in (1, 2) or logits.shape[0] != batch:
        raise ValueError(
            f"{fn}: the model must return logits of shape [N], [N, 1] or [N, C] with N = {batch}, "
            f"got {tuple(logits.shape)}"
        )
    return logits


_VALUE_CHECKS = contextvars.ContextVar("lsa_fast_attack_value_checks", default=True)


@contextlib.contextmanager
def no_value_checks():
    """Skip the value checks (and their one host sync per attack call) inside this
    block: for training loops that checked their first batch and must not wait on
    the GPU in every step. Shape and argument checks still run."""
    token = _VALUE_CHECKS.set(False)
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def value_checks_enabled() -> bool:
    """False inside no_value_checks() (a compiled training step skips its first-batch path then)."""
    return _VALUE_CHECKS.get()


def check_values(fn: str, x: torch.Tensor, logits: Optional[torch.Tensor] = None, y: Optional[torch.Tensor] = None):
    """The value checks, after the first forward: x in [0, 1], finite logits, labels in
    range. One host sync for all of them, outside the attack's loop."""
    if not _VALUE_CHECKS.get():
        return
    flags = [((x < 0) | (x > 1) | torch.isnan(x)).any()]
    if logits is not None:
        flags.append(~torch.isfinite(logits).all())
        if y is not None:
            flags.append(_labels_out_of_range(fn, logits, y))
    bad = torch.stack(flags).tolist()
    if bad[0]:
        raise ValueError(f"{fn}: x must lie in [0, 1] (inputs are images in [0, 1], normalise inside the model)")
    if len(bad) > 1 and bad[1]:
        raise ValueError(f"{fn}: the model returned NaN or Inf logits on the input")
    if len(bad) > 2 and bad[2]:
        if is_binary(logits):
            raise ValueError(f"{fn}: a one-logit model needs labels y in {{0, 1}}")
        raise ValueError(f"{fn}: labels y must lie in [0, {logits.shape[1] - 1}] for a model with {logits.shape[1]} logits")


def _labels_out_of_range(fn: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if is_binary(logits):
        return ((y != 0) & (y != 1)).any()
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"{fn}: a model with {logits.shape[1]} logits needs integer class labels y, got dtype {y.dtype}")
    return ((y < 0) | (y >= logits.shape[1])).any()


def validate(fn: str, model, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A clean forward (no grad) that checks everything once; returns the clean logits."""
    with torch.no_grad():
        logits = check_logits(fn, model(x), x.shape[0])
    check_values(fn, x, logits, y)
    return logits


# ------------------------------------------------------------------------ model mode


def attack_mode(model, model_mode: str = "eval"):
    """Run the attack in eval/train/the caller's mode; restore every submodule's flag."""
    return kept_modes(model, None if model_mode == "keep" else model_mode)


# ---------------------------------------------------------------------------- losses


def is_binary(logits: torch.Tensor) -> bool:
    return logits.dim() == 1 or logits.shape[1] == 1


def as_multiclass(logits: torch.Tensor) -> torch.Tensor:
    """A one-logit model's z as the two logits [0, z] (softmax gives the Bernoulli
    probabilities); C logits unchanged. TRADES' KL reads binary models this way."""
    if is_binary(logits):
        z = logits.reshape(-1, 1)
        return torch.cat([torch.zeros_like(z), z], dim=1)
    return logits


def predicted_class(logits: torch.Tensor) -> torch.Tensor:
    """argmax for C logits; logit > 0 for one logit (returned as int64 like argmax)."""
    if is_binary(logits):
        return (logits.reshape(-1) > 0).long()
    return logits.argmax(dim=1)


def correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample bool: the model predicts y."""
    return predicted_class(logits) == y.long()


def per_sample_loss(logits: torch.Tensor, y: torch.Tensor, loss: LossArg = None, fn: str = "attack") -> torch.Tensor:
    """[N] losses: "ce" (cross-entropy, or BCE-with-logits for one logit), "bce",
    "dlr" (Croce & Hein 2020, eq. 4), or a callable(logits, y) -> [N]."""
    if callable(loss):
        value = loss(logits, y)
        if not isinstance(value, torch.Tensor) or value.shape != (logits.shape[0],):
            raise ValueError(f"{fn}: a loss callable must return one value per sample, shape [{logits.shape[0]}]")
        return value
    if loss in (None, "ce", "bce"):
        if is_binary(logits):
            z = logits.reshape(-1)
            return F.binary_cross_entropy_with_logits(z, y.to(z.dtype), reduction="none")
        if loss == "bce":
            raise ValueError(f"{fn}: loss='bce' needs a one-logit model, this one returns {logits.shape[1]} logits")
        return F.cross_entropy(logits, y.long(), reduction="none")
    if loss == "dlr":
        return dlr_loss(logits, y, fn)
    raise ValueError(f"{fn}: loss must be 'ce', 'bce', 'dlr' or a callable, got {loss!r}")


def summed_loss(logits: torch.Tensor, y: torch.Tensor, loss: LossArg = None, fn: str = "attack") -> torch.Tensor:
    """Scalar objective of the gradient attacks: the sum over the batch of the
    per-sample losses, so that each sample's input gradient is the one it would have
    alone (see the module docstring). The gradient's sign, and its direction per
    sample, are those of torchattacks' mean loss: only the scale differs, by B.
    A callable may return [N] losses (summed here) or a scalar, used as it is: a
    callable that averages over the batch couples the samples again."""
    if callable(loss):
        value = loss(logits, y)
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{fn}: a loss callable must return a tensor, got {type(value).__name__}")
        return value if value.dim() == 0 else value.sum()
    return per_sample_loss(logits, y, loss, fn).sum()


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, fn: str = "apgd") -> torch.Tensor:
    """DLR = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3), Croce & Hein 2020 eq. (4);
    shift- and scale-invariant in the logits. Needs C >= 3."""
    if is_binary(logits) or logits.shape[1] < 3:
        raise ValueError(f"{fn}: the DLR loss needs a model with at least 3 logits, got {tuple(logits.shape)}")
    z_sorted, order = logits.sort(dim=1)
    y = y.long()
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    top_is_y = order[:, -1] == y
    z_other = torch.where(top_is_y, z_sorted[:, -2], z_sorted[:, -1])
    return -(z_y - z_other) / (z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor, fn: str = "apgd") -> torch.Tensor:
    """Targeted DLR = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), Croce & Hein 2020
    eq. (5). Needs C >= 4."""
    if is_binary(logits) or logits.shape[1] < 4:
        raise ValueError(f"{fn}: the targeted DLR loss needs a model with at least 4 logits, got {tuple(logits.shape)}")
    z_sorted = logits.sort(dim=1)[0]
    z_y = logits.gather(1, y.long()[:, None]).squeeze(1)
    z_t = logits.gather(1, target.long()[:, None]).squeeze(1)
    return -(z_y - z_t) / (z_sorted[:, -1] - 0.5 * (z_sorted[:, -3] + z_sorted[:, -4]) + 1e-12)


# ----------------------------------------------------------------------- randomness


def draw(
    x: torch.Tensor,
    fill: Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor],
    generator: GeneratorArg,
    per_sample: bool = False,
) -> torch.Tensor:
    """Random numbers shaped like x (per_sample=True: one per sample, shaped
    [B, 1, ..., 1]), made by fill(empty_tensor, generator), e.g.
    lambda t, g: t.uniform_(-1, 1, generator=g). One generator fills the batch in x's
    memory order. A sequence of generators (one per sample, as check_generator
    returns it) fills sample i's values from generator[i] alone, in contiguous order
    whatever x's layout: the numbers sample i gets depend on nothing else."""
    if generator is None or isinstance(generator, torch.Generator):
        return fill(x.new_empty(batch_shape(x)) if per_sample else torch.empty_like(x), generator)
    one = (1,) + ((1,) * (x.dim() - 1) if per_sample else tuple(x.shape[1:]))
    return torch.cat([fill(x.new_empty(one), g) for g in generator])


def batch_shape(x: torch.Tensor):
    """[B, 1, ..., 1]: broadcasts one value per sample over x."""
    return (x.shape[0],) + (1,) * (x.dim() - 1)


# ------------------------------------------------------------------------ gradients


def input_gradient(
    model,
    x_adv: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    fn: str = "attack",
    check: Optional[Callable[[torch.Tensor], None]] = None,
):
    """(d objective / d x_adv, logits, objective value), differentiating w.r.t. the
    input only: torch.autograd.grad never touches the parameters' .grad. `check`
    sees the logits before the loss (an out-of-range label must raise here, not in
    cross_entropy, which on CUDA is a device-side assert). An x_adv that already is a
    leaf requiring grad is used as it is: a compiled step makes that leaf outside its
    graph (dynamo before torch 2.14 cannot trace requires_grad_)."""
    if not (x_adv.is_leaf and x_adv.requires_grad):
        x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = check_logits(fn, model(x_adv), x_adv.shape[0])
        if check is not None:
            check(logits.detach())
        value = objective(logits)
    if not value.requires_grad:
        raise ValueError(f"{fn}: the model's output does not depend on x (no gradient flows to the input)")
    (grad,) = torch.autograd.grad(value.sum(), x_adv, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(x_adv)
    return grad.detach(), logits.detach(), value.detach()


def sign_for(targeted: bool) -> float:
    """Untargeted attacks ascend the loss on y; targeted ones descend it on the target y."""
    return -1.0 if targeted else 1.0
