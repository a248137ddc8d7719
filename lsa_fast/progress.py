"""Progress on stderr, written once: the training bar (TrainProgress: images/s, loss and
accuracy), the progress of a pass over batches (BatchProgress, batch_progress: `eval`,
`analyze`: a bar with an ETA, or a line per tenth of the batches, and the speed at the
end) and the chunk progress of a resumable evaluation with its ETA (ChunkProgress). tqdm
when it is installed and stderr is a terminal; plain lines instead in a log file or a
pipe; only rank 0 of a distributed run reports."""
from __future__ import annotations

import sys
import time
from typing import Optional

import torch

from .distributed import rank_and_world_size

__all__ = ["BatchProgress", "ChunkProgress", "TrainProgress", "batch_progress", "format_throughput", "format_duration",
           "is_terminal"]


def is_terminal(stream) -> bool:
    """Whether progress bars make sense on `stream` (not in a log file or a pipe)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def terminal_bar(stream, enabled: bool, **options):
    """A tqdm bar on `stream` when enabled, tqdm is installed and the stream is a
    terminal (a log file gets plain lines from the caller, not the bar's redraws); else None."""
    if not enabled or not is_terminal(stream):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(file=stream, leave=False, dynamic_ncols=True, **options)


def batch_progress(batches, loader, enabled: bool, desc: str):
    """Yields `batches` ((x, ...) tuples) through a BatchProgress: a bar with an ETA on a
    terminal, a line per tenth of the batches in a log, the speed at the end."""
    if not enabled or rank_and_world_size()[0] != 0:
        yield from batches
        return
    try:
        total = len(loader)
    except TypeError:
        total = None
    bar = BatchProgress(desc, total)
    finished = False
    try:
        for batch in batches:
            yield batch
            bar.update(batch[0].shape[0])
        finished = True
    finally:
        bar.close(say=finished)


class BatchProgress:
    """Progress of a pass over batches (`eval`, `analyze`): update(images) after each
    batch; close() prints and returns the closing line '<desc>: N images in T (S img/s)'.
    A tqdm bar with an ETA when the stream is a terminal, else one line per stage (about
    a tenth of the batches) with the time so far and the ETA. Disabled: silent, and
    close() still returns the line."""

    def __init__(self, desc: str, total: Optional[int], enabled: bool = True, stream=None, stages: int = 10):
        self.desc, self.total, self.stream = desc, total, stream or sys.stderr
        self.enabled = enabled
        self.every = max(1, (total or 100) // stages)
        self.done = self.images = 0
        self.start = time.perf_counter()
        self.bar = terminal_bar(self.stream, enabled, total=total, desc=desc, unit="batch")

    def update(self, images: int) -> None:
        self.done += 1
        self.images += int(images)
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        rate = format_throughput(self.images / max(elapsed, 1e-9))
        if self.bar is not None:
            self.bar.set_postfix_str(rate, refresh=False)
            self.bar.update(1)
        elif self.done % self.every == 0 or self.done == self.total:
            of = f"/{self.total}" if self.total else ""
            eta = ""
            if self.total and self.done < self.total:
                eta = f", ETA {format_duration(elapsed / self.done * (self.total - self.done))}"
            print(f"{self.desc}: batch {self.done}{of}, {format_duration(elapsed)}{eta}, {rate}", file=self.stream,
                  flush=True)

    def close(self, say: bool = True) -> str:
        """Ends the bar; with say (and enabled) prints the closing line. An interrupted
        pass closes with say=False: no speed line for work that did not finish."""
        elapsed = time.perf_counter() - self.start
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        line = (f"{self.desc}: {self.images} images in {format_duration(elapsed)} "
                f"({format_throughput(self.images / max(elapsed, 1e-9))})")
        if self.enabled and say:
            print(line, file=self.stream, flush=True)
        return line


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
        self.bar = terminal_bar(sys.stderr, enabled, total=total, initial=initial, desc=desc, unit="batch")

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
            self.bar = terminal_bar(sys.stderr, self.shown, total=total, initial=done, desc=self.desc, unit="img")
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
