"""Probe benchmark (issue 11, point 1): what it costs that a probe point always holds the
value its module returned. Prints tables and writes benchmarks/results/<device>-probes.json.

  python benchmarks/bench_probes.py [--device cpu|cuda] [--quick] [--threads N]

Workloads: torchvision resnet50 (random weights; Bottleneck blocks: `out += identity`,
in-place ReLUs) and paper model C (VGG-19 for CIFAR, plain ReLUs), also with its ReLUs
made in-place (the common CIFAR VGG), probing every Conv2d, BatchNorm2d and ReLU output
(the selection of the issue, where the model writes into recorded tensors), in two modes:
  analysis - forward under torch.no_grad, probe outputs detached;
  training - capture_grad=True, forward + backward of logits.sum() + the probe outputs' means.
Variants, each on the same model and input:
  no copy (unsafe) - forward hooks that keep a reference to each output: THE BASELINE,
                     wrong wherever the model writes into a recorded tensor later;
  LayerProbe       - lsa_fast's default: copy-on-write snapshots (a copy only when written);
  clone all        - LayerProbe(clone=True): an eager copy of every output;
  plain forward    - no hooks (what the model costs alone).
"wrong points" counts the probe points where a variant's value differs from a copy taken
when the module returned. Time: the median over rounds in which every variant runs once in
turn (torch.utils.benchmark; CUDA events on GPU), so load from other jobs on a shared machine
falls on all variants alike.
Memory: on CPU from torch.profiler's memory timeline (allocations and frees), on CUDA
from torch.cuda's allocator statistics: the peak above the start of the call and what is
still allocated after it (the probe's records and the logits; in training also the
parameters' gradients, the same for every variant), in MB.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import torch
import torch.utils.benchmark as benchmark
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from lsa_fast.models import build_model  # noqa: E402
from lsa_fast.probes import LayerProbe  # noqa: E402

SELECT = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU)
VARIANTS = ["no copy (unsafe)", "LayerProbe", "clone all", "plain forward"]
BASELINE = "no copy (unsafe)"


def workloads(quick: bool):
    """name -> (model factory, input shape [N, C, H, W])."""
    result = {}
    try:
        import torchvision

        side = 128 if quick else 224
        result[f"resnet50 b2 {side}x{side}"] = (lambda: torchvision.models.resnet50(weights=None), (2, 3, side, side))
    except ImportError:
        print("torchvision not installed: resnet50 skipped")
    batch = 16 if quick else 32
    result[f"VGG-19 (model C) b{batch}"] = (lambda: build_model("C"), (batch, 3, 32, 32))

    def inplace_vgg():
        model = build_model("C")
        for module in model.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = True
        return model

    result[f"VGG-19 (model C, in-place ReLU) b{batch}"] = (inplace_vgg, (batch, 3, 32, 32))
    return result


def no_copy_forward(model, modules, x, capture_grad):
    """The unsafe baseline: keep whatever tensor object each selected module returned."""
    outputs = []
    record = lambda module, args, output: outputs.append(output if capture_grad else output.detach())  # noqa: E731
    handles = [m.register_forward_hook(record) for m in modules]
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return logits, outputs


def make_step(variant, model, x, training):
    """A callable doing one analysis forward or one training step with the variant. Each
    call builds its capture afresh and keeps nothing: what it returns is all it holds."""
    modules = [m for _, m in LayerProbe(model, select=SELECT).selected]
    if variant == "plain forward":
        forward = lambda: (model(x), [])  # noqa: E731
    elif variant == BASELINE:
        forward = lambda: no_copy_forward(model, modules, x, capture_grad=training)  # noqa: E731
    else:
        def forward():
            probe = LayerProbe(model, select=SELECT, capture_grad=training, clone=(variant == "clone all"))
            with probe:
                logits = model(x)
            return logits, probe.outputs

    if not training:
        def step():
            with torch.no_grad():
                return forward()
        return step

    def step():
        model.zero_grad(set_to_none=True)
        logits, outputs = forward()
        loss = logits.sum() + sum(t.float().mean() for t in outputs)
        loss.backward()
        return logits, outputs
    return step


def wrong_points(model, x, variant):
    """Probe points whose value differs from a copy taken when the module returned."""
    truth = []
    handles = [m.register_forward_hook(lambda m, a, out: truth.append(out.detach().clone()))
               for _, m in LayerProbe(model, select=SELECT).selected]
    try:
        with torch.no_grad():
            _, outputs = make_step(variant, model, x, training=False)()
    finally:
        for handle in handles:
            handle.remove()
    # The truth hooks run in the same forward as the variant's, when each module returns: the same values.
    return sum(not torch.equal(a, b) for a, b in zip(outputs, truth)), len(truth)


def memory(step, model, device):
    """(peak above the start, still allocated at the end) in bytes, for one call; the
    parameters' .grad is freed before the call, so a training step's end includes it."""
    step()  # warm-up: lazy initialisations are not the variant's cost
    model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = step()
        torch.cuda.synchronize()
        peak, end = torch.cuda.max_memory_allocated() - start, torch.cuda.memory_allocated() - start
        del result
        model.zero_grad(set_to_none=True)
        return peak, end
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
            result = step()
        timeline = prof._memory_profile().timeline
    del result
    model.zero_grad(set_to_none=True)
    live = peak = 0
    for _, action, _, size in sorted(timeline, key=lambda event: event[0]):
        if action.name == "CREATE":
            live += size
        elif action.name == "DESTROY":
            live -= size
        peak = max(peak, live)
    return peak, live


def interleaved_medians(steps, device, rounds, min_run_time):
    """Median seconds per call of each step, timed in turns (one call of each variant, then
    the next round), so that load from other jobs on a shared machine hits all alike."""
    if device == "cuda":  # CUDA events: short timings per round are precise
        times = {name: [] for name in steps}
        for _ in range(rounds):
            for name, step in steps.items():
                times[name].append(harness.time_it(step, device, min_run_time=min_run_time / rounds))
        return {name: statistics.median(values) for name, values in times.items()}
    timers = {name: benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
              for name, step in steps.items()}
    for step in steps.values():
        step()  # warm-up
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, timer in timers.items():
            times[name].append(timer.timeit(1).median)
    return {name: statistics.median(values) for name, values in times.items()}


def bench_workload(name, factory, shape, device, min_run_time, rounds):
    torch.manual_seed(0)
    model = factory().to(device).eval()
    x = torch.rand(*shape, device=device)
    points = wrong_points(model, x, "clone all")[1]
    rows = []
    for training in (False, True):
        mode = "training" if training else "analysis"
        steps = {variant: make_step(variant, model, x, training) for variant in VARIANTS}
        seconds = interleaved_medians(steps, device, rounds, min_run_time)
        model.zero_grad(set_to_none=True)
        measured = {}
        for variant, step in steps.items():
            peak, end = memory(step, model, device)
            wrong = wrong_points(model, x, variant)[0] if variant != "plain forward" else None
            measured[variant] = (seconds[variant], peak, end, wrong)
        base_seconds, base_peak, base_end, _ = measured[BASELINE]
        for variant, (secs, peak, end, wrong) in measured.items():
            rows.append({
                "workload": name, "mode": mode, "variant": variant,
                "probe points": "-" if wrong is None else points, "wrong points": "-" if wrong is None else wrong,
                "ms": f"{secs * 1e3:.1f}", "time / baseline": f"{secs / base_seconds:.3f}",
                "peak MB": f"{peak / 2**20:.1f}", "peak / baseline": f"{peak / base_peak:.3f}" if base_peak > 0 else "-",
                "held MB": f"{end / 2**20:.1f}", "held / baseline": f"{end / base_end:.3f}" if base_end > 0 else "-",
                "_seconds": secs, "_peak_bytes": peak, "_held_bytes": end,
            })
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller inputs, shorter timings")
    harness.add_common_arguments(parser, "-probes")
    args = harness.parse_common(parser)
    info = harness.environment(args.device)
    print(f"lsa_fast probe benchmark on {info['device']} ({info['threads']} threads), torch {info['torch']}")
    print(f"probing every {', '.join('nn.' + t.__name__ for t in SELECT)} output; baseline: {BASELINE}")
    print("note: timings are medians; on a shared machine they are noisy")
    min_run_time = 0.3 if args.quick else 1.0
    rounds = 5 if args.quick else 15
    rows = []
    for name, (factory, shape) in workloads(args.quick).items():
        print(f"\n{name} ...", flush=True)
        rows += bench_workload(name, factory, shape, args.device, min_run_time, rounds)
    columns = ["workload", "mode", "variant", "probe points", "wrong points", "ms", "time / baseline",
               "peak MB", "peak / baseline", "held MB", "held / baseline"]
    harness.print_table("probe safety: time and memory against the no-copy baseline (same run)", rows, columns)
    payload = {
        "benchmark": "probes",
        "environment": info,
        "quick": args.quick,
        "select": [t.__name__ for t in SELECT],
        "baseline": BASELINE,
        "rows": [{k.lstrip("_"): v for k, v in row.items()} for row in rows],
    }
    path = harness.write_results(args.out or harness.device_slug(info, args.device) + "-probes", payload)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
