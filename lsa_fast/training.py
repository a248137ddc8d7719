"""AT-LR, the paper's Algorithm 3 (Khalooei et al., arXiv:2202.02626): adversarial
training with a base attack plus the layer-wise regulariser

    loss = J(theta, x_hat, y) + sum_{l in MVL} gamma_l * mean_m CM[m, l],

whose gradient flows through both phi_l(x) and phi_l(x_hat) (TrainConfig.lr_grad picks
other paths). Layers are the probe points of LayerProbe(select=TrainConfig.probes): by
default "activations", the outputs of the ReLU/ELU/LeakyReLU modules, one per hidden
layer, which is where the authors' code takes the paper's L0, L1, ...

Choices, with their sources:
- Attack model mode: adversarial examples are generated in train mode for FGSM, FAST,
  PGD and APGD (Madry et al.'s and Wong et al.'s training code: BatchNorm uses the batch
  statistics the training step will see) and in eval mode for TRADES (Zhang et al.'s
  released code). TrainConfig.attack_mode overrides both. Attacks run on the bare
  model, never through DistributedDataParallel: their input gradients need no
  synchronisation, and a DDP forward whose backward never comes would stall the reducer.
- Losses: one logit -> BCE-with-logits, C logits -> cross-entropy; TRADES:
  CE(f(x), y) + beta * KL(f(x) || f(x_hat)) (batch mean), reusing its clean forward.
- The clean forward stops at the deepest regularised probe (LayerProbe(stop_after))
  when the clean logits are not needed (every base but TRADES).
- Optimisers: SGD (momentum 0.9, weight decay 5e-4) with a piecewise schedule (x0.1 at
  50% and 75% of training, Rice et al. 2020) or cosine; the one-cycle schedule for FAST
  (Wong et al. 2020: linear up to the peak at 2/5 of training, then down to 0); Adam
  with a constant rate (handy on Moons). Schedules step once per batch.
- No host-device sync inside a step: metrics are summed on the device and read once
  per epoch (and every `log_every` steps for the progress bar). fp16 is the exception
  GradScaler imposes (it reads its inf check).
- DDP: DistributedSampler shards each global batch, so with W ranks of batch B/W the
  gradient equals the single-process one on the same global batch B.
- Checkpoints and exact resume: lsa_fast/checkpoint.py.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

from .attacks import apgd, fgsm, fgsm_rs, make_attack, no_value_checks, pgd, predicted_class, trades_perturb
from .checkpoint import (
    CHECKPOINT_NAME,
    FINAL_NAME,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .data import make_loader
from .analysis import analyze, is_terminal
from .ops import layerwise_regularizer
from .probes import LayerProbe
from .report import atomic_write_text
from .train_config import BASES, TrainConfig, _integer

__all__ = [
    "BASES",
    "TrainConfig",
    "ATLRTrainer",
    "TrainResult",
    "StepLoss",
    "make_train_loader",
    "setup_distributed",
    "teardown_distributed",
    "seed_everything",
    "run_name",
    "write_run_files",
    "format_throughput",
    "learning_rate_at",
]

METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"


class StepLoss(NamedTuple):
    """One minibatch's loss: total = task + regularizer; stats (detached, on the device)
    = [task loss * batch, correct predictions on x_hat, regulariser * batch]."""

    total: torch.Tensor
    task: torch.Tensor
    regularizer: torch.Tensor
    x_hat: torch.Tensor
    stats: torch.Tensor


@dataclasses.dataclass
class TrainResult:
    metrics: List[Dict[str, Any]]
    mvl: Optional[List[int]]
    epochs_completed: int
    interrupted: bool
    checkpoint: Optional[str]
    final: Optional[str]
    stop_signal: Optional[str] = None  # "SIGTERM" or "SIGINT" when a signal interrupted the run


class ATLRTrainer:
    """AT-LR training of `model` on `train_loader` (batches (x, y), x in [0, 1]).

    device: where to train (default: the model's device). out_dir: where checkpoint.pt
    (every epoch and on SIGTERM or Ctrl-C), final.pt, metrics.jsonl and config.json go (None: no
    files). Under torch.distributed (see setup_distributed) the model is wrapped in
    DistributedDataParallel and only rank 0 writes or prints.

    Everything about the configuration that can be wrong is checked here, before any
    training: the layer indices against the model's probe points (one dummy forward on
    the first training sample), the gamma count, amp against the device.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, train_loader: DataLoader,
                 test_loader: Optional[DataLoader] = None, device: Union[str, torch.device, None] = None,
                 out_dir: Union[str, os.PathLike, None] = None, log_every: int = 50, stop_check_every: int = 10):
        if not isinstance(model, nn.Module):
            raise TypeError(f"ATLRTrainer: model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"ATLRTrainer: config must be a TrainConfig, got {type(config).__name__}")
        self.config = config
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.log_every = _integer("log_every", log_every, minimum=1)
        self.stop_check_every = _integer("stop_check_every", stop_check_every, minimum=1)
        self.rank, self.world_size = _dist_rank_world()
        self.device = _resolve_device(device, model)
        if config.amp == "fp16" and self.device.type != "cuda":
            raise ValueError(f"TrainConfig: amp='fp16' needs a CUDA device (GradScaler); training on "
                             f"{self.device}: use amp='bf16' or 'none'")
        try:
            self.steps_per_epoch = len(train_loader)
        except TypeError:
            raise ValueError("ATLRTrainer: train_loader must have a length (the schedule spans "
                             "epochs x len(train_loader) steps)") from None
        if self.steps_per_epoch < 1:
            raise ValueError("ATLRTrainer: train_loader yields no batch")

        seed_everything(config.seed + self.rank)
        self.module = model.to(self.device)
        if config.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.binary, self.probe_names = self._inspect_model()
        self.mvl: Optional[List[int]] = self._initial_layers()

        self.optimizer = _build_optimizer(self.module, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_multiplier(config.resolved_schedule(), config.epochs * self.steps_per_epoch))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.model = self.module
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.module, device_ids=ids)
        self.attack_generator = torch.Generator(device=self.device)
        self.attack_generator.manual_seed(_stream_seed(config.seed, self.rank, 1))

        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0  # batches done inside epoch `self.epoch` (after a SIGTERM)
        self.metrics: List[Dict[str, Any]] = []
        self.lsa_summary: Optional[Dict[str, Any]] = None
        self._epoch_sums: Optional[torch.Tensor] = None
        self._epoch_seen = 0
        self._epoch_time = 0.0
        self._epoch_loader_state: Optional[torch.Tensor] = None
        self._resume_loader_state: Optional[torch.Tensor] = None
        self._stop_requested = False
        self._stop_signal: Optional[str] = None
        self._setup_regulariser()
        from .compiled_step import make_compiled_step
        from .device_loader import check_augmentation

        self.compiled_step = make_compiled_step(self)
        unapplied = check_augmentation(train_loader, config)
        if unapplied:
            warnings.warn(unapplied, stacklevel=2)

    # ------------------------------------------------------------------ training

    def fit(self, progress: bool = False, stop_after_epoch: Optional[int] = None) -> TrainResult:
        """Train until config.epochs (or until `stop_after_epoch` epochs are complete),
        checkpointing every epoch. On SIGTERM or SIGINT (main thread only, with an out_dir): a
        checkpoint at the current batch, then return with interrupted=True."""
        config = self.config
        last = config.epochs if stop_after_epoch is None else min(config.epochs, int(stop_after_epoch))
        previous_handlers = self._install_stop_signals()
        try:
            self._write_run_files()
            while self.epoch < last:
                if config.lr_layers == "auto" and self.mvl is None and self.epoch >= config.warmup_epochs:
                    self._find_mvl()
                if not self._train_epoch(progress):
                    self._checkpoint(final=False)
                    by = {"SIGINT": "SIGINT (Ctrl-C)", None: "request_stop()"}.get(self._stop_signal, self._stop_signal)
                    self._say(f"stopped by {by} in epoch {self.epoch + 1} after batch {self.step_in_epoch}; "
                              f"checkpoint {self._path(CHECKPOINT_NAME)}")
                    return self._result(interrupted=True)
                self._finish_epoch()
            return self._result(interrupted=False)
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor, real: Optional[int] = None) -> StepLoss:
        """Algorithm 3 for one minibatch (no backward): x_hat = attack(model, x, y),
        then J(theta, x_hat, y) (TRADES: its clean + KL loss) + the regulariser.
        real: how many leading samples of the batch count in the stats (the rest are
        DistributedSampler's padding; default all)."""
        config = self.config
        base = self.active_base
        layers = self.mvl if self.regulariser_active else None
        x_hat = self.perturb(x, y, base)
        clean_logits = clean_feats = adv_feats = None
        if base == "trades":
            if layers:
                with self._probe:
                    clean_logits = self.module(x)
                clean_feats = self._probe.outputs
            else:
                clean_logits = self.module(x)
        elif layers:
            clean_feats = self._clean_probe.capture(x)  # stops at the deepest regularised layer
        if layers:
            with self._probe:
                logits = self.model(x_hat)
            adv_feats = self._probe.outputs
        else:
            logits = self.model(x_hat)

        if base == "trades":
            task = _task_loss(clean_logits, y, self.binary) + config.beta * _kl_clean_adv(clean_logits, logits, self.binary)
        else:
            task = _task_loss(logits, y, self.binary)
        total, regularizer, stats = regularised_loss(task, logits, y, clean_feats, adv_feats, layers or [],
                                                     self._gammas if layers else [], config.lr_grad, real)
        return StepLoss(total, task, regularizer, x_hat, stats)

    def perturb(self, x: torch.Tensor, y: torch.Tensor, base: Optional[str] = None) -> torch.Tensor:
        """x_hat of the base attack (x itself for base 'none'), on the bare model."""
        config = self.config
        base = self.active_base if base is None else base
        mode = config.resolved_attack_mode()
        generator = self.attack_generator
        if base == "none":
            return x
        if base == "fgsm":
            return fgsm(self.module, x, y, config.eps, model_mode=mode)
        if base == "fast":
            return fgsm_rs(self.module, x, y, config.eps, alpha=config.alpha, generator=generator, model_mode=mode)
        if base == "pgd":
            return pgd(self.module, x, y, config.eps, alpha=config.alpha, steps=config.steps,
                       random_start=config.random_start, generator=generator, model_mode=mode)
        if base == "apgd":
            return apgd(self.module, x, y, config.eps, steps=config.steps, generator=generator, model_mode=mode)
        return trades_perturb(self.module, x, config.eps, alpha=config.alpha, steps=config.steps,
                              generator=generator, model_mode=mode)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, real: Optional[int] = None) -> torch.Tensor:
        """One optimiser step; returns the detached stats of StepLoss (no host sync)."""
        if self.compiled_step is not None:  # TrainConfig.compile: lsa_fast/compiled_step.py
            stats = self.compiled_step(x, y, real)
            if stats is not None:
                return stats
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            step = self.compute_loss(x, y, real)
        (self.scaler.scale(step.total) if self.scaler.is_enabled() else step.total).backward()
        self.apply_gradients()
        return step.stats

    def apply_gradients(self) -> None:
        """After the backward: GradScaler, gradient clipping, the optimiser and schedule steps."""
        config = self.config
        if self.scaler.is_enabled():
            if config.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.module.parameters(), config.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.module.parameters(), config.grad_clip)
            self.optimizer.step()
        self.scheduler.step()

    @property
    def active_base(self) -> str:
        """The base attack now: 'none' during the warm-up of lr_layers='auto'."""
        if self.config.lr_layers == "auto" and self.mvl is None:
            return "none"
        return self.config.base

    @property
    def regulariser_active(self) -> bool:
        return bool(self.mvl)

    def request_stop(self) -> None:
        """Ask fit() to checkpoint and return after the current batch (what SIGTERM does)."""
        self._stop_requested = True

    # ------------------------------------------------------------- checkpoints

    def state_dict(self) -> Dict[str, Any]:
        """The checkpoint payload (a collective under DDP: every rank must call it)."""
        rng = capture_rng_state({"attack": self.attack_generator})
        loader = getattr(self.train_loader, "generator", None)
        if loader is not None:
            # Inside an epoch: the state at its start (resume replays the order, skipping
            # the batches already done); between epochs: the state for the next one.
            mid_epoch = self.step_in_epoch > 0 and self._epoch_loader_state is not None
            rng["generators"]["loader"] = (self._epoch_loader_state if mid_epoch else loader.get_state()).clone()
        rng_per_rank = [rng]
        if self.world_size > 1:
            import torch.distributed as dist

            rng_per_rank = [None] * self.world_size
            dist.all_gather_object(rng_per_rank, rng)
        sums = self._epoch_sums.detach().cpu() if (self.step_in_epoch > 0 and self._epoch_sums is not None) else None
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "epoch_sums": sums,
            "epoch_seen": self._epoch_seen if self.step_in_epoch > 0 else 0,
            "epoch_time": self._epoch_time if self.step_in_epoch > 0 else 0.0,
            "mvl": None if self.mvl is None else list(self.mvl),
            "lsa": self.lsa_summary,
            "config": self.config.to_dict(),
            "metrics": [dict(m) for m in self.metrics],
            "rng": rng_per_rank,
            "world_size": self.world_size,
            "probe_names": list(self.probe_names),
            "torch_version": str(torch.__version__),  # TorchVersion is a class: weights_only refuses it
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue from a checkpoint payload (load_checkpoint's result)."""
        where = state.get("path", "the checkpoint")
        saved = _normalised_config(state["config"])
        mine = self.config.to_dict()
        # Neither notes nor the data's location make another run (lsa_fast.data_record checks the
        # data); compile does not define the run; a field the checkpoint predates has its default.
        defaults = TrainConfig.field_defaults()
        differing = sorted(k for k in set(saved) | set(mine)
                           if k not in ("extra", "data_dir", "compile") and saved.get(k, defaults.get(k)) != mine.get(k))
        if differing:
            details = ", ".join(f"{k}: {saved.get(k)!r} in the checkpoint vs {mine.get(k)!r}" for k in differing[:6])
            raise ValueError(f"{where}: the checkpoint was written with a different configuration ({details}); "
                             f"resume with the checkpoint's own config (TrainConfig.from_dict(state['config']))")
        try:
            self.module.load_state_dict(state["model"])
        except RuntimeError as error:
            raise ValueError(f"{where}: the model weights do not fit this model: {error}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # The rate for the next step from this config's schedule (the same value after a
        # plain resume; the stretched schedule's after `lsa-fast train --resume --epochs N`).
        step, scheduler = self.scheduler.last_epoch, self.scheduler
        for group, base, multiplier in zip(self.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * multiplier(step)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state.get("step_in_epoch", 0))
        sums = state.get("epoch_sums")
        self._epoch_sums = sums.to(self.device) if sums is not None else None
        self._epoch_seen = int(state.get("epoch_seen", 0))
        self._epoch_time = float(state.get("epoch_time", 0.0))
        self.metrics = [_current_metric_names(m) for m in state.get("metrics", [])]
        self.lsa_summary = state.get("lsa")
        mvl = state.get("mvl")
        self.mvl = None if mvl is None else [int(l) for l in mvl]
        if self.mvl is not None:
            self._check_layers(self.mvl, "the checkpoint's MVL")
        self._setup_regulariser()
        rng = state.get("rng") or []
        if len(rng) == self.world_size:
            mine_rng = rng[self.rank]
            if restore_rng_state(mine_rng, {"attack": self.attack_generator}):
                warnings.warn(f"{where}: saved on another device type than {self.device.type}: the attacks' random "
                              f"stream is reseeded, so the run continues correctly but not bit for bit")
                self.attack_generator.manual_seed(_stream_seed(self.config.seed, self.rank, 1000 + self.epoch))
            self._resume_loader_state = (mine_rng.get("generators") or {}).get("loader")
        else:
            warnings.warn(f"{where}: written by {len(rng)} process(es), resumed by {self.world_size}: the random "
                          f"streams are reseeded, so the run continues correctly but not bit for bit")
            seed_everything(_stream_seed(self.config.seed, self.rank, 2 + self.epoch))
            self.attack_generator.manual_seed(_stream_seed(self.config.seed, self.rank, 1000 + self.epoch))

    def resume(self, path: Union[str, os.PathLike]) -> Dict[str, Any]:
        """load_state_dict(load_checkpoint(path)); path: a file or a run directory
        (its checkpoint.pt). Returns the payload."""
        path = Path(path)
        if path.is_dir():
            path = path / CHECKPOINT_NAME
        state = load_checkpoint(path, map_location="cpu")
        self.load_state_dict(state)
        return state

    # ------------------------------------------------------------------ internals

    def _train_epoch(self, progress: bool) -> bool:
        """Run (the rest of) epoch self.epoch; False if stopped by a stop request."""
        self.module.train()
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        loader_generator = getattr(self.train_loader, "generator", None)
        if loader_generator is not None:
            if self._resume_loader_state is not None:
                if loader_generator.get_state().numel() == self._resume_loader_state.numel():
                    loader_generator.set_state(self._resume_loader_state)
                else:  # saved on another device type: this epoch's order cannot be restored
                    warnings.warn("the data order was saved on another device type: this epoch's order is "
                                  "reseeded, so the run continues correctly but not bit for bit")
                    loader_generator.manual_seed(_stream_seed(self.config.seed, self.rank, 3000 + self.epoch))
            self._epoch_loader_state = loader_generator.get_state()
        self._resume_loader_state = None
        skip = self.step_in_epoch
        if self._epoch_sums is None or skip == 0:
            self._epoch_sums = torch.zeros(3, dtype=torch.float64, device=self.device)
            self._epoch_seen, self._epoch_time = 0, 0.0
        bar = _Progress(progress and self.rank == 0, self.steps_per_epoch, skip,
                        f"epoch {self.epoch + 1}/{self.config.epochs}", self.log_every)
        started = time.perf_counter()
        try:
            for index, (x, y) in enumerate(self.train_loader):
                if index < skip:
                    continue  # replaying the order of an interrupted epoch
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
                if self.config.channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                real = self._real_samples(index, int(y.shape[0]))
                if index == skip:  # the attacks check the data of the first batch of the epoch
                    self._epoch_sums += self.train_step(x, y, real)
                else:  # ...and skip that check (a host sync) in every other step
                    with no_value_checks():
                        self._epoch_sums += self.train_step(x, y, real)
                self._epoch_seen += real
                self.step_in_epoch = index + 1
                bar.update(int(y.shape[0]) * self.world_size, self._epoch_sums, self._epoch_seen)
                if self._should_stop(index):
                    self._epoch_time += time.perf_counter() - started
                    return False
        finally:
            bar.close()
        self._epoch_time += time.perf_counter() - started
        return True

    def _finish_epoch(self) -> None:
        sums = torch.cat([self._epoch_sums, torch.tensor([float(self._epoch_seen)], dtype=torch.float64,
                                                          device=self.device)])
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(sums)
        loss_sum, correct, reg_sum, seen = sums.tolist()  # the epoch's one host sync
        seen = max(seen, 1.0)
        record: Dict[str, Any] = {
            "epoch": self.epoch + 1,
            "base": self.active_base,
            "mvl": None if not self.regulariser_active else list(self.mvl),
            "loss": loss_sum / seen,  # the task loss J (TRADES: clean CE + beta KL), without the regulariser
            "regularizer": reg_sum / seen,
            "train_acc": 100.0 * correct / seen,
            "learning_rate": float(self.scheduler.get_last_lr()[0]),  # the optimiser's, after this epoch
            "time_s": self._epoch_time,
            "images_per_s": seen / self._epoch_time if self._epoch_time > 0 else None,
            "samples": int(seen),
        }
        if self.test_loader is not None and self.rank == 0:
            from .evaluation import accuracy

            record["test_acc"] = accuracy(self.module, self.test_loader)
        self.metrics.append(record)
        self.epoch += 1
        self.step_in_epoch = 0
        self._epoch_sums, self._epoch_seen, self._epoch_time = None, 0, 0.0
        self._checkpoint(final=self.epoch >= self.config.epochs)
        if self.rank == 0 and self.out_dir is not None:
            with open(self.out_dir / METRICS_NAME, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        test = f", test acc {record['test_acc']:.2f}%" if "test_acc" in record else ""
        speed = f", {format_throughput(record['images_per_s'])}" if record["images_per_s"] else ""
        # "regulariser", never "LR": the paper's LR is the regulariser, and lr the learning rate.
        self._say(f"epoch {record['epoch']}/{self.config.epochs}: task loss {record['loss']:.4f}, "
                  f"regulariser {record['regularizer']:.4f}, train acc {record['train_acc']:.2f}%{test}, "
                  f"learning rate {record['learning_rate']:.3g}{speed}")

    def _checkpoint(self, final: bool) -> None:
        if self.out_dir is None:
            return
        state = self.state_dict()  # a collective under DDP: every rank takes part
        if self.rank == 0:
            save_checkpoint(state, self.out_dir / CHECKPOINT_NAME)
            if final:
                save_checkpoint(state, self.out_dir / FINAL_NAME)

    def _write_run_files(self) -> None:
        if self.out_dir is None or self.rank != 0:
            return
        write_run_files(self.out_dir, self.config, self.metrics)

    def _real_samples(self, index: int, batch: int) -> int:
        """How many samples of batch `index` are real: DistributedSampler (drop_last
        False) pads the epoch to a multiple of the world size with repeats of its first
        samples, placed last, so every rank takes the same steps. Training sees them;
        the metrics count each sample once."""
        if hasattr(self.train_loader, "real_samples"):  # lsa_fast.device_data.DeviceLoader
            return int(self.train_loader.real_samples(index))
        sampler = getattr(self.train_loader, "sampler", None)
        if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
            return batch
        # Local position i of rank r holds global position i * W + r; positions >= n pad.
        n, rank, world = len(sampler.dataset), sampler.rank, sampler.num_replicas
        real_here = max(0, -(-(n - rank) // world))
        start = index * (self.train_loader.batch_size or batch)
        return max(0, min(batch, real_here - start))

    def _find_mvl(self) -> None:
        """lr_layers='auto': LSA (FGSM at eps) on up to lsa_samples training samples."""
        config = self.config
        dataset = getattr(self.train_loader, "dataset", None)
        if dataset is None or not hasattr(dataset, "__len__"):
            raise ValueError("ATLRTrainer: lr_layers='auto' needs a train_loader over a sized dataset")
        count = min(len(dataset), config.lsa_samples)
        shard = Subset(dataset, list(range(self.rank, count, self.world_size)))
        batch = getattr(self.train_loader, "batch_size", None) or 256
        loader = DataLoader(shard, batch_size=batch, shuffle=False)
        layer_mean, mvl = _lsa(self.module, loader, config.eps, config.eta, self.device, config.probes)
        if not mvl:
            # No layer stands out by eta sigma: regularise the most vulnerable one anyway.
            mvl = [int(max(range(len(layer_mean)), key=lambda l: layer_mean[l]))]
        if self.world_size > 1:
            import torch.distributed as dist

            shared = [mvl, layer_mean]
            dist.broadcast_object_list(shared, src=0)
            mvl, layer_mean = shared
        self.mvl = [int(l) for l in mvl]
        self.lsa_summary = {"epoch": self.epoch, "eps": config.eps, "eta": config.eta,
                            "layer_mean": [float(v) for v in layer_mean], "mvl": list(self.mvl)}
        self._setup_regulariser()
        means = ", ".join(f"L{i} {v:.3f}" for i, v in enumerate(layer_mean))
        self._say(f"LSA after {self.epoch} warm-up epoch(s): mean CM {means}; MVL = {self.mvl}")

    def _inspect_model(self):
        """One dummy forward on the first training sample: logits shape, probe points."""
        sample = _first_sample(self.train_loader).to(self.device)
        saved = [(module, module.training) for module in self.module.modules()]
        self.module.eval()
        try:
            with torch.no_grad():
                logits = self.module(sample)
                names: List[str] = []
                if self.config.uses_regulariser:
                    probe = LayerProbe(self.module, select=self.config.probes)
                    probe.capture(sample)
                    names = probe.names
        finally:
            for module, training in saved:
                module.training = training
        if not isinstance(logits, torch.Tensor) or logits.dim() not in (1, 2):
            raise ValueError(f"ATLRTrainer: the model must return logits [N], [N, 1] or [N, C], got "
                             f"{getattr(logits, 'shape', type(logits).__name__)}")
        return logits.dim() == 1 or logits.shape[1] == 1, names

    def _initial_layers(self) -> Optional[List[int]]:
        layers = self.config.lr_layers
        if layers is None or layers == "auto":
            return None
        layers = [int(l) for l in layers]
        self._check_layers(layers, "lr_layers")
        return layers

    def _check_layers(self, layers: Sequence[int], what: str) -> None:
        count = len(self.probe_names)
        bad = [l for l in layers if not 0 <= l < count]
        if bad:
            listed = ", ".join(f"L{i}={name}" for i, name in enumerate(self.probe_names))
            raise ValueError(f"{what}: layer index {bad[0]} is outside the {count} probe points of "
                             f"{type(self.module).__name__} (probes {self.config.probes!r}: {listed})")
        gammas = self.config.gammas
        if isinstance(gammas, list) and len(gammas) not in (1, len(layers)):
            raise ValueError(f"{what}: {len(gammas)} gammas for {len(layers)} regularised layers {list(layers)}")

    def _setup_regulariser(self) -> None:
        if not self.mvl:
            self._probe = self._clean_probe = None
            return
        gammas = self.config.gammas
        values = [float(gammas)] * len(self.mvl) if not isinstance(gammas, list) else (
            gammas * len(self.mvl) if len(gammas) == 1 else list(gammas))
        self._gammas = values
        select = self.config.probes
        self._probe = LayerProbe(self.module, select=select, capture_grad=True)
        self._clean_probe = LayerProbe(self.module, select=select, capture_grad=True, stop_after=max(self.mvl))

    def _autocast(self):
        amp = self.config.amp
        if amp == "none":
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    def _should_stop(self, index: int) -> bool:
        if self.world_size == 1:
            return self._stop_requested
        # Every rank counts the same batches (DistributedSampler evens the shards out).
        if (self.epoch * self.steps_per_epoch + index + 1) % self.stop_check_every and index + 1 < self.steps_per_epoch:
            return False
        # Every rank must stop at the same batch; one small collective every few steps.
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self._stop_requested else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _install_stop_signals(self):
        """SIGTERM and SIGINT (Ctrl-C) alike: checkpoint after the current batch, then
        return. A second Ctrl-C aborts at once (KeyboardInterrupt) without that checkpoint."""
        if self.out_dir is None or threading.current_thread() is not threading.main_thread():
            return {}

        def stop(signum, frame):
            if signum == signal.SIGINT and self._stop_requested:
                raise KeyboardInterrupt
            self._stop_signal = signal.Signals(signum).name
            self.request_stop()

        return {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}

    def _result(self, interrupted: bool) -> TrainResult:
        checkpoint = final = None
        if self.out_dir is not None:
            checkpoint = str(self._path(CHECKPOINT_NAME))
            if not interrupted and self.epoch >= self.config.epochs:
                final = str(self._path(FINAL_NAME))
        return TrainResult(metrics=[dict(m) for m in self.metrics], mvl=None if self.mvl is None else list(self.mvl),
                           epochs_completed=self.epoch, interrupted=interrupted, checkpoint=checkpoint, final=final,
                           stop_signal=self._stop_signal if interrupted else None)

    def _path(self, name: str) -> Optional[Path]:
        return None if self.out_dir is None else self.out_dir / name

    def _say(self, message: str) -> None:
        if self.rank == 0 and self.out_dir is not None:
            print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ run helpers


def make_train_loader(dataset: Dataset, config: TrainConfig, rank: Optional[int] = None,
                      world_size: Optional[int] = None, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """The training loader for one rank: a DistributedSampler (shuffled with the config's
    seed, reshuffled per epoch by set_epoch) and batch_size / world_size samples per
    batch. With one process it is the same order as rank 0 of W processes taken
    together, so DDP sees the same global batches as a single process."""
    if rank is None or world_size is None:
        rank, world_size = _dist_rank_world()
    if config.batch_size % world_size:
        raise ValueError(f"batch_size {config.batch_size} is the global batch and must be divisible by the "
                         f"{world_size} processes")
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=config.seed)
    return make_loader(dataset, config.batch_size // world_size, sampler=sampler, seed=config.seed,
                       num_workers=num_workers, pin_memory=pin_memory, drop_last=config.drop_last)


def setup_distributed(device: Union[str, torch.device, None] = None):
    """Under torchrun (WORLD_SIZE > 1): init the process group (NCCL on CUDA, gloo on
    CPU) and pick this rank's device. Returns (rank, world_size, device)."""
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    wanted = _device_request(device)
    if world_size <= 1:
        return 0, 1, wanted
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if wanted.type == "cuda":
        wanted = torch.device("cuda", local_rank)
        torch.cuda.set_device(wanted)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if wanted.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), wanted


def teardown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def write_run_files(out_dir: Union[str, os.PathLike], config: TrainConfig, metrics: Sequence[Dict[str, Any]]) -> None:
    """config.json and metrics.jsonl of a run directory, as a checkpoint's config and
    metrics say: after a resume the log must say what the checkpoint says (a crash may
    have come between writing the checkpoint and appending its line)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / CONFIG_NAME, json.dumps(config.to_dict(), indent=2) + "\n")
    atomic_write_text(out_dir / METRICS_NAME, "".join(json.dumps(m) + "\n" for m in metrics))


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


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_name(config: TrainConfig, mvl: Optional[Sequence[int]] = None) -> str:
    """The paper's name of a run: Normal, AT-PGD, AT-FGSM-LR-L2, AT-PGD-LR-L0,1, ..."""
    if config.base == "none":
        return "Normal"
    name = f"AT-{config.base.upper()}"
    layers = mvl if mvl is not None else (config.lr_layers if isinstance(config.lr_layers, list) else None)
    if layers:
        name += "-LR-L" + ",".join(str(l) for l in layers)
    elif config.lr_layers is not None:
        name += "-LR-auto"
    return name


# ---------------------------------------------------------------------- losses


def regularised_loss(task, logits, y, clean_feats, adv_feats, layers, gammas, lr_grad: str, real: Optional[int]):
    """J + LR (Algorithm 3) and the step's detached stats [task * n, correct, LR * n] over
    the first `real` samples (the rest are padding); shared by the eager and compiled steps."""
    if layers:
        regularizer = layerwise_regularizer(clean_feats, adv_feats, layers, gammas, lr_grad=lr_grad)
        total = task + regularizer
    else:
        regularizer = torch.zeros((), dtype=torch.float32, device=logits.device)
        total = task
    batch = y.shape[0] if real is None else real
    correct = (predicted_class(logits.detach())[:batch] == y[:batch]).sum()
    stats = torch.stack([task.detach().double() * batch, correct.double(), regularizer.detach().double() * batch])
    return total, regularizer, stats


def _task_loss(logits: torch.Tensor, y: torch.Tensor, binary: bool) -> torch.Tensor:
    if binary:
        z = logits.reshape(-1)
        return F.binary_cross_entropy_with_logits(z, y.to(z.dtype))
    return F.cross_entropy(logits, y.long())


def _kl_clean_adv(clean_logits: torch.Tensor, adv_logits: torch.Tensor, binary: bool) -> torch.Tensor:
    """KL(f(x) || f(x_hat)) averaged over the batch (TRADES' robust term); a one-logit
    model is read as the two logits [0, z], as lsa_fast.attacks.trades_perturb does."""
    clean, adv = clean_logits.float(), adv_logits.float()
    if binary:
        clean, adv = _two_logits(clean), _two_logits(adv)
    return F.kl_div(F.log_softmax(adv, dim=1), F.softmax(clean, dim=1), reduction="batchmean")


def _two_logits(z: torch.Tensor) -> torch.Tensor:
    z = z.reshape(-1, 1)
    return torch.cat([torch.zeros_like(z), z], dim=1)


def _lsa(model: nn.Module, loader: DataLoader, eps: float, eta: float, device: torch.device, probes: str):
    """(per-layer mean CM, MVL) under FGSM at eps, by lsa_fast.analysis.analyze."""
    report = analyze(model, loader, [make_attack("fgsm", eps)], eta=eta, select=probes, device=device,
                     progress=False)
    result = report.combined if report.combined is not None else report.perturbations[0]
    return [float(v) for v in result.layer_mean], [int(l) for l in result.mvl]


# ------------------------------------------------------------------- helpers


def learning_rate_at(config: TrainConfig, epochs_done: float) -> float:
    """The learning rate that config's schedule gives once `epochs_done` of its
    config.epochs epochs are done (the schedules depend on that fraction only)."""
    return config.resolved_lr() * _lr_multiplier(config.resolved_schedule(), config.epochs)(epochs_done)


def _current_metric_names(record: Dict[str, Any]) -> Dict[str, Any]:
    """A metrics record of an older checkpoint, whose "lr" is now "learning_rate"."""
    record = dict(record)
    if "lr" in record and "learning_rate" not in record:
        record["learning_rate"] = record.pop("lr")
    return record


def _lr_multiplier(schedule: str, total_steps: int):
    total = max(int(total_steps), 1)

    def multiplier(step: int) -> float:
        t = min(step / total, 1.0)
        if schedule == "piecewise":
            return 1.0 if t < 0.5 else (0.1 if t < 0.75 else 0.01)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        if schedule == "cyclic":
            return t / 0.4 if t < 0.4 else max(0.0, (1.0 - t) / 0.6)
        return 1.0

    return multiplier


def _build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("ATLRTrainer: the model has no trainable parameters")
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.resolved_lr(), weight_decay=config.resolved_weight_decay())
    return torch.optim.SGD(params, lr=config.resolved_lr(), momentum=config.momentum,
                           weight_decay=config.resolved_weight_decay())


def _first_sample(loader) -> torch.Tensor:
    dataset = getattr(loader, "dataset", None)
    try:
        item = dataset[0]  # leaves every random stream alone, unlike next(iter(loader))
        x = item[0] if isinstance(item, (tuple, list)) else item
        if isinstance(x, torch.Tensor):
            return x.unsqueeze(0)
    except (TypeError, IndexError, KeyError, NotImplementedError):
        pass
    batch = next(iter(loader))
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, torch.Tensor):
        raise ValueError("ATLRTrainer: train_loader must yield (x, y) batches of tensors")
    return x[:1]


def _normalised_config(data: Dict[str, Any]) -> Dict[str, Any]:
    # A checkpoint's config as TrainConfig writes it now (older runs kept data_dir in data_options).
    try:
        return TrainConfig.from_dict(dict(data)).to_dict()
    except (ValueError, TypeError, FileNotFoundError):
        return dict(data)


def _dist_rank_world():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device_request(device) -> torch.device:
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available")
    return device


def _resolve_device(device, model: nn.Module) -> torch.device:
    if device is None:
        for tensor in list(model.parameters()) + list(model.buffers()):
            return tensor.device
        return torch.device("cpu")
    return _device_request(device)


def _stream_seed(seed: int, rank: int, stream: int) -> int:
    # Distinct, reproducible seeds per (run seed, rank, purpose).
    return (int(seed) * 1_000_003 + rank * 7919 + stream * 104_729) % (2**63 - 1)


class _Progress:
    """tqdm when it is installed (else a line every log_every batches): images/s per
    batch, loss and accuracy every log_every batches (reading them is a host sync).
    Nothing when stderr is not a terminal: a log gets the one line per epoch of
    ATLRTrainer, not the bar's redraws."""

    def __init__(self, enabled: bool, total: int, initial: int, desc: str, log_every: int):
        enabled = enabled and is_terminal(sys.stderr)
        self.enabled, self.total, self.done, self.desc, self.log_every = enabled, total, initial, desc, log_every
        self.images, self.start = 0, time.perf_counter()
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, desc=desc, unit="batch", file=sys.stderr,
                                leave=False, dynamic_ncols=True)
            except ImportError:
                self.bar = None

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
