"""AutoAttack (issue 23): FAB, Square and the ensemble against the reference
implementation (the fra31/auto-attack code, as the package `autoattack` that
torchattacks 3.3.0 installs, and as pyautoattack 0.2.0 through its own keyword-only
API; on these settings the two give the same numbers) and torchattacks'
AutoAttack, on model B adversarially trained on real MNIST and on a small CNN on
CIFAR-shaped images (tests/aa_models.py; weights made by
scripts/make_autoattack_models.py).

CI time on 2 cores: the stage-by-stage comparisons use fewer iterations, targets and
queries than the standard version (the same on both sides); the benchmark
(benchmarks/bench_autoattack.py) compares the full standard version.

Where exact equality is impossible: the random draws. The reference draws APGD's
starts and Square's squares from torch's global generator, in batch order, one
square position per iteration for the whole batch; we draw every sample's numbers
from its own generator (so a point's result does not depend on its batch). So the
stages with random draws agree in robust accuracy, not point by point, and only up
to the reference's own seed-to-seed noise: on these 200 MNIST points, APGD-CE with
10 steps gives 40.5 %, 41.5 %, 41.0 %, 42.5 %, 43.0 % for the reference's seeds 0-4
(30 steps: 37.0-39.0 %), and the stages after it add their own noise on different
surviving points (here, seed 0 on both sides: 41.5 / 33.0 % for ours after APGD-CE /
APGD-T, 42.5 / 35.5 % for the reference). TOLERANCE is therefore 4 points (8 of 200),
not 0.5: a 0.5-point bound on 200 points fails the reference against itself. The
deterministic parts agree per sample: APGD-CE from the same start (one generator
seeded like theirs), FAB's projections, FAB-T's first iteration and its whole run
(no random start in its first run).

The reference's FAB imports torch.autograd.gradcheck.zero_gradients, which
torch >= 1.9 removed: the `reference` fixture puts a two-line stand-in there first."""
import sys
import warnings

import pytest
import torch

from aa_models import cifar_shaped, mnist_model_b
from lsa_fast import attacks as A
from lsa_fast.attacks._projections import PROJECTIONS

POINTS = 200
TOLERANCE = 0.04  # see the module docstring: the reference's own seed-to-seed spread is 2.5 points per stage
# The quick settings of the stage-by-stage comparisons, ours and the reference's.
QUICK = {
    "apgd-ce": {"steps": 10},
    "apgd-t": {"steps": 10, "n_target_classes": 3},
    "fab-t": {"steps": 10, "n_target_classes": 3},
    "square": {"n_queries": 100},
}
SETUPS = {"mnist": (mnist_model_b, "Linf", 0.3), "cifar": (cifar_shaped, "Linf", 16 / 255),
          "cifar-l2": (cifar_shaped, "L2", 2.5)}


def _zero_gradients(x):
    if x.grad is not None:
        x.grad.detach_()
        x.grad.zero_()


@pytest.fixture(scope="module")
def reference():
    gradcheck = sys.modules["torch.autograd.gradcheck"]  # the module (torch.autograd.gradcheck is also a function)
    if not hasattr(gradcheck, "zero_gradients"):
        gradcheck.zero_gradients = _zero_gradients
    # fra31/auto-attack's code as the package `autoattack` (torchattacks 3.3.0, the test extra, installs it).
    return pytest.importorskip("autoattack")


@pytest.fixture(scope="module")
def pyautoattack():
    # pyautoattack 0.2.0: the fra31/auto-attack code under its own name and API.
    return pytest.importorskip("pyautoattack")


@pytest.fixture(scope="module", params=sorted(SETUPS))
def setup(request):
    make, norm, eps = SETUPS[request.param]
    model, x, y = make()
    return request.param, model, x[:POINTS], y[:POINTS], norm, eps


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


def quick(adversary):
    """QUICK's settings on a reference AutoAttack object (fra31's and pyautoattack's
    share these attribute names). pyautoattack derives APGD's checkpoint schedule from
    n_iter once, in its constructor (fra31's copy at every run): set it with n_iter."""
    adversary.apgd.n_iter = adversary.apgd_targeted.n_iter = adversary.fab.n_iter = 10
    for apgd in (adversary.apgd, adversary.apgd_targeted):
        apgd.n_iter_2, apgd.n_iter_min, apgd.size_decr = max(int(0.22 * 10), 1), max(int(0.06 * 10), 1), 1
    adversary.apgd_targeted.n_target_classes = adversary.fab.n_target_classes = 3
    adversary.square.n_queries = 100


def reference_stages(aa, model, x, y, norm, eps, seed=0):
    """The reference's AutoAttack, standard version with QUICK's settings, driven as
    its run_standard_evaluation drives it: robust accuracy after each stage."""
    adversary = aa.AutoAttack(model, norm=norm, eps=eps, version="standard", seed=seed, verbose=False, device="cpu")
    quick(adversary)
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    after = []
    for stage in adversary.attacks_to_run:
        idx = robust.nonzero().squeeze(1)
        if idx.numel():
            xs, ys = x[idx], y[idx]
            if stage == "apgd-ce":
                adversary.apgd.loss = "ce"
                _, adv = adversary.apgd.perturb(xs, ys, cheap=True)
            elif stage == "apgd-t":
                _, adv = adversary.apgd_targeted.perturb(xs, ys, cheap=True)
            elif stage == "fab-t":
                adversary.fab.targeted, adversary.fab.n_restarts = True, 1
                adv = adversary.fab.perturb(xs, ys)
            else:
                adv = adversary.square.perturb(xs, ys)
            with torch.no_grad():
                robust[idx] = model(adv).argmax(1) == ys
        after.append(robust.double().mean().item())
    return after


_OURS = {}


def ours_quick(name, model, x, y, norm, eps):
    """Ours with QUICK's settings on a setup, computed once for both oracles' tests."""
    if name not in _OURS:
        _OURS[name] = A.autoattack(model, x, y, eps, norm=norm, stage_options=QUICK)
    return _OURS[name]


def test_every_stage_matches_the_reference(setup, reference):
    name, model, x, y, norm, eps = setup
    ours = ours_quick(name, model, x, y, norm, eps)
    assert ours.stages == ("apgd-ce", "apgd-t", "fab-t", "square")
    theirs = reference_stages(reference, model, x, y, norm, eps)
    mine = [ours.robust_accuracy(after=k) for k in range(1, 5)]
    print(name, "clean", accuracy(model, x, y), "ours", mine, "reference", theirs)
    assert 0.1 < mine[-1] < accuracy(model, x, y) - 0.05  # every stage has points to work on
    for stage, a, b in zip(ours.stages, mine, theirs):
        assert abs(a - b) <= TOLERANCE + 1e-9, f"{name}: after {stage} ours {a:.3f}, reference {b:.3f}"
    # The adversarials are valid: within eps, in [0, 1], misclassified where broken.
    distance = (ours.adversarial - x).flatten(1).norm(p=float("inf") if norm == "Linf" else 2, dim=1)
    assert distance.max() <= eps + 1e-5 and 0 <= ours.adversarial.min() and ours.adversarial.max() <= 1
    broken = ours.broken_by > 0
    assert accuracy(model, ours.adversarial[broken], y[broken]) == 0


def pyautoattack_stages(pa, model, x, y, norm, eps, seed=0):
    """pyautoattack 0.2.0 through its own keyword-only API: its run_standard_evaluation,
    one stage at a time (attacks_to_run = [stage]) on the points still robust, QUICK's
    settings; robust accuracy after each stage."""
    adversary = pa.AutoAttack(model, norm=norm, eps=eps, version="standard", seed=seed, device="cpu")
    adversary.verbose = False
    quick(adversary)
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    after = []
    for stage in list(adversary.attacks_to_run):
        idx = robust.nonzero().squeeze(1)
        if idx.numel():
            adversary.attacks_to_run = [stage]
            adv, _ = adversary.run_standard_evaluation(x[idx], y[idx], batch_size=POINTS)
            with torch.no_grad():
                robust[idx] = model(adv).argmax(1) == y[idx]
        after.append(robust.double().mean().item())
    return after


@pytest.mark.parametrize("name", ["mnist", "cifar-l2"])  # both models, both norms (fra31's test covers all three)
def test_every_stage_matches_pyautoattack(name, pyautoattack):
    make, norm, eps = SETUPS[name]
    model, x, y = make()
    x, y = x[:POINTS], y[:POINTS]
    ours = ours_quick(name, model, x, y, norm, eps)
    theirs = pyautoattack_stages(pyautoattack, model, x, y, norm, eps)
    mine = [ours.robust_accuracy(after=k) for k in range(1, 5)]
    print(name, "ours", mine, "pyautoattack", theirs)
    assert theirs[-1] < accuracy(model, x, y) - 0.05  # the oracle did attack
    for stage, a, b in zip(ours.stages, mine, theirs):
        assert abs(a - b) <= TOLERANCE + 1e-9, f"{name}: after {stage} ours {a:.3f}, pyautoattack {b:.3f}"


@pytest.mark.parametrize("steps", [1, 10])
def test_fab_t_equals_pyautoattack_per_sample(pyautoattack, steps):
    """pyautoattack's FAB-T, first run (no random start): deterministic on both sides."""
    from pyautoattack.fab_pt import FABAttack_PT

    model, x, y = mnist_model_b()
    x, y, eps = x[:100], y[:100], 0.3
    theirs = FABAttack_PT(model, norm="Linf", n_iter=steps, eps=eps, device="cpu", verbose=False)
    theirs.target_class = 2
    reference_adv = theirs.attack_single_run(x, y, use_rand_start=False, is_targeted=True)
    _assert_fab_t_equals(model, x, y, steps, reference_adv)


def test_apgd_ce_from_the_same_start_equals_pyautoattack_per_sample(pyautoattack):
    from pyautoattack.autopgd_base import APGDAttack

    model, x, y = mnist_model_b()
    x, y, eps = x[:POINTS], y[:POINTS], 0.3
    theirs = APGDAttack(model, n_iter=10, norm="Linf", eps=eps, seed=0, loss="ce", device="cpu")
    theirs.init_hyperparam(x)
    torch.manual_seed(0)  # what their perturb does before the run
    best, still_correct, _, _ = theirs.attack_single_run(x, y)
    ours = A.apgd(model, x, y, eps, steps=10, loss="ce", generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours_correct = model(ours).argmax(1) == y
    assert torch.equal(ours_correct, still_correct)
    assert 0 < still_correct.sum() < POINTS
    torch.testing.assert_close(ours[ours_correct], best[ours_correct], rtol=0, atol=1e-5)


def test_final_robust_accuracy_matches_torchattacks():
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = cifar_shaped()
    x, y, eps = x[:POINTS], y[:POINTS], 16 / 255
    oracle = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
    apgd_ce, apgd_t, fab_t, square = oracle._autoattack.attacks
    apgd_ce.steps = apgd_t.steps = fab_t.steps = 10
    apgd_t.n_target_classes = fab_t.n_target_classes = 3
    square.n_queries, square.rescale_schedule = 100, False  # the reference's setting inside AutoAttack
    theirs = accuracy(model, oracle(x, y), y)
    ours = A.autoattack(model, x, y, eps, stage_options=QUICK).robust_accuracy()
    print("torchattacks", theirs, "ours", ours)
    assert abs(ours - theirs) <= TOLERANCE + 1e-9, f"ours {ours:.3f}, torchattacks {theirs:.3f}"


@pytest.mark.parametrize("targeted", [False, True])
def test_apgd_from_the_same_start_equals_the_reference_per_sample(reference, targeted):
    """APGD-CE, and APGD-T on its first target, from the start the reference draws."""
    from autoattack.autopgd_pt import APGDAttack, APGDAttack_targeted

    model, x, y = mnist_model_b()
    x, y, eps = x[:POINTS], y[:POINTS], 0.3
    if targeted:
        theirs = APGDAttack_targeted(model, n_iter=10, norm="Linf", eps=eps, seed=0, device="cpu")
        theirs.target_class = 2
    else:
        theirs = APGDAttack(model, n_iter=10, norm="Linf", eps=eps, seed=0, loss="ce", device="cpu")
    torch.manual_seed(0)  # what their perturb does before the run
    best, still_correct, _, _ = theirs.attack_single_run(x, y)
    ours = A.apgd(model, x, y, eps, steps=10, loss="dlr" if targeted else "ce", targeted=targeted,
                  n_target_classes=1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours_correct = model(ours).argmax(1) == y
    assert torch.equal(ours_correct, still_correct)
    assert 0 < still_correct.sum() < POINTS
    # where both runs stay robust, both return the highest-loss point
    torch.testing.assert_close(ours[ours_correct], best[ours_correct], rtol=0, atol=1e-5)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_fab_projections_equal_the_reference(reference, norm):
    from autoattack import fab_projections

    theirs = {"linf": fab_projections.projection_linf, "l2": fab_projections.projection_l2,
              "l1": fab_projections.projection_l1}[norm]
    g = torch.Generator().manual_seed(0)
    for d in (3, 50, 784):
        t = torch.rand(300, d, generator=g, dtype=torch.float64)
        w = torch.randn(300, d, generator=g, dtype=torch.float64)
        w[:, 0] = 0  # a coordinate the hyperplane ignores
        b = (w * torch.rand(300, d, generator=g, dtype=torch.float64)).sum(1) * 3 * (torch.rand(300, generator=g) - 0.5)
        ours = PROJECTIONS[norm](t, w, b.double())
        torch.testing.assert_close(ours, theirs(t, w.clone(), b.double().clone()), rtol=0, atol=1e-10)
        # on the hyperplane where the box reaches it, always inside the box
        assert ((t + ours) >= -1e-12).all() and ((t + ours) <= 1 + 1e-12).all()


@pytest.mark.parametrize("steps", [1, 10])
def test_fab_t_equals_the_reference_per_sample(reference, steps):
    """FAB-T's first run has no random start: deterministic on both sides."""
    from autoattack.fab_pt import FABAttack

    model, x, y = mnist_model_b()
    x, y, eps = x[:100], y[:100], 0.3
    theirs = FABAttack(model, norm="Linf", n_iter=steps, eps=eps, device="cpu")
    theirs.targeted, theirs.target_class = True, 2
    reference_adv = theirs.attack_single_run_targeted(x, y, use_rand_start=False)
    _assert_fab_t_equals(model, x, y, steps, reference_adv)



def _assert_fab_t_equals(model, x, y, steps, reference_adv):
    """Our FAB-T (target: the 2nd class, no random start) finds the reference's successes
    and the same points, per sample."""
    ours = A.fab(model, x, y, 1e9, steps=steps, targeted=True, n_target_classes=1)  # eps: keep every success
    found = (reference_adv != x).flatten(1).any(1)
    assert found.sum() >= 10
    assert torch.equal((ours != x).flatten(1).any(1), found)
    torch.testing.assert_close(ours, reference_adv, rtol=0, atol=1e-5)


# ------------------------------------------------------------------- independence


def _ids(n):
    return torch.arange(100, 100 + n, dtype=torch.int64)


@pytest.mark.parametrize("version", ["standard", "plus", "rand"])
def test_autoattack_of_a_batch_equals_autoattack_of_its_samples(version):
    model, x, y = cifar_shaped()
    x, y = x[:6], y[:6]
    quick = {stage: {"steps": 3} for stage in ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t")}
    quick["square"] = {"n_queries": 20}
    quick["apgd-ce"]["eot_steps"] = quick["apgd-dlr"]["eot_steps"] = 2 if version == "rand" else 1
    run = lambda xs, ys, ids: A.autoattack(model, xs, ys, 16 / 255, version=version, seed=3, sample_ids=ids,
                                           stage_options=quick, checks=False)
    together = run(x, y, _ids(6))
    assert (together.broken_by >= 1).any()  # some stage broke something
    for i in range(6):
        alone = run(x[i : i + 1], y[i : i + 1], _ids(6)[i : i + 1])
        assert together.broken_by[i] == alone.broken_by[0], i
        torch.testing.assert_close(together.adversarial[i : i + 1], alone.adversarial, rtol=0, atol=1e-6)


def test_sharding_by_sample_ids_gives_the_one_process_result():
    model, x, y = cifar_shaped()
    x, y = x[:8], y[:8]
    quick = {"apgd-ce": {"steps": 3}, "apgd-t": {"steps": 3, "n_target_classes": 2},
             "fab-t": {"steps": 3, "n_target_classes": 2}, "square": {"n_queries": 20}}
    whole = A.autoattack(model, x, y, 16 / 255, stage_options=quick, checks=False)
    halves = [A.autoattack(model, x[s], y[s], 16 / 255, sample_ids=torch.arange(8)[s], stage_options=quick,
                           checks=False) for s in (slice(0, 3), slice(3, 8))]
    assert torch.equal(torch.cat([h.broken_by for h in halves]), whole.broken_by)
    calls = []
    chunked = A.autoattack(model, x, y, 16 / 255, stage_options=quick, checks=False, batch_size=3,
                           progress=lambda *call: calls.append(call))
    assert torch.equal(chunked.broken_by, whole.broken_by)
    assert calls[:3] == [("apgd-ce", 3, 8), ("apgd-ce", 6, 8), ("apgd-ce", 8, 8)]
    assert {stage for stage, _, _ in calls} <= set(whole.stages)
    only = A.autoattack(model, x, y, 16 / 255, stages=["square", "apgd-ce"], stage_options=quick, checks=False)
    assert only.stages == ("square", "apgd-ce")


# ------------------------------------------------------------------- bad input, checks


def tiny_model(classes=10):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, classes)).eval()


def tiny_data(n=4):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"eps": -0.1}, "eps must be a finite number >= 0, got -0.1"),
        ({"eps": float("nan")}, "eps must be a finite number >= 0, got nan"),
        ({"eps": float("inf")}, "eps must be a finite number >= 0, got inf"),
        ({"norm": "L1"}, "norm must be 'Linf' or 'L2', got 'L1'"),
        ({"version": "fast"}, r"version must be one of \('standard', 'plus', 'rand'\), got 'fast'"),
        ({"y": torch.tensor([0, 1, 10, 2])}, r"labels y must lie in \[0, 9\]"),
        ({"x": tiny_data()[0] * 2}, r"x must lie in \[0, 1\]"),
        ({"stages": ["apgd-ce", "pgd"]}, "unknown stage 'pgd'"),
        ({"n_classes": 5}, "n_classes=5 but the model returns logits of shape"),
        ({"sample_ids": torch.arange(3)}, "sample_ids must be an int64 tensor of shape"),
    ],
)
def test_bad_input_is_one_line_before_any_work(change, message):
    x, y = tiny_data()
    args = {"x": x, "y": y, "eps": 0.1, **change}
    calls = []
    model = tiny_model()
    model.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match=message) as error:
        A.autoattack(model, args.pop("x"), args.pop("y"), args.pop("eps"), **args)
    assert "\n" not in str(error.value)
    assert len(calls) <= 1  # at most the one clean forward that reads the labels' range


def run_with_warnings(model, x, y, eps=0.05, queries=10):
    quick = {"apgd-ce": {"steps": 2}, "apgd-t": {"steps": 2}, "fab-t": {"steps": 2}, "square": {"n_queries": queries}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = A.autoattack(model, x, y, eps, stage_options=quick)
    issued = [str(w.message) for w in caught if issubclass(w.category, A.AutoAttackWarning)]
    assert issued == result.warnings
    return result.warnings


def test_training_mode_is_said_and_evaluated_in_eval_mode():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10), torch.nn.Dropout(0.5)).train()
    x, y = tiny_data()
    found = run_with_warnings(model, x, y)
    assert any("the model is in training mode" in line for line in found)
    assert not any("differ between two forward passes" in line for line in found)  # dropout was off
    assert model.training and model[2].training  # restored


def test_randomised_model_is_pointed_to_rand():
    class Noisy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = tiny_model()

        def forward(self, x):
            return self.inner(x) + 0.1 * torch.randn(x.shape[0], 10)

    x, y = tiny_data()
    found = run_with_warnings(Noisy(), x, y)
    assert any("version='rand'" in line for line in found)


def test_softmax_outputs_are_flagged():
    model = torch.nn.Sequential(tiny_model(), torch.nn.Softmax(dim=1))
    x, y = tiny_data()
    assert any("look like probabilities" in line for line in run_with_warnings(model, x, y))


def test_masked_gradients_are_flagged_and_square_breaks_what_the_white_box_stages_could_not():
    class Masked(torch.nn.Module):
        """A linear model whose input gradient is zero (its output is detached)."""

        def __init__(self):
            super().__init__()
            self.inner = tiny_model()

        def forward(self, x):
            return self.inner(x).detach() + 0 * x.sum()

    model = Masked().eval()
    x, y = tiny_data(16)
    with torch.no_grad():
        y = model(x).argmax(1)
    found = run_with_warnings(model, x, y, eps=0.05, queries=200)
    assert any("input gradient is zero at 16 of 16" in line for line in found)
    assert any(line.startswith("autoattack: Square broke") and "gradients may be masked" in line for line in found)


def test_fab_in_groups_of_runs_equals_fab_in_one_batch():
    """max_rows splits the (run, sample) rows into groups that skip the samples broken
    by an earlier group: the same output, first successful run first."""
    model, x, y = cifar_shaped()
    x, y = x[:6], y[:6]
    g = lambda: [torch.Generator().manual_seed(i) for i in range(6)]
    options = dict(steps=4, targeted=True, n_target_classes=3, n_restarts=2)
    one = A.fab(model, x, y, 16 / 255, generator=g(), max_rows=4096, **options)  # an accelerator's default
    assert (one != x).flatten(1).any(1).any()
    for max_rows in (None, 12):  # a CPU's default (one run per group), two runs per group
        grouped = A.fab(model, x, y, 16 / 255, generator=g(), max_rows=max_rows, **options)
        torch.testing.assert_close(grouped, one, rtol=0, atol=1e-6)
