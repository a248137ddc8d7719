"""The optimiser, its learning-rate schedules and the run's seeds (lsa_fast.training).

Optimisers: SGD (momentum, weight decay) or Adam. Schedules step once per batch:
piecewise (x0.1 at 50% and 75% of training, Rice et al. 2020), cosine, the one-cycle
"cyclic" of FAST (Wong et al. 2020: linear up to the peak at 2/5 of training, then
down to 0), or constant."""
from __future__ import annotations

import math

import torch
from torch import nn

from .train_config import TrainConfig

__all__ = ["lr_multiplier", "learning_rate_at", "epoch_learning_rates", "build_optimizer", "seed_everything",
           "stream_seed"]


def lr_multiplier(schedule: str, total_steps: int):
    """step -> the factor of the base learning rate after `step` of total_steps batches."""
    total = max(int(total_steps), 1)

    def multiplier(step: int) -> float:
        t = min(step / total, 1.0)
        if schedule == "piecewise":
            return 1.0 if t < 0.5 else (0.1 if t < 0.75 else 0.01)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        if schedule == "cyclic":
            return t / 0.4 if t < 0.4 else max(0.0, (1.0 - t) / 0.6)
        return 1.0

    return multiplier


def epoch_learning_rates(scheduler, epoch: int, steps_per_epoch: int):
    """[first, last]: the learning rates that the first and the last step of `epoch`
    (from 0) use under a LambdaLR stepped once per batch (step k uses multiplier(k))."""
    return [float(scheduler.base_lrs[0] * scheduler.lr_lambdas[0](step))
            for step in (epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch - 1)]


def learning_rate_at(config: TrainConfig, epochs_done: float) -> float:
    """The learning rate that config's schedule gives once `epochs_done` of its
    config.epochs epochs are done (the schedules depend on that fraction only)."""
    return config.resolved_lr() * lr_multiplier(config.resolved_schedule(), config.epochs)(epochs_done)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("ATLRTrainer: the model has no trainable parameters")
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.resolved_lr(), weight_decay=config.resolved_weight_decay())
    return torch.optim.SGD(params, lr=config.resolved_lr(), momentum=config.momentum,
                           weight_decay=config.resolved_weight_decay())


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stream_seed(seed: int, rank: int, stream: int) -> int:
    """Distinct, reproducible seeds per (run seed, rank, purpose)."""
    return (int(seed) * 1_000_003 + rank * 7919 + stream * 104_729) % (2**63 - 1)
