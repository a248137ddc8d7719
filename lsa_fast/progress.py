"""Progress of a long pass over batches (`eval`, `analyze`): a bar with an ETA on a
terminal (tqdm), one line per stage (about every tenth of the batches, with the time so
far and the ETA) in a log or a pipe, and the speed in images per second at the end."""
from __future__ import annotations

import sys
import time
from typing import Optional

__all__ = ["BatchProgress", "format_throughput", "is_terminal"]


def is_terminal(stream) -> bool:
    """Whether progress bars make sense on `stream` (not in a log file or a pipe)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def format_throughput(images_per_s: float) -> str:
    """Speed with two or three significant digits; below one image per second as
    seconds per image (a slow pass must not read "0 img/s")."""
    if not images_per_s > 0:
        return "0 img/s"
    if images_per_s >= 100:
        return f"{images_per_s:.0f} img/s"
    if images_per_s >= 1:
        return f"{images_per_s:.3g} img/s"
    seconds = 1.0 / images_per_s
    return f"{seconds:.2g} s/img" if seconds < 10 else f"{seconds:.0f} s/img"


def format_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class BatchProgress:
    """update(images) after each batch; close() prints and returns the closing line,
    '<desc>: N images in T (S img/s)'. Disabled (enabled=False): silent; close() still
    returns the line."""

    def __init__(self, desc: str, total: Optional[int], enabled: bool = True, stream=None, stages: int = 10):
        self.desc, self.total, self.stream = desc, total, stream or sys.stderr
        self.enabled = enabled
        self.every = max(1, (total or 100) // stages)
        self.done = self.images = 0
        self.start = time.perf_counter()
        self.bar = None
        if enabled and is_terminal(self.stream):
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="batch", file=self.stream, leave=False,
                                dynamic_ncols=True)
            except ImportError:
                self.bar = None

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
