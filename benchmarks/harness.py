"""Shared pieces of the benchmarks: timing (torch.utils.benchmark on CPU, CUDA events
on GPU), this machine's copy bandwidth, the environment record, the results file."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.utils.benchmark as benchmark

RESULTS = Path(__file__).resolve().parent / "results"


def add_common_arguments(parser, results_suffix: str) -> None:
    """--device, --out and --threads, the same in every benchmark."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", default=None, help=f"results file name (default: <device>{results_suffix})")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); on a machine shared with other jobs, 1 avoids "
                             "OpenMP threads waiting at barriers for a thread that lost its core")


def parse_common(parser):
    """parse_args, then check --device and apply --threads."""
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def time_it(fn, device: str, min_run_time: float = 1.0) -> float:
    """Median seconds per call of fn()."""
    fn()  # warm-up (and compilation, for compiled callables)
    if device == "cuda":
        return _time_cuda_events(fn, min_run_time)
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def _time_cuda_events(fn, min_run_time: float) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    total = 0.0
    while total < min_run_time or len(times) < 10:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1e3
        times.append(seconds)
        total += seconds
    times.sort()
    return times[len(times) // 2]


def copy_bandwidth(device: str, megabytes: int = 256) -> float:
    """Bytes per second of a large tensor copy (read + write counted)."""
    src = torch.empty(megabytes * 2**20 // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    seconds = time_it(lambda: dst.copy_(src), device, min_run_time=1.0)
    return 2 * src.numel() * 4 / seconds


def environment(device: str) -> dict:
    commit = os.environ.get("LSA_FAST_COMMIT", "")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=RESULTS.parent).stdout.strip()
        except OSError:
            pass
    info = {
        "device": torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "commit": commit,
    }
    if device == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                info["device"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return info


def write_results(name: str, payload: dict) -> Path:
    """Atomic write of benchmarks/results/<name>.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    fd, tmp = tempfile.mkstemp(dir=RESULTS, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)
    return path


def device_slug(info: dict, device: str) -> str:
    text = info["device"] if device == "cuda" else "cpu-" + info["device"]
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()[:60]


def print_table(title: str, rows: list, columns: list) -> None:
    print(f"\n{title}")
    widths = [max(len(str(c)), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)))
