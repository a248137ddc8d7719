"""Plain-PyTorch implementation of every lsa_fast op: the oracle of the tests and
the fallback when the compiled extension is missing.

Everything here follows docs/DESIGN.md section 1 literally; speed does not matter.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

DEFAULT_EPS = 1e-12  # as torch.nn.functional.normalize: a floor on the clean norm


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """CM is accumulated (and returned) in fp64 for fp64 inputs, fp32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def relative_error(
    clean: Sequence[torch.Tensor],
    perturbed: Sequence[torch.Tensor],
    mode: str = "sample",
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """CM[m, l] = ||a_m - b_m|| / max(||a_m||, eps) per sample ([M, L]) or over the
    whole batch tensor ([L]) in batch mode."""
    columns = []
    for a, b in zip(clean, perturbed):
        acc = accumulation_dtype(a.dtype)
        a = a.to(acc).reshape(a.shape[0], -1)
        b = b.to(acc).reshape(b.shape[0], -1)
        if mode == "sample":
            diff = torch.linalg.vector_norm(a - b, dim=1)
            norm = torch.linalg.vector_norm(a, dim=1)
        else:
            diff = torch.linalg.vector_norm(a - b)
            norm = torch.linalg.vector_norm(a)
        columns.append(diff / norm.clamp_min(eps))
    return torch.stack(columns, dim=-1)


class CMStatistics(NamedTuple):
    """Algorithm 1 of the paper on a CM matrix."""

    mu: torch.Tensor  # mean over all M x L entries
    sigma: torch.Tensor  # population standard deviation over all entries
    layer_mean: torch.Tensor  # [L] mean of each layer over samples
    mvl: torch.Tensor  # [L] bool: layer_mean - mu > eta * sigma


def cm_statistics(cm: torch.Tensor, eta: float) -> CMStatistics:
    dtype = cm.dtype
    cm = cm.reshape(-1, cm.shape[-1]).double()
    mu = cm.mean()
    sigma = ((cm - mu) ** 2).mean().sqrt()
    layer_mean = cm.mean(dim=0)
    mvl = (layer_mean - mu) > eta * sigma
    return CMStatistics(mu.to(dtype), sigma.to(dtype), layer_mean.to(dtype), mvl)


def layer_moments(cm: torch.Tensor):
    """Per-layer (count, mean, M2, min, max) of a [M, L] CM matrix, in fp64."""
    cm = cm.reshape(-1, cm.shape[-1]).double()
    mean = cm.mean(dim=0)
    m2 = ((cm - mean) ** 2).sum(dim=0)
    return cm.shape[0], mean, m2, cm.min(dim=0).values, cm.max(dim=0).values


def layerwise_regularizer(
    clean_feats: Sequence[torch.Tensor],
    adv_feats: Sequence[torch.Tensor],
    layers: Sequence[int],
    gammas: Sequence[float],
    mode: str = "sample",
) -> torch.Tensor:
    """LR = sum_l gamma_l * mean_m CM[m, l] over the selected layers (Algorithm 3)."""
    cm = relative_error([clean_feats[i] for i in layers], [adv_feats[i] for i in layers], mode)
    cm = cm.reshape(-1, len(layers))
    weights = torch.as_tensor(list(gammas), dtype=cm.dtype, device=cm.device)
    return (cm.mean(dim=0) * weights).sum()


def pgd_step_linf(x_adv, grad, x_orig, alpha: float, eps: float) -> torch.Tensor:
    """x_adv <- clip_[0,1](x + clip_[-eps,eps](x_adv + alpha * sign(g) - x)),
    in the order torchattacks' PGD writes it."""
    stepped = x_adv + alpha * grad.sign()
    delta = torch.clamp(stepped - x_orig, min=-eps, max=eps)
    return torch.clamp(x_orig + delta, min=0, max=1)


def pgd_step_l2(x_adv, grad, x_orig, alpha: float, eps: float) -> torch.Tensor:
    """Normalised-gradient step, projection onto the per-sample L2 ball of radius
    eps, then clip to [0, 1] (torchattacks' PGDL2 order; 1e-10 guards a zero grad)."""
    batch = x_adv.shape[0]
    grad_norm = torch.linalg.vector_norm(grad.reshape(batch, -1), dim=1) + 1e-10
    scale = (alpha / grad_norm).view(batch, *([1] * (grad.dim() - 1)))
    stepped = x_adv + grad * scale
    delta = stepped - x_orig
    delta_norm = torch.linalg.vector_norm(delta.reshape(batch, -1), dim=1)
    # min(eps / ||delta||, 1), written so that ||delta|| = 0 gives 1, not 0 / 0
    factor = torch.where(delta_norm > eps, eps / delta_norm.clamp_min(1e-30), torch.ones_like(delta_norm)).view_as(scale)
    return torch.clamp(x_orig + delta * factor, min=0, max=1)
