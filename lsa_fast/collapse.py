"""A collapsed model: its accuracy is the share of the most frequent class, as a constant
classifier's is (adversarial training from scratch at a large eps often ends there).
Attacks cannot move a constant prediction, so its accuracy under attack and its layer
analysis say nothing; `train`, `eval` and `analyze` say so in one line."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["majority_share", "collapse_warning", "loader_collapse_warning", "REMEDY"]

# Within this many percentage points of the most frequent class's share (or below it):
# no better than always answering that class.
TOLERANCE = 0.5

REMEDY = ("usual causes: adversarial training from scratch with an eps too large for an untrained model, or too "
          "few attack steps; remedy: an eps ramp (train --eps-warmup-epochs K, eps rising linearly from 0 over K "
          "epochs) or a few normal epochs first, then more epochs")


def majority_share(labels: torch.Tensor) -> Tuple[int, float]:
    """(the most frequent class, its share in %) of 1-D integer labels."""
    labels = torch.as_tensor(labels).flatten().long()
    if labels.numel() == 0:
        raise ValueError("majority_share: no labels")
    counts = torch.bincount(labels - labels.min())
    top = int(counts.argmax())
    return top + int(labels.min()), 100.0 * float(counts[top]) / labels.numel()


def collapse_warning(accuracy: float, labels: torch.Tensor, what: str = "test",
                     constant: Optional[int] = None) -> Optional[str]:
    """One line when `accuracy` (in %) on samples with these labels is at (or below) the
    share of their most frequent class, else None. constant: the class the model
    predicts for every sample, when it is known to do so."""
    top, share = majority_share(labels)
    if accuracy > share + TOLERANCE:
        return None
    predicts = (f"it predicts class {constant} for every sample" if constant is not None
                else "no better than always answering that class")
    return (f"the model looks collapsed: its {what} accuracy {accuracy:.2f}% is at the share of the most frequent "
            f"class ({top}: {share:.2f}% of {len(torch.as_tensor(labels).flatten())} samples); {predicts}, and "
            f"attacks cannot move a constant prediction; {REMEDY}")


def loader_collapse_warning(accuracy: Optional[float], loader, split: str) -> Optional[str]:
    """collapse_warning for an accuracy measured on a loader over a TensorDataset (whose
    labels are its second tensor); None when either is missing."""
    labels = getattr(getattr(loader, "dataset", None), "tensors", (None, None))[1]
    if accuracy is None or labels is None:
        return None
    return collapse_warning(accuracy, labels, split)
