"""Attack benchmark (issue 3, item 5; issue 11, item 5): whole-attack throughput of
PGD-10, APGD-CE and APGD-T on paper model B (MNIST CNN), ours (lsa_fast.attacks)
against torchattacks on the same model in the same run, and the fused projection step
(torch.ops.lsa_fast.pgd_step_*) against the eager elementwise sequence of
lsa_fast/reference.py. Prints tables of ratios and writes
benchmarks/results/<device>-attacks.json.

  python benchmarks/bench_attacks.py [--device cpu|cuda] [--batch 256 [512 ...]] [--quick]
                                     [--suites pgd-apgd apgd-t step]

Settings: model B untrained (torch.manual_seed(0)), eval mode; x = torch.rand in
[0, 1]. The labels are the model's clean predictions, so every sample starts correctly
classified: torchattacks' APGD attacks only the correctly classified samples, and with
random labels it would attack about a tenth of the batch while ours attacks all of it.
Neither attack stops early, so the work per call depends neither on the labels nor on
the attack's success. PGD-10: L-inf, eps 0.3, alpha 0.01, random start. APGD-CE:
L-inf, eps 0.3, one restart, 20 steps (10 with --quick). On CUDA, a PGD-10 loop
captured in a CUDA graph is timed as well.

APGD-T (suite apgd-t): on an untrained model B nothing is fooled, and an attack that
skips fooled samples has nothing to skip; so this suite trains model B for 60 Adam
steps on synthetic digits (10 smooth random 28x28 prototypes, each image half
prototype, half uniform noise; 100 % clean accuracy) and attacks it at eps 0.03,
where the first target class fools about half of the batch and the others a few
more, and at eps 0.1, where the first fools nearly all. Targeted DLR, L-inf, 9 target
classes, one restart, 20 steps (10 with --quick), labels = clean predictions.
torchattacks' APGDT, like AutoAttack, runs each target class only on the samples no
earlier one has fooled; ours does the same (apgd's skip_fooled=True, the default),
and "ours, every run on the whole batch" (skip_fooled=False) is the work it did
before. The table gives each one's robust accuracy and the samples it attacked.

The machine may be shared: ours and the baseline are timed in alternating rounds, and
a ratio is the median of the per-round ratios. On CPU the tables also give the fastest
single call of each and the ratio of those, the least disturbed by other processes.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import lsa_fast  # noqa: E402
from lsa_fast import ops, reference  # noqa: E402
from lsa_fast.attacks import apgd, pgd  # noqa: E402
from lsa_fast.attacks.pgd import random_start_point  # noqa: E402
from lsa_fast.models import build_model  # noqa: E402

try:
    import torchattacks
except ImportError:  # the GPU check machine has no network; an eager PGD loop stands in
    torchattacks = None

EPS, ALPHA, PGD_STEPS = 0.3, 0.01, 10
APGDT_EPS, APGDT_TARGETS, TRAIN_STEPS = (0.03, 0.1), 9, 60
SUITES = ("pgd-apgd", "apgd-t", "step")
STEP_SHAPES = [(256, 1, 28, 28), (128, 3, 32, 32)]  # model B's input, batch 256; CIFAR-10, batch 128
STEP_SETTINGS = {"linf": (0.01, 0.3), "l2": (0.1, 2.0)}  # norm: (alpha, eps); the cost does not depend on them


def bench_attacks(batch, device, apgd_steps, rounds, min_run_time):
    """Images/s of each attack at one batch size, and ours / baseline ratios."""
    torch.manual_seed(0)
    model = build_model("B").to(device).eval()
    x = torch.rand(batch, 1, 28, 28, device=device)
    with torch.no_grad():
        y = model(x).argmax(dim=1)

    pgd_name, apgd_name = f"PGD-{PGD_STEPS}", f"APGD-CE-{apgd_steps}"
    candidates = {
        (pgd_name, "ours"): lambda: pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=PGD_STEPS, random_start=True),
        (apgd_name, "ours"): lambda: apgd(model, x, y, eps=EPS, steps=apgd_steps, norm="linf", loss="ce", n_restarts=1),
    }
    if torchattacks is not None:
        ta_pgd = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=PGD_STEPS, random_start=True)
        ta_apgd = torchattacks.APGD(model, norm="Linf", eps=EPS, steps=apgd_steps, n_restarts=1, loss="ce", seed=0)
        candidates[(pgd_name, "torchattacks")] = lambda: ta_pgd(x, y)
        candidates[(apgd_name, "torchattacks")] = lambda: ta_apgd(x, y)
    else:
        print("  torchattacks not installed: PGD is compared with an eager loop in its order instead")
        candidates[(pgd_name, "eager loop (torchattacks' order)")] = lambda: _eager_pgd(model, x, y)
    if device == "cuda":
        try:
            graphed = _graphed_pgd(model, x, y)
            candidates[(pgd_name, "ours, CUDA graph")] = graphed
        except Exception as error:  # capture depends on the model and the torch build; report, don't fail
            print(f"  CUDA-graph PGD unavailable: {type(error).__name__}: {str(error)[:160]}")

    times, best = _alternating(candidates, device, rounds, min_run_time)

    result, rows = _summarise(times, best, batch)
    if (pgd_name, "ours, CUDA graph") in candidates:
        # The graph replays ours' loop from the same start: it should give the same points.
        generator = torch.Generator(device=device).manual_seed(1)
        eager = pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=PGD_STEPS, generator=generator)
        generator.manual_seed(1)
        replayed = candidates[(pgd_name, "ours, CUDA graph")](generator)
        result[pgd_name]["cuda_graph_max_abs_diff_vs_eager"] = (eager - replayed).abs().max().item()
    return result, rows


def bench_apgd_targeted(model, x, y, eps, steps, device, rounds, min_run_time):
    """APGD-T on a partly robust model: ours (skipping fooled samples), ours on the
    whole batch for every target class, torchattacks' APGDT."""
    batch = x.shape[0]
    name = f"APGD-T-{steps}, eps {eps}"
    attacked = {}

    def ours(skip_fooled):
        return lambda: apgd(model, x, y, eps=eps, steps=steps, norm="linf", loss="dlr", targeted=True,
                            n_target_classes=APGDT_TARGETS, skip_fooled=skip_fooled)

    candidates = {(name, "ours"): ours(True), (name, "ours, every run on the whole batch"): ours(False)}
    if torchattacks is not None:
        ta_apgdt = torchattacks.APGDT(model, norm="Linf", eps=eps, steps=steps, n_restarts=1,
                                      n_classes=APGDT_TARGETS + 1, seed=0)
        candidates[(name, "torchattacks")] = lambda: ta_apgdt(x, y)
    for (_, impl), run in candidates.items():  # what each computes: robust accuracy and the work it did
        counting = _count_samples(model, attacked, impl)
        x_adv = run()
        counting.remove()
        with torch.no_grad():
            attacked[impl + " robust %"] = 100.0 * (model(x_adv).argmax(dim=1) == y).float().mean().item()
    times, best = _alternating(candidates, device, rounds, min_run_time)
    result, rows = _summarise(times, best, batch, baseline_of=lambda attack: "torchattacks")
    for row in rows:
        row["robust %"] = f"{attacked[row['implementation'] + ' robust %']:.1f}"
        row["samples run"] = attacked[row["implementation"]]
        result[name][row["implementation"]].update(robust_percent=attacked[row["implementation"] + " robust %"],
                                                   samples_run=attacked[row["implementation"]])
    return result, rows


def bench_steps(device, rounds, min_run_time, bandwidth):
    """One projection step: fused op (through lsa_fast.ops.pgd_step, as the attacks call
    it, and the bare torch.ops call) against the eager elementwise sequence."""
    result, rows = {}, []
    for shape in STEP_SHAPES:
        for norm, (alpha, eps) in STEP_SETTINGS.items():
            generator = torch.Generator(device=device).manual_seed(0)
            x = torch.rand(shape, device=device, generator=generator)
            x_adv = (x + torch.empty_like(x).uniform_(-eps / 2, eps / 2, generator=generator)).clamp(0, 1)
            grad = torch.randn(shape, device=device, generator=generator)
            eager_step = reference.pgd_step_linf if norm == "linf" else reference.pgd_step_l2
            candidates = {
                "fused (ops.pgd_step)": lambda: ops.pgd_step(x_adv, grad, x, alpha, eps, norm=norm),
                "eager (reference)": lambda: eager_step(x_adv, grad, x, alpha, eps),
            }
            fused_op = getattr(torch.ops.lsa_fast, f"pgd_step_{norm}", None) if lsa_fast.backend()["extension"] else None
            if fused_op is not None:
                candidates["fused (torch.ops, no checks)"] = lambda: fused_op(x_adv, grad, x, alpha, eps)
            times, best = _alternating(candidates, device, rounds, min_run_time)
            label = f"{list(shape)} {norm}"
            nbytes = 4 * x.numel() * x.element_size()  # least traffic: x_adv, grad, x read, the result written
            entry = {name: statistics.median(per_round) * 1e3 for name, per_round in times.items()}
            entry["rounds_ms"] = {name: [t * 1e3 for t in per_round] for name, per_round in times.items()}
            entry["ratio_eager_vs_fused"] = _paired_ratio(times["eager (reference)"], times["fused (ops.pgd_step)"])
            entry["fused_GBps"] = nbytes / (entry["fused (ops.pgd_step)"] / 1e3) / 1e9
            if best is not None:
                entry["best_ms"] = {name: t * 1e3 for name, t in best.items()}
                entry["best_ratio_eager_vs_fused"] = best["eager (reference)"] / best["fused (ops.pgd_step)"]
            result[label] = entry
            for name in candidates:
                row = {"shape": str(list(shape)), "norm": norm, "implementation": name, "ms": f"{entry[name]:.3f}"}
                if best is not None:
                    row["best ms"] = f"{best[name] * 1e3:.3f}"
                if name.startswith("fused (ops"):
                    row["eager / fused"] = f"{entry['ratio_eager_vs_fused']:.2f}x"
                    if best is not None:
                        row["eager / fused (best)"] = f"{entry['best_ratio_eager_vs_fused']:.2f}x"
                    row["% of copy bw"] = f"{100 * nbytes / (entry[name] / 1e3) / bandwidth:.0f}"
                rows.append(row)
    return result, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help="attack batch size(s) (default: 256 on CPU, 256 and 512 on CUDA)")
    parser.add_argument("--quick", action="store_true", help="shorter timings, APGD with 10 steps")
    parser.add_argument("--suites", nargs="+", choices=SUITES, default=list(SUITES),
                        help="what to time: PGD-10 and APGD-CE, APGD-T, the projection step (default: all)")
    harness.add_common_arguments(parser, "-attacks")
    args = harness.parse_common(parser)
    batches = args.batch or ([256, 512] if args.device == "cuda" else [256])
    apgd_steps = 10 if args.quick else 20
    # a step costs well under a millisecond: more rounds there, for little time
    rounds, step_rounds = (2, 3) if args.quick else (5, 7)
    attack_time, step_time = (0.2, 0.1) if args.quick else (1.0, 0.5)

    info = harness.environment(args.device)
    ta_version = torchattacks.__version__ if torchattacks is not None else None
    print(f"lsa_fast attack benchmark on {info['device']} ({info['threads']} threads), torch {info['torch']}, "
          f"torchattacks {ta_version or 'not installed'}")
    print(f"backend: {lsa_fast.backend()}")
    bandwidth = harness.copy_bandwidth(args.device)
    print(f"copy bandwidth (read+write): {bandwidth / 1e9:.1f} GB/s")

    attacks, attack_rows = {}, []
    for batch in batches:
        if "pgd-apgd" in args.suites:
            print(f"\nmodel B, batch {batch}: PGD-{PGD_STEPS}, APGD-CE-{apgd_steps} ...", flush=True)
            attacks[str(batch)], rows = bench_attacks(batch, args.device, apgd_steps, rounds, attack_time)
            attack_rows += rows
        if "apgd-t" in args.suites:
            model, x, y = _partly_robust_model_b(batch, args.device)
            for eps in APGDT_EPS:
                print(f"\nmodel B (trained on synthetic digits), batch {batch}: APGD-T-{apgd_steps}, eps {eps} ...",
                      flush=True)
                result, rows = bench_apgd_targeted(model, x, y, eps, apgd_steps, args.device, rounds, attack_time)
                attacks.setdefault(str(batch), {}).update(result)
                attack_rows += rows
    steps, step_rows = {}, []
    if "step" in args.suites:
        print("\nprojection step ...", flush=True)
        steps, step_rows = bench_steps(args.device, step_rounds, step_time, bandwidth)

    if any(row["attack"].startswith(("PGD", "APGD-CE")) for row in attack_rows):
        harness.print_table(f"whole attacks on model B (eps {EPS}; ms: median of {rounds} rounds; vs baseline = "
                            "baseline time / this time, paired per round; best: fastest single call)",
                            [row for row in attack_rows if not row["attack"].startswith("APGD-T")],
                            ["batch", "attack", "implementation", "ms", "images/s", "vs baseline", "best ms",
                             "vs baseline (best)"])
    if any(row["attack"].startswith("APGD-T") for row in attack_rows):
        harness.print_table(f"APGD-T on model B trained on synthetic digits ({APGDT_TARGETS} target "
                            f"classes; ms: median of {rounds} rounds; vs torchattacks = its time / this time, paired "
                            "per round; samples run: samples through the model, forward and backward, in one call)",
                            [row for row in attack_rows if row["attack"].startswith("APGD-T")],
                            ["batch", "attack", "implementation", "ms", "images/s", "vs baseline", "best ms",
                             "vs baseline (best)", "robust %", "samples run"])
    if step_rows:
        harness.print_table(f"projection step (median of {step_rounds} rounds; eager / fused = eager time / fused time, "
                            "paired per round; % of copy bw > 100 when the step's tensors stay in cache)", step_rows,
                            ["shape", "norm", "implementation", "ms", "eager / fused", "best ms", "eager / fused (best)",
                             "% of copy bw"])
    pgd_256 = attacks.get("256", {}).get(f"PGD-{PGD_STEPS}", {}).get("ours")
    step_256 = steps.get(f"{list(STEP_SHAPES[0])} linf")
    if pgd_256 and step_256:
        share = 100 * PGD_STEPS * step_256["fused (ops.pgd_step)"] / pgd_256["ms"]
        print(f"\nthe fused step is {share:.2f}% of ours PGD-{PGD_STEPS} at batch 256 (the rest: model forward/backward)")

    payload = {
        "benchmark": "attacks",
        "environment": dict(info, torchattacks=ta_version),
        "copy_bandwidth_GBps": bandwidth / 1e9,
        "settings": {"model": "B (MNIST CNN, untrained, eval)", "labels": "clean predictions", "eps": EPS,
                     "pgd": {"steps": PGD_STEPS, "alpha": ALPHA, "norm": "linf", "random_start": True},
                     "apgd": {"steps": apgd_steps, "loss": "ce", "norm": "linf", "n_restarts": 1},
                     "apgd_t": {"steps": apgd_steps, "loss": "dlr-targeted", "norm": "linf", "eps": list(APGDT_EPS),
                                "target_classes": APGDT_TARGETS, "model": f"B trained {TRAIN_STEPS} Adam steps on "
                                "synthetic digits"},
                     "suites": args.suites,
                     "rounds": rounds, "step_rounds": step_rounds, "quick": args.quick,
                     "threads": torch.get_num_threads(), "step_settings": STEP_SETTINGS},
        "attacks": attacks,
        "projection_step": steps,
    }
    path = harness.write_results(args.out or harness.device_slug(info, args.device) + "-attacks", payload)
    print(f"\nresults written to {path}")


# ---------------------------------------------------------------------------- helpers


def _summarise(times, best, batch, baseline_of=None):
    """Per (attack, implementation): the result entry and the table row, with ratios
    against the attack's baseline measured in the same rounds."""
    result, rows = {}, []
    for (attack, impl), per_round in times.items():
        seconds = statistics.median(per_round)
        entry = {"ms": seconds * 1e3, "images_per_s": batch / seconds, "rounds_ms": [t * 1e3 for t in per_round]}
        row = {"batch": batch, "attack": attack, "implementation": impl, "ms": f"{seconds * 1e3:.1f}",
               "images/s": f"{batch / seconds:.0f}"}
        baseline = (baseline_of or (lambda a: _baseline(times, a)))(attack)
        if baseline is not None and (attack, baseline) not in times:
            baseline = None
        if impl != baseline and baseline is not None:
            entry["baseline"] = baseline
            entry["ratio_vs_baseline"] = _paired_ratio(times[(attack, baseline)], per_round)
            row["vs baseline"] = f"{entry['ratio_vs_baseline']:.2f}x"
        if best is not None:
            entry["best_ms"] = best[(attack, impl)] * 1e3
            row["best ms"] = f"{entry['best_ms']:.1f}"
            if "baseline" in entry:
                entry["best_ratio_vs_baseline"] = best[(attack, baseline)] / best[(attack, impl)]
                row["vs baseline (best)"] = f"{entry['best_ratio_vs_baseline']:.2f}x"
        result.setdefault(attack, {})[impl] = entry
        rows.append(row)
    return result, rows


def _partly_robust_model_b(batch, device):
    """Model B after TRAIN_STEPS Adam steps on synthetic digits, a batch of them, and
    its clean predictions as labels (every sample starts correctly classified)."""
    generator = torch.Generator().manual_seed(0)
    prototypes = F.interpolate(torch.rand(10, 1, 7, 7, generator=generator), size=28, mode="bilinear")

    def digits(n):
        labels = torch.randint(0, 10, (n,), generator=generator)
        images = 0.5 * prototypes[labels] + 0.5 * torch.rand(n, 1, 28, 28, generator=generator)
        return images.clamp(0, 1).to(device), labels.to(device)

    torch.manual_seed(0)
    model = build_model("B").to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(TRAIN_STEPS):
        images, labels = digits(64)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().requires_grad_(False)
    x, _ = digits(batch)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return model, x, y


def _count_samples(model, counts, key):
    """A forward pre-hook adding the batch size of every model call to counts[key]."""
    counts[key] = 0

    def hook(module, args):
        counts[key] += args[0].shape[0]

    return model.register_forward_pre_hook(hook)


def _alternating(candidates, device, rounds, min_run_time):
    """harness.time_it of every candidate, `rounds` times, in forward then reverse
    order, so that load from other processes falls on all of them alike. Returns the
    per-round times and, on CPU, each candidate's fastest single call among all those
    time_it made (warm-up included): on a shared machine the least disturbed run.
    On CUDA a call's host time means little (the work is asynchronous): best is None."""
    times = {name: [] for name in candidates}
    calls = {name: [] for name in candidates}
    order = list(candidates)
    for r in range(rounds):
        for name in order if r % 2 == 0 else reversed(order):
            fn = candidates[name] if device == "cuda" else _each_call_timed(candidates[name], calls[name])
            times[name].append(harness.time_it(fn, device, min_run_time=min_run_time))
    best = None if device == "cuda" else {name: min(seconds) for name, seconds in calls.items()}
    return times, best


def _each_call_timed(fn, seconds):
    def timed():
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return timed


def _paired_ratio(baseline_times, times):
    return statistics.median(b / t for b, t in zip(baseline_times, times))


def _baseline(times, attack):
    for impl in ("torchattacks", "eager loop (torchattacks' order)"):
        if (attack, impl) in times:
            return impl
    return None


def _eager_pgd(model, x, y):
    """PGD-10 as torchattacks writes it (the loop and the eager step), for machines
    without torchattacks."""
    x_adv = torch.clamp(x + torch.empty_like(x).uniform_(-EPS, EPS), min=0, max=1)
    for _ in range(PGD_STEPS):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = reference.pgd_step_linf(x_adv.detach(), grad, x, ALPHA, EPS)
    return x_adv


def _graphed_pgd(model, x, y):
    """Ours' PGD-10 loop (same loss, same fused step) captured once in a CUDA graph;
    the call draws the random start eagerly, copies the batch in and replays."""
    static_x, static_y = x.clone(), y.clone()
    static_start = torch.empty_like(x)

    def loop():
        x_adv = static_start
        for _ in range(PGD_STEPS):
            x_adv = x_adv.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), static_y), x_adv)
            x_adv = ops.pgd_step(x_adv, grad, static_x, ALPHA, EPS, norm="linf")
        return x_adv

    static_start.copy_(x)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graph asks
        for _ in range(3):
            loop()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = loop()

    def run(generator=None):
        static_x.copy_(x)
        static_y.copy_(y)
        static_start.copy_(random_start_point(static_x, EPS, "linf", generator))
        graph.replay()
        return static_out.clone()

    return run


if __name__ == "__main__":
    main()
