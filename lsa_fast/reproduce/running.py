"""Running a reproduction: every row for every seed (side by side in worker processes on
the CPU), each run trained, evaluated under EVAL_ATTACKS over the paper's eps grid and
analysed with LSA; runs.jsonl grows as runs finish, and the report is written at the end."""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from ..analysis import analyze, eps_to_input_units
from ..attacks import make_attack
from ..checks import check_int
from ..data import default_data_dir, load_dataset, make_loader
from ..device_loader import make_device_loader
from ..devices import parse_device
from ..evaluation import constant_prediction, evaluate
from ..models import build_model, model_options
from ..paper import PaperTable, paper_table
from ..probes import LayerProbe
from ..report import atomic_write_text
from ..run_data import load_split, record
from ..threads import torch_threads
from ..training import ATLRTrainer, TrainConfig
from ..validation import split_validation
from .claims import REPORT_FORMAT, summarise
from .figures import plot_cm_layers, plot_rg_scores
from .markdown import claims_summary, duration, main_table, to_markdown
from .records import Report, RunRecord
from .robustness import AUTOATTACK, autoattack_accuracy, column_key, weight_sets
from .settings import EVAL_ATTACKS, ReproduceSettings, Variant, variants

__all__ = ["run_reproduce", "run_variant", "REPORT_FILES"]

# The files of a reproduction's directory (`lsa-fast reproduce` checks them before it starts).
SETTINGS_FILE, RUNS_FILE, REPORT_JSON, REPORT_MD = "settings.json", "runs.jsonl", "report.json", "report.md"
FIGURE_FILES = ("rg_scores.png", "cm_layers.png")
REPORT_FILES = (SETTINGS_FILE, REPORT_JSON, REPORT_MD, RUNS_FILE) + FIGURE_FILES


def run_reproduce(dataset: str, out_dir="runs/reproduce", settings: Optional[ReproduceSettings] = None,
                  data_dir=None, device=None, progress: bool = True, log=print, workers: int = 1) -> Report:
    """Train, evaluate and analyse every row of the paper's table (and the sweep) for
    every seed, then write the report directory; returns the Report that report.json holds.
    workers > 1: that many processes side by side (CPU, Moons only), one thread each."""
    small_model = str(dataset).strip().lower() == "moons"  # model A: one CPU thread is faster
    with torch_threads(1, device or "cpu") if small_model else contextlib.nullcontext():
        return _run_reproduce(dataset, out_dir, settings, data_dir, device, progress, log, workers)


def _run_reproduce(dataset: str, out_dir, settings: Optional[ReproduceSettings], data_dir, device,
                   progress: bool, log, workers: int) -> Report:
    table = paper_table(dataset)
    settings = settings or ReproduceSettings.defaults(table.dataset)
    if settings.dataset != table.dataset:
        raise ValueError(f"run_reproduce: settings are for {settings.dataset!r}, not {table.dataset!r}")
    check_int("run_reproduce", "workers", workers, 1)
    device = parse_device(device, "run_reproduce: device")
    if workers > 1 and (device.type != "cpu" or table.dataset != "moons"):
        raise ValueError(f"run_reproduce: workers > 1 runs Moons on the CPU side by side; with {table.dataset} on "
                         f"{device} use one worker")
    rows = variants(table, settings)
    for variant in rows:
        _train_config(table, variant, 0, settings, {})  # a bad optimizer, schedule, amp... fails now, not after hours
    started = time.perf_counter()
    images = None if table.dataset == "moons" else _load_images(table.dataset, data_dir, settings)  # fail before writing
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(seed, variant) for seed in range(settings.seeds) for variant in rows]
    written_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    # Saved before the first run: the settings are chosen before any result exists.
    atomic_write_text(out / SETTINGS_FILE, json.dumps({
        "format": REPORT_FORMAT, "dataset": table.dataset, "settings": settings.to_dict(),
        "rows": [variant.name for variant in rows], "seeds": list(range(settings.seeds)), "written_at": written_at,
    }, indent=2) + "\n")

    title = "SMOKE RUN (--quick: the numbers mean nothing) of " if settings.smoke else ""
    log(f"{title}Reproducing {table.source} ({table.dataset}; models {', '.join(table.models)}) on {device}: "
        f"{len(rows)} rows x {settings.seeds} seed(s) = {len(jobs)} runs, each trained from scratch, "
        f"{workers} worker(s)")
    log("Settings (one for every row; saved in settings.json before the first run):")
    for key, value in settings.to_dict().items():
        log(f"  {key} = {value}")
    runs_path = out / RUNS_FILE
    atomic_write_text(runs_path, "")
    costs = {(seed, variant.name): _cost(variant, settings) for seed, variant in jobs}
    total_cost = sum(costs.values())
    runs: List[RunRecord] = []
    done_cost = 0.0
    paper_rg = {row.name: row.rg for row in table.rows}

    def finished(run: RunRecord, variant: Variant) -> None:
        nonlocal done_cost
        run = dataclasses.replace(run, paper_rg=paper_rg.get(variant.paper_row))
        runs.append(run)
        with open(runs_path, "a") as handle:
            handle.write(json.dumps(run.to_json()) + "\n")
        done_cost += costs[(run.seed, run.row)]
        elapsed = time.perf_counter() - started
        eta = elapsed / done_cost * (total_cost - done_cost)
        paper = f" (paper {run.paper_rg:.2f})" if run.paper_rg is not None else ""
        warning = "; COLLAPSED to a constant classifier" if run.collapsed else ""
        log(f"[{len(runs)}/{len(jobs)}] seed {run.seed} {run.row}: R&G FGSM {run.rg['fgsm']:.2f}{paper}, "
            f"PGD-{settings.eval_pgd_steps} {run.rg['pgd']:.2f}, {run.seconds:.1f} s{warning}; "
            f"elapsed {duration(elapsed)}, ETA {duration(eta)}")

    if workers == 1:
        for seed, variant in jobs:
            finished(run_variant(table.dataset, variant, seed, settings, str(device), progress, images), variant)
    else:
        # The longest runs first: the pool's last minutes are not one long run alone.
        ordered = sorted(jobs, key=lambda job: -costs[(job[0], job[1].name)])
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked thread pools
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
            try:
                futures = {pool.submit(run_variant, table.dataset, variant, seed, settings, "cpu", False, None): variant
                           for seed, variant in ordered}
                for future in concurrent.futures.as_completed(futures):
                    finished(future.result(), futures[future])
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise

    summary = dataclasses.replace(summarise(table, settings, runs), device=str(device), workers=workers,
                                  settings_written_at=written_at, seconds=round(time.perf_counter() - started, 1))
    markdown = to_markdown(summary)
    atomic_write_text(out / REPORT_JSON, json.dumps(summary.to_json(), indent=2, allow_nan=False) + "\n")
    atomic_write_text(out / REPORT_MD, markdown)
    figures = [out / name for name in FIGURE_FILES]
    try:  # after the results are written: a figure that cannot be drawn must not cost them
        plot_rg_scores(summary, figures[0])
        plot_cm_layers(summary, figures[1])
    except ImportError as error:
        print(f"lsa-fast reproduce: figures skipped ({error}); the results are in report.json and report.md",
              file=sys.stderr, flush=True)
        figures = []
    log("")
    log(main_table(summary, "fgsm"))
    log("")
    log(claims_summary(summary))
    log(f"\ndone in {duration(summary.seconds)}")
    log(f"report: {out}/report.md, {out}/report.json, {runs_path}"
        + (f"; figures: {', '.join(str(f) for f in figures)}" if figures else ""))
    return summary


def run_variant(dataset: str, variant: Variant, seed: int, settings: ReproduceSettings, device: str = "cpu",
                progress: bool = False, images=None) -> RunRecord:
    """Train `variant` for `seed` from scratch, evaluate it under every EVAL_ATTACKS grid
    and analyse it: one line of runs.jsonl. Moons are drawn here (a worker process
    draws each seed's once); images: (train, test) of an image dataset."""
    started = time.perf_counter()
    table = paper_table(dataset)
    if table.dataset == "moons":
        train_set, test_set, data_options = _moons(settings, seed)
    else:
        (train_set, test_set), data_options = images[:2], {}
    run = _run_one(table, variant, seed, settings, train_set, test_set, data_options, torch.device(device), progress)
    return dataclasses.replace(run, seconds=round(time.perf_counter() - started, 2))


def _run_one(table: PaperTable, variant: Variant, seed: int, settings: ReproduceSettings, train_set, test_set,
             data_options: Dict, device: torch.device, progress: bool) -> RunRecord:
    dataset = table.dataset
    config = _train_config(table, variant, seed, settings, data_options)
    # The same held-out split for every row of a seed (it is drawn from the seed).
    train_set, val_set, _ = split_validation(train_set, settings.val_size, seed)
    torch.manual_seed(seed)  # the initial weights: the same for every row of a seed
    model = build_model(variant.model, **config.model_kwargs)
    pin = device.type == "cuda"
    if dataset == "moons":
        loader = make_loader(train_set, settings.batch_size, shuffle=True, seed=seed, pin_memory=pin)
    else:  # images live on the device; CIFAR-10 gets the crop-flip augmentation there (like lsa-fast train)
        loader = make_device_loader(train_set, config, device)
    trainer = ATLRTrainer(model, config, loader, device=device, val_set=val_set)
    # Per-epoch bars only where an epoch is long enough to watch (not on Moons).
    result = trainer.fit(progress=progress and len(loader) >= 100)
    model.eval()

    test_loader = make_loader(test_set, settings.eval_batch_size, pin_memory=pin)
    sets = weight_sets(settings)
    accuracies = {}
    if "final" in sets:
        accuracies.update(_evaluate(model, table, settings, test_set, test_loader, seed, device, variant.name, "final"))
    collapsed = constant_prediction(model, test_loader)
    best = trainer.epoch_validation.best if settings.val_size else None

    cm_count = min(settings.cm_samples, len(test_set))
    cm_loader = make_loader(torch.utils.data.Subset(test_set, range(cm_count)), settings.eval_batch_size,
                            pin_memory=pin)
    cm_eps = _input_units(dataset, settings.cm_eps, settings)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    report = analyze(model, cm_loader,
                     [make_attack("fgsm", cm_eps), make_attack("pgd", cm_eps, steps=settings.attack_steps,
                                                               generator=generator)],
                     eta=settings.eta, select=settings.probes, device=device, progress=False, dataset=dataset,
                     model_name=variant.model, moons_units=settings.moons_units if dataset == "moons" else "raw")
    fgsm_result, pgd_result = report.perturbations
    clean_norm, difference_norm = _layer_norms(model, cm_loader, make_attack("fgsm", cm_eps), device, settings.probes)
    if "best" in sets and trainer.epoch_validation.best_weights is not None:
        model.load_state_dict(trainer.epoch_validation.best_weights)
        model.eval()
        accuracies.update(_evaluate(model, table, settings, test_set, test_loader, seed, device, variant.name, "best"))
    return RunRecord(
        seed=seed,
        row=variant.name,
        model=variant.model,
        training=variant.training,
        gamma=variant.gamma,
        lr_grad=variant.lr_grad,
        accuracies=accuracies,
        rg={attack: float(sum(values)) for attack, values in accuracies.items()},
        collapsed=collapsed is not None,
        cm={"fgsm": list(fgsm_result.layer_mean), "pgd": list(pgd_result.layer_mean)},
        mvl=report.mvl,
        layer_names=report.layer_names,
        clean_norm=clean_norm,
        difference_norm=difference_norm,
        train_accuracy=result.metrics[-1]["train_acc"] if result.metrics else None,
        best_epoch=None if best is None else best.epoch,
        best_val_robust_acc=None if best is None else best.value,
        val_robust_acc=[m.get("val_robust_acc") for m in result.metrics] if settings.val_size else None,
        data_options=data_options,
    )


def _evaluate(model, table: PaperTable, settings: ReproduceSettings, test_set, test_loader, seed: int,
              device: torch.device, row: str, weights: str) -> Dict[str, List[float]]:
    """One weight set's columns: FGSM and PGD over the paper's grid, AutoAttack at the
    training eps (lsa_fast.reproduce.robustness), keyed by column_key(attack, weights)."""
    dataset = table.dataset
    grid = [_input_units(dataset, eps, settings) for eps in table.eps_grid]
    accuracies = {}
    for attack in EVAL_ATTACKS:
        options = {}
        if attack == "pgd":
            generator = torch.Generator(device=device)
            generator.manual_seed(seed)  # the random starts: the same for every row of a seed
            options = {"steps": settings.eval_pgd_steps, "generator": generator}
        accuracies[column_key(attack, weights)] = [
            float(a) for a in evaluate(model, test_loader, attack, grid, row=row, **options).rows[row]]
    if settings.autoattack != "none":
        count = min(settings.aa_samples, len(test_set))
        x, y = (tensor[:count].to(device) for tensor in test_set.tensors)
        eps = _input_units(dataset, settings.train_eps, settings)
        accuracies[column_key(AUTOATTACK, weights)] = [
            autoattack_accuracy(model, x, y, eps, settings, seed, settings.eval_batch_size)]
    return accuracies


def _train_config(table: PaperTable, variant: Variant, seed: int, settings: ReproduceSettings,
                  data_options: Dict) -> TrainConfig:
    """The row's TrainConfig: the shared settings plus only what the row says (its base,
    regularised layer, gamma and gradient paths) and the seed."""
    given = dict(settings.model_kwargs.get(variant.model, {}))
    if table.dataset == "moons" and settings.standardize and variant.model == "A":
        given.setdefault("normalize", "moons-standardized")  # model A's layers see the z-scores
    return TrainConfig(
        base=variant.base, eps=_input_units(table.dataset, settings.train_eps, settings), steps=settings.attack_steps,
        eps_warmup_epochs=settings.eps_warmup_epochs, beta=settings.trades_beta, lr_layers=None if variant.lr_layer is None else [variant.lr_layer],
        gammas=settings.gamma if variant.gamma is None else variant.gamma, probes=settings.probes,
        lr_grad=variant.lr_grad or settings.lr_grad, epochs=settings.epochs, batch_size=settings.batch_size,
        optimizer=settings.optimizer, lr=settings.lr, schedule=settings.schedule, weight_decay=settings.weight_decay,
        amp=settings.amp, compile=settings.compile, seed=seed, model=variant.model, model_kwargs=model_options(variant.model, given),
        dataset=table.dataset, data_options=data_options, extra={"paper_row": variant.paper_row, "row": variant.name},
        val_size=settings.val_size, keep_best="robust" if settings.val_size else "none", lsa_every=0,
    )


def _input_units(dataset: str, eps: float, settings: ReproduceSettings) -> float:
    return eps_to_input_units(dataset, eps, moons_units=settings.moons_units if dataset == "moons" else "raw")


def _layer_norms(model, loader, attack, device: torch.device, probes: str) -> Tuple[List[float], List[float]]:
    """Per layer, the mean over samples of ||phi_l(x)|| and of ||phi_l(x) - phi_l(x_hat)||
    under `attack`: CM's denominator and numerator, to tell whether a CM fell because
    the layer got steadier or because its clean output grew."""
    probe = LayerProbe(model, select=probes)
    clean_sum = difference_sum = None
    count = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        x_hat = attack(model, x, y)
        with torch.no_grad():
            clean, perturbed = probe.capture_pair(x, x_hat)
        norms = torch.stack([a.flatten(1).float().norm(dim=1) for a in clean], dim=1).sum(dim=0)
        differences = torch.stack([(a - b).flatten(1).float().norm(dim=1) for a, b in zip(clean, perturbed)],
                                  dim=1).sum(dim=0)
        clean_sum = norms if clean_sum is None else clean_sum + norms
        difference_sum = differences if difference_sum is None else difference_sum + differences
        count += int(y.shape[0])
    return (clean_sum / count).tolist(), (difference_sum / count).tolist()


_MOONS_CACHE: Dict[tuple, tuple] = {}  # per process: each seed's draw once


def _moons(settings: ReproduceSettings, seed: int):
    """(train, test, data record) of a seed's moons, as lsa_fast.run_data records and
    rebuilds them (standardized with the training split's statistics by default)."""
    key = (settings.n_train, settings.n_test, settings.noise, settings.standardize, seed)
    if key not in _MOONS_CACHE:
        options = record("moons", {"n_train": settings.n_train, "n_test": settings.n_test, "noise": settings.noise,
                                   "seed": seed, "standardize": settings.standardize})
        _MOONS_CACHE[key] = (load_split("moons", options, train=True), load_split("moons", options, train=False),
                             options)
    return _MOONS_CACHE[key]


def _load_images(dataset: str, data_dir, settings: ReproduceSettings):

    root = default_data_dir() if data_dir is None else data_dir
    train = load_dataset(dataset, root, train=True, limit=settings.n_train)
    test = load_dataset(dataset, root, train=False, limit=settings.n_test)
    return train, test, None


def _one_thread() -> None:
    torch.set_num_threads(1)


def _cost(variant: Variant, settings: ReproduceSettings) -> float:
    """Forward-backward passes per training sample, plus the evaluation's: the ETA's
    and the pool's ordering weights."""
    passes = {"none": 1, "fgsm": 2, "fast": 2}.get(variant.base, settings.attack_steps + 1)
    training = settings.epochs * (passes + (1 if variant.lr_layer is not None else 0)) * (settings.n_train or 50000)
    evaluation = (settings.eval_pgd_steps + 2) * 5 * (settings.n_test or 10000)
    return float(training + evaluation)
