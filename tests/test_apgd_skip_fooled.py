"""APGD with several runs (restarts, target classes) attacks, after the first run,
only the samples no run has fooled yet, as AutoAttack does (issue 11, item 5): the
same adversarials as every run on the whole batch, for less work."""
import pytest
import torch

from lsa_fast import attacks as A
from pinwheel import pinwheel, trained_mlp

EPS = 0.06  # the first run fools about a quarter of the test points, later runs a few more


@pytest.fixture(scope="module")
def partly_robust():
    model = trained_mlp(250, torch.float64)
    x, y = pinwheel(200, seed=1, dtype=torch.float64)
    return model, x, y


class CountingModel(torch.nn.Module):
    """Counts the samples the model is run on (forward passes, each with its backward)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.samples = 0

    def forward(self, x):
        self.samples += x.shape[0]
        return self.model(x)


def robust(model, x, y):
    with torch.no_grad():
        return model(x).argmax(1) == y


RUNS = {
    "apgd_t_dlr": dict(loss="dlr", targeted=True, n_target_classes=3),
    "apgd_t_ce_restarts": dict(loss="ce", targeted=True, n_target_classes=2, n_restarts=2),
    "apgd_t_l2": dict(loss="dlr", targeted=True, n_target_classes=3, norm="l2"),
    "apgd_ce_restarts": dict(loss="ce", n_restarts=3),
}


@pytest.mark.parametrize("name", sorted(RUNS))
@pytest.mark.parametrize("per_sample_generators", [False, True])
def test_skipping_fooled_samples_changes_no_result(partly_robust, name, per_sample_generators):
    model, x, y = partly_robust
    options = RUNS[name]
    eps = 2 * EPS if options.get("norm") == "l2" else EPS

    def attack(skip_fooled, **overrides):
        counting = CountingModel(model)
        seeds = range(x.shape[0]) if per_sample_generators else [0]
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        x_hat = A.apgd(counting, x, y, eps, steps=10, skip_fooled=skip_fooled,
                       generator=generators if per_sample_generators else generators[0], **dict(options, **overrides))
        return x_hat, counting.samples

    every_run_on_all, work_all = attack(skip_fooled=False)
    only_the_robust, work_skipping = attack(skip_fooled=True)
    torch.testing.assert_close(only_the_robust, every_run_on_all, rtol=0, atol=1e-12)

    # The comparison means something: later runs fool samples the first did not.
    first_run_only, _ = attack(skip_fooled=True, **({"n_target_classes": 1, "n_restarts": 1}
                                                    if options.get("targeted") else {"n_restarts": 1}))
    after_first, after_all = robust(model, first_run_only, y), robust(model, every_run_on_all, y)
    assert 0.3 < after_first.double().mean() < 0.95
    assert (after_first & ~after_all).any(), "later runs must fool some samples the first run did not"
    assert work_skipping < work_all - x.shape[0]  # the samples fooled by the first run are not run again


def test_all_fooled_after_the_first_run_stops_early():
    """Nothing left to attack after the first run: the later runs do not run at all."""
    model = torch.nn.Linear(2, 5).double()
    with torch.no_grad():  # predicts class 0 everywhere: every other label is fooled from the start
        model.weight.mul_(1e-3)
        model.bias.copy_(torch.tensor([10.0, 0, 0, 0, 0]))
    x, _ = pinwheel(20, seed=3, dtype=torch.float64)
    y = 1 + torch.arange(20) % 4
    counting = CountingModel(model)
    x_hat = A.apgd(counting, x, y, 0.1, steps=5, loss="dlr", targeted=True, n_target_classes=4)
    assert not robust(model, x_hat, y).any()
    assert counting.samples == x.shape[0] * (1 + 1 + 5)  # the clean check, then one run: start + 5 steps
