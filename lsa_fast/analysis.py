"""Layer Sustainability Analysis over a whole dataset (the paper's Algorithms 1 and 2).

For every batch: one clean forward (probe outputs and logits), then for every
perturbation the perturbed input and one perturbed forward, the fused comparison
measure CM[m, l] over all probe points in one call, and streaming per-layer statistics
(lsa_fast.cm_accumulator.CMAccumulator, exact merge). Under torch.distributed each rank
analyses its own shard (see ShardSampler) and the ranks' statistics and accuracy
counts are merged, so the report equals that of a single process (up to the rounding
of the merge order).

Units: the attacks work in model-input units. Moons inputs are the moons mapped into
[0, 1]^2 by x' = (x - MOONS_LOW) / MOONS_SCALE (lsa_fast.data), so a distance eps in
moons coordinates is eps / MOONS_SCALE in input units; standardized moons (z-scores, the
paper's units) are mapped by (z - MOONS_STANDARDIZED_LOW) / MOONS_STANDARDIZED_SCALE, so
eps in z units is eps / MOONS_STANDARDIZED_SCALE; eps_to_input_units converts.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Sampler

from .attacks import STATISTICAL, BoundAttack, canonical_name, correct, get_attack, parse_attack_spec
from .checks import check_number, is_number
from .data import canonical_dataset, moons_unit_map
from .devices import kept_modes, model_device
from .distributed import gather_from_ranks, rank_and_world_size
from .ops import relative_error
from .probes import LayerProbe, check_same_sequence
from .progress import batch_progress
from .report import LSAReport, PerturbationResult
from .cm_accumulator import CMAccumulator

__all__ = [
    "analyze",
    "eps_to_input_units",
    "eps_from_input_units",
    "ShardSampler",
    "DEFAULT_ETA_SWEEP",
    "UNITLESS_PERTURBATIONS",
]

DEFAULT_ETA_SWEEP: Tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)

# analyze warns when an adversarial perturbation leaves more than this fraction of the
# samples' inputs or logits unchanged.
UNMOVED_WARNING = 0.5

# Perturbations whose strength is a probability (salt, pepper) or a relative factor
# (speckle multiplies x by 1 + n), not a distance in input space: a change of input
# scale leaves it as it is.
UNITLESS_PERTURBATIONS: Tuple[str, ...] = ("salt", "pepper", "salt-and-pepper", "speckle")

Perturbation = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
Perturbations = Union[Mapping[str, Perturbation], Sequence[Union[str, BoundAttack]], str]


def analyze(
    model: torch.nn.Module,
    loader: Iterable,
    perturbations: Perturbations,
    eta: float = 1.0,
    select="activations",
    device: Optional[Union[str, torch.device]] = None,
    progress: bool = True,
    eta_sweep: Sequence[float] = DEFAULT_ETA_SWEEP,
    *,
    dataset: Optional[str] = None,
    model_name: Optional[str] = None,
    moons_units: str = "raw",
) -> LSAReport:
    """Algorithm 2 of the paper: perturb every batch of `loader` with every perturbation
    and run Algorithm 1 on the per-sample comparison measure of all probe points.

    model: returns logits ([N] or [N, 1]: one logit, class = logit > 0; [N, C]: argmax).
      Run in eval mode (every submodule's mode is restored afterwards); the parameters'
      .grad is left as it was found.
    loader: yields (x, y) batches (more items are ignored), or one (x, y) pair of tensors.
    perturbations: a dict name -> callable(model, x, y) -> x_hat; or spec strings
      "name:eps" (a list, or one comma-separated string) with eps in model-input units
      (lsa_fast.attacks names: fgsm, fgsm-rs, pgd, apgd, trades, gaussian, salt, pepper,
      salt-and-pepper, speckle, ...); or lsa_fast.attacks.BoundAttack objects.
      A perturbation is "noise" when its name is a statistical noise, else "adversarial".
    eta: the MVL threshold of Algorithm 1; eta_sweep: the etas the report also lists.
    select: the probe points (LayerProbe's select); "activations" (default) = the outputs of
      the ReLU/ELU/LeakyReLU modules, one per hidden layer: the paper's L0, L1, ... as the
      authors' code measures them, whose indices are those of the trainer's --lr-layers
      (TrainConfig.probes); "hidden" = the Conv/Linear outputs but the last (before the
      activation).
    device: where batches go (the model is moved there too); default: the model's device.
    dataset: "moons", "mnist" or "cifar10", only to record each eps in the dataset's units
      (moons_units: "raw" or "standardized" moons, see eps_to_input_units).

    The report's `combined` result is Algorithm 1 on the CM matrices of all adversarial
    perturbations stacked (pooled statistics), not the union of their MVL lists: a layer
    is flagged when it stands out on average over all attacks.

    Each result records the fraction of samples whose input or logits the perturbation
    left exactly unchanged (`unmoved`). When an adversarial perturbation leaves most
    samples unmoved (an input gradient of exactly 0, as in a collapsed model, or eps 0),
    its CM values say nothing about the layers: analyze warns (RuntimeWarning) and lists
    the warning in report.warnings."""
    eta = check_number("analyze", "eta", eta)
    eta_sweep = [check_number("analyze", "eta_sweep", e) for e in eta_sweep]
    if dataset is not None:
        dataset = canonical_dataset(dataset)
    entries = _normalise_perturbations(perturbations, dataset, moons_units)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"analyze: model must be a torch.nn.Module, got {type(model).__name__}")
    if device is not None:
        device = torch.device(device)
        model.to(device)
    else:
        device = model_device(model)
    probe = LayerProbe(model, select=select)  # a clear ValueError if nothing is selectable

    accumulators = {entry.name: CMAccumulator() for entry in entries}
    adversarial = [i for i, entry in enumerate(entries) if entry.kind == "adversarial"]
    # [clean, each perturbation, all adversarial at once]; on the device, read once at the end.
    counts = torch.zeros(len(entries) + 2, dtype=torch.int64, device=device)
    unmoved = torch.zeros(len(entries), dtype=torch.int64, device=device)
    total = 0
    names: Optional[List[str]] = None

    # A user callable may call backward(), which accumulates into existing .grad in
    # place: keep their values too (no copy in the usual case, where .grad is None).
    grads = [(p, p.grad, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()]
    try:
        with kept_modes(model):
            for x, y in batch_progress(_batches(loader, device, "analyze"), loader, progress, "LSA"):
                model.eval()
                clean, logits, batch_names = _probed_forward(probe, model, x)
                if names is None:
                    names = batch_names
                else:
                    check_same_sequence(names, batch_names, ("first batch's clean", "this batch's clean"))
                ok_clean = correct(logits, y)
                robust = ok_clean.clone()
                counts[0] += ok_clean.sum()
                for index, entry in enumerate(entries):
                    x_hat = _perturb(entry, model, x, y)
                    model.eval()  # a callable may have left the model in train mode
                    perturbed, logits_hat, perturbed_names = _probed_forward(probe, model, x_hat)
                    check_same_sequence(names, perturbed_names, ("clean", f"{entry.name!r}"))
                    accumulators[entry.name].update(relative_error(clean, perturbed, mode="sample"))
                    unmoved[index] += _unmoved(x, x_hat, logits, logits_hat)
                    ok = correct(logits_hat, y)
                    counts[index + 1] += ok.sum()
                    if index in adversarial:
                        robust &= ok
                counts[-1] += robust.sum()
                total += int(y.shape[0])
    finally:
        for parameter, grad, values in grads:
            if grad is not None:
                with torch.no_grad():
                    grad.copy_(values)
            parameter.grad = grad

    _, world_size = rank_and_world_size()
    if world_size > 1:
        # Every rank calls the same collectives in the same order, even with an empty shard.
        accumulators = {name: acc.all_reduce() for name, acc in accumulators.items()}
        gathered = gather_from_ranks((counts.cpu().tolist(), total, names, unmoved.cpu().tolist()), world_size)
        summed = [sum(g[0][i] for g in gathered) for i in range(len(entries) + 2)]
        counts = torch.tensor(summed, dtype=torch.int64)
        unmoved = torch.tensor([sum(g[3][i] for g in gathered) for i in range(len(entries))], dtype=torch.int64)
        total = sum(g[1] for g in gathered)
        names = next((g[2] for g in gathered if g[2] is not None), None)
    if total == 0 or names is None:
        raise ValueError("analyze: the loader yielded no samples")

    counts = counts.cpu().tolist()
    unmoved = [count / total for count in unmoved.cpu().tolist()]
    results = [
        _result(entry.name, entry.kind, entry.attack, entry.eps_input, entry.eps_dataset,
                100.0 * counts[i + 1] / total, accumulators[entry.name], eta, eta_sweep)
        for i, entry in enumerate(entries)
    ]
    notes = []
    for result, fraction in zip(results, unmoved):
        result.unmoved = fraction
        if result.kind == "adversarial" and fraction > UNMOVED_WARNING and result.attack == "autoattack":
            notes.append(f"{result.name} left {100 * fraction:.0f}% of the {total} samples unchanged: AutoAttack "
                         f"returns the clean input wherever it breaks nothing (points misclassified clean, or "
                         f"robust), so its CM values average the broken points' with zeros")
        elif result.kind == "adversarial" and fraction > UNMOVED_WARNING:
            notes.append(f"{result.name} left the input or the logits of {100 * fraction:.0f}% of the {total} "
                         f"samples exactly unchanged, so its CM values say nothing about the layers (an input "
                         f"gradient of exactly 0, e.g. a collapsed model, or eps 0?)")
    for note in notes:
        warnings.warn(f"analyze: {note}", RuntimeWarning, stacklevel=2)
    combined = None
    if adversarial:
        pooled = CMAccumulator()
        for i in adversarial:
            pooled.merge(accumulators[entries[i].name])
        members = [entries[i].name for i in adversarial]
        combined = _result("adversarial (pooled)", "combined", None, None, None,
                           100.0 * counts[-1] / total, pooled, eta, eta_sweep)
        combined.members = members
    return LSAReport(
        layer_names=list(names),
        perturbations=results,
        combined=combined,
        clean_accuracy=100.0 * counts[0] / total,
        num_samples=total,
        eta=eta,
        eta_sweep=eta_sweep,
        select=select if isinstance(select, str) else repr(select),
        model_name=model_name,
        model_class=type(model).__name__,
        dataset=dataset,
        eps_units=_units_name(dataset, moons_units),
        world_size=world_size,
        warnings=notes,
    )


def eps_to_input_units(dataset: str, eps: float, attack: Optional[str] = None, moons_units: str = "raw") -> float:
    """A perturbation strength in the dataset's own units -> model-input units: for moons
    eps / MOONS_SCALE in moons coordinates (moons_units="raw"; lsa_fast.data maps the
    moons into [0, 1]^2 by (x - MOONS_LOW) / MOONS_SCALE) or eps / MOONS_STANDARDIZED_SCALE
    in z units (moons_units="standardized", the paper's units; a run's data record says
    which: lsa_fast.run_data.moons_units); unchanged for mnist and cifar10 (already in
    [0, 1]). With attack= a unitless perturbation (salt, pepper, salt-and-pepper,
    speckle), eps is returned unchanged on every dataset."""
    scale = _scale(dataset, attack, moons_units)
    return float(eps) / scale if scale != 1.0 else float(eps)


def eps_from_input_units(dataset: str, eps: float, attack: Optional[str] = None, moons_units: str = "raw") -> float:
    """The inverse of eps_to_input_units, rounded to 12 significant digits so that
    0.02 in input units reads back as 0.1 moons units, not 0.10000000000000002."""
    scale = _scale(dataset, attack, moons_units)
    return float(f"{float(eps) * scale:.12g}") if scale != 1.0 else float(eps)


class ShardSampler(Sampler):
    """Indices rank, rank + world, rank + 2 world, ... of a dataset of n samples: every
    sample on exactly one rank (DistributedSampler pads with repeats, which would count
    some samples twice in the statistics). Defaults to torch.distributed's rank/world."""

    def __init__(self, n: int, rank: Optional[int] = None, world_size: Optional[int] = None):
        if rank is None or world_size is None:
            own_rank, own_world_size = rank_and_world_size()
            rank = own_rank if rank is None else rank
            world_size = own_world_size if world_size is None else world_size
        if not 0 <= rank < world_size:
            raise ValueError(f"ShardSampler: rank {rank} is outside 0..{world_size - 1}")
        self.n, self.rank, self.world_size = int(n), int(rank), int(world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return max(0, math.ceil((self.n - self.rank) / self.world_size))


# ---------------------------------------------------------------------------- helpers


class _Entry(NamedTuple):
    name: str
    fn: Perturbation
    kind: str
    attack: Optional[str]
    eps_input: Optional[float]
    eps_dataset: Optional[float]


def _normalise_perturbations(perturbations: Perturbations, dataset: Optional[str],
                            moons_units: str = "raw") -> List[_Entry]:
    if isinstance(perturbations, str):
        perturbations = [s for s in perturbations.split(",") if s.strip()]
    items: List[Tuple[str, Perturbation]] = []
    if isinstance(perturbations, Mapping):
        for name, fn in perturbations.items():
            if not callable(fn):
                raise TypeError(f"analyze: perturbation {name!r} is a {type(fn).__name__}, not a callable(model, x, y)")
            items.append((str(name), fn))
    elif isinstance(perturbations, (list, tuple)):
        for item in perturbations:
            if isinstance(item, str):
                items.append((item.strip(), get_attack(item.strip())))  # ValueError names a bad spec
            elif isinstance(item, BoundAttack):
                items.append((f"{item.name}:{item.eps:g}", item))
            else:
                raise TypeError(
                    f"analyze: a perturbation list holds 'name:eps' strings or BoundAttack objects, got "
                    f"{type(item).__name__}; pass a dict name -> callable for other callables"
                )
    else:
        raise TypeError(
            "analyze: perturbations must be a dict name -> callable(model, x, y), a list of 'name:eps' "
            f"specs, or one comma-separated string; got {type(perturbations).__name__}"
        )
    if not items:
        raise ValueError("analyze: no perturbation given (e.g. ['fgsm:0.02', 'pgd:0.02', 'gaussian:0.02'])")
    seen = set()
    entries = []
    for name, fn in items:
        if name in seen:
            raise ValueError(f"analyze: perturbation {name!r} is given twice")
        seen.add(name)
        attack, eps = _identify(name, fn)
        kind = getattr(fn, "kind", None) or ("noise" if attack in STATISTICAL else "adversarial")
        if kind not in ("adversarial", "noise"):
            raise ValueError(f"analyze: perturbation {name!r} has kind {kind!r}; expected 'adversarial' or 'noise'")
        eps_dataset = (None if (dataset is None or eps is None)
                       else eps_from_input_units(dataset, eps, attack, moons_units))
        entries.append(_Entry(name, fn, kind, attack, eps, eps_dataset))
    return entries


def _identify(name: str, fn) -> Tuple[Optional[str], Optional[float]]:
    """The attack's canonical name and eps in input units: from a BoundAttack, else from
    the callable's `eps` attribute and the name read as a spec, else unknown (None)."""
    if isinstance(fn, BoundAttack):
        return fn.name, fn.eps
    attack, eps = None, None
    try:
        spec = parse_attack_spec(name)
        attack, eps = spec.name, spec.eps
    except (ValueError, TypeError):
        pass
    value = getattr(fn, "eps", None)
    if is_number(value):
        eps = float(value)
    return attack, eps


def _perturb(entry: _Entry, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x_hat = entry.fn(model, x, y)
    if not isinstance(x_hat, torch.Tensor):
        raise TypeError(f"analyze: perturbation {entry.name!r} returned a {type(x_hat).__name__}, not a tensor")
    if x_hat.shape != x.shape:
        raise ValueError(f"analyze: perturbation {entry.name!r} returned shape {tuple(x_hat.shape)} for input {tuple(x.shape)}")
    return x_hat.detach().to(device=x.device, dtype=x.dtype)


def _unmoved(x: torch.Tensor, x_hat: torch.Tensor, logits: torch.Tensor, logits_hat: torch.Tensor) -> torch.Tensor:
    """How many samples the perturbation did not move: input or logits bit-identical."""
    n = x.shape[0]
    same_input = (x_hat == x).reshape(n, -1).all(dim=1)
    same_logits = (logits_hat == logits).reshape(n, -1).all(dim=1)
    return (same_input | same_logits).sum()


def _probed_forward(probe: LayerProbe, model, x: torch.Tensor):
    with torch.no_grad(), probe:
        logits = model(x)
        return probe.outputs, logits, probe.names


def _result(name, kind, attack, eps_input, eps_dataset, accuracy, acc: CMAccumulator, eta, eta_sweep) -> PerturbationResult:
    stats = acc.result(eta)
    return PerturbationResult(
        name=name,
        kind=kind,
        attack=attack,
        eps_input=eps_input,
        eps_dataset=eps_dataset,
        accuracy=accuracy,
        count=int(acc.count),
        layer_mean=acc.mean.tolist(),
        layer_std=acc.std().tolist(),
        layer_min=acc.min.tolist(),
        layer_max=acc.max.tolist(),
        mu=float(stats.mu),
        sigma=float(stats.sigma),
        mvl=_mask_to_list(stats.mvl),
        eta_sweep={e: _mask_to_list(acc.result(e).mvl) for e in eta_sweep},
    )


def _mask_to_list(mask: torch.Tensor) -> List[int]:
    return [int(i) for i in torch.nonzero(mask).flatten().tolist()]


def _batches(loader, device, fn: str):
    if isinstance(loader, (tuple, list)) and len(loader) == 2 and all(isinstance(t, torch.Tensor) for t in loader):
        loader = [tuple(loader)]
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(f"{fn}: each batch must be an (x, y) pair, got {type(batch).__name__}")
        x, y = batch[0], batch[1]
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError(f"{fn}: each batch must hold two tensors (x, y)")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"{fn}: y must hold one label per sample, got x {tuple(x.shape)}, y {tuple(y.shape)}")
        if x.shape[0] == 0:
            continue
        yield x.to(device), y.to(device)


def _units_name(dataset: Optional[str], moons_units: str) -> Optional[str]:
    """What eps in the dataset's units counts in, as the report's labels say it."""
    if dataset == "moons":
        return "z units" if moons_units == "standardized" else "moons units"
    return None if dataset is None else "pixel units"


def _scale(dataset: str, attack: Optional[str], moons_units: str = "raw") -> float:
    dataset = canonical_dataset(dataset)
    scale = moons_unit_map(moons_units)[1]  # checks moons_units on every dataset
    if attack is not None and canonical_name(attack) in UNITLESS_PERTURBATIONS:
        return 1.0
    return scale if dataset == "moons" else 1.0
