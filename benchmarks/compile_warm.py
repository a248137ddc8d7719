"""Pieces of bench_training.py's epoch part that keep a GPU run to a known time:
--preset (a fixed selection of rows), per-model slice sizes, compiling the compiled
variants' graphs in parallel processes before the timed runs, and the short table
printed last.

Compile warming: torch.compile's graphs of a VGG-19 training step take tens of
seconds each to build, and the timed variants run one after the other. Each child
process (bench_training.py --warm-only MODEL:ATTACK:PRECISION) builds the same
trainer on the same batch shape as the timed "ours --compile" variant and runs one
short epoch (the eager first batch, then two compiled steps), which writes the
graphs into inductor's on-disk FX-graph and AOT-autograd caches (shared by every
process of the user). The timed variants then trace again (dynamo) but load the
compiled code instead of building it; "compiled + CUDA graphs" compiles the same
graphs as "--compile", so one child serves both. The children run before any timing,
never beside it.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import harness

CHILD_TIMEOUT_S = 420


def apply_preset(args, preset: dict, parser) -> None:
    """Fill the options the command line left at their defaults from the preset."""
    for key in ("models", "attacks", "precisions", "slice", "rounds", "part"):
        if getattr(args, key) == parser.get_default(key):
            setattr(args, key, preset[key])
    args.plain_bn_eval = args.plain_bn_eval or preset.get("plain_bn_eval", False)
    if args.warm_jobs is None:
        args.warm_jobs = preset["warm_jobs_cuda"] if args.device == "cuda" else 0


def slices(parser, text, models, default: int, known=("B", "C")):
    """--slice: N for every model, or MODEL=N,... (models not named get the default;
    known models that were not chosen are ignored)."""
    if text is None:
        return {m: default for m in models}
    text = str(text)
    try:
        if "=" not in text:
            value = int(text)
            if value < 1:
                raise ValueError
            return {m: value for m in models}
        chosen = {m: default for m in models}
        for part in text.split(","):
            name, value = (x.strip() for x in part.split("="))
            if name not in known or int(value) < 1:
                raise ValueError
            if name in chosen:
                chosen[name] = int(value)
        return chosen
    except ValueError:
        parser.error(f"--slice: {text!r}; give a count >= 1, or MODEL=COUNT,... for the models {','.join(models)}")


def warm_one(spec: str, device: str, c_batch: int, make_variant) -> int:
    """The child: compile one workload's graphs; exit status 0 when they compiled."""
    model_name, attack, precision = spec.split(":")
    batch = 256 if model_name == "B" else c_batch
    started = time.perf_counter()
    runner = make_variant(model_name, batch, device, attack, precision)
    runner()
    step = runner.trainer.compiled_step
    failed = step is None or step.failed
    print(f"warm {spec}: {time.perf_counter() - started:.1f} s{' (fell back to eager)' if failed else ''}", flush=True)
    return 1 if failed else 0


def warm_all(workloads, attacks, precisions, args, jobs: int, t0: float) -> dict:
    """Run the warming children, at most `jobs` at once; {spec: seconds, status, last line}."""
    specs = [f"{model}:{attack}:{precision}" for model, _ in workloads for attack in attacks for precision in precisions]
    jobs = max(1, min(jobs, len(specs)))
    cpus = os.cpu_count() or 1
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               TORCHINDUCTOR_COMPILE_THREADS=str(max(1, cpus // jobs)))  # the children share the cores
    script = str(Path(__file__).resolve().parent / "bench_training.py")
    base = [sys.executable, script, "--part", "epoch", "--device", args.device]
    if args.c_batch:
        base += ["--c-batch", str(args.c_batch)]
    if args.quick:
        base.append("--quick")
    # the timed run's thread count: inductor's CPU code is generated for a thread count, so
    # another count would miss the cache
    base += ["--threads", str(args.threads or torch.get_num_threads())]
    print(f"\ncompile warming: {len(specs)} workloads in {jobs} parallel processes "
          f"({env['TORCHINDUCTOR_COMPILE_THREADS']} inductor compile threads each) ...", flush=True)
    started = time.perf_counter()
    pending, running, done = list(specs), {}, {}
    while pending or running:
        while pending and len(running) < jobs:
            spec = pending.pop(0)
            log = tempfile.TemporaryFile(mode="w+")  # a pipe could fill up and stall a chatty child
            process = subprocess.Popen(base + ["--warm-only", spec], env=env, stdout=log, stderr=subprocess.STDOUT,
                                       text=True)
            running[spec] = (process, time.perf_counter(), log)
        time.sleep(0.2)
        for spec, (process, began, log) in list(running.items()):
            seconds = time.perf_counter() - began
            if process.poll() is None and seconds < CHILD_TIMEOUT_S:
                continue
            if process.poll() is None:
                process.kill()
                process.wait()
            log.seek(0)
            lines = [line for line in log.read().strip().splitlines() if line.strip()]
            log.close()
            status = process.returncode
            done[spec] = {"seconds": seconds, "status": status, "last_line": lines[-1][:300] if lines else ""}
            del running[spec]
            print(f"  {spec}: {'compiled' if status == 0 else f'status {status}'} in {seconds:.1f} s"
                  + ("" if status == 0 else f": {done[spec]['last_line']}"), flush=True)
    wall = time.perf_counter() - started
    print(f"compile warming done in {wall:.1f} s ({time.perf_counter() - t0:.0f} s since the start)", flush=True)
    return {"jobs": jobs, "wall_s": wall, "workloads": done}


def print_summary(results: dict, device: str) -> None:
    """The short table: images/s of the plain loop and each variant's speed-up over the
    plain loop of the same precision (and, for bf16 and channels_last, over the plain
    fp32 loop), all measured in this run."""
    labels = [("ours eager", "eager"), ("ours --compile", "--compile"), ("ours compiled + CUDA graphs", "graphs"),
              ("plain, attack BN in eval (torchattacks' default)", "plain BN-eval")]
    rows = []
    for name, result in results.items():
        row = {"workload": f"{result['model']} {result['attack']} {result['precision']}"}
        if "skipped" in result:
            row["plain img/s"] = "skipped: " + result["skipped"]
            rows.append(row)
            continue
        times = result["slice_times"]
        plain = times.get("plain")
        images = result["batch"] * result["batches"]
        if plain:
            row["plain img/s"] = f"{images / statistics.median(plain):.0f}"
        fp32 = next((r for r in results.values() if "slice_times" in r and r["precision"] == "fp32"
                     and (r["model"], r["attack"]) == (result["model"], result["attack"])), None)
        plain_fp32 = fp32["slice_times"].get("plain") if fp32 else None
        for label, short in labels:
            if label not in times:
                entry = result["variants"].get(label, {})
                row[short] = "failed" if "error" in entry else ""
                continue
            if plain:
                row[short] = f"{statistics.median(p / t for p, t in zip(plain, times[label])):.2f}x"
            if result["precision"] != "fp32" and plain_fp32:
                row[f"{short} vs plain fp32"] = (
                    f"{statistics.median(p / t for p, t in zip(plain_fp32, times[label])):.2f}x")
        compiled = [result["variants"][label]["warmup_s"] for label, _ in labels[1:3] if label in times]
        row["compiled warm-up s"] = " / ".join(f"{s:.0f}" for s in compiled)
        rows.append(row)
    columns = ["workload", "plain img/s", "eager", "--compile", "graphs", "--compile vs plain fp32",
               "graphs vs plain fp32", "compiled warm-up s", "plain BN-eval"]
    if device != "cuda":
        columns = [c for c in columns if "graphs" not in c]
    harness.print_table("summary (speed-up over the plain loop, same run; target on CUDA: model C graphs + bf16 "
                        ">= 3x plain fp32)", rows, columns)
