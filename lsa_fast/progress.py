"""Progress on stderr, written once: the training bar (TrainProgress: images/s, loss and
accuracy), the batch progress of an analysis (batch_progress) and the chunk progress of
a resumable evaluation with its ETA (ChunkProgress). tqdm when it is
installed; plain lines instead in a log file or a pipe; only rank 0 of a distributed run
reports."""
from __future__ import annotations

import sys
import time

import torch

from .distributed import rank_and_world_size

__all__ = ["ChunkProgress", "TrainProgress", "batch_progress", "format_throughput", "format_duration", "is_terminal"]


def is_terminal(stream) -> bool:
    """Whether progress bars make sense on `stream` (not in a log file or a pipe)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def batch_progress(batches, loader, enabled: bool, desc: str):
    """Yields `batches`, with tqdm on stderr when it is installed and stderr is a terminal,
    else a plain line every ~10% of the batches."""
    if not enabled or rank_and_world_size()[0] != 0:
        yield from batches
        return
    try:
        total = len(loader)
    except TypeError:
        total = None
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if not is_terminal(sys.stderr):
        tqdm = None  # a log file: a few plain lines, not the bar's redraws
    if tqdm is not None:
        yield from tqdm(batches, total=total, desc=desc, unit="batch", file=sys.stderr, leave=False)
        return
    every = max(1, (total or 100) // 10)
    start = time.monotonic()
    done = 0
    for done, batch in enumerate(batches, 1):
        yield batch
        if done % every == 0 or done == total:
            of = f"/{total}" if total else ""
            print(f"{desc}: batch {done}{of} ({time.monotonic() - start:.1f} s)", file=sys.stderr, flush=True)


def format_throughput(images_per_s: float) -> str:
    """Training speed with two or three significant digits; below one image per
    second as seconds per image (a slow epoch must not read "0 img/s")."""
    if not images_per_s > 0:
        return "0 img/s"
    if images_per_s >= 100:
        return f"{images_per_s:.0f} img/s"
    if images_per_s >= 1:
        return f"{images_per_s:.3g} img/s"
    seconds = 1.0 / images_per_s
    return f"{seconds:.2g} s/img" if seconds < 10 else f"{seconds:.0f} s/img"


class TrainProgress:
    """tqdm when it is installed (else a line every log_every batches): images/s per
    batch, loss and accuracy every log_every batches (reading them is a host sync).
    Nothing when stderr is not a terminal: a log gets the one line per epoch of
    ATLRTrainer, not the bar's redraws."""

    def __init__(self, enabled: bool, total: int, initial: int, desc: str, log_every: int):
        enabled = enabled and is_terminal(sys.stderr)
        self.enabled, self.total, self.done, self.desc, self.log_every = enabled, total, initial, desc, log_every
        self.images, self.start = 0, time.perf_counter()
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, desc=desc, unit="batch", file=sys.stderr,
                                leave=False, dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def update(self, images: int, sums: torch.Tensor, seen: int) -> None:
        if not self.enabled:
            return
        self.done += 1
        self.images += images
        rate = self.images / max(time.perf_counter() - self.start, 1e-9)
        report = self.done % self.log_every == 0 or self.done == self.total
        text = None
        if report:
            loss_sum, correct, _ = sums.tolist()
            text = f"loss {loss_sum / max(seen, 1):.4f}, acc {100.0 * correct / max(seen, 1):.1f}%, {format_throughput(rate)}"
        if self.bar is not None:
            self.bar.update(1)
            if text:
                self.bar.set_postfix_str(text, refresh=False)
        elif text:
            print(f"{self.desc}: batch {self.done}/{self.total}: {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class ChunkProgress:
    """The progress of an evaluation in chunks of points that may resume from a state
    file (lsa_fast.robust_eval's progress and stage_progress): the run's header line
    once the state is read (and what it held), then the points done, images/s and the
    ETA: a tqdm bar in a terminal, else one line per chunk and stage (a log gets no
    redraws); only the header with shown=False."""

    def __init__(self, header: str, shown: bool, desc: str = "autoattack"):
        self.header, self.shown, self.desc, self.bar = header, shown, desc, None

    def __call__(self, done: int, total: int, done_now: int, seconds: float) -> None:
        if done_now == 0:  # the start
            print(self.header + (f"; {done} points done before, read from the state file" if done else ""),
                  file=sys.stderr, flush=True)
            if self.shown and is_terminal(sys.stderr):
                try:
                    from tqdm import tqdm

                    self.bar = tqdm(total=total, initial=done, desc=self.desc, unit="img", file=sys.stderr,
                                    leave=False, dynamic_ncols=True)
                except ImportError:
                    pass
            return
        if self.bar is not None:  # tqdm shows the rate and the time left itself
            self.bar.update(done - self.bar.n)
            return
        rate = done_now / seconds if seconds > 0 else 0.0
        eta = f"ETA {format_duration((total - done) / rate)}" if rate > 0 and done < total else "done"
        if self.shown:
            print(f"{self.desc}: {done}/{total} points ({100.0 * done / total:.0f}%), {format_throughput(rate)}, "
                  f"{eta}", file=sys.stderr, flush=True)

    def stage(self, chunk: int, stage: str, done: int, total: int) -> None:
        """Within a chunk: the stage on the bar, or a line when a stage ends."""
        if self.bar is not None:
            self.bar.set_description_str(f"{self.desc} [{stage} {done}/{total}]")
        elif self.shown and done == total:
            print(f"{self.desc}: chunk {chunk + 1}: {stage} attacked {total} points", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def format_duration(seconds: float) -> str:
    """12s, 3m05s, 2h10m: an ETA's length."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
