"""lsa_fast.attacks: oracle tests against torchattacks (a test-only dependency), the
threat-model invariants under hypothesis, determinism, model hygiene (mode restored,
no parameter gradients, no host sync per step), one-logit models, clear errors."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lsa_fast import attacks as A
from pinwheel import pinwheel as pinwheel_points, trained_mlp



@pytest.fixture(scope="module")
def torchattacks():
    """The oracle, only for the tests that compare with it: without it the rest runs."""
    return pytest.importorskip("torchattacks")

SETTINGS = settings(max_examples=20, deadline=None)


# ----------------------------------------------------------------------------- models


def small_cnn(classes=10, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, classes),
    ).to(dtype)


def linear_model(features, classes, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(features, classes)).to(dtype)


def images(batch=8, seed=1, classes=10, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 6, 6, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (batch,), generator=g)
    return x, y


def pinwheel(n, seed):
    """tests/pinwheel.py's points shaped [N, 1, 1, 2]: torchattacks' APGD assumes 4-D images."""
    x, y = pinwheel_points(n, seed)
    return x.reshape(n, 1, 1, 2), y


@pytest.fixture(scope="module")
def trained():
    """A 4-class MLP trained for a few seconds: ~97% clean, partly robust at eps 0.04."""
    model = torch.nn.Sequential(torch.nn.Flatten(), trained_mlp(250))
    for p in model.parameters():
        p.requires_grad_(True)  # as a user's model: the attacks must leave no parameter gradient
    x_test, y_test = pinwheel(500, seed=1)
    return model, x_test, y_test


def accuracy(model, x, y):
    with torch.no_grad():
        return 100.0 * (model(x).argmax(1) == y).float().mean().item()


# ---------------------------------------------------------------- oracle: torchattacks


def test_fgsm_equals_torchattacks(torchattacks):
    model, (x, y) = small_cnn(), images()
    for eps in (0.03, 0.3):
        expected = torchattacks.FGSM(model, eps=eps)(x, y)
        assert torch.equal(A.fgsm(model, x, y, eps), expected)


def test_pgd_linf_equals_torchattacks(torchattacks):
    model, (x, y) = small_cnn(), images()
    expected = torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=7, random_start=False)(x, y)
    ours = A.pgd(model, x, y, eps=0.1, alpha=0.02, steps=7, random_start=False)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_pgd_targeted_equals_torchattacks(torchattacks):
    model, (x, _) = small_cnn(), images()
    target = torch.arange(x.shape[0]) % 10
    attack = torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=5, random_start=False)
    attack.set_mode_targeted_by_function(lambda images, labels: labels)  # the labels are the targets (3.3 and 3.5)
    ours = A.pgd(model, x, target, eps=0.1, alpha=0.02, steps=5, random_start=False, targeted=True)
    torch.testing.assert_close(ours, attack(x, target), rtol=0, atol=1e-6)


def test_pgd_l2_equals_torchattacks_pgdl2(torchattacks):
    model, (x, y) = small_cnn(), images()
    expected = torchattacks.PGDL2(model, eps=0.5, alpha=0.1, steps=7, random_start=False)(x, y)
    ours = A.pgd(model, x, y, eps=0.5, alpha=0.1, steps=7, random_start=False, norm="l2")
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "norm, loss, eps",
    [("linf", "ce", 0.04), ("linf", "dlr", 0.04), ("l2", "ce", 0.05)],
)
def test_apgd_robust_accuracy_matches_torchattacks(trained, norm, loss, eps, torchattacks):
    model, x, y = trained
    clean = accuracy(model, x, y)
    theirs = accuracy(model, torchattacks.APGD(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, steps=30, loss=loss)(x, y), y)
    ours = accuracy(model, A.apgd(model, x, y, eps, steps=30, norm=norm, loss=loss, generator=torch.Generator().manual_seed(0)), y)
    assert 10 < theirs < clean - 5, "the test model must be partly robust for the comparison to mean something"
    assert abs(ours - theirs) <= 2.0


def test_apgd_targeted_matches_torchattacks_apgdt(trained, torchattacks):
    model, x, y = trained
    theirs = accuracy(model, torchattacks.APGDT(model, norm="Linf", eps=0.04, steps=20, n_classes=4)(x, y), y)
    ours = accuracy(model, A.apgd(model, x, y, 0.04, steps=20, loss="dlr", targeted=True, n_target_classes=3), y)
    assert abs(ours - theirs) <= 2.0


# --------------------------------------------------------------- invariants (hypothesis)

ADVERSARIAL = {
    "fgsm": lambda m, x, y, eps, g: A.fgsm(m, x, y, eps),
    "fgsm_rs": lambda m, x, y, eps, g: A.fgsm_rs(m, x, y, eps, generator=g),
    "pgd": lambda m, x, y, eps, g: A.pgd(m, x, y, eps, steps=3, generator=g),
    "pgd_l2": lambda m, x, y, eps, g: A.pgd(m, x, y, eps, steps=3, norm="l2", generator=g),
    "apgd_ce": lambda m, x, y, eps, g: A.apgd(m, x, y, eps, steps=4, generator=g),
    "apgd_dlr_l2": lambda m, x, y, eps, g: A.apgd(m, x, y, eps, steps=4, norm="l2", loss="dlr", generator=g),
    "apgd_t": lambda m, x, y, eps, g: A.apgd(m, x, y, eps, steps=3, loss="dlr", targeted=True, n_target_classes=2, generator=g),
    "apgd_restarts": lambda m, x, y, eps, g: A.apgd(m, x, y, eps, steps=3, n_restarts=2, generator=g),
    "trades": lambda m, x, y, eps, g: A.trades_perturb(m, x, eps, steps=3, generator=g),
}
L2_ATTACKS = {"pgd_l2", "apgd_dlr_l2"}
SHAPES = [(5,), (2, 3), (1, 3, 3), (3, 2, 2)]


@SETTINGS
@given(
    name=st.sampled_from(sorted(ADVERSARIAL)),
    eps=st.floats(0.0, 0.5),
    shape=st.sampled_from(SHAPES),
    batch=st.integers(1, 4),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_adversarial_output_in_box_and_ball(name, eps, shape, batch, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    features = math.prod(shape)
    model = linear_model(features, 4, seed=seed, dtype=dtype)
    x = torch.rand(batch, *shape, generator=g, dtype=dtype)
    y = torch.randint(0, 4, (batch,), generator=g)
    x_hat = ADVERSARIAL[name](model, x, y, eps, g)
    assert x_hat.dtype == dtype and x_hat.shape == x.shape and not x_hat.requires_grad
    assert x_hat.min() >= 0 and x_hat.max() <= 1
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    delta = (x_hat - x).reshape(batch, -1)
    if name in L2_ATTACKS:
        assert (torch.linalg.vector_norm(delta, dim=1) <= eps * (1 + tol) + tol).all()
    else:
        assert delta.abs().max() <= eps + tol


NOISES = {
    "gaussian_noise": A.gaussian_noise,
    "salt": A.salt,
    "pepper": A.pepper,
    "salt_and_pepper": A.salt_and_pepper,
    "speckle": A.speckle,
}


@SETTINGS
@given(
    name=st.sampled_from(sorted(NOISES)),
    strength=st.floats(0.0, 1.0),
    shape=st.sampled_from(SHAPES),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_noise_output_in_box(name, strength, shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, *shape, generator=g, dtype=dtype)
    x_hat = NOISES[name](x, strength, generator=g)
    assert x_hat.dtype == dtype and x_hat.shape == x.shape
    assert x_hat.min() >= 0 and x_hat.max() <= 1
    changed = x_hat != x
    if name == "salt":
        assert (x_hat[changed] == 1).all()
    if name == "pepper":
        assert (x_hat[changed] == 0).all()
    if name == "salt_and_pepper":
        assert ((x_hat[changed] == 0) | (x_hat[changed] == 1)).all()
    if strength == 0:
        assert torch.equal(x_hat, x)


def test_noise_strength_means_what_it_says():
    g = torch.Generator().manual_seed(0)
    x = torch.full((200, 50), 0.5)
    assert abs((A.salt(x, 0.3, generator=g) == 1).float().mean().item() - 0.3) < 0.02
    sp = A.salt_and_pepper(x, 0.4, salt_vs_pepper=0.25, generator=g)
    assert abs((sp == 1).float().mean().item() - 0.1) < 0.02
    assert abs((sp == 0).float().mean().item() - 0.3) < 0.02
    assert abs((A.gaussian_noise(x, 0.1, generator=g) - x).std().item() - 0.1) < 0.005
    assert abs(((A.speckle(x, 0.1, generator=g) - x) / x).std().item() - 0.1) < 0.005
    assert torch.equal(A.speckle(torch.zeros(4, 4), 0.5, generator=g), torch.zeros(4, 4))


# ---------------------------------------------------------------------- determinism

RANDOM_ATTACKS = ["fgsm_rs", "pgd", "pgd_l2", "apgd_ce", "apgd_t", "trades"]


@pytest.mark.parametrize("name", RANDOM_ATTACKS)
def test_deterministic_under_a_generator(name):
    model, (x, y) = linear_model(108, 4), images(classes=4)
    first = ADVERSARIAL[name](model, x, y, 0.1, torch.Generator().manual_seed(7))
    again = ADVERSARIAL[name](model, x, y, 0.1, torch.Generator().manual_seed(7))
    assert torch.equal(first, again)


def test_random_starts_depend_on_the_seed():
    model, (x, y) = linear_model(108, 4), images(classes=4)
    one = A.fgsm_rs(model, x, y, 0.1, generator=torch.Generator().manual_seed(1))
    two = A.fgsm_rs(model, x, y, 0.1, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(one, two)


def test_noises_deterministic_under_a_generator():
    x = torch.rand(4, 10)
    for function in NOISES.values():
        assert torch.equal(function(x, 0.2, generator=torch.Generator().manual_seed(3)),
                           function(x, 0.2, generator=torch.Generator().manual_seed(3)))


# --------------------------------------------------------------------- model hygiene


class Recorder(torch.nn.Module):
    """BatchNorm + dropout model that records the mode each forward ran in."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(108, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU())
        self.dropout = torch.nn.Dropout(0.5)
        self.head = torch.nn.Linear(16, 4)
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.head(self.dropout(self.body(x)))


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_mode_restored_and_no_parameter_grad(name):
    model, (x, y) = Recorder(), images(classes=4)
    model.train()
    model.dropout.eval()  # a mixed state must come back exactly
    before = {n: m.training for n, m in model.named_modules()}
    stats = model.body[2].running_mean.clone()
    ADVERSARIAL[name](model, x, y, 0.1, torch.Generator().manual_seed(0))
    assert {n: m.training for n, m in model.named_modules()} == before
    assert all(p.grad is None for p in model.parameters())
    assert model.modes and not any(model.modes), "attacks run in eval mode by default"
    assert torch.equal(model.body[2].running_mean, stats), "eval mode leaves BatchNorm statistics alone"


@pytest.mark.parametrize("model_mode, expected", [("train", True), ("keep", True)])
def test_model_mode_option(model_mode, expected):
    model, (x, y) = Recorder(), images(classes=4)
    model.train()
    A.pgd(model, x, y, 0.1, steps=2, model_mode=model_mode, generator=torch.Generator().manual_seed(0))
    assert model.modes and all(mode == expected for mode in model.modes)
    assert model.training
    model.eval()
    model.modes.clear()
    A.fgsm(model, x, y, 0.1, model_mode="keep")
    assert model.modes == [False] and not model.training


def test_no_host_sync_per_step(monkeypatch):
    """The number of host reads is the same for 1 step and for 12: none in the loop."""
    reads = {"count": 0}

    def counting(method):
        def wrapper(self, *args, **kwargs):
            reads["count"] += 1
            return method(self, *args, **kwargs)

        return wrapper

    for method in ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, method, counting(getattr(torch.Tensor, method)))
    model, (x, y) = linear_model(108, 5), images(classes=5)

    def reads_for(run):
        reads["count"] = 0
        run()
        return reads["count"]

    g = torch.Generator().manual_seed(0)
    for attack in (
        lambda steps: A.pgd(model, x, y, 0.1, steps=steps, generator=g),
        lambda steps: A.pgd(model, x, y, 0.3, steps=steps, norm="l2", generator=g),
        lambda steps: A.apgd(model, x, y, 0.1, steps=steps, generator=g),
        lambda steps: A.apgd(model, x, y, 0.1, steps=steps, loss="dlr", targeted=True, n_target_classes=2,
                             generator=g, skip_fooled=False),
        lambda steps: A.trades_perturb(model, x, 0.1, steps=steps, generator=g),
    ):
        assert reads_for(lambda: attack(1)) == reads_for(lambda: attack(12)) <= 1
    # AutoAttack's order (skip_fooled, the default) gathers the samples left to attack
    # once per run after the first: one read per run, none per step.
    runs = 3
    targeted = lambda steps: A.apgd(model, x, y, 0.1, steps=steps, loss="dlr", targeted=True, n_target_classes=runs,
                                    generator=g)
    assert reads_for(lambda: targeted(1)) == reads_for(lambda: targeted(12)) <= runs


# ----------------------------------------------------------------- one-logit models


class Binary(torch.nn.Module):
    def __init__(self, squeeze):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.squeeze = squeeze
        with torch.no_grad():  # put the decision boundary through the unit square
            self.net[2].bias -= self.net(torch.rand(256, 2, generator=torch.Generator().manual_seed(9))).median()

    def forward(self, x):
        out = self.net(x)
        return out.squeeze(1) if self.squeeze else out


@pytest.mark.parametrize("squeeze", [False, True])
def test_one_logit_model(squeeze):
    model = Binary(squeeze)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 2, generator=g)
    with torch.no_grad():
        y = (model(x).reshape(-1) > 0).float()  # labels the model gets right
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    for name in ("fgsm", "fgsm_rs", "pgd", "pgd_l2", "apgd_ce", "trades"):
        x_hat = ADVERSARIAL[name](model, x, y, 0.2, g)
        assert x_hat.shape == x.shape and 0 <= x_hat.min() and x_hat.max() <= 1
        with torch.no_grad():
            if name != "trades":
                assert bce(model(x_hat).reshape(-1), y) > bce(model(x).reshape(-1), y)
    x_hat = A.apgd(model, x, y.long(), 0.3, steps=20)  # integer labels work as well
    with torch.no_grad():
        fooled = (model(x_hat).reshape(-1) > 0).long() != y.long()
    assert fooled.any()
    with pytest.raises(ValueError, match="at least 3 logits"):
        A.apgd(model, x, y, 0.1, steps=2, loss="dlr")
    with pytest.raises(ValueError, match="C >= 3"):
        A.apgd(model, x, y, 0.1, steps=2, targeted=True)
    with pytest.raises(ValueError, match=r"\{0, 1\}"):
        A.fgsm(model, x, y * 2, 0.1)


def test_predicted_class():
    assert A.predicted_class(torch.tensor([[-1.0], [2.0]])).tolist() == [0, 1]
    assert A.predicted_class(torch.tensor([-1.0, 2.0])).tolist() == [0, 1]
    assert A.predicted_class(torch.tensor([[0.0, 3.0, 1.0]])).tolist() == [1]


# --------------------------------------------------------------------------- errors


def nan_model(x):
    return torch.full((x.shape[0], 3), float("nan")) + 0 * x.reshape(x.shape[0], -1).sum(1, keepdim=True)


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_bad_arguments_give_clear_errors(name):
    attack = ADVERSARIAL[name]
    model, (x, y) = linear_model(108, 4), images(classes=4)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="eps must be"):
        attack(model, x, y, -0.1, g)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attack(model, x * 2, y, 0.1, g)
    with pytest.raises(ValueError, match="NaN"):
        attack(nan_model, x, y, 0.1, g)
    if name != "trades":
        with pytest.raises(ValueError, match="one label per sample"):
            attack(model, x, y[:-1], 0.1, g)
        with pytest.raises(ValueError, match="one label per sample"):
            attack(model, x, y[:, None], 0.1, g)
        with pytest.raises(ValueError, match=r"labels y must lie in \[0, 3\]"):
            attack(model, x, y + 4, 0.1, g)
        with pytest.raises(TypeError, match="integer class labels"):
            attack(model, x, y.float(), 0.1, g)


def test_bad_options_give_clear_errors():
    model, (x, y) = linear_model(108, 4), images(classes=4)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        A.pgd(model, x, y, 0.1, steps=0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        A.apgd(model, x, y, 0.1, steps=0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        A.trades_perturb(model, x, 0.1, steps=0)
    with pytest.raises(ValueError, match="n_restarts must be >= 1"):
        A.apgd(model, x, y, 0.1, n_restarts=0)
    with pytest.raises(ValueError, match="norm must be one of"):
        A.pgd(model, x, y, 0.1, norm="l1")
    with pytest.raises(ValueError, match="loss must be one of"):
        A.apgd(model, x, y, 0.1, loss="hinge")
    with pytest.raises(ValueError, match="alpha must be"):
        A.pgd(model, x, y, 0.1, alpha=-1.0)
    with pytest.raises(ValueError, match="model_mode must be one of"):
        A.fgsm(model, x, y, 0.1, model_mode="inference")
    with pytest.raises(TypeError, match="floating"):
        A.fgsm(model, (x * 255).to(torch.uint8), y, 0.1)
    with pytest.raises(ValueError, match="amount is a probability"):
        A.salt(x, 1.5)
    with pytest.raises(ValueError, match="std must be"):
        A.gaussian_noise(x, -1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        A.speckle(x - 1, 0.1)
    with pytest.raises(ValueError, match="logits of shape"):
        A.fgsm(lambda t: t, x, y, 0.1)


def test_eps_zero_is_the_identity():
    model, (x, y) = linear_model(108, 4), images(classes=4)
    for name, attack in ADVERSARIAL.items():
        assert torch.equal(attack(model, x, y, 0.0, torch.Generator().manual_seed(0)), x), name


# ------------------------------------------------------------------------- registry


def test_parse_attack_spec():
    assert A.parse_attack_spec("pgd:0.3") == ("pgd", 0.3)
    assert A.parse_attack_spec("FGSM_RS:0.1") == A.AttackSpec("fgsm-rs", 0.1)
    assert A.parse_attack_spec("fast:0.1").name == "fgsm-rs"
    assert A.parse_attack_spec("apgd-t") == ("apgd-t", None)
    for bad, message in (("nope:0.1", "unknown attack"), ("pgd:abc", "not a number"), ("pgd:-1", ">= 0"), ("", "name:eps")):
        with pytest.raises(ValueError, match=message):
            A.parse_attack_spec(bad)


def test_make_and_get_attack():
    model, (x, y) = linear_model(108, 4), images(classes=4)
    attack = A.get_attack("pgd:0.1", steps=3, random_start=False)
    assert repr(attack) == "pgd(eps=0.1, steps=3, random_start=False)"
    assert torch.equal(attack(model, x, y), A.pgd(model, x, y, 0.1, steps=3, random_start=False))
    assert torch.equal(A.get_attack("pgd", eps=0.1, steps=3, random_start=False)(model, x, y), attack(model, x, y))
    with pytest.raises(ValueError, match="has no eps"):
        A.get_attack("pgd")
    with pytest.raises(ValueError, match="says eps"):
        A.get_attack("pgd:0.1", eps=0.2)
    with pytest.raises(ValueError, match="eps must be"):
        A.make_attack("fgsm", -1)


@pytest.mark.parametrize("name", sorted(A.ATTACKS))
def test_every_registered_attack_has_the_uniform_convention(name):
    model, (x, y) = linear_model(108, 4), images(classes=4)
    options = {"steps": 2} if name.startswith(("pgd", "apgd", "trades", "fab")) else {}
    if name in ("apgd-t", "fab-t"):
        options["n_target_classes"] = 2
    if name == "square":
        options["n_queries"] = 5
    if name == "autoattack":  # seeded by (seed, sample id), not by a generator
        options["stage_options"] = {"apgd-ce": {"steps": 2}, "apgd-t": {"steps": 2}, "fab-t": {"steps": 2},
                                    "square": {"n_queries": 5}}
    elif name != "fgsm":
        options["generator"] = torch.Generator().manual_seed(0)
    x_hat = A.make_attack(name, 0.1, **options)(model, x, y)
    assert x_hat.shape == x.shape and x_hat.dtype == x.dtype
    assert 0 <= x_hat.min() and x_hat.max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_attacks_on_cuda_match_cpu():
    model, (x, y) = small_cnn(), images()
    cuda_model = small_cnn().cuda()
    for name in ("fgsm", "pgd", "pgd_l2"):
        cpu = {"fgsm": lambda m, a, b: A.fgsm(m, a, b, 0.1),
               "pgd": lambda m, a, b: A.pgd(m, a, b, 0.1, steps=5, random_start=False),
               "pgd_l2": lambda m, a, b: A.pgd(m, a, b, 0.5, steps=5, random_start=False, norm="l2")}[name]
        torch.testing.assert_close(cpu(cuda_model, x.cuda(), y.cuda()).cpu(), cpu(model, x, y), atol=1e-4, rtol=0)
    g = torch.Generator(device="cuda").manual_seed(0)
    x_hat = A.apgd(cuda_model, x.cuda(), y.cuda(), 0.1, steps=10, generator=g)
    assert x_hat.device.type == "cuda" and (x_hat - x.cuda()).abs().max() <= 0.1 + 1e-6


def test_no_value_checks_skips_the_value_check_only():
    """Inside no_value_checks() an out-of-range x is not looked at (no host sync);
    outside it is a clear error again."""
    from lsa_fast.attacks import fgsm, no_value_checks

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x = torch.full((2, 4), 2.0)
    y = torch.tensor([0, 1])
    with no_value_checks():
        fgsm(model, x, y, eps=0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fgsm(model, x, y, eps=0.1)
