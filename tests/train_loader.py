"""The tests' training loader over a Dataset (the product trains from
lsa_fast.device_loader's DeviceLoader): a DistributedSampler shuffled with the config's
seed and batch_size / world_size samples per batch."""
from typing import Optional

from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from lsa_fast.data import make_loader
from lsa_fast.distributed import rank_and_world_size
from lsa_fast.train_config import TrainConfig


def make_train_loader(dataset: Dataset, config: TrainConfig, rank: Optional[int] = None,
                      world_size: Optional[int] = None, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """The training loader for one rank: a DistributedSampler (shuffled with the config's
    seed, reshuffled per epoch by set_epoch) and batch_size / world_size samples per
    batch. With one process it is the same order as rank 0 of W processes taken
    together, so DDP sees the same global batches as a single process."""
    if rank is None or world_size is None:
        rank, world_size = rank_and_world_size()
    if config.batch_size % world_size:
        raise ValueError(f"batch_size {config.batch_size} is the global batch and must be divisible by the "
                         f"{world_size} processes")
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=config.seed)
    return make_loader(dataset, config.batch_size // world_size, sampler=sampler, seed=config.seed,
                       num_workers=num_workers, pin_memory=pin_memory, drop_last=config.drop_last)
