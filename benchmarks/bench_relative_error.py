"""Core benchmark (issue: core kernels): the fused comparison measure over all probed
layers, forward and the regulariser's backward, against the eager reference,
torch.compile of the reference, torch._foreach_norm (batch mode) and the pure-Python
LayersSustainabilityAnalysis package, on the ReLU activations of paper model B (MNIST
CNN, batch 256) and of model C (VGG-19, batch 128); and the fixed cost of one call
("small": 16 layers of [2, 8], the public call with check_finite=True against
torch._foreach_norm over the same list), and the public call on VGG-19's 16
activations at batch 128 ("vgg19-call", fp32 and bf16: per call, forward and
forward + backward, against torch._foreach_norm and the byte floor, with the call's
host time and its kernels' times apart). Prints a table of ratios and writes
benchmarks/results/<device>.json (<device>-<only>.json with --only).

  python benchmarks/bench_relative_error.py [--device cpu|cuda] [--quick] [--no-compile] [--only small|vgg19-call]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import lsa_fast  # noqa: E402
from lsa_fast import reference  # noqa: E402
from lsa_fast.models import build_model  # noqa: E402
from lsa_fast.probes import LayerProbe  # noqa: E402

WORKLOADS = {
    # name: (model, input shape per sample, batch)
    "model A (Moons MLP, rows of 100) b8192": ("A", (2,), 8192),
    "model B (MNIST CNN) b256": ("B", (1, 28, 28), 256),
    "model C (VGG-19) b128": ("C", (3, 32, 32), 128),
}


def activations(model_name, shape, batch, device):
    torch.manual_seed(0)
    model = build_model(model_name).to(device).eval()
    x = torch.rand(batch, *shape, device=device)
    x_hat = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
    with torch.no_grad():
        clean, perturbed = LayerProbe(model, select="activations").capture_pair(x, x_hat)
    return model, x, x_hat, [c.contiguous() for c in clean], [p.contiguous() for p in perturbed]


def foreach_batch_mode(clean, perturbed):
    diffs = torch._foreach_sub(clean, perturbed)
    return torch.stack(torch._foreach_norm(diffs)) / torch.stack(torch._foreach_norm(clean))


def bench_workload(name, model_name, shape, batch, device, use_compile, bandwidth, quick):
    model, x, x_hat, clean, perturbed = activations(model_name, shape, batch, device)
    nbytes = sum(t.numel() * t.element_size() for t in clean + perturbed)  # each read once
    run = lambda fn: harness.time_it(fn, device, min_run_time=0.3 if quick else 1.0)  # noqa: E731
    fused = lambda: lsa_fast.relative_error(clean, perturbed, check_finite=False)  # noqa: E731
    eager = lambda: reference.relative_error(clean, perturbed)  # noqa: E731
    times = {"fused": run(fused), "eager reference": run(eager)}
    if use_compile:
        try:
            compiled = torch.compile(reference.relative_error, dynamic=False)
            times["torch.compile(reference)"] = run(lambda: compiled(clean, perturbed))
        except Exception as error:  # compile needs a working toolchain; report, don't fail
            print(f"  torch.compile unavailable: {type(error).__name__}: {str(error)[:120]}")
    times["fused (batch mode)"] = run(lambda: lsa_fast.relative_error(clean, perturbed, "batch", check_finite=False))
    times["torch._foreach_norm (batch mode)"] = run(lambda: foreach_batch_mode(clean, perturbed))

    # backward of the regulariser over all layers: fused vs eager autograd
    layers = list(range(len(clean)))
    a = [t.clone().requires_grad_() for t in clean]
    b = [t.clone().requires_grad_() for t in perturbed]

    # torch.autograd.grad, not .backward(): no gradient accumulation pass into .grad
    def fused_backward():
        torch.autograd.grad(lsa_fast.layerwise_regularizer(a, b, layers, 1.0), a + b)

    def eager_backward():
        torch.autograd.grad(reference.layerwise_regularizer(a, b, layers, [1.0] * len(layers)), a + b)

    times["fused fwd+bwd"] = run(fused_backward)
    times["eager fwd+bwd"] = run(eager_backward)

    if device == "cpu":
        try:
            from LayerSustainabilityAnalysis import LayerSustainabilityAnalysis as Reference
            from lsa_fast.compat import LayerSustainabilityAnalysis as Compat

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ours = Compat(model)
                times["compat representation_comparisons (2 forwards + CM)"] = run(
                    lambda: ours.representation_comparisons(x, x_hat, verbose=False))
                # a fresh reference object per call: its hooks accumulate across calls
                times["LayersSustainabilityAnalysis representation_comparisons (call 1)"] = run(
                    lambda: _reference_call(Reference, model, x, x_hat))
        except ImportError as error:
            print(f"  LayersSustainabilityAnalysis not installed: {error}")

    rows = []
    for label, seconds in times.items():
        row = {"workload": name, "implementation": label, "ms": round(seconds * 1e3, 3)}
        if label in ("fused", "fused (batch mode)"):
            row["GB/s"] = round(nbytes / seconds / 1e9, 1)
            row["% of copy bw"] = round(100 * nbytes / seconds / bandwidth, 1)
        rows.append(row)
    ratios = {
        "fused vs eager (fwd)": times["eager reference"] / times["fused"],
        "fused vs torch.compile (fwd)": times.get("torch.compile(reference)", float("nan")) / times["fused"],
        "fused vs foreach (batch mode)": times["torch._foreach_norm (batch mode)"] / times["fused (batch mode)"],
        "fused vs eager (fwd+bwd)": times["eager fwd+bwd"] / times["fused fwd+bwd"],
        "fused % of copy bandwidth": 100 * nbytes / times["fused"] / bandwidth,
    }
    compat = "compat representation_comparisons (2 forwards + CM)"
    if compat in times:
        ratios["compat vs LSA package (whole call)"] = (
            times["LayersSustainabilityAnalysis representation_comparisons (call 1)"] / times[compat])
    return {"activation_bytes": nbytes, "layers": len(clean), "times_ms": {k: v * 1e3 for k, v in times.items()},
            "ratios": ratios}, rows


def bench_cm_statistics(device, quick):
    """Algorithm 1 on a large CM matrix (M x L = 1e7): the op against the eager
    reference (torch's own reductions)."""
    torch.manual_seed(0)
    cm = torch.rand(500_000, 20, device=device)
    run = lambda fn: harness.time_it(fn, device, min_run_time=0.3 if quick else 1.0)  # noqa: E731
    name = "cm_statistics [500000, 20]"
    fused = run(lambda: torch.ops.lsa_fast.cm_statistics(cm, 1.0))
    eager = run(lambda: reference.cm_statistics(cm, 1.0))
    nbytes = cm.numel() * cm.element_size()
    return [{"workload": name, "implementation": "fused", "ms": round(fused * 1e3, 3), "GB/s": round(nbytes / fused / 1e9, 1)},
            {"workload": name, "implementation": "eager reference", "ms": round(eager * 1e3, 3)}]


def bench_small_call(device, quick, rounds=9):
    """The fixed cost of one call: 16 tiny layers, where checks, the wrapper and the
    launch are all there is. The baseline is one torch._foreach_norm over the clean
    list (what any per-layer norm costs); the public call computes two sums of squares
    per layer and checks the result for NaN/Inf (check_finite=True, the default).
    Forward + backward (torch.autograd.grad of CM w.r.t. both lists, 32 leaves, a given
    grad_cm) against the same gradient through torch._foreach_norm over clean +
    perturbed and through the eager reference: there torch's autograd engine (about
    the same work per input for every implementation) is most of the time.
    Timed in `rounds` alternating rounds (the order reverses every round), so that a
    change of the machine's load hits every implementation alike; a time is the median
    over the rounds and a ratio the median of the per-round ratios."""
    torch.manual_seed(0)
    clean = [torch.randn(2, 8, device=device) for _ in range(16)]
    perturbed = [c + 0.1 * torch.randn_like(c) for c in clean]
    a = [t.clone().requires_grad_() for t in clean]
    b = [t.clone().requires_grad_() for t in perturbed]
    both = a + b
    grad_cm = torch.ones(2, 16, device=device)
    baseline, baseline_fb = "torch._foreach_norm(clean)", "fwd+bwd: torch._foreach_norm(clean + perturbed)"
    calls = {
        baseline: lambda: torch._foreach_norm(clean),
        "relative_error (check_finite=True)": lambda: lsa_fast.relative_error(clean, perturbed),
        "relative_error (check_finite=False)": lambda: lsa_fast.relative_error(clean, perturbed, check_finite=False),
        "torch.ops.lsa_fast.relative_error (the op alone)": (
            lambda: torch.ops.lsa_fast.relative_error(clean, perturbed, False, 1e-12)),
        baseline_fb: lambda: torch.autograd.grad(torch.stack(torch._foreach_norm(both)).sum(), both),
        "fwd+bwd: relative_error (check_finite=True)": (
            lambda: torch.autograd.grad(lsa_fast.relative_error(a, b), both, grad_cm)),
        "fwd+bwd: relative_error (check_finite=False)": (
            lambda: torch.autograd.grad(lsa_fast.relative_error(a, b, check_finite=False), both, grad_cm)),
        "fwd+bwd: eager reference": lambda: torch.autograd.grad(reference.relative_error(a, b), both, grad_cm),
    }
    per_round = {label: [] for label in calls}
    for r in range(rounds):
        for label in (list(calls) if r % 2 == 0 else list(reversed(calls))):
            per_round[label].append(harness.time_it(calls[label], device, min_run_time=0.1 if quick else 0.25))
    times = {label: statistics.median(t) for label, t in per_round.items()}
    rows = [{"workload": "small: 16 layers x [2, 8]", "implementation": k, "ms": round(v * 1e3, 4),
             "us": round(v * 1e6, 1)} for k, v in times.items()]
    ratios = {}
    for label in calls:
        if label in (baseline, baseline_fb):
            continue
        if label.startswith("fwd+bwd"):
            name = f"{label} / foreach_norm fwd+bwd"
            base = baseline_fb
        else:
            name = f"{label} / foreach_norm" + (" (target <= 2)" if "True" in label else "")
            base = baseline
        ratios[name] = statistics.median(t / b for t, b in zip(per_round[label], per_round[base]))
    return {"layers": 16, "rounds": rounds, "times_ms": {k: v * 1e3 for k, v in times.items()},
            "per_round_ms": {k: [t * 1e3 for t in v] for k, v in per_round.items()}, "ratios": ratios}, rows


def vgg19_shapes(batch):
    """The 16 ReLU outputs of paper model C (VGG-19 with BatchNorm) on 32x32 inputs:
    [batch, C, H, W] each (1.21 MB per sample and branch in fp32)."""
    widths = [(64, 32)] * 2 + [(128, 16)] * 2 + [(256, 8)] * 4 + [(512, 4)] * 4 + [(512, 2)] * 4
    return [(batch, c, hw, hw) for c, hw in widths]


def bench_vgg_call(device, quick, bandwidth, dtypes=(torch.float32, torch.bfloat16)):
    """The public relative_error call on VGG-19's 16 activations (batch 128 on CUDA;
    16 on CPU, 4 with --quick), timed per call (harness.time_it: on CUDA events around
    each call, median of many; the call's host work is inside the interval):
      check_finite=True and False; the op alone; forward + backward (the gradient of
      CM w.r.t. both lists, torch.autograd.grad with a given grad_cm, check_finite=True);
      torch._foreach_norm over clean + perturbed (the same bytes read);
      the byte floor: bytes moved / the copy bandwidth (read + write counted), 2 branches
      read by the forward, 4 read and 2 written by forward + backward;
      and, to split a call's time: "pipelined" = 50 calls back to back between two
      events / 50 (the host's work hidden behind the kernels where it is shorter), and
      "host" = the host's wall time of 50 calls without waiting / 50 (check_finite=False)."""
    batch = 128 if device == "cuda" else (4 if quick else 16)
    shapes = vgg19_shapes(batch)
    run = lambda fn: harness.time_it(fn, device, min_run_time=0.3 if quick else 1.0)  # noqa: E731
    results, rows = {}, []
    for dtype in dtypes:
        torch.manual_seed(0)
        clean = [torch.rand(s, device=device).to(dtype) for s in shapes]
        perturbed = [(c.float() + 0.03 * torch.randn_like(c, dtype=torch.float32)).to(dtype) for c in clean]
        branch = sum(t.numel() * t.element_size() for t in clean)
        a = [t.clone().requires_grad_() for t in clean]
        b = [t.clone().requires_grad_() for t in perturbed]
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        grad_cm = torch.ones(batch, len(shapes), device=device, dtype=acc)

        def forward_backward():
            torch.autograd.grad(lsa_fast.relative_error(a, b), a + b, grad_cm)

        both = clean + perturbed
        times = {
            "relative_error (check_finite=True)": run(lambda: lsa_fast.relative_error(clean, perturbed)),
            "relative_error (check_finite=False)": run(
                lambda: lsa_fast.relative_error(clean, perturbed, check_finite=False)),
            "torch.ops.lsa_fast.relative_error (the op alone)": run(
                lambda: torch.ops.lsa_fast.relative_error(clean, perturbed, False, 1e-12)),
            "relative_error fwd+bwd (check_finite=True)": run(forward_backward),
            "torch._foreach_norm(clean + perturbed)": run(lambda: torch._foreach_norm(both)),
        }
        call = lambda: lsa_fast.relative_error(clean, perturbed, check_finite=False)  # noqa: E731
        times["pipelined: 50 calls back to back / 50 (check_finite=False)"] = _back_to_back(call, device, 50)
        times["host: 50 calls without waiting / 50 (check_finite=False)"] = _host_time(call, device, 50)
        floors = {"forward": 2 * branch / bandwidth, "fwd+bwd": 6 * branch / bandwidth}
        name = f"VGG-19 b{batch} 16 activations {str(dtype).replace('torch.', '')}"
        for label, seconds in times.items():
            row = {"workload": name, "implementation": label, "ms": round(seconds * 1e3, 4),
                   "us": round(seconds * 1e6, 1)}
            if "fwd+bwd" not in label and not label.startswith("host"):
                row["GB/s"] = round(2 * branch / seconds / 1e9, 1)
                row["% of copy bw"] = round(100 * 2 * branch / seconds / bandwidth, 1)
            rows.append(row)
        rows += [{"workload": name, "implementation": f"byte floor, {k} (bytes / copy bandwidth)",
                  "ms": round(v * 1e3, 4), "us": round(v * 1e6, 1)} for k, v in floors.items()]
        public = times["relative_error (check_finite=True)"]
        ratios = {"relative_error (check_finite=True) / foreach_norm": public /
                  times["torch._foreach_norm(clean + perturbed)"],
                  "relative_error (check_finite=True) / byte floor": public / floors["forward"],
                  "fwd+bwd / byte floor": times["relative_error fwd+bwd (check_finite=True)"] / floors["fwd+bwd"]}
        if device == "cuda":
            ratios["relative_error (check_finite=True) per call, us (target <= 60)"] = public * 1e6
        results[name] = {"batch": batch, "bytes_per_branch": branch, "times_us": {k: v * 1e6 for k, v in times.items()},
                         "byte_floor_us": {k: v * 1e6 for k, v in floors.items()}, "ratios": ratios,
                         "kernels": _kernel_times(lambda: lsa_fast.relative_error(clean, perturbed), device)}
    return results, rows


def _back_to_back(fn, device, calls):
    """Seconds per call of `calls` calls issued back to back (CUDA: between two events)."""
    fn()
    if device != "cuda":
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - started) / calls
    samples = []
    for _ in range(5):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / calls)
    return statistics.median(samples)


def _host_time(fn, device, calls):
    """The host's seconds per call when it does not wait for the device."""
    fn()
    samples = []
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - started) / calls)
    if device == "cuda":
        torch.cuda.synchronize()
    return statistics.median(samples)


def _kernel_times(fn, device):
    """{device kernel or op: microseconds} of one call, from torch.profiler (CUDA only)."""
    if device != "cuda":
        return None
    try:
        from torch.profiler import ProfilerActivity, profile

        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        found = {}
        for event in prof.key_averages():
            device_us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
            if device_us and event.key.startswith(("void", "lsa_fast", "at::", "cuda", "Memcpy", "Memset")) or (
                    device_us and "kernel" in event.key.lower()):
                found[event.key[:90]] = round(device_us / max(event.count, 1), 2)
        return found
    except Exception as error:  # the profiler is a diagnosis, not the measurement
        return {"error": f"{type(error).__name__}: {str(error)[:200]}"}


def _reference_call(reference_class, model, x, x_hat):
    """The reference's first call: its hooks go on the model and are never removed,
    so they are cleared after each call (else every repetition runs all the earlier
    ones' hooks too)."""
    import contextlib
    import io

    analysis = reference_class(model)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return analysis.representation_comparisons(x, x_hat)
    finally:
        for module in model.modules():
            module._forward_hooks.clear()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter timings")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile on CPU)")
    parser.add_argument("--only", choices=("small", "vgg19-call"), default=None,
                        help="small: only the small-call workload (the op's fixed cost); vgg19-call: only the "
                             "public call on VGG-19's 16 activations (fp32 and bf16; batch 128 on CUDA)")
    harness.add_common_arguments(parser, "")
    args = harness.parse_common(parser)
    info = harness.environment(args.device)
    print(f"lsa_fast relative_error benchmark on {info['device']} ({info['threads']} threads), torch {info['torch']}")
    print(f"backend: {lsa_fast.backend()}")
    results, table, bandwidth = {}, [], None
    if args.only is None:
        bandwidth = harness.copy_bandwidth(args.device)
        print(f"copy bandwidth (read+write): {bandwidth / 1e9:.1f} GB/s")
        for name, (model_name, shape, batch) in WORKLOADS.items():
            print(f"\n{name} ...", flush=True)
            results[name], rows = bench_workload(
                name, model_name, shape, batch, args.device, not args.no_compile, bandwidth, args.quick)
            table += rows
        table += bench_cm_statistics(args.device, args.quick)
    if args.only != "vgg19-call":
        print("\nsmall: 16 layers x [2, 8] ...", flush=True)
        results["small"], rows = bench_small_call(args.device, args.quick)
        table += rows
    if args.only in (None, "vgg19-call"):
        if bandwidth is None:
            bandwidth = harness.copy_bandwidth(args.device)
            print(f"copy bandwidth (read+write): {bandwidth / 1e9:.1f} GB/s")
        print("\nthe public call on VGG-19's 16 activations ...", flush=True)
        vgg, rows = bench_vgg_call(args.device, args.quick, bandwidth)
        results.update(vgg)
        table += rows
    harness.print_table("times", table, ["workload", "implementation", "ms", "us", "GB/s", "% of copy bw"])
    ratio_rows = [{"workload": w, "ratio": k, "value": f"{v:.2f}"} for w, r in results.items() for k, v in r["ratios"].items()]
    harness.print_table("ratios ('A vs B': B's time / A's; 'A / B': A's time / B's; bandwidth in %)", ratio_rows, ["workload", "ratio", "value"])
    default_name = harness.device_slug(info, args.device) + (f"-{args.only}" if args.only else "")
    path = harness.write_results(args.out or default_name,
                                 {"benchmark": "relative_error", "environment": info, "command": " ".join(sys.argv),
                                  "note": "timings on a machine shared with other jobs are noisy",
                                  "copy_bandwidth_GBps": bandwidth and bandwidth / 1e9, "results": results})
    print(f"\nresults written to {path}")


if __name__ == "__main__":
    main()
