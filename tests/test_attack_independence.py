"""Every attack's result for a sample is independent of the other samples in its
batch (issue 11, item 2): attack(batch)[i] == attack(batch[i:i+1]) up to float
rounding, with each sample's random numbers drawn from its own generator (the
contract lsa_fast/attacks/_common.py states). L2 PGD agrees with foolbox's L2PGD."""
import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lsa_fast import attacks as A
from pinwheel import pinwheel, trained_mlp

CLASSES = 5

# name -> attack(model, x, y, eps, generator); generator is a list of one per sample.
ATTACKS = {
    "fgsm": lambda m, x, y, eps, g: A.fgsm(m, x, y, eps),
    "fgsm_targeted": lambda m, x, y, eps, g: A.fgsm(m, x, y, eps, targeted=True),
    "fgsm_rs": lambda m, x, y, eps, g: A.fgsm_rs(m, x, y, eps, generator=g),
    "pgd_linf": lambda m, x, y, eps, g: A.pgd(m, x, y, eps, steps=4, generator=g),
    "pgd_l2": lambda m, x, y, eps, g: A.pgd(m, x, y, 4 * eps, steps=4, norm="l2", generator=g),
    "pgd_l2_no_start": lambda m, x, y, eps, g: A.pgd(m, x, y, 4 * eps, steps=4, norm="l2", random_start=False),
    "apgd_ce": lambda m, x, y, eps, g: A.apgd(m, x, y, eps, steps=6, generator=g),
    "apgd_dlr_l2": lambda m, x, y, eps, g: A.apgd(m, x, y, 4 * eps, steps=6, norm="l2", loss="dlr", generator=g),
    "apgd_t": lambda m, x, y, eps, g: A.apgd(m, x, y, eps, steps=5, loss="dlr", targeted=True, n_target_classes=3,
                                             generator=g),
    "apgd_t_ce": lambda m, x, y, eps, g: A.apgd(m, x, y, eps, steps=5, loss="ce", targeted=True, n_target_classes=2,
                                                generator=g),
    "apgd_restarts": lambda m, x, y, eps, g: A.apgd(m, x, y, eps, steps=4, n_restarts=3, generator=g),
    "trades": lambda m, x, y, eps, g: A.trades_perturb(m, x, eps, steps=4, generator=g),
    "fab_restarts": lambda m, x, y, eps, g: A.fab(m, x, y, eps, steps=4, n_restarts=2, generator=g),
    "fab_t_l2": lambda m, x, y, eps, g: A.fab(m, x, y, 4 * eps, steps=4, norm="l2", targeted=True, n_restarts=2,
                                              n_target_classes=2, generator=g),
    "square_linf": lambda m, x, y, eps, g: A.square(m, x, y, eps, n_queries=15, generator=g),
    "square_l2": lambda m, x, y, eps, g: A.square(m, x, y, 4 * eps, n_queries=15, norm="l2", generator=g),
}


def random_model(kind, features, seed, logit_scale):
    """A small fp64 model; logit_scale > 1 makes confident predictions, whose input
    gradients are tiny (what a batch mean used to push under the L2 step's guard)."""
    torch.manual_seed(seed)
    nn = torch.nn
    if kind == "linear":
        layers = [nn.Flatten(), nn.Linear(features, CLASSES)]
    elif kind == "mlp":
        layers = [nn.Flatten(), nn.Linear(features, 8), nn.ReLU(), nn.Linear(8, CLASSES)]
    elif kind == "cnn":
        layers = [nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * features // 2, CLASSES)]
    else:  # "batchnorm": attacks run it in eval mode (the default), so BatchNorm does not mix the batch
        layers = [nn.Flatten(), nn.Linear(features, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, CLASSES)]
    model = nn.Sequential(*layers).double()
    with torch.no_grad():
        model[-1].weight.mul_(logit_scale)
        model[-1].bias.mul_(logit_scale)
    if kind == "batchnorm":
        model[2].running_mean.uniform_(-0.5, 0.5)
        model.train()  # as a training loop would hand it over
    return model


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(sorted(ATTACKS)),
    kind=st.sampled_from(["linear", "mlp", "cnn", "batchnorm"]),
    batch=st.integers(2, 5),
    eps=st.floats(0.01, 0.4),
    logit_scale=st.floats(0.0, 2.5).map(lambda e: 10.0**e),
    seed=st.integers(0, 2**16),
)
def test_attack_of_a_batch_equals_attacks_of_its_samples(name, kind, batch, eps, logit_scale, seed):
    model = random_model(kind, 32, seed, logit_scale)
    data = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 2, 4, 4, generator=data, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (batch,), generator=data)
    seeds = [seed * 7 + i for i in range(batch)]
    attack = ATTACKS[name]
    together = attack(model, x, y, eps, generators(seeds))
    for i in range(batch):
        alone = attack(model, x[i : i + 1], y[i : i + 1], eps, generators(seeds[i : i + 1]))
        torch.testing.assert_close(together[i : i + 1], alone, rtol=0, atol=1e-12, msg=lambda m: f"sample {i}: {m}")


def test_one_generator_per_sample_is_the_stream_a_batch_of_one_gets():
    """For a contiguous sample, a list of one generator and the generator itself draw
    the same numbers; a sample's own generator gives it the same numbers whatever the
    memory layout of its batch."""
    model = random_model("cnn", 32, 0, 1.0)
    x, y = torch.rand(3, 2, 4, 4, dtype=torch.float64), torch.tensor([3, 0, 1])
    for name in ("fgsm_rs", "pgd_linf", "pgd_l2", "apgd_t", "trades"):
        listed = ATTACKS[name](model, x[:1], y[:1], 0.1, generators([5]))
        single = ATTACKS[name](model, x[:1], y[:1], 0.1, torch.Generator().manual_seed(5))
        assert torch.equal(listed, single), name
        contiguous = ATTACKS[name](model, x, y, 0.1, generators([5, 6, 7]))
        channels_last = ATTACKS[name](model, x.to(memory_format=torch.channels_last), y, 0.1, generators([5, 6, 7]))
        torch.testing.assert_close(channels_last, contiguous, rtol=0, atol=1e-12, msg=name)


def test_generator_list_errors():
    model = random_model("linear", 32, 0, 1.0)
    x, y = torch.rand(3, 2, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="got 2 generators for a batch of 3"):
        A.pgd(model, x, y, 0.1, generator=generators([0, 1]))
    with pytest.raises(TypeError, match=r"generator\[1\] is a int"):
        A.fgsm_rs(model, x, y, 0.1, generator=[torch.Generator(), 1, torch.Generator()])
    with pytest.raises(TypeError, match="generator must be a torch.Generator or a list"):
        A.apgd(model, x, y, 0.1, generator=7)


# ------------------------------------------------- PGD-L2 on a confidently trained model


@pytest.fixture(scope="module")
def confident():
    """An MLP trained to a training loss of ~1e-4 (99 % test accuracy): many test
    samples have input gradients of 1e-11..1e-7, where a batch-mean loss divided by
    B = 400 falls under the L2 step's 1e-10 guard."""
    x, y = pinwheel(400, seed=1)
    return trained_mlp(1500), x, y


def robust_accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


@pytest.mark.parametrize("eps", [0.02, 0.05, 0.1])
def test_pgd_l2_batch_equals_one_sample_at_a_time(confident, eps):
    """fp32, a whole test set in one batch against one sample per call."""
    model, x, y = confident
    options = dict(eps=eps, alpha=eps / 4, steps=10, random_start=False, norm="l2")
    together = A.pgd(model, x, y, **options)
    alone = torch.cat([A.pgd(model, x[i : i + 1], y[i : i + 1], **options) for i in range(x.shape[0])])
    moved_apart = (together - alone).abs().amax(dim=1) > 1e-3  # fp32 rounding: ~1e-6, rarely 1e-4
    assert moved_apart.double().mean() <= 0.01, f"{int(moved_apart.sum())} of {x.shape[0]} samples differ"
    assert abs(robust_accuracy(model, together, y) - robust_accuracy(model, alone, y)) <= 1 / x.shape[0]


@pytest.mark.parametrize("eps", [0.02, 0.05, 0.1])
def test_pgd_l2_agrees_with_foolbox(confident, eps):
    """fp64, same settings (no random start, 10 steps of abs_stepsize eps / 4): the
    same adversarials, hence the same robust accuracy."""
    foolbox = pytest.importorskip("foolbox")
    model, x, y = confident
    model, x = copy.deepcopy(model).double(), x.double()
    attack = foolbox.attacks.L2PGD(abs_stepsize=eps / 4, steps=10, random_start=False)
    _, theirs, _ = attack(foolbox.PyTorchModel(model, bounds=(0, 1), device="cpu"), x, y, epsilons=eps)
    ours = A.pgd(model, x, y, eps=eps, alpha=eps / 4, steps=10, random_start=False, norm="l2")
    assert robust_accuracy(model, x, y) > 0.95
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-8)
    assert robust_accuracy(model, ours, y) == robust_accuracy(model, theirs, y)


@pytest.mark.parametrize("noise", [A.gaussian_noise, A.salt, A.pepper, A.salt_and_pepper, A.speckle])
def test_statistical_noise_of_a_sample_is_its_own(noise):
    x = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    together = noise(x, 0.3, generator=generators([10, 11, 12, 13]))
    for i in range(4):
        assert torch.equal(together[i : i + 1], noise(x[i : i + 1], 0.3, generator=generators([10 + i])))
