"""The validation split of a training run and its per-epoch accuracies.

split_validation holds out `val_size` training samples, drawn by a permutation seeded
with the run's seed, so the same data and seed give the same split on every machine;
the rest (in their original order) are what the run trains on, the held-out ones are
never trained on. The split's fingerprint (lsa_fast.run_data's, of the validation
samples) goes into the run's data record: a resume that would draw another split
(other data, another size, another seed) is refused.

validation_accuracies measures, after every epoch, the clean accuracy (`val_acc`) and
the accuracy under PGD-10 at the training eps (`val_robust_acc`) on that split, in
eval mode, with a random start drawn from the same seed every epoch, so two epochs
are compared on the same attack.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch.utils.data import TensorDataset

from .checks import is_int
from .devices import kept_modes, model_device
from .probes import LayerProbe

__all__ = ["VAL_PGD_STEPS", "check_val_size", "split_validation", "validation_accuracies", "EpochValidation"]

VAL_PGD_STEPS = 10  # the robust accuracy of model selection: PGD-10 at the training eps
_SPLIT_STREAM = 7_919  # the split's permutation has its own seed, apart from the training streams


def check_val_size(val_size: int, n_train: int, option: str = "--val-size") -> int:
    """val_size itself; a one-line ValueError unless 0 <= val_size < n_train."""
    if not is_int(val_size):
        raise ValueError(f"{option} must be a whole number of training samples, got {val_size!r}")
    if val_size < 0:
        raise ValueError(f"{option} must be >= 0 (training samples held out for validation), got {val_size}")
    if val_size >= n_train:
        raise ValueError(f"{option} {val_size} leaves nothing to train on: the training split has {n_train} samples")
    return val_size


def split_validation(dataset: TensorDataset, val_size: int, seed: int
                     ) -> Tuple[TensorDataset, Optional[TensorDataset], Optional[Dict]]:
    """(train, validation, record) of a TensorDataset (x, y): `val_size` samples drawn
    by a permutation seeded with `seed` are held out (validation, in their original
    order), the others stay, in their original order. val_size 0: (dataset, None, None).
    record: {"size", "seed", "indices_sha256"} for config.json."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is None or len(tensors) != 2:
        raise ValueError("split_validation: the dataset must be a TensorDataset of (inputs, labels)")
    n = int(tensors[0].shape[0])
    check_val_size(val_size, n)
    if val_size == 0:
        return dataset, None, None
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + _SPLIT_STREAM)
    order = torch.randperm(n, generator=generator)
    held = torch.zeros(n, dtype=torch.bool)
    held[order[:val_size]] = True
    x, y = tensors
    train = TensorDataset(x[~held], y[~held])
    validation = TensorDataset(x[held], y[held])
    indices = torch.nonzero(held).flatten().to(torch.int64).numpy()
    record = {"size": int(val_size), "seed": int(seed),
              "indices_sha256": hashlib.sha256(indices.tobytes()).hexdigest()}
    return train, validation, record


def validation_accuracies(model, validation: TensorDataset, eps: float, batch_size: int = 500,
                          seed: int = 0) -> Dict[str, float]:
    """{"val_acc", "val_robust_acc"} in %: clean and under PGD-10 (random start, step
    2.5 eps / 10) at `eps` (model-input units), in eval mode (restored afterwards)."""
    from .data import make_loader
    from .evaluation import evaluate

    device = model_device(model)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))  # the same random starts every epoch
    loader = make_loader(validation, max(1, min(int(batch_size), len(validation))), shuffle=False)
    table = evaluate(model, loader, "pgd", [0.0, float(eps)], row="validation", steps=VAL_PGD_STEPS,
                     generator=generator)
    clean, robust = table.rows["validation"]
    return {"val_acc": float(clean), "val_robust_acc": float(robust)}


class EpochValidation:
    """What a trainer measures after each epoch besides its own loss: the validation
    accuracies (when it holds a validation split), the per-layer CM and MVL on a fixed
    batch (config.lsa_every > 0; the validation split's first samples, else the test
    loader's), and which epoch is the best so far (config.keep_best).

    measure(model, epoch) -> the metrics record's new fields; `improved` then says
    whether best.pt should be written for that epoch (best_weights: a CPU copy of the
    best epoch's weights); best_state / load_best_state go
    into and come out of the checkpoints (a resumed run keeps the best so far)."""

    def __init__(self, config, model, validation: Optional[TensorDataset] = None, test_data=None, rank: int = 0):
        from .best_checkpoint import BestKeeper
        from .lsa_monitor import MONITOR_SAMPLES, LayerMonitor, first_samples

        if config.val_size and validation is None:
            raise ValueError(f"ATLRTrainer: config.val_size is {config.val_size} but no validation split was given "
                             f"(val_set=, see lsa_fast.validation.split_validation)")
        if validation is not None and len(validation) != config.val_size:
            raise ValueError(f"ATLRTrainer: the validation split holds {len(validation)} samples, config.val_size "
                             f"says {config.val_size}")
        self.config, self.validation = config, validation if rank == 0 else None  # rank 0 measures, alone
        self.best = BestKeeper(config.keep_best if rank == 0 else "none")
        self.improved = False
        self.best_weights: Optional[Dict[str, torch.Tensor]] = None
        self.monitor = None
        source = validation if validation is not None else test_data
        if config.lsa_every and source is not None and rank == 0:
            x, y = first_samples(source, MONITOR_SAMPLES)
            try:
                names = _probe_names(model, x[:1], config.probes)
            except ValueError as error:  # a model without the preset's probe points: train without the monitor
                warnings.warn(f"LSA during training is off for this model: {error}", stacklevel=3)
                names = None
            if names is not None:
                self.monitor = LayerMonitor(x, y, config, "validation" if validation is not None else "test",
                                            seed=config.seed)
                self.monitor.layer_names = names
                config.extra = {**config.extra, "lsa_monitor": self.monitor.describe()}

    def measure(self, model, epoch: int) -> Dict:
        record: Dict = {}
        if self.validation is not None:
            record.update(validation_accuracies(model, self.validation, self.config.eps, seed=self.config.seed))
        if self.monitor is not None:
            record.update(self.monitor.measure(model, epoch))
        self.improved = self.best.update({**record, "epoch": epoch})
        if self.improved:  # what a run without a directory (lsa-fast reproduce) evaluates as its best weights
            self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if self.best.metric is not None:
            record["best"] = self.best.state_dict()
        return record

    def save_best(self, state, out_dir, inside_epoch: bool) -> None:
        """best.pt (atomically, like checkpoint.pt) when the epoch just measured was the best."""
        from .best_checkpoint import BEST_NAME
        from .checkpoint import save_checkpoint

        if self.improved and not inside_epoch:
            save_checkpoint(state, Path(out_dir) / BEST_NAME)

    def best_state(self):
        return self.best.state_dict()

    def load_best_state(self, state) -> None:
        self.best.load_state_dict(state)


def _probe_names(model, sample: torch.Tensor, select: str):
    device = model_device(model)
    probe = LayerProbe(model, select=select)
    with kept_modes(model, "eval"), torch.no_grad():
        probe.capture(sample.to(device))
    return list(probe.names)
