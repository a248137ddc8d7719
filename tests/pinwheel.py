"""A small 4-class task for attack tests that need a trained model: four interleaved
spiral arms in [0, 1]^2, and an MLP trained on them in a second or two."""
import math

import torch


def pinwheel(n, seed, dtype=torch.float32):
    """(x [N, 2] in [0, 1], y [N] in 0..3), deterministic under seed."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    r = torch.rand(n, generator=g) * 0.35 + 0.05
    angle = y * (math.pi / 2) + r * 3.0 + 0.25 * torch.randn(n, generator=g)
    x = torch.stack([0.5 + r * torch.cos(angle), 0.5 + r * torch.sin(angle)], dim=1)
    return x.clamp(0, 1).to(dtype), y


def trained_mlp(steps, dtype=torch.float32):
    """An MLP 2-64-64-4 trained with Adam (lr 1e-2) for `steps` full-batch steps on
    800 pinwheel points; eval mode, parameters frozen."""
    x, y = pinwheel(800, seed=0, dtype=dtype)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread, above all on a busy machine
    try:
        return _train(x, y, steps, dtype)
    finally:
        torch.set_num_threads(threads)


def _train(x, y, steps, dtype):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)
    ).to(dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
