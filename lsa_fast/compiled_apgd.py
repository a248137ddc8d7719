"""AT-APGD(-LR)'s attack inside the compiled training step (lsa_fast.compiled_step):
the eager apgd() of the trainer (untargeted cross-entropy, L-inf, one run) as compiled
graphs that a CUDA graph can capture with the rest of the step.

The same code as the eager attack, in the same order: the random start drawn from the
trainer's attack generator before any compiled code (apgd_random_start); the clean
forward without gradient that apgd() runs to check its inputs (in train mode it moves
the BatchNorm statistics, so it runs here too; its logits are not used, so the compiler
keeps only what the statistics need); then apgd_step, steps + 1 times, one
compiled graph for all of them (the step reads its checkpoint from the schedule by
the state's counter: no Python value changes between steps, so nothing recompiles),
and apgd_result. The schedule is made once per dtype, on the first (warm-up) call,
outside any CUDA-graph capture."""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from .attacks import steps as attack_steps

NORM = "linf"  # the trainer's APGD: apgd(module, x, y, eps, steps=steps, generator=...)
RHO = 0.75  # apgd()'s default


class CompiledAPGD:
    """draw_start(x) eagerly, then __call__(x, y, x_start) -> x_hat inside the step."""

    def __init__(self, module, eps: float, steps: int, generator, compile_fn, autocast, mixed_precision: bool):
        self.eps, self.steps, self.generator = eps, steps, generator
        self.mixed_precision = mixed_precision
        self.clean_forward = compile_fn(_clean_forward_fn(module, autocast))
        self.iteration = compile_fn(_iteration_fn(module, eps, autocast))
        self._schedules: Dict[Tuple[torch.dtype, torch.dtype, torch.device], attack_steps.APGDSchedule] = {}

    def draw_start(self, x: torch.Tensor):
        """apgd()'s random start, from the same stream in the same order (none for eps = 0)."""
        if self.eps == 0:
            return None
        return attack_steps.apgd_random_start(x, self.eps, NORM, self.generator)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, x_start) -> torch.Tensor:
        self.clean_forward(x)  # as apgd()'s input check: BatchNorm statistics in train mode
        if self.eps == 0:
            return x.clone()
        # apgd() keeps its losses in apgd_loss_dtype(dtype of the logits): the model's dtype (x's),
        # or a low precision one under autocast
        loss_dtype = torch.float32 if self.mixed_precision else attack_steps.apgd_loss_dtype(x.dtype)
        key = (x.dtype, loss_dtype, x.device)
        schedule = self._schedules.get(key)
        if schedule is None:
            schedule = self._schedules[key] = attack_steps.apgd_schedule(self.steps, RHO, x, loss_dtype)
        state = attack_steps.apgd_start(x, x_start, self.eps, NORM, loss_dtype)
        for _ in range(self.steps + 1):
            # x_adv as a leaf that requires grad, made outside the graph (dynamo before torch
            # 2.14 cannot trace requires_grad_; input_gradient takes such a leaf as it is)
            state = self.iteration(state._replace(x_adv=state.x_adv.detach().requires_grad_(True)), schedule, x, y)
        return attack_steps.apgd_result(state)[0]


def _clean_forward_fn(module, autocast):
    def clean_forward(x):
        with torch.no_grad(), autocast():
            module(x)

    return clean_forward


def _iteration_fn(module, eps: float, autocast):
    objective = attack_steps.apgd_objective(None, "ce", False)

    def iteration(state, schedule, x, y):
        with autocast():  # the eager step runs the whole attack under the trainer's autocast
            return attack_steps.apgd_step(module, state, schedule, x, y, None, eps, NORM, objective)

    return iteration
