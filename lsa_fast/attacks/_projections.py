"""FAB's projection (Croce & Hein 2020, "Minimally distorted adversarial examples with
a fast adaptive boundary attack", section 3.1): the smallest displacement d, in the
L-inf, L2 or L1 norm, that moves a point t onto the hyperplane <w, z> = b while
staying in the box [0, 1]^D. Where the box cannot reach the hyperplane, d goes as
far towards it as the box allows (the authors' convention).

Rows are independent: t, w are [M, D] and b is [M]. Every case is computed for every
row and selected with torch.where (no host sync, no data-dependent shapes). Where
the authors' code searches a sorted breakpoint list by bisection, we count the
breakpoints that satisfy the (monotone) condition: the same index, without a loop.

Common set-up: flip the sign of (w, b) so that the excess e = <w, t> - b is >= 0;
then d must lower <w, .> by e, and coordinate i moves towards the corner of the box
that lowers it: 0 if w_i > 0, 1 if w_i < 0."""
from __future__ import annotations

import torch

FAR = 1e12  # the authors' stand-in for "never" (a coordinate with no effect)


def _oriented(t, w, b):
    """(w, excess >= 0) with the hyperplane's sign flipped where <w, t> < b."""
    excess = (w * t).sum(1) - b
    sign = torch.where(excess >= 0, 1.0, -1.0).to(w.dtype)
    return w * sign[:, None], excess * sign


def _pick(values, index):
    return values.gather(1, index[:, None]).squeeze(1)


def project_linf(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """min ||d||_inf: every moving coordinate moves by the same lambda, or less where
    it meets the box: the decrease of <w, .> at lambda is
        h(lambda) = sum_i |w_i| min(lambda, room_i),
    room_i being the distance to the coordinate's corner. h is piecewise linear in
    lambda with breakpoints at the rooms; solve h(lambda) = e on the right piece."""
    w, excess = _oriented(t, w, b)
    room = torch.where(w < 0, 1 - t, t)
    weight = w.abs()
    room_desc, order = room.sort(dim=1, descending=True)
    weight_desc = weight.gather(1, order)
    capped = weight_desc.cumsum(1)  # |w| of the coordinates capped at lambda = room_desc[k]
    full = weight_desc * room_desc
    uncapped = full.flip(1).cumsum(1).flip(1) - full  # their decrease, moving all of their room
    reach = uncapped + capped * room_desc  # h(room_desc[k]), decreasing in k
    k = ((reach > excess[:, None]).sum(1) - 1).clamp(min=0)
    capped_k = _pick(capped, k)
    lam = torch.where(
        capped_k > 0, (excess - _pick(uncapped, k)) / capped_k.clamp(min=torch.finfo(w.dtype).tiny), 0.0
    ).clamp(min=0)
    reachable = reach[:, 0] > excess  # moving every coordinate to its corner overshoots
    step = torch.where(reachable[:, None], torch.minimum(lam[:, None], room), room)
    return -torch.sign(w) * step


def project_l2(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """min ||d||_2: d_i = clip(-alpha w_i, -t_i, 1 - t_i) for one alpha >= 0 (KKT).
    Coordinate i meets the box at alpha = r_i; between sorted breakpoints
    phi(alpha) = <w, d(alpha)> is linear; solve phi(alpha) = -e on the right piece."""
    w, excess = _oriented(t, w, b)
    moving = w.abs() >= 1e-8
    w_eff = torch.where(moving, w, 0.0)
    safe_w = torch.where(moving, w, 1.0)
    r = torch.where(w > 0, t / safe_w, (t - 1) / safe_w).clamp(min=0, max=FAR)
    r = torch.where(moving, r, FAR)
    at_box = torch.where(moving, -r * w, 0.0)  # d_i once coordinate i meets the box
    r_sorted, order = r.sort(dim=1)
    w2_sorted = (w_eff**2).gather(1, order)
    free_w2 = w2_sorted.sum(1, keepdim=True) - w2_sorted.cumsum(1)  # sum w^2 of the coordinates still free
    boxed = (w_eff * at_box).gather(1, order).cumsum(1)
    r_finite = torch.where(r_sorted >= FAR, 0.0, r_sorted)
    phi = boxed - r_finite * free_w2  # phi(r_sorted[k]), decreasing in k
    plain = phi[:, 0] + excess < 0  # the unconstrained projection stays inside the box
    beyond = (w_eff * at_box).sum(1) + excess > 0  # even the whole box does not reach it
    k = ((phi + excess[:, None] > 0).sum(1) - 1).clamp(min=0)
    free_k = _pick(free_w2, k)
    alpha = torch.where(
        free_k > 0, _pick(r_finite, k) + (_pick(phi, k) + excess) / free_k.clamp(min=torch.finfo(w.dtype).tiny), 0.0
    )
    piecewise = torch.where(alpha[:, None] > r, at_box, -alpha[:, None] * w_eff)
    alpha_plain = excess / (w_eff**2).sum(1).clamp(min=torch.finfo(w.dtype).tiny)
    d = torch.where(plain[:, None], -alpha_plain[:, None] * w_eff, piecewise)
    d = torch.where(beyond[:, None], at_box, d)
    return torch.where(moving, d, 0.0)


def project_l1(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """min ||d||_1: spend the L1 budget on the coordinates with the largest |w| first
    (most decrease per unit moved): move them fully to their corners, in that order,
    until the next one only has to move part of its way."""
    w, excess = _oriented(t, w, b)
    to_corner = torch.where(w < 0, 1 - t, -t)
    gain = torch.minimum(-w * t, w * (1 - t))  # <= 0: the most coordinate i can lower <w, .>
    order = (1 / w).abs().clamp(max=FAR).argsort(dim=1)
    rank = order.argsort(dim=1)
    left = torch.cat([excess[:, None], excess[:, None] + gain.gather(1, order).cumsum(1)], 1)  # excess left after k
    reachable = left[:, -1] < 0
    k = ((left > 0).sum(1) - 1).clamp(min=0, max=w.shape[1] - 1)
    partial = order.gather(1, k[:, None]).squeeze(1)
    w_partial = _pick(w, partial)
    alpha = -_pick(left, k) / torch.where(w_partial == 0, 1.0, w_partial)
    d = torch.where(rank < k[:, None], to_corner, torch.zeros_like(t))
    d = torch.where(rank == k[:, None], alpha[:, None], d)
    d = torch.where(reachable[:, None], d, to_corner)
    return torch.where(w.abs() > 1e-8, d, 0.0)


PROJECTIONS = {"linf": project_linf, "l2": project_l2, "l1": project_l1}
