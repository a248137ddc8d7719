"""The statistics of Algorithm 1 on the comparison measure: CMStatistics (mu, sigma,
per-layer means, the MVL mask) and CMAccumulator, which streams them over many batches
(and DDP ranks): count, mean, M2, min and max per layer, merged with Chan et al.'s
parallel update, so that the merge of batches equals the one-shot statistics.

CMStatistics is defined in lsa_fast.reference, the bottom layer: the reference maths,
the fused op (lsa_fast.ops) and this accumulator all return it, and the accumulator is
built on lsa_fast.ops, so defining the record here would make ops and this module
import each other. Import it from here."""
from __future__ import annotations

from typing import Optional

import torch

from .distributed import gather_from_ranks, rank_and_world_size
from .ops import layer_moments
from .reference import CMStatistics

__all__ = ["CMStatistics", "CMAccumulator"]


class CMAccumulator:
    """Feed [M, L] CM matrices with update(); read Algorithm 1 with result(eta).

    State is kept in fp64 on the CPU: a handful of numbers per layer."""

    def __init__(self, num_layers: Optional[int] = None):
        self.num_layers = num_layers
        self.count = 0
        self.mean = self.m2 = self.min = self.max = None

    def update(self, cm: torch.Tensor) -> "CMAccumulator":
        count, *moments = layer_moments(cm)
        mean, m2, low, high = torch.stack(moments).cpu()  # one device-to-host copy
        self._merge(count, mean, m2, low, high)
        return self

    def merge(self, other: "CMAccumulator") -> "CMAccumulator":
        if other.count:
            self._merge(other.count, other.mean, other.m2, other.min, other.max)
        return self

    def _merge(self, count, mean, m2, low, high):
        if self.num_layers is None:
            self.num_layers = mean.numel()
        if mean.numel() != self.num_layers:
            raise ValueError(f"CMAccumulator: got {mean.numel()} layers, expected {self.num_layers}")
        if self.count == 0:
            self.count, self.mean, self.m2 = count, mean.clone(), m2.clone()
            self.min, self.max = low.clone(), high.clone()
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * count / total)
        self.min = torch.minimum(self.min, low)
        self.max = torch.maximum(self.max, high)
        self.count = total

    def state(self) -> torch.Tensor:
        """[5, L] fp64 tensor (count, mean, M2, min, max) for all-gather across ranks."""
        if not self.count:
            raise ValueError("CMAccumulator: no batch was added")
        count = torch.full_like(self.mean, float(self.count))
        return torch.stack([count, self.mean, self.m2, self.min, self.max])

    @classmethod
    def from_state(cls, state: torch.Tensor) -> "CMAccumulator":
        acc = cls(state.shape[1])
        count = int(state[0, 0].item())
        if count:
            acc._merge(count, *(state[i].double().cpu() for i in range(1, 5)))
        return acc

    def all_reduce(self) -> "CMAccumulator":
        """Merge the accumulators of every rank (in rank order) into every rank's."""
        _, world_size = rank_and_world_size()
        if world_size == 1:
            return self
        gathered = gather_from_ranks(self.state() if self.count else None, world_size)
        merged = CMAccumulator(self.num_layers)
        for state in gathered:
            if state is not None:
                merged.merge(CMAccumulator.from_state(state))
        return merged

    def std(self) -> torch.Tensor:
        """Population standard deviation of each layer."""
        return (self.m2 / self.count).sqrt()

    def result(self, eta: float) -> CMStatistics:
        """mu, sigma over all count x L entries, per-layer means, MVL mask."""
        if not self.count:
            raise ValueError("CMAccumulator: no batch was added")
        mu = self.mean.mean()  # every layer has the same count
        m2_total = self.m2.sum() + self.count * ((self.mean - mu) ** 2).sum()
        sigma = (m2_total / (self.count * self.num_layers)).sqrt()
        return CMStatistics(mu, sigma, self.mean.clone(), (self.mean - mu) > eta * sigma)
