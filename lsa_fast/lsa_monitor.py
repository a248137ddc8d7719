"""LSA during training: after every epoch (or every `lsa_every` epochs), the comparison
measure CM of every probed layer on one fixed batch, under the run's training attack
and under Gaussian noise, and the most vulnerable layers of Algorithm 1 at the run's
eta. The batch is the first MONITOR_SAMPLES samples of the validation split (of the
test split when the run holds none out); config.json says which (extra["lsa_monitor"]).

metrics.jsonl gets, per measured epoch:
    layer_cm         [L] mean over the batch of CM_l = ||phi_l(x) - phi_l(x_hat)|| / ||phi_l(x)||
                     under the training attack (PGD-10 at eps for a run without one)
    layer_cm_noise   [L] the same under Gaussian noise of std eps
    layer_mvl        the layers l with CMbar_l - mu > eta sigma (Algorithm 1), under the attack
("mvl" in the same record is, as before, the layers the run regularises.)

The attack runs in eval mode with a random start drawn from the same seed every time,
so the epochs are compared on the same attack and noise draw.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch

from .attacks import attack_mode, make_attack
from .devices import model_device
from .ops import most_vulnerable_layers, relative_error
from .probes import LayerProbe

__all__ = ["MONITOR_SAMPLES", "LayerMonitor", "monitor_attack", "first_samples"]

MONITOR_SAMPLES = 256


def monitor_attack(config, generator: torch.Generator):
    """The run's training attack bound to its eps (config: a TrainConfig): what
    layer_cm is measured under. A run without one (base none) gets PGD at eps."""
    eps, steps, alpha = config.eps, config.steps, config.alpha
    base = config.base
    if base in ("none", "pgd"):
        options = {"steps": steps, "random_start": config.random_start if base == "pgd" else True}
        if alpha is not None and base == "pgd":
            options["alpha"] = alpha
        return make_attack("pgd", eps, generator=generator, **options)
    if base == "fgsm":
        return make_attack("fgsm", eps)
    if base == "fast":
        return make_attack("fgsm-rs", eps, generator=generator, **({"alpha": alpha} if alpha is not None else {}))
    if base == "apgd":
        return make_attack("apgd", eps, steps=steps, generator=generator)
    return make_attack("trades", eps, steps=steps, generator=generator, **({"alpha": alpha} if alpha else {}))


def first_samples(data, count: int):
    """(x, y) of the first `count` samples of a TensorDataset or a loader of (x, y)."""
    tensors = getattr(data, "tensors", None)
    if tensors is not None:
        return tensors[0][:count], tensors[1][:count]
    xs, ys, have = [], [], 0
    for x, y in data:
        xs.append(x)
        ys.append(y)
        have += int(y.shape[0])
        if have >= count:
            break
    if not xs:
        raise ValueError("LayerMonitor: the data hold no sample")
    return torch.cat(xs)[:count], torch.cat(ys)[:count]


class LayerMonitor:
    """CM per layer of `model` on the fixed batch (x, y) under config's attack and
    Gaussian noise; measure(model, epoch) gives the metrics record's fields, or {}
    for an epoch not measured (epoch % every != 0 and not the last)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, config, source: str, seed: int = 0):
        if config.lsa_every < 1:
            raise ValueError("LayerMonitor: config.lsa_every must be >= 1 (0 switches the monitor off)")
        self.x, self.y, self.config, self.source, self.seed = x, y, config, source, int(seed)
        self.every = config.lsa_every
        self.layer_names: Optional[List[str]] = None

    def describe(self) -> Dict:
        """What config.json records about the monitor (extra["lsa_monitor"])."""
        return {"batch": self.source, "samples": int(self.y.shape[0]), "every": self.every,
                "attack": self.config.base if self.config.base != "none" else "pgd", "noise": "gaussian",
                "noise_std": self.config.eps, "eta": self.config.eta, "probes": self.config.probes,
                "layers": self.layer_names}

    def due(self, epoch: int) -> bool:
        return epoch % self.every == 0 or epoch >= self.config.epochs

    def measure(self, model, epoch: int) -> Dict:
        if not self.due(epoch):
            return {}
        device = model_device(model)
        x, y = self.x.to(device), self.y.to(device)
        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed)
        attack = monitor_attack(self.config, generator)
        noise = make_attack("gaussian", self.config.eps, generator=generator)
        probe = LayerProbe(model, select=self.config.probes)
        with attack_mode(model, "eval"):
            x_attack = attack(model, x, y).detach()
            x_noise = noise(model, x, y).detach()
            with torch.no_grad():
                clean, attacked = probe.capture_pair(x, x_attack)
                noisy = probe.capture(x_noise)
        self.layer_names = list(probe.names)
        cm = relative_error(clean, attacked)  # [M, L]
        cm_noise = relative_error(clean, noisy)
        return {"layer_cm": [float(v) for v in cm.mean(dim=0).tolist()],
                "layer_cm_noise": [float(v) for v in cm_noise.mean(dim=0).tolist()],
                "layer_mvl": most_vulnerable_layers(cm, self.config.eta)}
