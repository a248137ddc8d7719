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
- The attack: the registry's BoundAttack (lsa_fast.attacks), bound once to the config.
- The loss: lsa_fast.train_loss (shared with the compiled step, lsa_fast.compiled_step).
- Optimisers and schedules: lsa_fast.schedules. Run-directory files: lsa_fast.run_files.
- No host-device sync inside a step: metrics are summed on the device and read once
  per epoch (and every `log_every` steps for the progress bar). fp16 is the exception
  GradScaler imposes (it reads its inf check).
- DDP: DistributedSampler shards each global batch, so with W ranks of batch B/W the
  gradient equals the single-process one on the same global batch B.
- Checkpoints and exact resume: lsa_fast.train_state (the payload), lsa_fast.checkpoint
  (the file); torch.distributed helpers: lsa_fast.distributed.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .analysis import analyze
from .attacks import make_attack, no_value_checks
from .checkpoint import load_checkpoint, save_checkpoint
from .collapse import collapse_warning, loader_collapse_warning
from .compiled_step import make_compiled_step
from .device_loader import check_augmentation
from .checks import check_int
from .devices import kept_modes, model_device, parse_device
from .distributed import broadcast_from_rank0, rank_and_world_size, real_samples, setup_distributed, teardown_distributed
from .evaluation import accuracy
from .probes import LayerProbe
from .progress import TrainProgress, format_throughput
from .run_files import CHECKPOINT_NAME, CONFIG_NAME, FINAL_NAME, METRICS_NAME, append_metrics, run_name, write_run_files
from .schedules import (build_optimizer, epoch_learning_rates, learning_rate_at, lr_multiplier, seed_everything,
                        stream_seed)
from .train_config import BASES, TrainConfig
from .train_loss import StepLoss, atlr_loss
from .train_state import load_trainer_state, trainer_state
from .validation import EpochValidation

__all__ = [
    "BASES",
    "TrainConfig",
    "ATLRTrainer",
    "TrainResult",
    "StepLoss",
    "setup_distributed",
    "teardown_distributed",
    "seed_everything",
    "run_name",
    "write_run_files",
    "format_throughput",
    "learning_rate_at",
    "CONFIG_NAME",
    "METRICS_NAME",
]

# TrainConfig.base -> the registry's attack name ("none": no attack).
ATTACK_NAMES = {"fgsm": "fgsm", "fast": "fgsm-rs", "pgd": "pgd", "apgd": "apgd", "trades": "trades"}


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
                 out_dir: Union[str, os.PathLike, None] = None, log_every: int = 50, stop_check_every: int = 10,
                 val_set: Optional[Dataset] = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"ATLRTrainer: model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"ATLRTrainer: config must be a TrainConfig, got {type(config).__name__}")
        self.config = config
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.log_every = check_int("ATLRTrainer", "log_every", log_every, minimum=1)
        self.stop_check_every = check_int("ATLRTrainer", "stop_check_every", stop_check_every, minimum=1)
        self.rank, self.world_size = rank_and_world_size()
        self.device = model_device(model) if device is None else parse_device(device, "ATLRTrainer: device")
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

        self.optimizer = build_optimizer(self.module, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_multiplier(config.resolved_schedule(), config.epochs * self.steps_per_epoch))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.model = self.module
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.module, device_ids=ids)
        self.attack_generator = torch.Generator(device=self.device)
        self.attack_generator.manual_seed(stream_seed(config.seed, self.rank, 1))
        self.attack_eps = config.eps_at(0)  # the eps of the epoch under way (the eps ramp)
        self.attack = self._bound_attack()  # None for base 'none'

        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0  # batches done inside epoch `self.epoch` (after a SIGTERM)
        self.metrics: List[Dict[str, Any]] = []
        self.lsa_summary: Optional[Dict[str, Any]] = None
        # The current epoch's device-side sums [task * n, correct, LR * n], samples and seconds
        # so far, and the data order's generator state at its start (lsa_fast.train_state).
        self.epoch_sums: Optional[torch.Tensor] = None
        self.epoch_seen = 0
        self.epoch_time = 0.0
        self.epoch_loader_state: Optional[torch.Tensor] = None
        self.resume_loader_state: Optional[torch.Tensor] = None
        self._stop_requested = False
        self._stop_signal: Optional[str] = None
        self._setup_regulariser()
        self.compiled_step = make_compiled_step(self)
        self.epoch_validation = EpochValidation(config, self.module, val_set, test_loader, self.rank)  # best.pt too
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
                self._set_epoch_eps()
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
        layers = self.mvl if self.regulariser_active else []
        x_hat = self.perturb(x, y)
        return atlr_loss(self._forward, self.active_base, x, x_hat, y, layers, self.gammas if layers else [],
                         config.lr_grad, config.beta, self.binary, real)

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x_hat of the active base attack (x itself for base 'none'), on the bare model."""
        if self.active_base == "none":
            return x
        return self.attack(self.module, x, y)

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
        """The base attack now: 'none' during the warm-up of lr_layers='auto' and in an
        epoch of the eps ramp at eps 0."""
        if self.config.lr_layers == "auto" and self.mvl is None:
            return "none"
        if self.attack_eps == 0 and self.config.eps_warmup_epochs:
            return "none"
        return self.config.base

    @property
    def regulariser_active(self) -> bool:
        # Not in a clean epoch of the eps ramp: x_hat = x, the term is 0.
        return bool(self.mvl) and self.active_base != "none"

    def request_stop(self) -> None:
        """Ask fit() to checkpoint and return after the current batch (what SIGTERM does)."""
        self._stop_requested = True

    # ------------------------------------------------------------- checkpoints

    def state_dict(self) -> Dict[str, Any]:
        """The checkpoint payload (a collective under DDP: every rank must call it)."""
        return trainer_state(self)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue from a checkpoint payload (load_checkpoint's result)."""
        load_trainer_state(self, state)

    def set_layers(self, layers: Optional[List[int]], what: str) -> None:
        """The regularised layers (None: not chosen yet), checked against the probe points."""
        if layers is not None:
            self._check_layers(layers, what)
        self.mvl = layers
        self._setup_regulariser()

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
            if self.resume_loader_state is not None:
                if loader_generator.get_state().numel() == self.resume_loader_state.numel():
                    loader_generator.set_state(self.resume_loader_state)
                else:  # saved on another device type: this epoch's order cannot be restored
                    warnings.warn("the data order was saved on another device type: this epoch's order is "
                                  "reseeded, so the run continues correctly but not bit for bit")
                    loader_generator.manual_seed(stream_seed(self.config.seed, self.rank, 3000 + self.epoch))
            self.epoch_loader_state = loader_generator.get_state()
        self.resume_loader_state = None
        skip = self.step_in_epoch
        if self.epoch_sums is None or skip == 0:
            self.epoch_sums = torch.zeros(3, dtype=torch.float64, device=self.device)
            self.epoch_seen, self.epoch_time = 0, 0.0
        bar = TrainProgress(progress and self.rank == 0, self.steps_per_epoch, skip,
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
                real = real_samples(self.train_loader, index, int(y.shape[0]))
                if index == skip:  # the attacks check the data of the first batch of the epoch
                    self.epoch_sums += self.train_step(x, y, real)
                else:  # ...and skip that check (a host sync) in every other step
                    with no_value_checks():
                        self.epoch_sums += self.train_step(x, y, real)
                self.epoch_seen += real
                self.step_in_epoch = index + 1
                bar.update(int(y.shape[0]) * self.world_size, self.epoch_sums, self.epoch_seen)
                if self._should_stop(index):
                    self.epoch_time += time.perf_counter() - started
                    return False
        finally:
            bar.close()
        self.epoch_time += time.perf_counter() - started
        return True

    def _finish_epoch(self) -> None:
        sums = torch.cat([self.epoch_sums, torch.tensor([float(self.epoch_seen)], dtype=torch.float64,
                                                          device=self.device)])
        if self.world_size > 1:
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
            "learning_rate_used": epoch_learning_rates(self.scheduler, self.epoch, self.steps_per_epoch),
            "eps": self.attack_eps,  # the attack's, in input units (the eps ramp's value in its epochs)
            "time_s": self.epoch_time,
            "images_per_s": seen / self.epoch_time if self.epoch_time > 0 else None,
            "samples": int(seen),
        }
        if self.test_loader is not None and self.rank == 0:
            record["test_acc"] = accuracy(self.module, self.test_loader)
        record.update(self.epoch_validation.measure(self.module, record["epoch"]))
        self.metrics.append(record)
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_sums, self.epoch_seen, self.epoch_time = None, 0, 0.0
        self._checkpoint(final=self.epoch >= self.config.epochs)
        if self.rank == 0 and self.out_dir is not None:
            append_metrics(self.out_dir, record)
        test = f", test acc {record['test_acc']:.2f}%" if "test_acc" in record else ""
        test += f", val acc {record['val_acc']:.2f}%" if "val_acc" in record else ""
        test += f" (robust {record['val_robust_acc']:.2f}%)" if "val_robust_acc" in record else ""
        speed = f", {format_throughput(record['images_per_s'])}" if record["images_per_s"] else ""
        first, last = (f"{rate:.3g}" for rate in record["learning_rate_used"])
        ramp = f", eps {record['eps']:.3g} (ramp)" if self.config.eps_at(self.epoch - 1) != self.config.eps else ""
        # "regulariser", never "LR": the paper's LR is the regulariser, and lr the learning rate.
        self._say(f"epoch {record['epoch']}/{self.config.epochs}: task loss {record['loss']:.4f}, "
                  f"regulariser {record['regularizer']:.4f}, train acc {record['train_acc']:.2f}%{test}, "
                  f"learning rate {first if first == last else f'{first} to {last}'}{ramp}{speed}")
        validation = self.epoch_validation.validation
        collapsed = loader_collapse_warning(record.get("test_acc"), self.test_loader, "test") or (
            validation is not None and "val_acc" in record
            and collapse_warning(record["val_acc"], validation.tensors[1], "validation"))
        if collapsed:
            self._say(f"warning: epoch {record['epoch']}: {collapsed}")

    def _checkpoint(self, final: bool) -> None:
        if self.out_dir is None:
            return
        state = self.state_dict()  # a collective under DDP: every rank takes part
        if self.rank == 0:
            save_checkpoint(state, self.out_dir / CHECKPOINT_NAME)
            if final:
                save_checkpoint(state, self.out_dir / FINAL_NAME)
            self.epoch_validation.save_best(state, self.out_dir, inside_epoch=self.step_in_epoch > 0)

    def _write_run_files(self) -> None:
        if self.out_dir is None or self.rank != 0:
            return
        write_run_files(self.out_dir, self.config, self.metrics)

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
        mvl, layer_mean = broadcast_from_rank0([mvl, layer_mean], self.world_size)
        self.mvl = [int(l) for l in mvl]
        self.lsa_summary = {"epoch": self.epoch, "eps": config.eps, "eta": config.eta,
                            "layer_mean": [float(v) for v in layer_mean], "mvl": list(self.mvl)}
        self._setup_regulariser()
        means = ", ".join(f"L{i} {v:.3f}" for i, v in enumerate(layer_mean))
        self._say(f"LSA after {self.epoch} warm-up epoch(s): mean CM {means}; MVL = {self.mvl}")

    def _inspect_model(self):
        """One dummy forward on the first training sample: logits shape, probe points."""
        sample = _first_sample(self.train_loader).to(self.device)
        with kept_modes(self.module, "eval"), torch.no_grad():
            logits = self.module(sample)
            names: List[str] = []
            if self.config.uses_regulariser:
                probe = LayerProbe(self.module, select=self.config.probes)
                probe.capture(sample)
                names = probe.names
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
        self.gammas = values
        select = self.config.probes
        self._probe = LayerProbe(self.module, select=select, capture_grad=True)
        self._clean_probe = LayerProbe(self.module, select=select, capture_grad=True, stop_after=max(self.mvl))

    def _bound_attack(self):
        """The base attack bound once to the config (the registry's BoundAttack): the
        attack stream, the step size (None: the attack's default), the model mode."""
        config = self.config
        if config.base == "none":
            return None
        options: Dict[str, Any] = {"model_mode": config.resolved_attack_mode()}
        if config.base != "fgsm":
            options["generator"] = self.attack_generator
        if config.base in ("fast", "pgd", "trades"):
            options["alpha"] = config.alpha
        if config.base in ("pgd", "apgd", "trades"):
            options["steps"] = config.steps
        if config.base == "pgd":
            options["random_start"] = config.random_start
        return make_attack(ATTACK_NAMES[config.base], self.attack_eps, **options)

    def _set_epoch_eps(self) -> None:
        """The eps ramp (TrainConfig.eps_warmup_epochs): the attack of epoch self.epoch,
        rebound once per epoch (a compiled step compiles once per eps, never per batch)."""
        eps = self.config.eps_at(self.epoch)
        if eps != self.attack_eps:
            self.attack_eps = eps
            self.attack = self._bound_attack()

    def _forward(self, x: torch.Tensor, record: bool, stop_after: Optional[int], adversarial: bool):
        """lsa_fast.train_loss.Forward: the bare model for x, the DDP-wrapped one for x_hat
        (its backward is the one that synchronises the gradients); layer outputs by LayerProbe."""
        net = self.model if adversarial else self.module
        if not record:
            return net(x), None
        if stop_after is not None:  # stops at the deepest regularised layer
            return None, self._clean_probe.capture(x)
        with self._probe:
            logits = net(x)
        return logits, self._probe.outputs

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


def _lsa(model: nn.Module, loader: DataLoader, eps: float, eta: float, device: torch.device, probes: str):
    """(per-layer mean CM, MVL) under FGSM at eps, by lsa_fast.analysis.analyze."""
    report = analyze(model, loader, [make_attack("fgsm", eps)], eta=eta, select=probes, device=device,
                     progress=False)
    result = report.combined if report.combined is not None else report.perturbations[0]
    return [float(v) for v in result.layer_mean], [int(l) for l in result.mvl]


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

