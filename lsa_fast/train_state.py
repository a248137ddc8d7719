"""ATLRTrainer's checkpoint payload and exact resume: the model, optimiser, schedule
and scaler states, the epoch position (inside an epoch after SIGTERM), the metrics, the
MVL and every random stream (the attacks' generator, the data order, the global
generators) per rank. The file format and the RNG snapshots: lsa_fast.checkpoint."""
from __future__ import annotations

import warnings
from typing import Any, Dict

import torch

from .checkpoint import capture_rng_state, restore_rng_state
from .distributed import gather_from_ranks
from .schedules import seed_everything, stream_seed
from .train_config import TrainConfig

__all__ = ["trainer_state", "load_trainer_state"]


def trainer_state(trainer) -> Dict[str, Any]:
    """The checkpoint payload (a collective under DDP: every rank must call it)."""
    rng = capture_rng_state({"attack": trainer.attack_generator})
    loader = getattr(trainer.train_loader, "generator", None)
    if loader is not None:
        # Inside an epoch: the state at its start (resume replays the order, skipping
        # the batches already done); between epochs: the state for the next one.
        mid_epoch = trainer.step_in_epoch > 0 and trainer.epoch_loader_state is not None
        rng["generators"]["loader"] = (trainer.epoch_loader_state if mid_epoch else loader.get_state()).clone()
    rng_per_rank = gather_from_ranks(rng, trainer.world_size)
    inside = trainer.step_in_epoch > 0
    sums = trainer.epoch_sums.detach().cpu() if (inside and trainer.epoch_sums is not None) else None
    return {
        "model": trainer.module.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "epoch": trainer.epoch,
        "step_in_epoch": trainer.step_in_epoch,
        "epoch_sums": sums,
        "epoch_seen": trainer.epoch_seen if inside else 0,
        "epoch_time": trainer.epoch_time if inside else 0.0,
        "mvl": None if trainer.mvl is None else list(trainer.mvl),
        "lsa": trainer.lsa_summary,
        "best": trainer.epoch_validation.best_state(),  # a resumed run keeps the best so far
        "config": trainer.config.to_dict(),
        "metrics": [dict(m) for m in trainer.metrics],
        "rng": rng_per_rank,
        "world_size": trainer.world_size,
        "probe_names": list(trainer.probe_names),
        "torch_version": str(torch.__version__),  # TorchVersion is a class: weights_only refuses it
    }


def load_trainer_state(trainer, state: Dict[str, Any]) -> None:
    """Continue from a checkpoint payload (load_checkpoint's result)."""
    where = state.get("path", "the checkpoint")
    config = trainer.config
    saved = _normalised_config(state["config"])
    mine = config.to_dict()
    # Neither notes nor the data's location make another run (lsa_fast.run_data checks the
    # data); compile does not define the run; a field the checkpoint predates has its default.
    defaults = TrainConfig.field_defaults()
    differing = sorted(k for k in set(saved) | set(mine)
                       if k not in ("extra", "data_dir", "compile") and saved.get(k, defaults.get(k)) != mine.get(k))
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} in the checkpoint vs {mine.get(k)!r}" for k in differing[:6])
        raise ValueError(f"{where}: the checkpoint was written with a different configuration ({details}); "
                         f"resume with the checkpoint's own config (TrainConfig.from_dict(state['config']))")
    try:
        trainer.module.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(f"{where}: the model weights do not fit this model: {error}") from None
    optimizer, scheduler = trainer.optimizer, trainer.scheduler
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    # The rate for the next step from this config's schedule (the same value after a
    # plain resume; the stretched schedule's after `lsa-fast train --resume --epochs N`).
    step = scheduler.last_epoch
    for group, base, multiplier in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * multiplier(step)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    if state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.epoch = int(state["epoch"])
    trainer.step_in_epoch = int(state.get("step_in_epoch", 0))
    sums = state.get("epoch_sums")
    trainer.epoch_sums = sums.to(trainer.device) if sums is not None else None
    trainer.epoch_seen = int(state.get("epoch_seen", 0))
    trainer.epoch_time = float(state.get("epoch_time", 0.0))
    trainer.metrics = [_current_metric_names(m) for m in state.get("metrics", [])]
    trainer.lsa_summary = state.get("lsa")
    trainer.epoch_validation.load_best_state(state.get("best"))
    mvl = state.get("mvl")
    trainer.set_layers(None if mvl is None else [int(l) for l in mvl], "the checkpoint's MVL")
    rank, world_size, generator = trainer.rank, trainer.world_size, trainer.attack_generator
    rng = state.get("rng") or []
    if len(rng) == world_size:
        mine_rng = rng[rank]
        if restore_rng_state(mine_rng, {"attack": generator}):
            warnings.warn(f"{where}: saved on another device type than {trainer.device.type}: the attacks' random "
                          f"stream is reseeded, so the run continues correctly but not bit for bit")
            generator.manual_seed(stream_seed(config.seed, rank, 1000 + trainer.epoch))
        trainer.resume_loader_state = (mine_rng.get("generators") or {}).get("loader")
    else:
        warnings.warn(f"{where}: written by {len(rng)} process(es), resumed by {world_size}: the random "
                      f"streams are reseeded, so the run continues correctly but not bit for bit")
        seed_everything(stream_seed(config.seed, rank, 2 + trainer.epoch))
        generator.manual_seed(stream_seed(config.seed, rank, 1000 + trainer.epoch))


def _current_metric_names(record: Dict[str, Any]) -> Dict[str, Any]:
    """A metrics record of an older checkpoint, whose "lr" is now "learning_rate"."""
    record = dict(record)
    if "lr" in record and "learning_rate" not in record:
        record["learning_rate"] = record.pop("lr")
    return record


def _normalised_config(data: Dict[str, Any]) -> Dict[str, Any]:
    # A checkpoint's config as TrainConfig writes it now (older runs kept data_dir in data_options).
    try:
        return TrainConfig.from_dict(dict(data)).to_dict()
    except (ValueError, TypeError, FileNotFoundError):
        return dict(data)

