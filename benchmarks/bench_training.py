"""AT-LR training-step benchmark (issue 5, item 8): the time of one optimiser step of
AT-PGD-10 and AT-PGD-10-LR (the layer-wise regulariser on one or two layers) with
lsa_fast.training.ATLRTrainer.train_step, against the same AT-LR written plainly, the
way a user would without lsa_fast: forward hooks collecting the regularised layers'
outputs, the eager regulariser of lsa_fast/reference.py, torchattacks.PGD for the
attack, an SGD step. Prints tables of ms/step and ratios and writes
benchmarks/results/<device>-training.json.

  python benchmarks/bench_training.py [--device cpu|cuda] [--quick] [--c-batch N] [--threads N]

Workloads: paper model B (MNIST CNN) at batch 256, and model C (VGG-19, CIFAR-10
shapes) at a small batch on CPU (32; 8 with --quick) so that a CPU run stays
bearable (a full CPU run still takes about 15 minutes on 2 cores), 128 on CUDA. Random weights, x = torch.rand, random labels. PGD-10, L-inf,
random start: eps 0.3 / alpha 0.01 on B, 8/255 / 2/255 on C. Both sides generate
the attack in train mode (the trainer's default for PGD; torchattacks is told
set_model_training_mode(model_training=True)), use SGD (lr 0.01, momentum 0.9,
weight decay 5e-4) and start from the same weights. Layers are the trainer's
probe indices (LayerProbe(select="hidden"): the hidden Conv/Linear outputs).

Targets: LR step <= 1.10 x the AT step (ours, CPU and GPU); plain eager AT-LR >=
1.2 x ours on GPU (reported on CPU as measured); no host sync inside a step (checked
on CUDA with torch.cuda.set_sync_debug_mode).

Every time is harness.time_it's median, taken in alternating rounds (--rounds, 3 by
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
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import lsa_fast  # noqa: E402
from lsa_fast import reference  # noqa: E402
from lsa_fast.models import build_model  # noqa: E402
from lsa_fast.probes import LayerProbe  # noqa: E402
from lsa_fast.training import ATLRTrainer, TrainConfig  # noqa: E402

try:
    import torchattacks
except ImportError:  # the GPU check machine may not have it
    torchattacks = None

STEPS = 10
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4
LR_STEP_TARGET = 1.10
PLAIN_TARGET = 1.2

# name: (model, input shape per sample, eps, alpha, one regularised layer, two layers)
MODELS = {
    "B": ((1, 28, 28), 0.3, 0.01, [1], [1, 2]),
    "C": ((3, 32, 32), 8 / 255, 2 / 255, [4], [4, 8]),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="one regularised layer only, no plain AT; model C at batch 8 on CPU")
    parser.add_argument("--c-batch", type=int, default=None, help="model C batch (default: 128 CUDA, 32 CPU, 8 quick CPU)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating timing rounds (default: 3)")
    harness.add_common_arguments(parser, "-training")
    args = harness.parse_common(parser)
    if torchattacks is None:
        sys.exit("bench_training: torchattacks is needed for the plain baseline (pip install torchattacks)")
    info = harness.environment(args.device)
    print(f"lsa_fast AT-LR training-step benchmark on {info['device']} ({info['threads']} threads), torch {info['torch']}")
    print(f"backend: {lsa_fast.backend()}")
    print("note: timings are medians; on a shared machine they are noisy")
    c_batch = args.c_batch or (128 if args.device == "cuda" else (8 if args.quick else 32))
    rounds = args.rounds or 3
    min_run_time = 0.3 if args.quick else 1.0
    workloads = [("B", 256), ("C", c_batch)]

    results, time_rows, ratio_rows = {}, [], []
    for model_name, batch in workloads:
        name = f"model {model_name} ({'MNIST CNN' if model_name == 'B' else 'VGG-19'}) b{batch}"
        print(f"\n{name} ...", flush=True)
        result = bench_workload(model_name, batch, args.device, args.quick, rounds, min_run_time)
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
    payload = {
        "benchmark": "training",
        "environment": info,
        "quick": args.quick,
        "rounds": rounds,
        "note": "shared machine: other jobs ran on the same cores; numbers are noisy",
        "settings": {"pgd_steps": STEPS, "sgd": {"lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY},
                     "models": {k: {"eps": v[1], "alpha": v[2], "one_layer": v[3], "two_layers": v[4]}
                                for k, v in MODELS.items()}},
        "results": results,
    }
    path = harness.write_results(args.out or harness.device_slug(info, args.device) + "-training", payload)
    print(f"\nresults written to {path}")


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


class PlainATLR:
    """AT(-LR) as a user writes it without lsa_fast: torchattacks PGD, forward hooks on
    the regularised layers (recording only around the two training forwards), the
    eager regulariser of lsa_fast/reference.py, cross-entropy, SGD. layers=None: AT."""

    def __init__(self, model, eps, alpha, layers):
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        self.attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=STEPS, random_start=True)
        self.attack.set_model_training_mode(model_training=True)
        self.layers = layers
        self.recorded = None
        if layers:
            hidden = LayerProbe(model, select="hidden").selected
            for index in layers:
                hidden[index][1].register_forward_hook(self._record)

    def _record(self, module, inputs, output):
        if self.recorded is not None:
            self.recorded.append(output)

    def __call__(self, x, y):
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


def _trainer(model, x, y, eps, alpha, layers):
    config = TrainConfig(base="pgd", eps=eps, alpha=alpha, steps=STEPS, random_start=True, lr_layers=layers,
                         gammas=1.0, epochs=1, batch_size=x.shape[0], optimizer="sgd", lr=LR, momentum=MOMENTUM,
                         weight_decay=WEIGHT_DECAY, schedule="constant")
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
