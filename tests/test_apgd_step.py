"""APGD as a fixed-shape iteration (issue 24, item 1): the checkpoints computed up
front, one pure step over an APGDState (state in, state out, no host read), and
apgd() being exactly that step repeated."""
import torch

from lsa_fast import attacks as A
from lsa_fast.attacks.apgd import apgd_random_start, apgd_result, apgd_schedule, apgd_start, apgd_step
from lsa_fast.attacks._common import per_sample_loss
from pinwheel import pinwheel, trained_mlp


def test_checkpoints_are_the_authors():
    """auto-attack's checkpoints for 100 iterations: 0, 22, 41, 57, 70, 80, 87, 93, 99."""
    x = torch.zeros(1, 2)
    schedule = apgd_schedule(100, 0.75, x, torch.float32)
    assert torch.nonzero(schedule.checkpoint).flatten().tolist() == [22, 41, 57, 70, 80, 87, 93, 99]
    windows = [22, 19, 16, 13, 10, 7, 6, 6]
    assert schedule.threshold[schedule.checkpoint].tolist() == [0.75 * w for w in windows]
    assert schedule.first.tolist() == [True] + [False] * 100
    assert schedule.momentum[0].item() == 1.0 and (schedule.momentum[1:] == 0.75).all()
    # few steps: every window is at least one step
    short = apgd_schedule(3, 0.75, x, torch.float32)
    assert torch.nonzero(short.checkpoint).flatten().tolist() == [1, 2, 3]


def _run_by_steps(model, x, y, eps, steps, norm, generator):
    objective = lambda logits, y, target: per_sample_loss(logits, y, "ce", "apgd")  # noqa: E731
    start = apgd_random_start(x, eps, norm, generator)
    schedule = apgd_schedule(steps, 0.75, x, torch.float64)
    state = apgd_start(x, start, eps, norm, torch.float64)
    states = []
    for _ in range(steps + 1):
        states.append(state)
        state = apgd_step(model, state, schedule, x, y, None, eps, norm, objective)
    return state, states, schedule, objective


def test_apgd_is_its_step_repeated_and_the_step_is_pure(monkeypatch):
    model = trained_mlp(150, torch.float64)
    x, y = pinwheel(64, seed=2, dtype=torch.float64)
    for norm, eps in (("linf", 0.06), ("l2", 0.1)):
        want = A.apgd(model, x, y, eps, steps=12, norm=norm, generator=torch.Generator().manual_seed(3))
        state, states, schedule, objective = _run_by_steps(model, x, y, eps, 12, norm,
                                                           torch.Generator().manual_seed(3))
        x_hat, fooled, _ = apgd_result(state)
        assert torch.equal(x_hat, want)
        assert 0 < fooled.double().mean() < 1  # the comparison means something
        assert int(state.k) == 13
        # the step sizes were halved by masks, per sample: some samples more often than others
        halvings = torch.log2(2 * eps / state.step_size.flatten()).round()
        assert halvings.min() < halvings.max()

        # pure: the same state in gives the same state out, and the state in is not modified
        middle = states[6]
        copies = [t.clone() for t in middle]
        again = [apgd_step(model, middle, schedule, x, y, None, eps, norm, objective) for _ in range(2)]
        for a, b in zip(*again):
            assert torch.equal(a, b)
        for t, copy in zip(middle, copies):
            assert torch.equal(t, copy)

    # no host read inside a step: the checkpoint logic is masks
    reads = {"count": 0}

    def counting(method):
        def wrapper(*args, **kwargs):
            reads["count"] += 1
            return method(*args, **kwargs)
        return wrapper

    for method in ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, method, counting(getattr(torch.Tensor, method)))
    for state in states:
        apgd_step(model, state, schedule, x, y, None, eps, norm, objective)
    assert reads["count"] == 0
