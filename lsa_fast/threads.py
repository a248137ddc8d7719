"""CPU thread count for a block of work."""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def torch_threads(count: int, device="cpu"):
    """Run the block with `count` intra-op CPU threads (restored afterwards), on the
    CPU only. For model A on Moons: its ops are so small that synchronising two
    threads costs more than the arithmetic they share."""
    if torch.device(device).type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
