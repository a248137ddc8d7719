"""A small deterministic stand-in with lsa_fast.attacks.autoattack's API, for the tests
of the runner around it (chunks, state file, shards, CLI): each clean-correct point is
broken by stage k or survives by a draw seeded by (seed, its sample id), with a chance
that grows with eps, so a point's result depends on nothing else; every call may sleep
(to be killed mid-run) and raises its check messages per chunk.

`python tests/fake_autoattack.py ARGS` (also under torchrun) runs `lsa-fast ARGS` with
the fake in place of the real attack."""
import dataclasses
import os
import sys
import time
from typing import List, Tuple

import torch

STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")
CALLS: List[int] = []  # first sample id of every call, in this process


@dataclasses.dataclass
class FakeResult:
    adversarial: torch.Tensor
    broken_by: torch.Tensor
    stages: Tuple[str, ...]
    clean_correct: torch.Tensor
    warnings: List[str]


def fake_autoattack(model, x, y, eps, norm="Linf", version="standard", seed=0, *, sample_ids=None, n_classes=None,
                    stages=None, progress=None, checks=True):
    from lsa_fast.attacks import predicted_class

    stages = tuple(stages or STAGES)
    ids = torch.arange(x.shape[0]) if sample_ids is None else sample_ids
    CALLS.append(int(ids[0]))
    time.sleep(float(os.environ.get("FAKE_AUTOATTACK_SLEEP", "0")))
    with torch.no_grad():
        clean = predicted_class(model(x)) == y.long()
    broken = torch.full((x.shape[0],), -1, dtype=torch.int64)
    scale = {"Linf": 1.0, "L2": 0.5}[norm] * {"standard": 1.0, "plus": 1.2, "rand": 0.8}[version]
    for i, sample in enumerate(ids.tolist()):
        u = torch.rand((), generator=torch.Generator().manual_seed(seed * 1_000_003 + sample)).item()
        chance = min(eps * scale, 1.0)
        if not clean[i]:
            broken[i] = 0
        elif u < chance:
            broken[i] = 1 + min(int(u / chance * len(stages)), len(stages) - 1)
    warnings = ["fake check: every chunk says this"] if checks else []
    if checks and any(sample % 7 == 0 for sample in ids.tolist()):
        warnings.append("fake check: a point id divisible by 7")
    adversarial = torch.where((broken > 0).reshape(-1, *[1] * (x.dim() - 1)), x.flip(0), x)
    return FakeResult(adversarial, broken, stages, clean.cpu(), warnings)


def install() -> None:
    import lsa_fast.robust_eval as robust_eval

    robust_eval.autoattack = fake_autoattack


if __name__ == "__main__":
    from lsa_fast import cli

    install()
    sys.exit(cli.main(sys.argv[1:]))
