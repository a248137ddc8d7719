"""AT-LR training benchmark, two parts measured in one run.

Part "steps" (issue 5, item 8): the time of one optimiser step of AT-PGD-10 and
AT-PGD-10-LR (the layer-wise regulariser on one or two layers) with
lsa_fast.training.ATLRTrainer.train_step, against the same AT-LR written plainly, the
way a user would without lsa_fast: forward hooks collecting the regularised layers'
outputs, the eager regulariser of lsa_fast/reference.py, torchattacks.PGD for the
attack, an SGD step. Tables of ms/step and ratios.

Part "epoch" (issues 15, 24): images/s of AT-PGD-10-LR and AT-APGD-10-LR epoch slices
(`--slice` batches through the whole training loop: data, attack, regulariser,
optimiser) in four variants: the plain loop (a host DataLoader, .to(device), hooks +
eager regulariser + torchattacks PGD / APGD, SGD); ours eager (ATLRTrainer.fit over a
DeviceLoader); ours --compile (TrainConfig.compile="inductor"); ours compiled + CUDA
graphs (compile="cudagraphs", CUDA only). Each in precisions fp32, bf16 (autocast:
TrainConfig.amp="bf16"; the plain loop runs its attack and loss under
torch.autocast(bfloat16)) and channels_last (fp32; model and batches in channels_last
memory format, TrainConfig.channels_last), chosen by --attacks, --precisions, --models. Each variant first runs one slice as warm-up (compilation, CUDA-graph
capture: reported as warm-up seconds), then `--rounds` timed slices in alternating
order; ours trains with drop_last (a static batch shape). Model C's "ours" variants
augment (crop-flip on the device, the CIFAR-10 protocol); the plain loop does not
augment, which favours it. Without torchattacks (a GPU machine without network) the
plain loop's attack is an eager PGD loop in torchattacks' order.

  python benchmarks/bench_training.py [--device cpu|cuda] [--part steps|epoch|all] [--quick]
                                      [--c-batch N] [--slice N|B=N,C=N] [--rounds N] [--threads N]
                                      [--models B,C] [--attacks pgd,apgd] [--precisions fp32,bf16,channels_last]
                                      [--preset gpu-issue24] [--warm-jobs N] [--budget S] [--plain-bn-eval]
                                      [--eager-only] [--warm-and-exit]

On a GPU: `--device cuda --preset gpu-issue24` (compile_warm.py: the compiles run first in
parallel processes, the timed runs one after the other; every workload prints its time and
the JSON is rewritten after each; a short summary table comes last). --budget S skips the
workloads that would start after S seconds.

Writes benchmarks/results/<device>-training.json (<device>-training-<part>.json for
one part).

Workloads: paper model B (MNIST CNN) at batch 256, and model C (VGG-19, CIFAR-10
shapes) at a small batch on CPU (32; 8 with --quick) so that a CPU run stays
bearable, 128 on CUDA. Random weights, x = torch.rand, random labels (the epoch part:
the labels the model predicts at the start, since torchattacks' APGD attacks only the
samples classified correctly: with random labels it would skip about 90%). PGD-10, L-inf,
random start: eps 0.3 / alpha 0.01 on B, 8/255 / 2/255 on C; APGD-10 (cross-entropy,
L-inf, one run) at the same eps. Both sides generate
the attack in train mode, BatchNorm included (the trainer's default for PGD and APGD;
torchattacks is told set_model_training_mode(model_training=True, batchnorm_training=True):
its default batchnorm_training=False keeps BatchNorm in eval mode inside the attack,
which skips the batch statistics in every attack step, less work than ours does;
--plain-bn-eval adds that loop as a fifth variant), use SGD (lr 0.01, momentum 0.9,
weight decay 5e-4) and start from the same weights. Layers are the trainer's
probe indices (PROBES, the trainer's default "activations": the activation modules'
outputs); the plain loop hooks the same modules, so both do the same work.

Targets: LR step <= 1.10 x the AT step (ours, CPU and GPU); plain eager AT-LR >=
1.2 x ours on GPU (reported on CPU as measured); no host sync inside a step (checked
on CUDA with torch.cuda.set_sync_debug_mode). Epoch slices: ours eager >= the plain
loop everywhere; on CPU, --compile ahead of eager for model B (>= 1.1x for APGD); on
GPU, compiled + CUDA graphs >= 2x the plain loop for model B and >= 1.3x for model C,
and compiled + graphs + bf16 >= 3x the plain fp32 loop for model C.

Every step time is harness.time_it's median, taken in alternating rounds (--rounds, 3 by
default; the order reverses every round); a step time is the median over the rounds
and a ratio the median of the per-round ratios. A CPU step takes seconds, so each
round holds one timed step (after time_it's warm-up). On a shared
machine (other jobs on the same cores) the CPU numbers are noisy.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compile_warm  # noqa: E402
import harness  # noqa: E402

import lsa_fast  # noqa: E402
from lsa_fast import reference  # noqa: E402
from lsa_fast.models import build_model  # noqa: E402
from lsa_fast.probes import LayerProbe  # noqa: E402
from lsa_fast.device_loader import DeviceLoader  # noqa: E402
from lsa_fast.training import ATLRTrainer, TrainConfig  # noqa: E402

try:
    import torchattacks
except ImportError:  # the GPU check machine may not have it
    torchattacks = None

STEPS = 10
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4
LR_STEP_TARGET = 1.10
PLAIN_TARGET = 1.2
# Epoch slices: (model, this variant / that variant) >= target, on the device named.
# A target applies to the workloads it names (None: any). "plain fp32": the plain loop of
# the same workload in fp32.
SLICE_TARGETS = [
    # (model, attack, precision, numerator, denominator, device, target)
    (None, None, None, "ours eager", "plain", None, 1.0),
    ("B", "pgd", "fp32", "ours --compile", "ours eager", "cpu", 1.0),
    ("B", "apgd", None, "ours --compile", "ours eager", "cpu", 1.1),
    ("B", "pgd", "fp32", "ours compiled + CUDA graphs", "plain", "cuda", 2.0),
    ("C", "pgd", "fp32", "ours compiled + CUDA graphs", "plain", "cuda", 1.3),
    ("C", None, "bf16", "ours compiled + CUDA graphs", "plain fp32", "cuda", 3.0),
]
PLAIN_BN_EVAL = "plain, attack BN in eval (torchattacks' default)"
ATTACK_LABELS = {"pgd": "AT-PGD-10-LR", "apgd": "AT-APGD-10-LR"}
PRECISIONS = ("fp32", "bf16", "channels_last")
PROBES = "activations"  # the trainer's default probe points; the plain loop hooks the same
_T0 = time.perf_counter()  # the run's start (--budget, the per-workload prints)
# --preset: the rows an issue needs, in the order that measures the key ones first.
PRESETS = {
    "gpu-issue24": {
        "about": "models C then B, AT-PGD-10-LR and AT-APGD-10-LR, fp32 and bf16, the four variants each; "
                 "slices of 10 batches on C and 20 on B, 3 rounds, compiles warmed in 8 parallel processes on CUDA, "
                 "and the plain loop with torchattacks' BatchNorm default beside it on C (--plain-bn-eval)",
        "models": "C,B", "attacks": "pgd,apgd", "precisions": "fp32,bf16", "slice": "C=10,B=20", "rounds": 3,
        "plain_bn_eval": True,
        "warm_jobs_cuda": 8, "part": "epoch",
    },
}

# name: (model, input shape per sample, eps, alpha, one regularised layer, two layers)
MODELS = {
    "B": ((1, 28, 28), 0.3, 0.01, [1], [1, 2]),
    "C": ((3, 32, 32), 8 / 255, 2 / 255, [4], [4, 8]),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="steps: one regularised layer only, no plain AT; model C at batch 8 on CPU; epoch: "
                             "2-batch slices on CPU")
    parser.add_argument("--part", choices=("steps", "epoch", "all"), default="all",
                        help="steps (ms per training step), epoch (images/s of epoch slices) or all (default)")
    parser.add_argument("--c-batch", type=int, default=None, help="model C batch (default: 128 CUDA, 32 CPU, 8 quick CPU)")
    parser.add_argument("--slice", default=None,
                        help="batches per epoch slice: N, or per model like B=20,C=10 (default: 20 CUDA, 4 CPU, "
                             "2 quick CPU)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating timing rounds (default: 3)")
    parser.add_argument("--models", default="B,C", help="epoch part: models, comma-separated (default: B,C)")
    parser.add_argument("--attacks", default="pgd,apgd", help="epoch part: base attacks (default: pgd,apgd)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS),
                        help=f"epoch part: any of {','.join(PRECISIONS)} (default: all)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="epoch part: a fixed selection of rows, slices and rounds (" +
                             "; ".join(f"{k}: {v['about']}" for k, v in PRESETS.items()) +
                             "); options left at their defaults take the preset's values")
    parser.add_argument("--warm-jobs", type=int, default=None,
                        help="epoch part: compile every compiled variant's graphs first in up to N parallel "
                             "processes, filling inductor's FX-graph cache, so that the timed runs (sequential) "
                             "load them (default 0; the preset's on CUDA)")
    parser.add_argument("--budget", type=float, default=None,
                        help="epoch part: seconds; once the run has taken this long, the remaining workloads "
                             "are skipped (and listed as skipped)")
    parser.add_argument("--plain-bn-eval", action="store_true",
                        help="epoch part: also time the plain loop with torchattacks' default BatchNorm handling "
                             "(eval mode inside the attack: less work than the trainer's train-mode attack)")
    parser.add_argument("--eager-only", action="store_true",
                        help="epoch part: the plain loop(s) and ours eager only (no compiled variants)")
    parser.add_argument("--warm-and-exit", action="store_true",
                        help="epoch part: only the compile warming of --warm-jobs (default 8 here), no timing: run "
                             "it beside work that is not timed (gpu_check.sh runs it beside the tests)")
    parser.add_argument("--warm-only", default=None, help=argparse.SUPPRESS)  # MODEL:ATTACK:PRECISION, a child
    harness.add_common_arguments(parser, "-training")
    args = harness.parse_common(parser)
    if args.preset:
        compile_warm.apply_preset(args, PRESETS[args.preset], parser)
    if args.warm_only:
        sys.exit(compile_warm.warm_one(args.warm_only, args.device, _c_batch(args), _warm_variant))
    info = harness.environment(args.device)
    ta_version = torchattacks.__version__ if torchattacks is not None else None
    print(f"lsa_fast AT-LR training benchmark on {info['device']} ({info['threads']} threads), torch {info['torch']}, "
          f"torchattacks {ta_version or 'not installed: the plain loop uses an eager PGD in its order'}")
    print(f"backend: {lsa_fast.backend()}")
    print("note: timings are medians; on a shared machine they are noisy")
    c_batch = _c_batch(args)
    rounds = args.rounds or 3
    min_run_time = 0.3 if args.quick else (0.5 if args.device == "cuda" else 1.0)
    workloads = [("B", 256), ("C", c_batch)]
    payload = {
        "benchmark": "training",
        "environment": dict(info, torchattacks=ta_version),
        "quick": args.quick,
        "rounds": rounds,
        "note": "shared machine: other jobs ran on the same cores; numbers are noisy",
        "settings": {"pgd_steps": STEPS, "sgd": {"lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY},
                     "models": {k: {"eps": v[1], "alpha": v[2], "one_layer": v[3], "two_layers": v[4]}
                                for k, v in MODELS.items()}},
    }
    if args.part in ("steps", "all"):
        if torchattacks is not None:
            payload["results"] = run_steps_part(workloads, args.device, args.quick, rounds, min_run_time)
        elif args.part == "steps":
            sys.exit("bench_training: the steps part compares with torchattacks (pip install torchattacks)")
        else:
            print("\nsteps part skipped: it compares with torchattacks, which is not installed", flush=True)
            payload["results"] = "skipped: torchattacks not installed"
    if args.part in ("epoch", "all"):
        models, attacks, precisions = _names(parser, args)
        batches = compile_warm.slices(parser, args.slice, models,
                                      20 if args.device == "cuda" else (2 if args.quick else 4))
        sizes = dict(workloads)
        chosen = [(m, sizes[m]) for m in models]  # in the order given: a preset puts the key rows first
        payload["command"] = " ".join(sys.argv)
        payload["preset"] = args.preset
        if args.warm_and_exit:
            warming = compile_warm.warm_all(chosen, attacks, precisions, args, args.warm_jobs or 8, t0=_T0)
            sys.exit(0 if all(w["status"] == 0 for w in warming["workloads"].values()) else 1)
        if args.warm_jobs and not args.eager_only:
            payload["compile_warming"] = compile_warm.warm_all(chosen, attacks, precisions, args, args.warm_jobs,
                                                               t0=_T0)
        suffix = "-training" if args.part == "all" else f"-training-{args.part}"
        name = args.out or harness.device_slug(info, args.device) + suffix

        def save(results):  # after every workload: a run cut short by a timeout keeps what it measured
            payload["epoch_slices"] = results
            payload["elapsed_s"] = time.perf_counter() - _T0
            return harness.write_results(name, payload)

        payload["epoch_slices"] = run_epoch_part(chosen, args.device, batches, rounds, attacks, precisions,
                                                 budget=args.budget, save=save, plain_bn_eval=args.plain_bn_eval,
                                                 eager_only=args.eager_only)
    else:
        suffix = "-training" if args.part == "all" else f"-training-{args.part}"
        name = args.out or harness.device_slug(info, args.device) + suffix
    payload["elapsed_s"] = time.perf_counter() - _T0
    path = harness.write_results(name, payload)
    print(f"\nresults written to {path} ({payload['elapsed_s']:.0f} s in all)")
    if "epoch_slices" in payload:
        compile_warm.print_summary(payload["epoch_slices"], args.device)


def _c_batch(args):
    return args.c_batch or (128 if args.device == "cuda" else (8 if args.quick else 32))


def _warm_variant(model_name, batch, device, attack, precision):
    """A compiled variant of one workload for a warming child (compile_warm): the same
    trainer, data shapes and step code as the timed "ours" variants."""
    shape, eps, alpha, one, _ = MODELS[model_name]
    x, y, model = _epoch_data(model_name, batch, 3, device)
    augment = "crop-flip" if model_name == "C" else "none"
    return OursEpoch(model, x, y, batch, device, eps, alpha, one, "inductor", augment, attack, precision)


def _names(parser, args):
    """--models, --attacks, --precisions as lists, each name checked."""
    chosen = []
    for option, allowed in (("models", MODELS), ("attacks", ATTACK_LABELS), ("precisions", PRECISIONS)):
        names = [n.strip() for n in getattr(args, option).split(",") if n.strip()]
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            parser.error(f"--{option}: {unknown or 'none given'}; choose from {', '.join(allowed)}")
        chosen.append(names)
    return chosen


def run_steps_part(workloads, device, quick, rounds, min_run_time):
    results, time_rows, ratio_rows = {}, [], []
    for model_name, batch in workloads:
        name = f"model {model_name} ({'MNIST CNN' if model_name == 'B' else 'VGG-19'}) b{batch}"
        print(f"\nsteps: {name} ...", flush=True)
        result = bench_workload(model_name, batch, device, quick, rounds, min_run_time)
        results[name] = result
        time_rows += [{"workload": name, "step": step, "ms/step": f"{ms:.1f}"} for step, ms in result["ms_per_step"].items()]
        ratio_rows += [{"workload": name, "ratio": ratio, "value": f"{value['value']:.3f}", "target": value["target"]}
                       for ratio, value in result["ratios"].items()]
        if result.get("host_syncs_in_lr_step") is not None:
            ratio_rows.append({"workload": name, "ratio": "host syncs in one AT-PGD-10-LR step (ours)",
                               "value": str(result["host_syncs_in_lr_step"]),
                               "target": _verdict(result["host_syncs_in_lr_step"] == 0, "0")})
    harness.print_table(f"ms per training step (median{'' if rounds == 1 else f' of {rounds} rounds'})",
                        time_rows, ["workload", "step", "ms/step"])
    harness.print_table("ratios (per-round median)", ratio_rows, ["workload", "ratio", "value", "target"])
    return results


def bench_workload(model_name, batch, device, quick, rounds, min_run_time):
    shape, eps, alpha, one, two = MODELS[model_name]
    torch.manual_seed(0)
    base = build_model(model_name).to(device).train()
    x = torch.rand(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def ours(layers):
        trainer = _trainer(copy.deepcopy(base), x, y, eps, alpha, layers)
        return lambda: trainer.train_step(x, y)

    def plain(layers):
        step = PlainATLR(copy.deepcopy(base), eps, alpha, layers)
        return lambda: step(x, y)

    one_name, two_name = _layer_names(one), _layer_names(two)
    steps = {
        "AT-PGD-10 (ours)": ours(None),
        f"AT-PGD-10-LR-{one_name} (ours)": ours(one),
        f"AT-PGD-10-LR-{one_name} plain (hooks + eager reference + torchattacks)": plain(one),
    }
    if not quick:
        steps[f"AT-PGD-10-LR-{two_name} (ours)"] = ours(two)
        steps[f"AT-PGD-10-LR-{two_name} plain (hooks + eager reference + torchattacks)"] = plain(two)
        steps["AT-PGD-10 plain (torchattacks + SGD)"] = plain(None)

    times = {label: [] for label in steps}
    for r in range(rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))  # drift hits both sides alike
        for label in order:
            times[label].append(harness.time_it(steps[label], device, min_run_time))

    def ratio(numerator, denominator, target=None, lower_is_better=True):
        per_round = [n / d for n, d in zip(times[numerator], times[denominator])]
        value = statistics.median(per_round)
        verdict = ""
        if target is not None:
            met = value <= target if lower_is_better else value >= target
            verdict = _verdict(met, f"{'<=' if lower_is_better else '>='} {target}")
            if not lower_is_better and device != "cuda":
                verdict += " (target is for GPU)"
        return {"value": value, "per_round": per_round, "target": verdict}

    at = "AT-PGD-10 (ours)"
    ratios = {}
    for layer_name in (one_name, two_name):
        lr_ours = f"AT-PGD-10-LR-{layer_name} (ours)"
        lr_plain = f"AT-PGD-10-LR-{layer_name} plain (hooks + eager reference + torchattacks)"
        if lr_ours not in times:
            continue
        ratios[f"LR-{layer_name} step / AT step (ours)"] = ratio(lr_ours, at, LR_STEP_TARGET)
        if lr_plain in times:
            ratios[f"plain AT-LR-{layer_name} / ours"] = ratio(lr_plain, lr_ours, PLAIN_TARGET, lower_is_better=False)
    if "AT-PGD-10 plain (torchattacks + SGD)" in times:
        ratios["plain AT / ours AT (no LR)"] = ratio("AT-PGD-10 plain (torchattacks + SGD)", at)

    syncs = _host_syncs(steps[f"AT-PGD-10-LR-{one_name} (ours)"]) if device == "cuda" else None
    return {
        "model": model_name, "batch": batch, "eps": eps, "alpha": alpha, "rounds": rounds,
        "ms_per_step": {label: statistics.median(t) * 1e3 for label, t in times.items()},
        "ms_per_round": {label: [s * 1e3 for s in t] for label, t in times.items()},
        "ratios": ratios,
        "host_syncs_in_lr_step": syncs,
    }


def run_epoch_part(workloads, device, batches, rounds, attacks=("pgd",), precisions=("fp32",), budget=None,
                   save=None, plain_bn_eval=False, eager_only=False):
    """Images/s of AT-(A)PGD-10-LR epoch slices, four variants per model, attack and precision.
    batches: per slice, an int or {model: int}; budget: seconds since the start after which the
    remaining workloads are skipped; save(results): called after every workload."""
    results, rows, ratio_rows = {}, [], []
    for model_name, batch in workloads:
        slice_batches = batches[model_name] if isinstance(batches, dict) else batches
        for attack in attacks:
            for precision in precisions:
                name = (f"model {model_name} ({'MNIST CNN' if model_name == 'B' else 'VGG-19'}) b{batch}, "
                        f"{ATTACK_LABELS[attack]}, {precision}")
                elapsed = time.perf_counter() - _T0
                if budget is not None and elapsed > budget:
                    print(f"\nepoch slices: {name}: skipped (the run has taken {elapsed:.0f} s, --budget {budget:g})",
                          flush=True)
                    results[name] = {"model": model_name, "attack": attack, "precision": precision,
                                     "skipped": f"--budget {budget:g} s spent"}
                    rows.append({"workload": name, "variant": f"skipped: --budget {budget:g} s spent"})
                    continue
                print(f"\nepoch slices: {name}, {slice_batches} batches ...", flush=True)
                started = time.perf_counter()
                result = bench_epoch_slices(model_name, batch, device, slice_batches, rounds, attack, precision,
                                            plain_bn_eval, eager_only)
                result["wall_s"] = time.perf_counter() - started
                print(f"  workload done in {result['wall_s']:.1f} s ({time.perf_counter() - _T0:.0f} s since the start)",
                      flush=True)
                results[name] = result
                if save is not None:
                    save(results)
                for label, entry in result["variants"].items():
                    rows.append(_slice_row(name, label, entry))
        for name, result in results.items():
            if not name.startswith(f"model {model_name} ") or "skipped" in result:
                continue
            targets = _slice_targets(result, results, device)
            result["targets"] = targets
            ratio_rows += [{"workload": name, "ratio": ratio, "value": f"{value['value']:.3f}",
                            "target": value["target"]} for ratio, value in targets.items()]
    harness.print_table(f"epoch slices of {batches} batches (images/s: median of {rounds} rounds; "
                        "vs plain: per-round ratio, median; ms/batch: median loop time of the batches after "
                        "each slice's first, whose step ours runs eagerly with the value checks)", rows,
                        ["workload", "variant", "images/s", "vs plain", "ms/batch after the 1st", "warm-up s"])
    if ratio_rows:
        harness.print_table("targets", ratio_rows, ["workload", "ratio", "value", "target"])
    return results


def _slice_row(name, label, entry):
    row = {"workload": name, "variant": label}
    if "error" in entry:
        row["images/s"] = "failed: " + entry["error"][:60]
        return row
    rate = entry["images_per_s"]
    row.update({"images/s": f"{rate:.0f}" if rate >= 100 else f"{rate:.2f}",
                "warm-up s": f"{entry['warmup_s']:.1f}",
                "vs plain": f"{entry['vs_plain']:.2f}x" if "vs_plain" in entry else ""})
    if "steady_ms_per_batch" in entry:
        row["ms/batch after the 1st"] = f"{entry['steady_ms_per_batch']:.1f}"
    return row


def _slice_targets(result, results, device):
    """The SLICE_TARGETS that apply to this workload, from its per-round slice times
    (the plain fp32 loop of the same model and attack for "plain fp32")."""
    targets = {}
    times = result["slice_times"]
    for model, attack, precision, numerator, denominator, target_device, target in SLICE_TARGETS:
        if any(want is not None and want != have for want, have in (
                (model, result["model"]), (attack, result["attack"]), (precision, result["precision"]),
                (target_device, device))):
            continue
        if denominator == "plain fp32":
            fp32 = [r for r in results.values() if (r["model"], r["attack"], r["precision"]) ==
                    (result["model"], result["attack"], "fp32") and "slice_times" in r]
            baseline = fp32[0]["slice_times"].get("plain") if fp32 else None
        else:
            baseline = times.get(denominator)
        if numerator not in times or not baseline:
            continue
        value = statistics.median(d / t for d, t in zip(baseline, times[numerator]))
        targets[f"{numerator} / {denominator}"] = {"value": value, "target": _verdict(value >= target, f">= {target}")}
    return targets


def bench_epoch_slices(model_name, batch, device, batches, rounds, attack="pgd", precision="fp32",
                       plain_bn_eval=False, eager_only=False):
    shape, eps, alpha, one, _ = MODELS[model_name]
    n = batch * batches
    x, y, model = _epoch_data(model_name, batch, batches, device)
    augment = "crop-flip" if model_name == "C" else "none"
    builders = {"plain": lambda: PlainEpoch(copy.deepcopy(model), x, y, batch, device, eps, alpha, one, attack,
                                            precision)}
    if plain_bn_eval and torchattacks is not None and any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        builders[PLAIN_BN_EVAL] = lambda: PlainEpoch(copy.deepcopy(model), x, y, batch, device, eps, alpha, one,
                                                     attack, precision, attack_bn_eval=True)
    modes = {"ours eager": "none"} if eager_only else {"ours eager": "none", "ours --compile": "inductor"}
    if device == "cuda" and not eager_only:
        modes["ours compiled + CUDA graphs"] = "cudagraphs"
    for label, mode in modes.items():
        builders[label] = (lambda mode=mode: OursEpoch(copy.deepcopy(model), x, y, batch, device, eps, alpha, one,
                                                       mode, augment, attack, precision))
    runners, variants = {}, {}
    for label, build in builders.items():
        # Warm-up slice: compilation and CUDA-graph capture happen here; a variant that fails is reported.
        try:
            started = time.perf_counter()
            runners[label] = build()
            seconds = runners[label]()
            variants[label] = {"warmup_s": seconds, "build_s": time.perf_counter() - started - seconds}
            print(f"  {label}: warm-up slice {seconds:.1f} s", flush=True)
        except Exception as error:  # report and go on: the other variants still get measured
            runners.pop(label, None)
            variants[label] = {"error": f"{type(error).__name__}: {error}"[:500]}
            print(f"  {label}: FAILED {variants[label]['error'][:200]}", flush=True)
    times = {label: [] for label in runners}
    for runner in runners.values():
        runner.clock.batch_seconds = []  # the warm-up's batches do not count
    for r in range(rounds):
        for label in (list(runners) if r % 2 == 0 else list(reversed(runners))):
            times[label].append(runners[label]())
    for label, seconds in times.items():
        entry = variants[label]
        print(f"  {label}: {entry['build_s'] + entry['warmup_s']:.1f} s to build and warm up, "
              f"{sum(seconds):.1f} s for {rounds} timed slices", flush=True)
        entry.update({"images_per_s": n / statistics.median(seconds), "slice_s": seconds, "images": n})
        steady = runners[label].clock.batch_seconds
        if steady:
            entry["steady_ms_per_batch"] = 1e3 * statistics.median(steady)
            entry["steady_images_per_s"] = batch / statistics.median(steady)
        if "plain" in times and label != "plain":
            entry["vs_plain"] = statistics.median(p / t for p, t in zip(times["plain"], seconds))
        fast = getattr(runners[label], "trainer", None)
        if fast is not None and fast.compiled_step is not None:
            entry["compile_fell_back_to_eager"] = fast.compiled_step.failed
            entry["cuda_graphs"] = bool(fast.compiled_step._graphs) and fast.compiled_step.use_graphs
    return {"model": model_name, "attack": attack, "precision": precision, "batch": batch, "batches": batches,
            "augment_ours": augment, "augment_plain": "none", "variants": variants, "slice_times": times}


def _epoch_data(model_name, batch, batches, device="cpu"):
    """(x, y, model) of an epoch-slice workload: seeded images, the labels the model
    predicts, the model in train mode."""
    shape = MODELS[model_name][0]
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch * batches, *shape, generator=generator)
    torch.manual_seed(0)
    model = build_model(model_name)
    with torch.no_grad():  # labels the model predicts: torchattacks' APGD attacks only the samples it
        # classifies correctly, so with random labels it would skip ~90% (on the device: VGG-19 on a CPU
        # takes seconds for a slice's images)
        y = torch.cat([model.eval().to(device)(part.to(device)).argmax(1).cpu() for part in x.split(batch)])
    model.cpu().train()
    return x, y, model


class OursEpoch:
    """ATLRTrainer.fit over a DeviceLoader, one epoch (the slice) per call; seconds.
    clock.batch_seconds: the loop time of each batch but the epoch's first (which runs
    the eager, value-checked step), from marks at the start of every step."""

    def __init__(self, model, x, y, batch, device, eps, alpha, layers, mode, augment, attack="pgd", precision="fp32"):
        config = TrainConfig(base=attack, eps=eps, alpha=alpha if attack == "pgd" else None, steps=STEPS,
                             random_start=True, lr_layers=layers, gammas=1.0, epochs=1000, batch_size=batch,
                             optimizer="sgd", lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                             schedule="constant", augment=augment, compile=mode, drop_last=True, probes=PROBES,
                             amp="bf16" if precision == "bf16" else "none",
                             channels_last=precision == "channels_last")
        loader = DeviceLoader(x, y, batch, device=device, seed=0, augment=augment, drop_last=True)
        self.trainer = ATLRTrainer(model, config, loader, device=device)
        self.clock = _BatchClock(device)
        step = self.trainer.train_step

        def marked_step(xb, yb, real=None):
            self.clock.mark()
            return step(xb, yb, real)

        self.trainer.train_step = marked_step

    def __call__(self) -> float:
        self.clock.start()
        self.trainer.fit(stop_after_epoch=self.trainer.epoch + 1)
        return self.clock.stop()


class PlainEpoch:
    """The loop a user writes: a shuffling host DataLoader, .to(device), PlainATLR."""

    def __init__(self, model, x, y, batch, device, eps, alpha, layers, attack="pgd", precision="fp32",
                 attack_bn_eval=False):
        from torch.utils.data import DataLoader, TensorDataset

        self.channels_last = precision == "channels_last"
        model = model.to(device).train()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.step = PlainATLR(model, eps, alpha, layers, attack, precision == "bf16", attack_bn_eval)
        self.loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, drop_last=True,
                                 pin_memory=device == "cuda", generator=torch.Generator().manual_seed(0))
        self.device = device
        self.clock = _BatchClock(device)

    def __call__(self) -> float:
        self.clock.start()
        for xb, yb in self.loader:
            self.clock.mark()
            xb = xb.to(self.device, non_blocking=True)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            self.step(xb, yb.to(self.device, non_blocking=True))
        return self.clock.stop()


class _BatchClock:
    """Wall time of a slice, and the time between consecutive step starts after the
    first one (CUDA events, read once at the end: no sync inside the slice)."""

    def __init__(self, device):
        self.cuda = device == "cuda"
        self.batch_seconds = []

    def start(self):
        if self.cuda:
            torch.cuda.synchronize()
        self.marks = []
        self.began = time.perf_counter()

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def stop(self) -> float:
        self.mark()
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self.began
        marks = self.marks[1:]  # from the second step's start on
        if self.cuda:
            self.batch_seconds += [a.elapsed_time(b) / 1e3 for a, b in zip(marks, marks[1:])]
        else:
            self.batch_seconds += [b - a for a, b in zip(marks, marks[1:])]
        return seconds


class PlainATLR:
    """AT(-LR) as a user writes it without lsa_fast: torchattacks PGD or APGD, forward
    hooks on the regularised layers (recording only around the two training forwards),
    the eager regulariser of lsa_fast/reference.py, cross-entropy, SGD; bf16: attack
    and loss under torch.autocast. layers=None: AT."""

    def __init__(self, model, eps, alpha, layers, attack="pgd", bf16=False, attack_bn_eval=False):
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        self.autocast = torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16, enabled=bf16)
        if attack == "apgd":
            if torchattacks is not None:
                self.attack = torchattacks.APGD(model, norm="Linf", eps=eps, steps=STEPS, n_restarts=1, loss="ce")
            else:  # no torchattacks: lsa_fast's eager APGD stands in
                self.attack = lambda x, y: lsa_fast.attacks.apgd(model, x, y, eps, steps=STEPS, model_mode="train")
        elif torchattacks is not None:
            self.attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=STEPS, random_start=True)
        else:
            self.attack = _EagerPGD(model, eps, alpha)
        if hasattr(self.attack, "set_model_training_mode"):  # BatchNorm too, as the trainer's attack
            self.attack.set_model_training_mode(model_training=True, batchnorm_training=not attack_bn_eval)
        self.layers = layers
        self.recorded = None
        if layers:
            points = LayerProbe(model, select=PROBES).selected
            for index in layers:
                points[index][1].register_forward_hook(self._record)

    def _record(self, module, inputs, output):
        if self.recorded is not None:
            self.recorded.append(output)

    def __call__(self, x, y):
        with self.autocast:
            return self._step(x, y)

    def _step(self, x, y):
        x_hat = self.attack(x, y)
        self.model.train()
        if self.layers:
            self.recorded = []
            self.model(x)
            clean, self.recorded = self.recorded, []
            logits = self.model(x_hat)
            adversarial, self.recorded = self.recorded, None
            regularizer = reference.layerwise_regularizer(
                clean, adversarial, range(len(self.layers)), [1.0] * len(self.layers))
            loss = F.cross_entropy(logits, y) + regularizer
        else:
            loss = F.cross_entropy(self.model(x_hat), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


class _EagerPGD:
    """torchattacks.PGD's loop (random start, signed steps, projection, [0, 1] clip) in
    train mode, for machines without torchattacks."""

    def __init__(self, model, eps, alpha):
        self.model, self.eps, self.alpha = model, eps, alpha

    def __call__(self, x, y):
        self.model.train()
        x_adv = torch.clamp(x + torch.empty_like(x).uniform_(-self.eps, self.eps), min=0, max=1).detach()
        for _ in range(STEPS):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(self.model(x_adv), y), x_adv)
            x_adv = x_adv.detach() + self.alpha * grad.sign()
            x_adv = torch.clamp(x + torch.clamp(x_adv - x, min=-self.eps, max=self.eps), min=0, max=1).detach()
        return x_adv


def _trainer(model, x, y, eps, alpha, layers):
    config = TrainConfig(base="pgd", eps=eps, alpha=alpha, steps=STEPS, random_start=True, lr_layers=layers,
                         gammas=1.0, epochs=1, batch_size=x.shape[0], optimizer="sgd", lr=LR, momentum=MOMENTUM,
                         weight_decay=WEIGHT_DECAY, schedule="constant", probes=PROBES)
    loader = DataLoader(TensorDataset(x.cpu(), y.cpu()), batch_size=x.shape[0])
    trainer = ATLRTrainer(model, config, loader, device=x.device)
    trainer.module.train()  # what fit() does before its steps
    return trainer


def _host_syncs(step):
    """Synchronising CUDA calls in one step (torch.cuda.set_sync_debug_mode warns on each)."""
    step()
    torch.cuda.synchronize()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
    except RuntimeError as error:  # an older torch without the debug mode
        print(f"  host-sync check unavailable: {error}")
        return None
    return sum("synchroniz" in str(w.message) for w in caught)


def _layer_names(layers):
    return "L" + ",".join(str(l) for l in layers)


def _verdict(met, target):
    return f"{target}: {'met' if met else 'NOT met'}"


if __name__ == "__main__":
    main()
