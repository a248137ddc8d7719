"""The per-step protocol of the iterative attacks: what the eager attacks, the eager
trainer and the compiled training step (lsa_fast.compiled_step) all call, so each
iteration is written once.

An iterative attack is three kinds of function:

    state = <attack>_start(x, eps, ..., generator)     every random draw, before the loop
    state = <attack>_step(model, state, x, target, ...)  one iteration; pure (state in,
                                                          state out, no global RNG, no
                                                          host sync, no argument checks)
    x_hat = <attack>_result(state)                      the state's adversarial example

For PGD, FGSM-RS, FGSM and TRADES the state is the adversarial example itself (so
`result` is the identity and is not written): `random_start_point` / `fgsm_rs_start` /
`trades_start` draw the start, `pgd_iteration` / `fgsm_step` / `trades_step` take a
step. An attack whose iteration carries more (APGD: step sizes, checkpoints, the best
point so far) keeps a NamedTuple state and supplies `<attack>_result`. The steps run the
model in whatever mode the caller set (attack_mode); a caller that compiles a step
passes x_adv as a leaf that requires grad, made outside its graph (input_gradient
then uses it as it is). Default step sizes live beside the steps: pgd_default_alpha
(PGD and TRADES, 2.5 eps / steps), fgsm_rs_default_alpha (1.25 eps).

APGD: apgd_random_start draws, apgd_start makes the APGDState, apgd_schedule computes
the checkpoints up front (the step reads them by the state's counter), apgd_step runs
steps + 1 times (the first evaluates the start), apgd_result reads the answer."""
from .apgd import (
    APGDSchedule,
    APGDState,
    apgd_loss_dtype,
    apgd_objective,
    apgd_random_start,
    apgd_result,
    apgd_schedule,
    apgd_start,
    apgd_step,
)
from .fgsm import fgsm_step
from .fgsm_rs import fgsm_rs_default_alpha, fgsm_rs_start
from .pgd import pgd_default_alpha, pgd_iteration, random_start_point
from .trades import clean_probabilities, trades_start, trades_step

__all__ = ["fgsm_step", "fgsm_rs_start", "fgsm_rs_default_alpha", "pgd_iteration", "pgd_default_alpha",
           "random_start_point", "trades_start", "trades_step", "clean_probabilities", "APGDSchedule", "APGDState",
           "apgd_loss_dtype", "apgd_objective", "apgd_random_start", "apgd_result", "apgd_schedule", "apgd_start",
           "apgd_step"]
