"""torch.distributed for training and analysis, written once: this process's rank and
the world size, the process group's setup and teardown under torchrun, and the
collectives the compiled training step needs (see lsa_fast.compiled_step)."""
from __future__ import annotations

import os
from typing import Tuple, Union

import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler

from .devices import parse_device

__all__ = ["rank_and_world_size", "setup_distributed", "teardown_distributed", "average_over_ranks", "on_any_rank", "broadcast_from_rank0", "gather_from_ranks",
           "real_samples"]


def rank_and_world_size() -> Tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup_distributed(device: Union[str, torch.device, None] = None):
    """Under torchrun (WORLD_SIZE > 1): init the process group (NCCL on CUDA, gloo on
    CPU) unless the caller already has, and pick this rank's device. Returns (rank,
    world_size, device)."""
    initialised = dist.is_available() and dist.is_initialized()
    world_size = dist.get_world_size() if initialised else int(os.environ.get("WORLD_SIZE", "1"))
    wanted = parse_device(device, "device")
    if world_size <= 1:
        return 0, 1, wanted
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if wanted.type == "cuda":
        wanted = torch.device("cuda", local_rank)
        torch.cuda.set_device(wanted)
    if not initialised:
        dist.init_process_group("nccl" if wanted.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), wanted


def teardown_distributed(finished: bool = True) -> None:
    """Destroy the process group. finished: this rank ends without an error, so it first
    waits for the others at a barrier; a rank that tears gloo down while another is still
    at work can abort at exit ("terminate called without an active exception"). After an
    error (raised on every rank, see commands.train) there is no barrier to wait at."""
    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def average_over_ranks(module, world_size: int) -> None:
    """What DistributedDataParallel does for the eager step: gradients averaged over
    the ranks, buffers (BatchNorm statistics) taken from rank 0. Asynchronous on NCCL."""
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if grads:
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= world_size
        for grad, averaged in zip(grads, _unflatten_dense_tensors(flat, grads)):
            grad.copy_(averaged)
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def broadcast_from_rank0(obj, world_size: int):
    """Rank 0's `obj` on every rank (a picklable Python object); obj itself in one process."""
    if world_size == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_from_ranks(obj, world_size: int) -> list:
    """Every rank's `obj`, in rank order, on every rank; [obj] in one process."""
    if world_size == 1:
        return [obj]
    gathered = [None] * world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def on_any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is True on one (one collective and one host sync)."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def real_samples(loader, index: int, batch: int) -> int:
    """How many samples of batch `index` of a training loader are real: DistributedSampler
    (drop_last False) pads the epoch to a multiple of the world size with repeats of its
    first samples, placed last, so every rank takes the same steps. Training sees them;
    the metrics count each sample once."""
    if hasattr(loader, "real_samples"):  # lsa_fast.device_loader.DeviceLoader
        return int(loader.real_samples(index))
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return batch
    # Local position i of rank r holds global position i * W + r; positions >= n pad.
    n, rank, world = len(sampler.dataset), sampler.rank, sampler.num_replicas
    real_here = max(0, -(-(n - rank) // world))
    start = index * (loader.batch_size or batch)
    return max(0, min(batch, real_here - start))
