"""Training data that live on the device: the whole training set is copied to the
training device once (MNIST takes 188 MB in float32, CIFAR-10 614 MB), and every
epoch's order and augmentation are drawn there from one seeded torch.Generator, so
a batch costs a few indexing kernels and no host-device copy or sync.

Augmentation "crop-flip" is the standard CIFAR-10 protocol of adversarial training
(Madry et al. 2018, Rice et al. 2020, Wong et al. 2020: torchvision's
RandomCrop(32, padding=4) then RandomHorizontalFlip()): each sample is padded with 4
zero pixels on every side, a window of the original size is cut at a uniformly
random offset (0..8 in each direction), and the window is mirrored left-right with
probability 1/2. Here it is done for the whole batch in one gather.

Resumable like a seeded DataLoader: an epoch draws its permutation, crop offsets and
flips from `generator` when its iteration starts, so the generator's state at the
start of an epoch defines the epoch (ATLRTrainer saves that state in its
checkpoints and replays the order after an interruption).
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from .checks import check_int, check_labelled_data

__all__ = ["AUGMENTATIONS", "DeviceLoader", "make_device_loader", "random_crop_flip", "check_augmentation"]

AUGMENTATIONS = ("none", "crop-flip")
CROP_PADDING = 4


class DeviceLoader:
    """Batches (x, y) of a dataset held on `device`, in a seeded random order.

    x: [N, ...] floats in [0, 1]; y: [N] labels. batch_size: per process. With
    world_size W > 1 (torchrun), every process draws the same order from the same
    seed and takes its own contiguous 1/W of each global batch of W * batch_size
    samples, so the W processes together see exactly the global batches one process
    would; as in DistributedSampler, the epoch is padded (with its first samples) to
    a multiple of W. drop_last drops the last, smaller batch (a static batch shape,
    which CUDA graphs want); otherwise it is kept. augment: "none" or "crop-flip"
    (image batches [N, C, H, W] only).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *,
                 device: Union[str, torch.device, None] = None, shuffle: bool = True, seed: int = 0,
                 augment: str = "none", drop_last: bool = False, rank: int = 0, world_size: int = 1):
        check_labelled_data("DeviceLoader", x, y)
        if not x.is_floating_point():
            raise TypeError(f"DeviceLoader: x must be floating point (values in [0, 1]), got {x.dtype}")
        check_int("DeviceLoader", "batch_size", batch_size, 1)
        if not 0 <= rank < world_size:
            raise ValueError(f"DeviceLoader: rank {rank} outside world size {world_size}")
        if augment not in AUGMENTATIONS:
            raise ValueError(f"DeviceLoader: augment must be one of {AUGMENTATIONS}, got {augment!r}")
        if augment == "crop-flip" and x.dim() != 4:
            raise ValueError(f"DeviceLoader: augment='crop-flip' needs image batches [N, C, H, W], got samples of "
                             f"shape {tuple(x.shape[1:])}")
        self.device = torch.device(device) if device is not None else x.device
        self.x = x.to(self.device).contiguous()
        self.y = y.to(self.device)
        self.dataset = TensorDataset(self.x, self.y)
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.augment = augment
        self.drop_last = bool(drop_last)
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        # Every process holds the same padded epoch of W * per_rank positions.
        self._positions = self.world_size * math.ceil(self.x.shape[0] / self.world_size)
        self._global_batch = batch_size * world_size
        if self.drop_last and self._positions < self._global_batch:
            raise ValueError(f"DeviceLoader: drop_last with {self.x.shape[0]} samples and a global batch of "
                             f"{self._global_batch} leaves no batch")

    def __len__(self) -> int:
        if self.drop_last:
            return self._positions // self._global_batch
        return math.ceil(self._positions / self._global_batch)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        order, offsets, flips = self._draw_epoch()
        for batch in range(len(self)):
            start = batch * self._global_batch
            size = min(self._global_batch, self._positions - start) // self.world_size
            begin = start + self.rank * size
            index = order[begin:begin + size]
            x = self.x.index_select(0, index)
            if offsets is not None:
                x = random_crop_flip(x, offsets[begin:begin + size], flips[begin:begin + size])
            yield x, self.y.index_select(0, index)

    def real_samples(self, batch: int) -> int:
        """How many samples of this process's batch `batch` are not the epoch's padding
        (the padding repeats the epoch's first samples at its end; metrics count each
        sample once)."""
        start = batch * self._global_batch
        size = min(self._global_batch, self._positions - start) // self.world_size
        first = start + self.rank * size
        return max(0, min(size, self.x.shape[0] - first))

    def _draw_epoch(self):
        """The epoch's order, then (crop-flip) one crop offset pair and one flip per position."""
        n = self.x.shape[0]
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        if self._positions > n:  # pad to a multiple of the world size, as DistributedSampler does
            order = torch.cat([order, order[: self._positions - n]])
        offsets = flips = None
        if self.augment == "crop-flip":
            offsets = torch.randint(0, 2 * CROP_PADDING + 1, (self._positions, 2), generator=self.generator,
                                    device=self.device)
            flips = torch.randint(0, 2, (self._positions,), generator=self.generator, device=self.device).bool()
        return order, offsets, flips

    def __repr__(self) -> str:
        return (f"DeviceLoader({self.x.shape[0]} samples on {self.device}, batch_size={self.batch_size}, "
                f"augment={self.augment!r}, drop_last={self.drop_last}, rank {self.rank}/{self.world_size})")


def random_crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor,
                     padding: int = CROP_PADDING) -> torch.Tensor:
    """For each sample m of x [N, C, H, W]: zero-pad by `padding` pixels, take the H x W
    window whose top-left corner is offsets[m] = (row, column) in 0..2*padding, and
    mirror it left-right where flips[m]. One gather for the batch, no host sync."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # [N, H]
    columns = offsets[:, 1, None] + torch.arange(w, device=x.device)  # [N, W]
    columns = torch.where(flips[:, None], columns.flip(1), columns)  # a flip reads the window right to left
    samples = torch.arange(n, device=x.device)[:, None, None]
    window = padded[samples, :, rows[:, :, None], columns[:, None, :]]  # [N, H, W, C]
    return window.permute(0, 3, 1, 2).contiguous()


def make_device_loader(dataset, config, device: Union[str, torch.device], rank: int = 0,
                       world_size: int = 1) -> DeviceLoader:
    """The training loader of `lsa-fast train`: `dataset` (a TensorDataset of (x, y))
    on `device`, batch config.batch_size / world_size, seeded by config.seed,
    augmented as config.resolved_augment() says, config.drop_last."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is None or len(tensors) != 2:
        raise ValueError("make_device_loader: the dataset must be a TensorDataset of (inputs, labels)")
    if config.batch_size % world_size:
        raise ValueError(f"batch_size {config.batch_size} is the global batch and must be divisible by the "
                         f"{world_size} processes")
    return DeviceLoader(tensors[0], tensors[1], config.batch_size // world_size, device=device, shuffle=True,
                        seed=config.seed, augment=config.resolved_augment(), drop_last=config.drop_last,
                        rank=rank, world_size=world_size)


def check_augmentation(loader, config) -> Optional[str]:
    """A warning text when the config asks for augmentation that `loader` does not do
    (any loader other than an augmenting DeviceLoader: its own transforms apply)."""
    wanted = config.resolved_augment()
    done = loader.augment if isinstance(loader, DeviceLoader) else None
    if wanted != "none" and done != wanted:
        return (f"TrainConfig augment={wanted!r}, but the training loader is a {type(loader).__name__} that does "
                f"not apply it (use lsa_fast.device_loader.DeviceLoader(..., augment={wanted!r}) or set augment='none')")
    return None
