"""Square Attack (Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a
query-efficient black-box adversarial attack via random search"), untargeted, L-inf
and L2, margin loss, with AutoAttack's settings (p_init 0.8, 5000 queries).

Read beside the paper (Algorithm 1 and sections 3.1-3.2):
- start: L-inf, vertical stripes of +-eps (one sign per channel and column); L2, a
  grid of 5 x 5 tiles of the "meta" pattern eta (Algorithm 3), random sign per tile
  and channel, scaled to norm eps;
- each iteration proposes a change of one random s x s square, s^2 = p * (h w) with
  p shrinking on the authors' schedule (p_selection), and keeps it where the margin
  loss f_y - max_{j != y} f_j went down, or the point became misclassified;
  L-inf: the square is set to +-2 eps per channel (then clipped to the eps-ball);
  L2: the mass of a second random square moves into the first, along eta;
- a sample stops once misclassified (margin <= 0).

Randomness: the authors draw one square position per iteration for the whole batch;
we draw one per sample (the same distribution for each sample), from its own
generator, all iterations' numbers at the start (one call per sample): a sample's
run never depends on the rest of its batch. Work: the still-unbroken samples are
gathered every `compact_every` iterations (one host sync; 1 on CPU, where a sync is
free, 20 on an accelerator); between gatherings a broken sample is carried along
but frozen, so the result does not depend on that period."""
from __future__ import annotations

import math

import torch

from ._common import (
    GeneratorArg,
    attack_mode,
    check_attack,
    check_counts,
    is_binary,
    validate,
)

# p_selection: (last iteration of the stage, divisor of p_init), from the authors' code.
_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256))
TILES = 5  # the L2 start's grid


def square(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    n_queries: int = 5000,
    norm: str = "linf",
    p_init: float = 0.8,
    generator: GeneratorArg = None,
    *,
    rescale_schedule: bool = True,
    compact_every: int = 0,
    model_mode: str = "eval",
) -> torch.Tensor:
    """Square Attack on images x [N, C, H, W] with `n_queries` iterations (one model
    query each, after the start's). rescale_schedule stretches p's schedule to
    n_queries (the authors' SquareAttack default; AutoAttack turns it off).
    Returns x_hat detached, x's dtype and shape: the first misclassified point
    found, else the lowest-margin one."""
    (n_queries,) = check_counts("square", n_queries=n_queries)
    if not 0 < p_init <= 1:
        raise ValueError(f"square: p_init must lie in (0, 1], got {p_init}")
    x, y, eps, generator = check_attack("square", x, y, eps, model_mode, generator, norm=norm)
    if x.dim() != 4:
        raise ValueError(f"square: x must be images [N, C, H, W], got shape {tuple(x.shape)}")
    if compact_every == 0:
        compact_every = 1 if x.device.type == "cpu" else 20

    with attack_mode(model, model_mode):
        clean_logits = validate("square", model, x, y)
        if is_binary(clean_logits):
            raise ValueError("square: needs a model with C >= 2 logits")
        if eps == 0:
            return x.clone()
        n, c, h, w = x.shape
        y = y.long()
        per_step = 2 + c if norm == "linf" else 5 + c
        steps_u = _uniforms(x, (n_queries, per_step), generator)
        tiles = (h // max(h // TILES, 1)) * (w // max(h // TILES, 1))
        start_u = _uniforms(x, (tiles, c + 1) if norm == "l2" else (c, w), generator)
        with torch.no_grad():
            return _search(model, x, y, eps, norm, p_init, n_queries, rescale_schedule, compact_every, start_u,
                           steps_u)


def _search(model, x, y, eps, norm, p_init, n_queries, rescale_schedule, compact_every, start_u, steps_u):
    """The random search. The unbroken samples' state is kept gathered (xa, xb, ...)
    and written back when some break (at a gathering) and at the end."""
    n, c, h, w = x.shape
    x_best = _start(x, eps, norm, start_u)
    margin_best = _margin(model(x_best), y)
    loss_best = margin_best.clone()
    idx = torch.arange(n, device=x.device)
    xa, xb, ya, mb, lb, ua = x, x_best.clone(), y, margin_best.clone(), loss_best.clone(), steps_u
    propose = _linf_proposal if norm == "linf" else _l2_proposal
    for i in range(n_queries):
        if i % compact_every == 0:
            live = mb > 0
            if not bool(live.all()):  # the gathering's host sync
                x_best[idx], margin_best[idx], loss_best[idx] = xb, mb, lb
                idx, xa, xb, ya, mb, lb, ua = (t[live] for t in (idx, xa, xb, ya, mb, lb, ua))
                if idx.numel() == 0:
                    break
        s = min(_side(p_init, i, n_queries if rescale_schedule else None, h * w, norm), h, w)
        x_new = propose(xa, xb, eps, s, ua[:, i])
        margin = _margin(model(x_new), ya)
        live = mb > 0  # frozen once broken, whatever the gathering period
        improved = live & (margin < lb)
        keep = improved | (live & (margin <= 0))
        lb = torch.where(improved, margin, lb)
        mb = torch.where(keep, margin, mb)
        xb = torch.where(keep[:, None, None, None], x_new, xb)
    x_best[idx] = xb
    return x_best


def _uniforms(x, shape, generator):
    """[N, *shape] uniforms in [0, 1); with a list of generators, row i from generator[i]."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand((x.shape[0],) + shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.cat([torch.rand((1,) + shape, generator=g, device=x.device, dtype=x.dtype) for g in generator])


def _sign(u):
    return torch.where(u < 0.5, -1.0, 1.0).to(u.dtype)


def _margin(logits, y):
    """f_y - max_{j != y} f_j (the margin loss; <= 0: misclassified)."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    z_y = logits[rows, y]
    others = logits.clone()
    others[rows, y] = float("-inf")
    return z_y - others.amax(dim=1)


def _side(p_init, i, n_queries, area, norm):
    """The square's side at iteration i: s^2 = p * h * w (s >= 1; L2: odd and >= 3)."""
    it = i if n_queries is None else int(i / n_queries * 10000)
    p = p_init / 512
    for last, divisor in _SCHEDULE:
        if it <= last:
            p = p_init / divisor
            break
    if norm == "linf":
        return max(int(round(math.sqrt(p * area))), 1)
    s = max(int(round(math.sqrt(p * area))), 3)
    return s + 1 if s % 2 == 0 else s


def _window(u, size, s, device):
    """[B, size] mask of a random window of length s starting in [0, size - s) (the
    authors' random_int, which never picks the last position)."""
    start = (u * (size - s)).long()
    grid = torch.arange(size, device=device)
    return (grid >= start[:, None]) & (grid < start[:, None] + s)


def _square_mask(u_row, u_col, h, w, s, device):
    return (_window(u_row, h, s, device)[:, :, None] & _window(u_col, w, s, device)[:, None, :])[:, None]


def _linf_proposal(x, x_best, eps, s, u):
    n, c, h, w = x.shape
    mask = _square_mask(u[:, 0], u[:, 1], h, w, s, x.device)
    change = 2 * eps * _sign(u[:, 2 : 2 + c])[:, :, None, None]
    x_new = torch.where(mask, x_best + change, x_best)
    return torch.minimum(torch.maximum(x_new, x - eps), x + eps).clamp(0, 1)


def _start(x, eps, norm, u):
    n, c, h, w = x.shape
    if norm == "linf":
        return (x + eps * _sign(u)[:, :, None, :]).clamp(0, 1)
    s = max(h // TILES, 1)
    offset = (h - s * TILES) // 2
    delta = torch.zeros_like(x)
    base = _eta(s, x)
    for tile in range((h // s) * (w // s)):
        row, col = offset + s * (tile // (w // s)), offset + s * (tile % (w // s))
        if row < 0 or col < 0 or row + s > h or col + s > w:
            continue  # the authors' grid only ever fits; keep odd shapes from failing
        pattern = torch.where((u[:, tile, c] > 0.5)[:, None, None], base.t()[None], base[None])
        delta[:, :, row : row + s, col : col + s] += pattern[:, None] * _sign(u[:, tile, :c])[:, :, None, None]
    return (x + eps * delta / (_l2(delta) + 1e-12)).clamp(0, 1)


def _l2(t):
    return t.pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt()


def _eta_rectangles(rows, cols, ref):
    """The authors' meta pattern: nested rectangles weighted 1 / (k + 1)^2, unit norm."""
    delta = ref.new_zeros(rows, cols)
    r, q = rows // 2, cols // 2
    for k in range(max(rows // 2 + 1, cols // 2 + 1)):
        delta[max(r, 0) : min(r + 2 * k + 1, rows), max(q, 0) : min(q + 2 * k + 1, cols)] += 1.0 / (k + 1) ** 2
        r, q = r - 1, q - 1
    return delta / delta.pow(2).sum().sqrt()


def _eta(s, ref):
    """Algorithm 3's eta: +rectangles on the top half, -rectangles on the bottom."""
    delta = torch.cat([_eta_rectangles(s // 2, s, ref), -_eta_rectangles(s - s // 2, s, ref)])
    return delta / delta.pow(2).sum().sqrt()


def _l2_proposal(x, x_best, eps, s, u):
    """Move the perturbation's mass of window 2 into window 1 along +-eta, keeping
    the image's L2 norm at eps (the authors' update)."""
    n, c, h, w = x.shape
    delta = x_best - x
    in_1 = _square_mask(u[:, 0], u[:, 1], h, w, s, x.device)
    in_2 = _square_mask(u[:, 2], u[:, 3], h, w, s, x.device)
    norm_1 = (delta.pow(2) * in_1).sum(dim=(2, 3), keepdim=True).sqrt()
    norm_image = _l2(delta)
    norm_windows = _l2(delta * (in_1 | in_2))
    # eta placed at window 1 (transposed with probability 1/2), one sign per channel
    pattern = _eta(s, x)
    pattern = torch.where((u[:, 4] > 0.5)[:, None, None], pattern.t()[None], pattern[None])
    row0 = (u[:, 0] * (h - s)).long()
    col0 = (u[:, 1] * (w - s)).long()
    rr = (torch.arange(h, device=x.device)[None] - row0[:, None]).clamp(0, s - 1)
    cc = (torch.arange(w, device=x.device)[None] - col0[:, None]).clamp(0, s - 1)
    placed = pattern[torch.arange(n, device=x.device)[:, None, None], rr[:, :, None], cc[:, None, :]][:, None]
    new = (placed * _sign(u[:, 5 : 5 + c])[:, :, None, None] + delta / (1e-12 + norm_1)) * in_1
    new_norm = new.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
    budget = ((eps**2 - norm_image**2).clamp(min=0) / c + norm_windows**2).sqrt()
    new = new / (1e-12 + new_norm) * budget
    delta = torch.where(in_1, new, torch.where(in_2, 0.0, delta))
    return (x + eps * delta / (_l2(delta) + 1e-12)).clamp(0, 1)
