"""lsa_fast: fused Layer Sustainability Analysis (LSA) and layer-wise regularised
adversarial training (AT-LR), after Khalooei et al., arXiv:2202.02626."""
from ._extension import backend
from .ops import (
    cm_statistics,
    layer_moments,
    layerwise_regularizer,
    most_vulnerable_layers,
    pgd_step,
    relative_error,
)
from .reference import CMStatistics
from .statistics import CMAccumulator

__version__ = "0.1.0"

__all__ = [
    "backend",
    "relative_error",
    "cm_statistics",
    "most_vulnerable_layers",
    "layerwise_regularizer",
    "layer_moments",
    "pgd_step",
    "CMStatistics",
    "CMAccumulator",
]
