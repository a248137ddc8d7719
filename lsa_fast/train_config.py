"""TrainConfig: everything that defines an AT-LR run (lsa_fast.training), checked on
creation so that a bad configuration fails before any training starts."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from .checks import is_int, is_number
from .ops import LR_GRAD_MODES  # the regulariser's gradient paths

__all__ = ["TrainConfig", "BASES", "OPTIMIZERS", "SCHEDULES", "AMP_MODES", "ATTACK_MODES", "COMPILE_MODES",
           "AUGMENT_MODES", "PROBE_PRESETS", "LR_GRAD_MODES", "KEEP_BEST_MODES"]

BASES = ("none", "fgsm", "fast", "pgd", "apgd", "trades")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("auto", "constant", "piecewise", "cosine", "cyclic")
AMP_MODES = ("none", "bf16", "fp16")
ATTACK_MODES = ("auto", "train", "eval")
# torch.compile of the training step (lsa_fast.compiled_step): auto = cudagraphs on CUDA,
# inductor on CPU; aot-eager traces without generating code (a debugging aid).
COMPILE_MODES = ("none", "auto", "inductor", "cudagraphs", "aot-eager")
AUGMENT_MODES = ("auto", "none", "crop-flip")
KEEP_BEST_MODES = ("none", "robust", "clean")  # best.pt by validation accuracy under PGD-10 / clean (lsa_fast.best_checkpoint)
# What lr_layers indices count (lsa_fast.probes presets): "activations", the authors'
# definition (the outputs of the ReLU/ELU/LeakyReLU modules, one per hidden layer), or
# "hidden" / "learnable" (Conv/Linear outputs, before the activation).
PROBE_PRESETS = ("activations", "hidden", "learnable")
# What a config written before a field existed meant by leaving it out (from_dict).
_OLD_MEANING = {"probes": "hidden", "lsa_every": 0}


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines an AT-LR run; checked on creation (ValueError naming the
    field), stored as a plain dict in every checkpoint.

    eps and alpha are in model-input units (see eps_to_input_units). lr_layers: None or
    [] (no regulariser), a list of probe indices, "0,2", "auto" (train normally for
    warmup_epochs, run LSA with FGSM at eps on up to lsa_samples training samples, take
    the MVL at eta), or the path of an LSA report JSON, read at once: lr_layers becomes
    its MVL and extra["mvl_report"] names the file. gammas: one value
    for every layer, or one per layer. lr / weight_decay / schedule None or "auto" pick
    the AT defaults of the optimiser and base (see the module docstring). batch_size is
    the global batch (per rank: batch_size / world size). model, model_kwargs, dataset,
    data_options record what the run trained (the CLI rebuilds from them); data_dir: the
    absolute directory its data files were read from (None for generated data; not part
    of the run's identity: a resumed run may read the same data from elsewhere, see
    lsa_fast.run_data); extra holds free JSON notes.

    compile: "none" (eager), "auto" (True), "inductor", "cudagraphs" (inductor, and the
    whole step of a full batch replayed as one CUDA graph; on CPU the same as
    inductor) or "aot-eager"; see lsa_fast.compiled_step. It does not define the run:
    a run may be resumed with another value. augment: "crop-flip" (random crop with
    4-pixel padding + horizontal flip, on the device; see lsa_fast.device_loader),
    "none", or "auto" (crop-flip for cifar10, else none). drop_last: drop each
    epoch's last, smaller batch (every step then has the same shape).

    eps_warmup_epochs K: the eps ramp, the usual remedy for adversarial training from
    scratch at a large eps (a model that collapses to one class): epoch k (from 0) of
    the run attacks at eps * min(1, k / K), so the first epoch trains clean and the
    full eps applies from epoch K + 1 on (eps_at). 0: no ramp.
    val_size: training samples held out for validation (lsa_fast.validation; 0: none);
    keep_best: "robust" / "clean" writes best.pt at the best validation accuracy under
    PGD-10 / clean (lsa_fast.best_checkpoint; needs val_size > 0), "none" does not.
    lsa_every: the per-layer CM and MVL every K epochs (lsa_fast.lsa_monitor; 0: off).
    """

    base: str = "pgd"
    eps: float = 8 / 255
    alpha: Optional[float] = None
    steps: int = 10
    random_start: bool = True
    beta: float = 6.0
    attack_mode: str = "auto"
    lr_layers: Union[None, str, Sequence[int]] = None
    gammas: Union[float, Sequence[float]] = 1.0
    probes: str = "activations"
    lr_grad: str = "both"
    eta: float = 1.0
    warmup_epochs: int = 1
    eps_warmup_epochs: int = 0
    lsa_samples: int = 2048
    val_size: int = 0
    keep_best: str = "none"
    lsa_every: int = 1
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: Optional[float] = None
    momentum: float = 0.9
    weight_decay: Optional[float] = None
    schedule: str = "auto"
    amp: str = "none"
    channels_last: bool = False
    grad_clip: Optional[float] = None
    compile: Union[bool, str] = "none"
    augment: Union[bool, str] = "auto"
    drop_last: bool = False
    seed: int = 0
    model: Optional[str] = None
    model_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: Optional[str] = None
    data_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    data_dir: Optional[str] = None
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.base = _choice("base", self.base, BASES, aliases={"normal": "none", "fgsm-rs": "fast", "trade": "trades"})
        self.eps = _real("eps", self.eps, minimum=0.0)
        self.alpha = None if self.alpha is None else _real("alpha", self.alpha, minimum=0.0, strict=True)
        self.steps = _integer("steps", self.steps, minimum=1)
        self.random_start = bool(self.random_start)
        self.beta = _real("beta", self.beta, minimum=0.0)
        self.attack_mode = _choice("attack_mode", self.attack_mode, ATTACK_MODES)
        self.lr_layers = _normalise_layers(self.lr_layers)
        if isinstance(self.lr_layers, str) and self.lr_layers != "auto":
            # A report is read once, here: the run (and its checkpoints) never need the file again.
            self.extra = {**self.extra, "mvl_report": self.lr_layers} if isinstance(self.extra, dict) else self.extra
            self.lr_layers = _read_report_mvl(self.lr_layers)
        self.gammas = _normalise_gammas(self.gammas)
        self.probes = _choice("probes", self.probes, PROBE_PRESETS)
        self.lr_grad = _choice("lr_grad", self.lr_grad, LR_GRAD_MODES)
        self.eta = _real("eta", self.eta)
        self.warmup_epochs = _integer("warmup_epochs", self.warmup_epochs, minimum=0)
        self.eps_warmup_epochs = _integer("eps_warmup_epochs", self.eps_warmup_epochs, minimum=0)
        self.lsa_samples = _integer("lsa_samples", self.lsa_samples, minimum=1)
        self.val_size = _integer("val_size", self.val_size, minimum=0)
        self.keep_best = _choice("keep_best", self.keep_best, KEEP_BEST_MODES)
        if self.keep_best != "none" and not self.val_size:
            raise ValueError(f"--keep-best {self.keep_best} chooses by validation accuracy: give --val-size N (training "
                             f"samples held out), or --keep-best none")
        self.lsa_every = _integer("lsa_every", self.lsa_every, minimum=0)
        self.epochs = _integer("epochs", self.epochs, minimum=1)
        self.batch_size = _integer("batch_size", self.batch_size, minimum=1)
        self.optimizer = _choice("optimizer", self.optimizer, OPTIMIZERS)
        self.lr = None if self.lr is None else _real("lr", self.lr, minimum=0.0, strict=True)
        self.momentum = _real("momentum", self.momentum, minimum=0.0)
        if self.momentum >= 1:
            raise ValueError(f"TrainConfig: momentum must lie in [0, 1), got {self.momentum}")
        self.weight_decay = None if self.weight_decay is None else _real("weight_decay", self.weight_decay, minimum=0.0)
        self.schedule = _choice("schedule", self.schedule, SCHEDULES, aliases={"one-cycle": "cyclic", "onecycle": "cyclic"})
        self.amp = _choice("amp", "none" if self.amp in (None, False) else self.amp, AMP_MODES,
                           aliases={"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "off": "none"})
        self.channels_last = bool(self.channels_last)
        self.grad_clip = None if self.grad_clip is None else _real("grad_clip", self.grad_clip, minimum=0.0, strict=True)
        # True / False are accepted for the two switches (compile=True is "auto").
        self.compile = _choice("compile", _switch(self.compile, on="auto"), COMPILE_MODES,
                               aliases={"off": "none", "on": "auto", "default": "inductor", "reduce-overhead": "cudagraphs"})
        self.augment = _choice("augment", _switch(self.augment, on="crop-flip"), AUGMENT_MODES, aliases={"off": "none"})
        if not isinstance(self.drop_last, bool):
            raise ValueError(f"TrainConfig: drop_last must be True or False, got {self.drop_last!r}")
        self.seed = _integer("seed", self.seed, minimum=0)
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            self.data_dir = str(self.data_dir)
        for name in ("model_kwargs", "data_options", "extra"):
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise ValueError(f"TrainConfig: {name} must be a dict, got {type(value).__name__}")
            try:
                json.dumps(value)
            except (TypeError, ValueError) as error:
                raise ValueError(f"TrainConfig: {name} must hold JSON values only ({error})") from None
        self._check_regulariser()

    # -------------------------------------------------------------- derived values

    @property
    def uses_regulariser(self) -> bool:
        return self.lr_layers is not None

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else (0.1 if self.optimizer == "sgd" else 1e-3)

    def resolved_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 5e-4 if self.optimizer == "sgd" else 0.0

    def resolved_schedule(self) -> str:
        if self.schedule != "auto":
            return self.schedule
        if self.base == "fast":
            return "cyclic"
        return "piecewise" if self.optimizer == "sgd" else "constant"

    def resolved_augment(self) -> str:
        if self.augment != "auto":
            return self.augment
        return "crop-flip" if self.dataset == "cifar10" else "none"

    def resolved_attack_mode(self) -> str:
        if self.attack_mode != "auto":
            return self.attack_mode
        return "eval" if self.base == "trades" else "train"

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-able values (what checkpoints and config.json store)."""
        data = dataclasses.asdict(self)
        if isinstance(data["lr_layers"], tuple):
            data["lr_layers"] = list(data["lr_layers"])
        if isinstance(data["gammas"], tuple):
            data["gammas"] = list(data["gammas"])
        return data

    @classmethod
    def field_defaults(cls) -> Dict[str, Any]:
        """What a checkpoint written before a field existed stands for: the field's
        meaning then (_OLD_MEANING), else its plain default."""
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        return {**defaults, **_OLD_MEANING}

    def eps_at(self, epoch: int) -> float:
        """The attack's eps in epoch `epoch` (counted from 0), after the eps ramp."""
        if self.eps_warmup_epochs == 0:
            return self.eps
        return self.eps * min(1.0, int(epoch) / self.eps_warmup_epochs)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TrainConfig":
        if not isinstance(data, dict):
            raise ValueError(f"TrainConfig.from_dict: expected a dict, got {type(data).__name__}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"TrainConfig.from_dict: unknown field(s) {unknown}")
        # A config from before a field existed: the field's meaning then, not today's default.
        data = {**{key: value for key, value in _OLD_MEANING.items() if key not in data}, **data}
        options = data.get("data_options")
        if isinstance(options, dict) and "data_dir" in options:  # where runs before data_dir kept it
            data = {**data, "data_options": {k: v for k, v in options.items() if k != "data_dir"}}
            data.setdefault("data_dir", options["data_dir"])
        return cls(**data)

    def _check_regulariser(self):
        layers = self.lr_layers
        if layers is None:
            return
        if self.base == "none":
            raise ValueError("TrainConfig: lr_layers needs an attack: with base='none' x_hat = x, so every "
                             "CM and the regulariser are 0; pick a base (fgsm, fast, pgd, apgd, trades)")
        if layers == "auto":
            if isinstance(self.gammas, list) and len(self.gammas) != 1:
                raise ValueError(f"TrainConfig: with lr_layers='auto' the number of MVL layers is known only "
                                 f"after LSA; give one gamma, not {len(self.gammas)}")
            if self.warmup_epochs >= self.epochs:
                raise ValueError(f"TrainConfig: lr_layers='auto' trains normally for warmup_epochs="
                                 f"{self.warmup_epochs} before LSA, so epochs must exceed it (got epochs={self.epochs})")
            return
        if isinstance(self.gammas, list) and len(self.gammas) not in (1, len(layers)):
            raise ValueError(f"TrainConfig: {len(self.gammas)} gammas for {len(layers)} regularised layers "
                             f"{list(layers)}; give one gamma (used for every layer) or one per layer")


# ---------------------------------------------------------------- validation


def _read_report_mvl(path: str) -> List[int]:
    """The MVL of an LSA report JSON: its "mvl", else that of its pooled adversarial
    result, else that of its only perturbation."""
    source = Path(path).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"lr_layers: {source} is neither 'auto', a list of layer indices like '0,2', "
                                f"nor an existing LSA report file")
    try:
        data = json.loads(source.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"lr_layers: {source} is not a JSON LSA report ({error})") from None
    mvl = None
    if isinstance(data, dict):
        mvl = data.get("mvl")
        if mvl is None and isinstance(data.get("combined"), dict):
            mvl = data["combined"].get("mvl")
        if mvl is None and isinstance(data.get("perturbations"), list) and len(data["perturbations"]) == 1:
            mvl = data["perturbations"][0].get("mvl")
    if not isinstance(mvl, list) or not all(isinstance(l, int) and not isinstance(l, bool) and l >= 0 for l in mvl):
        raise ValueError(f"lr_layers: {source} has no 'mvl' list of layer indices")
    if not mvl:
        raise ValueError(f"lr_layers: the MVL of {source} is empty (no layer stands out at its eta); "
                         f"pick layers by hand or lower eta")
    return mvl


def _normalise_layers(layers):
    if layers is None:
        return None
    if isinstance(layers, str):
        text = layers.strip()
        if text.lower() in ("", "none"):
            return None
        if text.lower() == "auto":
            return "auto"
        parts = [p.strip() for p in text.split(",")]
        if all(p.lstrip("-").isdigit() for p in parts):
            layers = [int(p) for p in parts]
        else:
            return text  # an LSA report; TrainConfig reads its MVL
    if is_int(layers):
        layers = [layers]
    if not isinstance(layers, (list, tuple)):
        raise ValueError(f"TrainConfig: lr_layers must be None, 'auto', a report path, or a list of layer "
                         f"indices, got {layers!r}")
    if not layers:
        return None
    out = []
    for layer in layers:
        if not is_int(layer):
            raise ValueError(f"TrainConfig: lr_layers must hold integer layer indices, got {layer!r}")
        if layer < 0:
            raise ValueError(f"TrainConfig: layer index {layer} in lr_layers is negative; layers are "
                             f"numbered L0, L1, ... from the input")
        out.append(int(layer))
    if len(set(out)) != len(out):
        raise ValueError(f"TrainConfig: lr_layers {out} names a layer twice")
    return out


def _normalise_gammas(gammas):
    if isinstance(gammas, str):
        gammas = [p for p in gammas.split(",") if p.strip()]
    values = list(gammas) if isinstance(gammas, (list, tuple)) else [gammas]
    if not values:
        raise ValueError("TrainConfig: gammas is empty")
    out = []
    for value in values:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"TrainConfig: gamma {value!r} is not a number") from None
        if isinstance(value, bool) or not math.isfinite(number) or number < 0:
            raise ValueError(f"TrainConfig: every gamma must be a finite number >= 0, got {value!r}")
        out.append(number)
    return out[0] if not isinstance(gammas, (list, tuple)) else out


def _switch(value, on: str):
    if value is None or value is False:
        return "none"
    return on if value is True else value


def _choice(name: str, value, choices, aliases=None) -> str:
    key = str(value).strip().lower().replace("_", "-") if isinstance(value, str) else value
    key = (aliases or {}).get(key, key)
    if key not in choices:
        raise ValueError(f"TrainConfig: unknown {name} {value!r}; valid: {', '.join(choices)}")
    return key


def _real(name: str, value, minimum: Optional[float] = None, strict: bool = False) -> float:
    if not is_number(value):
        raise ValueError(f"TrainConfig: {name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"TrainConfig: {name} must be finite, got {value}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        relation = ">" if strict else ">="
        raise ValueError(f"TrainConfig: {name} must be {relation} {minimum:g}, got {value:g}")
    return value


def _integer(name: str, value, minimum: int) -> int:
    if not is_int(value):
        raise ValueError(f"TrainConfig: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"TrainConfig: {name} must be >= {minimum}, got {value}")
    return int(value)
