"""lsa_fast: fused Layer Sustainability Analysis (LSA) and layer-wise regularised
adversarial training (AT-LR), after Khalooei et al., arXiv:2202.02626.

Submodules: ops (the fused operators), probes, attacks, analysis, training,
evaluation, models, data, compat, report, reproduce, cli (docs/DESIGN.md: the layers)."""
from . import attacks, ops
from ._extension import backend
from .analysis import ShardSampler, analyze, eps_to_input_units
from .cm_accumulator import CMAccumulator, CMStatistics
from .evaluation import EvaluationTable, evaluate, rg_score, robust_accuracy
from .ops import cm_statistics, layer_moments, layerwise_regularizer, most_vulnerable_layers, pgd_step, relative_error
from .probes import LayerProbe, check_same_sequence
from .report import LSAReport, PerturbationResult
from .training import ATLRTrainer, TrainConfig, TrainResult

__version__ = "0.1.0"

__all__ = [
    "backend",
    *ops.__all__,  # relative_error, cm_statistics, most_vulnerable_layers, layerwise_regularizer, ...
    "CMStatistics",
    "CMAccumulator",
    "LayerProbe",
    "check_same_sequence",
    "attacks",
    "evaluate",
    "rg_score",
    "robust_accuracy",
    "EvaluationTable",
    "analyze",
    "eps_to_input_units",
    "ShardSampler",
    "LSAReport",
    "PerturbationResult",
    "ATLRTrainer",
    "TrainConfig",
    "TrainResult",
]
