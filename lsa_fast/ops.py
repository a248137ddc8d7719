"""The public face of the compiled operators (torch.ops.lsa_fast.*): input checks
that name the layer and the problem, autograd and fake (meta) registrations, and
the fallback to lsa_fast/reference.py when the extension is missing."""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch

from . import reference
from ._extension import EXTENSION_LOADED
from .reference import DEFAULT_EPS, CMStatistics, accumulation_dtype

LR_GRAD_MODES = ("both", "adversarial", "numerator")

__all__ = [
    "relative_error",
    "cm_statistics",
    "most_vulnerable_layers",
    "layerwise_regularizer",
    "layer_moments",
    "pgd_step",
]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MODES = ("sample", "batch")


def relative_error(
    clean: Sequence[torch.Tensor],
    perturbed: Sequence[torch.Tensor],
    mode: str = "sample",
    eps: float = DEFAULT_EPS,
    check_finite: bool = True,
) -> torch.Tensor:
    """Comparison measure CM = ||phi(x) - phi(x_hat)|| / max(||phi(x)||, eps) for every
    layer, per sample (mode="sample": [M, L]) or over the whole batch tensor
    (mode="batch": [L]), in one fused pass. Differentiable w.r.t. both lists.

    Returned in fp32 (fp64 for fp64 inputs). A zero-norm clean layer gives
    ||diff|| / eps, and an unmoved layer gives 0 with the subgradient 0. For fp16
    inputs eps is at least fp16's smallest normal number, 6.1e-5 (norm_floor); fp16
    gradients saturate at +-65504 instead of overflowing to inf.
    check_finite=True raises on NaN/Inf inputs (one host sync on CUDA). Under
    torch.compile the check is skipped (a graph must not wait on the device): NaN or
    Inf inputs then give NaN/Inf in the result instead of an error.

    Autograd: first and second derivatives (create_graph=True gives a differentiable
    gradient). torch.func transforms (grad, vmap, jacrev, ...) are not supported and
    raise a clear error."""
    if mode not in _MODES:
        raise ValueError(f"relative_error: mode must be one of {_MODES}, got {mode!r}")
    if not eps > 0:
        raise ValueError(f"relative_error: eps must be > 0, got {eps}")
    if not EXTENSION_LOADED:
        clean, perturbed = _check_layer_pairs("relative_error", clean, perturbed)
        _refuse_functorch("relative_error", clean + perturbed)
        eps = norm_floor(eps, clean[0].dtype)
        if check_finite:
            _check_finite_inputs(clean, perturbed)
        return reference.relative_error(clean, perturbed, mode, eps)
    return _fused_relative_error("relative_error", clean, perturbed, mode == "batch", eps, check_finite, False)


def _fused_relative_error(op, clean, perturbed, batch_mode, eps, check_finite, numerator_only):
    """The compiled op with its checks done once, in C++: the Python checks (which say
    more: the shapes, the device, the dtype) run only to explain a call that failed."""
    if isinstance(clean, torch.Tensor) or isinstance(perturbed, torch.Tensor):
        raise TypeError(f"{op}: clean and perturbed must be lists of tensors, one per layer")
    clean, perturbed = list(clean), list(perturbed)
    compiling = torch.compiler.is_compiling()
    if not compiling and torch._C._functorch.peek_interpreter_stack() is not None:
        _refuse_functorch(op, clean + perturbed)
    try:
        eps = norm_floor(eps, clean[0].dtype)
        if numerator_only or (not compiling and _any_requires_grad(clean, perturbed)):
            # a flat autograd.Function: the op's registered autograd costs a pytree walk per call
            cm, norms = _FusedRelativeError.apply(batch_mode, eps, numerator_only, len(clean), *clean, *perturbed)
        elif compiling:
            cm, norms = torch.ops.lsa_fast.relative_error(clean, perturbed, batch_mode, eps)
        else:
            cm, norms = _forward_without_graph(clean, perturbed, batch_mode, eps)
    except (RuntimeError, TypeError, IndexError, AttributeError):
        _check_layer_pairs(op, clean, perturbed)  # raises the error that names the layer
        raise
    if check_finite and not compiling and not math.isfinite(float(norms.sum())):
        _explain_non_finite_norms(op, norms, clean, perturbed)  # one host read when all is well
    return cm


def _forward_without_graph(clean, perturbed, batch_mode, eps):
    """The op below its registered (Python) autograd kernel, which would cost more than
    the op itself on small inputs: for calls that record no graph."""
    with torch._C._AutoDispatchBelowAutograd():
        return torch.ops.lsa_fast.relative_error(clean, perturbed, batch_mode, eps)


def _any_requires_grad(clean, perturbed) -> bool:
    if not torch.is_grad_enabled():
        return False
    return any(t.requires_grad for t in clean) or any(t.requires_grad for t in perturbed)


def norm_floor(eps: float, dtype: torch.dtype) -> float:
    """The eps that floors the clean norm for this dtype. fp16 clean norms below its
    smallest normal number (6.1e-5) carry no relative precision, and a floor of 1e-12
    makes a dead (all-zero) clean sample's gradient about 1e12 g: in fp16 training a
    GradScaler would skip every step while such a sample is probed. With the floor at
    6.1e-5 that gradient is at most 16384 g, which the scaler absorbs in a few steps."""
    if dtype == torch.float16:
        return max(eps, torch.finfo(torch.float16).tiny)
    return eps


def cm_statistics(cm: torch.Tensor, eta: float) -> CMStatistics:
    """Algorithm 1 on a CM matrix [M, L] (or [L]): mu and sigma (population) over all
    entries, per-layer means, and the MVL mask layer_mean - mu > eta * sigma."""
    cm = _check_cm("cm_statistics", cm)
    if not EXTENSION_LOADED:
        return reference.cm_statistics(cm, eta)
    mu, sigma, layer_mean, _, _, _, mvl = torch.ops.lsa_fast.cm_statistics(cm, float(eta))
    return CMStatistics(mu, sigma, layer_mean, mvl)


def most_vulnerable_layers(cm: torch.Tensor, eta: float) -> list:
    """The sorted MVL list of Algorithm 1: indices l with CMbar_l - mu > eta * sigma."""
    mask = cm_statistics(cm, eta).mvl
    return [int(i) for i in torch.nonzero(mask).flatten().tolist()]


def layer_moments(cm: torch.Tensor):
    """Per-layer (count, mean, M2, min, max) of a [M, L] CM matrix in fp64, for
    streaming statistics (see lsa_fast.cm_accumulator.CMAccumulator)."""
    cm = _check_cm("layer_moments", cm)
    if not EXTENSION_LOADED:
        return reference.layer_moments(cm)
    cm2 = cm.reshape(-1, cm.shape[-1]).double()
    _, _, mean, m2, low, high, _ = torch.ops.lsa_fast.cm_statistics(cm2, 0.0)
    return cm2.shape[0], mean, m2, low, high


def layerwise_regularizer(
    clean_feats: Sequence[torch.Tensor],
    adv_feats: Sequence[torch.Tensor],
    layers: Sequence[int],
    gammas: Union[float, Sequence[float]],
    mode: str = "sample",
    check_finite: bool = False,
    lr_grad: str = "both",
) -> torch.Tensor:
    """LR = sum_{l in layers} gamma_l * mean_m CM[m, l] (Algorithm 3), a scalar.

    lr_grad chooses the gradient paths (the value is the same in all three):
      "both"        through phi(x) and phi(x_hat), as the paper's equation (default);
      "adversarial" through phi(x_hat) only (the clean features are detached);
      "numerator"   through ||phi(x) - phi(x_hat)|| only (the denominator ||phi(x)||
                    is a constant), so the model cannot lower LR by growing ||phi(x)||.

    check_finite is off by default: this runs inside training steps, which must not
    wait on the GPU; a NaN feature makes the loss NaN, which the trainer reports."""
    layers = list(layers)
    if not layers:
        raise ValueError("layerwise_regularizer: layers is empty; pass at least one probe index")
    if lr_grad not in LR_GRAD_MODES:
        raise ValueError(f"layerwise_regularizer: lr_grad must be one of {LR_GRAD_MODES}, got {lr_grad!r}")
    # The clean capture may stop after the deepest regularised layer, so the two lists
    # need only hold every selected index.
    available = min(len(clean_feats), len(adv_feats))
    for index in layers:
        if not isinstance(index, int) or not 0 <= index < available:
            raise ValueError(
                f"layerwise_regularizer: layer index {index!r} is outside the {available} probe points "
                f"({len(clean_feats)} clean, {len(adv_feats)} adversarial)"
            )
    if isinstance(gammas, (int, float)):
        gammas = [float(gammas)] * len(layers)
    gammas = [float(g) for g in gammas]
    if len(gammas) != len(layers):
        raise ValueError(f"layerwise_regularizer: {len(gammas)} gammas for {len(layers)} layers")
    clean = [clean_feats[i] for i in layers]
    adversarial = [adv_feats[i] for i in layers]
    if lr_grad == "adversarial":
        clean = [t.detach() for t in clean]
    if lr_grad == "numerator":
        cm = _numerator_only_relative_error(clean, adversarial, mode, check_finite)
    else:
        cm = relative_error(clean, adversarial, mode, check_finite=check_finite)
    per_layer = cm.mean(dim=0) if mode == "sample" else cm
    # Python-float weights: no host-to-device copy of a gamma tensor in every step.
    if all(g == gammas[0] for g in gammas):
        return per_layer.sum() * gammas[0]
    return sum(per_layer[i] * g for i, g in enumerate(gammas))


def _numerator_only_relative_error(clean, perturbed, mode, check_finite):
    """CM whose gradient treats the denominator max(||phi(x)||, eps) as a constant:
    then dCM/da = c1 (a - b)/d = -dCM/db, so the fused backward's perturbed gradient
    gives both."""
    if not EXTENSION_LOADED:
        eps = norm_floor(DEFAULT_EPS, clean[0].dtype)
        columns = []
        for a, b in zip(clean, perturbed):
            dims = tuple(range(1, a.dim())) if mode == "sample" else None
            acc = accumulation_dtype(a.dtype)
            diff = torch.linalg.vector_norm((a - b).to(acc), dim=dims)
            columns.append(diff / torch.linalg.vector_norm(a.detach().to(acc), dim=dims).clamp_min(eps))
        return torch.stack(columns, dim=-1)
    return _fused_relative_error("layerwise_regularizer", clean, perturbed, mode == "batch", DEFAULT_EPS,
                                 check_finite, True)


class _FusedRelativeError(torch.autograd.Function):
    """The fused forward and backward with the tensors passed flat. numerator_only:
    the denominator ||phi(x)|| is a constant of the gradient (lr_grad="numerator").
    Host work per call is most of its cost at training sizes, so: no zero gradient
    materialised for the non-differentiable norms, and None for inputs that need no
    gradient (the engine then skips them)."""

    @staticmethod
    def forward(ctx, batch_mode, eps, numerator_only, num_layers, *tensors):
        clean, perturbed = tensors[:num_layers], tensors[num_layers:]
        if torch.compiler.is_compiling():
            cm, norms = torch.ops.lsa_fast.relative_error(clean, perturbed, batch_mode, eps)
        else:
            cm, norms = _forward_without_graph(clean, perturbed, batch_mode, eps)
        ctx.save_for_backward(*tensors, norms)
        ctx.batch_mode, ctx.eps, ctx.numerator_only, ctx.num_layers = batch_mode, eps, numerator_only, num_layers
        ctx.mark_non_differentiable(norms)
        ctx.set_materialize_grads(False)
        return cm, norms

    @staticmethod
    def backward(ctx, grad_cm, _grad_norms):
        n = ctx.num_layers
        if grad_cm is None:  # only the norms were used: they carry no gradient
            return (None,) * (4 + 2 * n)
        *tensors, norms = ctx.saved_tensors
        clean, perturbed = tensors[:n], tensors[n:]
        if ctx.numerator_only:
            grads = torch.ops.lsa_fast.relative_error_backward(
                grad_cm.contiguous(), clean, perturbed, norms, ctx.batch_mode, ctx.eps)
            perturbed_grads = grads[n:]
            grads = [-g for g in perturbed_grads] + perturbed_grads
        else:
            grad_clean, grad_perturbed, _, _ = _relative_error_backward(ctx, grad_cm, None, clean, perturbed, norms)
            grads = grad_clean + grad_perturbed
        needs = ctx.needs_input_grad
        if not all(needs[4:]):
            grads = [g if need else None for g, need in zip(grads, needs[4:])]
        return (None, None, None, None, *grads)


def pgd_step(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x_orig: torch.Tensor,
    alpha: float,
    eps: float,
    norm: str = "linf",
) -> torch.Tensor:
    """One projected step of PGD in one fused pass. L-inf:
    clip_[0,1](x + clip_[-eps,eps](x_adv + alpha*sign(g) - x)); L2: normalised
    gradient step, projection onto the per-sample eps-ball, clip to [0, 1]."""
    if norm not in ("linf", "l2"):
        raise ValueError(f"pgd_step: norm must be 'linf' or 'l2', got {norm!r}")
    for name, tensor in (("grad", grad), ("x_orig", x_orig)):
        if tensor.shape != x_adv.shape:
            raise ValueError(f"pgd_step: {name} has shape {tuple(tensor.shape)}, x_adv {tuple(x_adv.shape)}")
        if tensor.device != x_adv.device or tensor.dtype != x_adv.dtype:
            raise ValueError(f"pgd_step: {name} is {tensor.dtype} on {tensor.device}, x_adv {x_adv.dtype} on {x_adv.device}")
    if eps < 0 or alpha < 0:
        raise ValueError(f"pgd_step: eps and alpha must be >= 0, got eps={eps}, alpha={alpha}")
    return _PGD_STEPS[norm](x_adv.detach(), grad.detach(), x_orig.detach(), float(alpha), float(eps))


# ----------------------------------------------------------------------------- checks


def _check_layer_pairs(op: str, clean, perturbed):
    if isinstance(clean, torch.Tensor) or isinstance(perturbed, torch.Tensor):
        raise TypeError(f"{op}: clean and perturbed must be lists of tensors, one per layer")
    clean, perturbed = list(clean), list(perturbed)
    if len(clean) != len(perturbed):
        raise ValueError(f"{op}: {len(clean)} clean layers but {len(perturbed)} perturbed layers")
    if not clean:
        raise ValueError(f"{op}: the layer lists are empty")
    first = clean[0]
    for i, (a, b) in enumerate(zip(clean, perturbed)):
        for side, t in (("clean", a), ("perturbed", b)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{op}: layer {i} ({side}) is a {type(t).__name__}, not a tensor")
            if t.dtype not in _FLOAT_DTYPES:
                raise TypeError(f"{op}: layer {i} ({side}) has dtype {t.dtype}; expected a floating dtype")
            if t.dim() < 1:
                raise ValueError(f"{op}: layer {i} ({side}) is a 0-d tensor; the first dimension must be the batch")
            if t.device != first.device:
                raise ValueError(f"{op}: layer {i} ({side}) is on {t.device} but layer 0 is on {first.device}")
            if t.dtype != first.dtype:
                raise TypeError(f"{op}: layer {i} ({side}) has dtype {t.dtype} but layer 0 has {first.dtype}")
        if a.shape != b.shape:
            raise ValueError(
                f"{op}: layer {i} has clean shape {tuple(a.shape)} but perturbed shape {tuple(b.shape)}"
            )
        if a.shape[0] != first.shape[0]:
            raise ValueError(f"{op}: layer {i} has batch size {a.shape[0]} but layer 0 has {first.shape[0]}")
    if first.shape[0] == 0:
        raise ValueError(f"{op}: the batch is empty (batch size 0)")
    return clean, perturbed


def _refuse_functorch(op: str, tensors):
    """torch.func transforms need a batching rule and a functorch-aware autograd
    registration, which the compiled ops lack; without this check torch answers with
    an internal message about setup_context or batching rules."""
    if torch.compiler.is_compiling():  # dynamo cannot trace the check; graphs see plain tensors
        return
    if any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors):
        raise NotImplementedError(
            f"{op}: torch.func transforms (grad, vmap, jacrev, ...) are not supported; use torch.autograd.grad "
            "(create_graph=True works for second derivatives) or loop over the samples"
        )


def _check_finite_inputs(clean, perturbed, op: str = "relative_error"):
    for i, (a, b) in enumerate(zip(clean, perturbed)):
        for side, t in (("clean", a), ("perturbed", b)):
            if not torch.isfinite(t).all():
                raise ValueError(f"{op}: layer {i} ({side}) contains NaN or Inf")


def _explain_non_finite_norms(op: str, norms: torch.Tensor, clean, perturbed):
    """norms[0] holds ||a-b||^2 sums, norms[1] ||a||^2, and their total was not finite:
    a NaN/Inf input or a sum of squares past the accumulator's range; say which layer
    and which of the two. (Finite sums whose total overflows are no error.)"""
    num_layers = len(clean)
    finite = torch.isfinite(norms.reshape(2, -1, num_layers)).all(dim=1)  # [2, L]
    if bool(finite.all()):
        return
    _check_finite_inputs(clean, perturbed, op)  # names a NaN/Inf input first
    layer = int(torch.nonzero(~finite.all(dim=0))[0])
    largest = max(clean[layer].detach().abs().max().item(), perturbed[layer].detach().abs().max().item())
    raise ValueError(
        f"{op}: layer {layer}: the sum of squares overflows {str(norms.dtype).replace('torch.', '')} "
        f"(largest |value| {largest:.3g}); scale the layer's values down"
    )


def _check_cm(op: str, cm) -> torch.Tensor:
    if not isinstance(cm, torch.Tensor) or cm.dim() not in (1, 2):
        raise ValueError(f"{op}: cm must be a [M, L] or [L] tensor")
    if cm.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: cm has dtype {cm.dtype}; expected a floating dtype")
    if cm.numel() == 0:
        raise ValueError(f"{op}: cm is empty (shape {tuple(cm.shape)})")
    cm = cm.detach()
    if not torch.compiler.is_compiling():
        bad = ~torch.isfinite(cm.reshape(-1, cm.shape[-1])).all(dim=0)
        if bool(bad.any()):
            raise ValueError(f"{op}: cm holds NaN or Inf in layer {int(torch.nonzero(bad)[0])}")
    return cm if cm.dim() == 2 else cm.unsqueeze(0)


# ------------------------------------------------------- autograd and fake registrations


def _relative_error_setup_context(ctx, inputs, output):
    clean, perturbed, batch_mode, eps = inputs
    _, norms = output
    ctx.num_layers = len(clean)
    ctx.batch_mode = batch_mode
    ctx.eps = eps
    ctx.save_for_backward(*clean, *perturbed, norms)


def _relative_error_backward(ctx, grad_cm, grad_norms, clean=None, perturbed=None, norms=None):
    if clean is None:  # the registered autograd of torch.ops.lsa_fast.relative_error
        saved = ctx.saved_tensors
        n = ctx.num_layers
        clean, perturbed, norms = list(saved[:n]), list(saved[n : 2 * n]), saved[2 * n]
    if grad_cm is None:
        return None, None, None, None
    if torch.is_grad_enabled():  # create_graph=True: a gradient that is itself differentiable
        return _differentiable_backward(ctx, clean, perturbed, grad_cm)
    grads = torch.ops.lsa_fast.relative_error_backward(
        grad_cm, clean, perturbed, norms, ctx.batch_mode, ctx.eps
    )
    n = len(clean)
    return list(grads[:n]), list(grads[n:]), None, None


def _differentiable_backward(ctx, clean, perturbed, grad_cm):
    """The same gradient written with differentiable torch ops (the reference's CM),
    so that double backward is exact instead of PyTorch's silent zeros for a backward
    op without an autograd formula. Only taken under create_graph=True."""
    mode = "batch" if ctx.batch_mode else "sample"
    inputs = [t.detach().requires_grad_() if not t.requires_grad else t for t in clean + perturbed]
    with torch.enable_grad():
        cm = reference.relative_error(inputs[: ctx.num_layers], inputs[ctx.num_layers :], mode, ctx.eps)
        grads = torch.autograd.grad(cm, inputs, grad_cm, create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)]
    n = ctx.num_layers
    return list(grads[:n]), list(grads[n:]), None, None


def _register():
    torch.library.register_autograd(
        "lsa_fast::relative_error", _relative_error_backward, setup_context=_relative_error_setup_context
    )

    @torch.library.register_fake("lsa_fast::relative_error")
    def _relative_error_fake(clean, perturbed, batch_mode, eps):
        # Also the kernel of meta tensors, which skip the C++ checks: check here (once per trace).
        _check_layer_pairs("relative_error", clean, perturbed)
        acc = accumulation_dtype(clean[0].dtype)
        shape = (len(clean),) if batch_mode else (clean[0].shape[0], len(clean))
        return clean[0].new_empty(shape, dtype=acc), clean[0].new_empty((2, *shape), dtype=acc)

    @torch.library.register_fake("lsa_fast::relative_error_backward")
    def _relative_error_backward_fake(grad_cm, clean, perturbed, norms, batch_mode, eps):
        return [torch.empty_like(t) for t in list(clean) + list(perturbed)]

    @torch.library.register_fake("lsa_fast::cm_statistics")
    def _cm_statistics_fake(cm, eta):
        layers = cm.shape[-1]
        scalar = cm.new_empty(())
        vector = [cm.new_empty((layers,)) for _ in range(4)]
        return scalar, cm.new_empty(()), *vector, cm.new_empty((layers,), dtype=torch.bool)

    for norm in ("linf", "l2"):
        torch.library.register_fake(f"lsa_fast::pgd_step_{norm}")(
            lambda x_adv, grad, x_orig, alpha, eps: torch.empty_like(x_adv)
        )


if EXTENSION_LOADED:
    _register()
    _PGD_STEPS = {"linf": torch.ops.lsa_fast.pgd_step_linf, "l2": torch.ops.lsa_fast.pgd_step_l2}
else:
    _PGD_STEPS = {"linf": reference.pgd_step_linf, "l2": reference.pgd_step_l2}
