"""layerwise_regularizer: value, gradients into both branches, argument checks."""
import pytest
import torch

import lsa_fast
from lsa_fast import reference
from conftest import DEVICES


def features(device, requires_grad=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(8, 4, 6, 6), (8, 30), (8, 10)]
    clean = [torch.randn(s, generator=g).to(device) for s in shapes]
    adv = [c + 0.2 * torch.randn(c.shape, generator=g).to(device) for c in clean]
    return [c.requires_grad_(requires_grad) for c in clean], [a.requires_grad_(requires_grad) for a in adv]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["sample", "batch"])
def test_value_and_gradients_match_reference(device, mode):
    clean, adv = features(device)
    ref_clean = [c.detach().clone().requires_grad_() for c in clean]
    ref_adv = [a.detach().clone().requires_grad_() for a in adv]
    got = lsa_fast.layerwise_regularizer(clean, adv, [0, 2], [1.0, 0.5], mode)
    want = reference.layerwise_regularizer(ref_clean, ref_adv, [0, 2], [1.0, 0.5], mode)
    assert got.dim() == 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    got.backward()
    want.backward()
    for i in (0, 2):  # the gradient reaches both branches of the selected layers
        assert clean[i].grad.abs().sum() > 0 and adv[i].grad.abs().sum() > 0
        torch.testing.assert_close(clean[i].grad, ref_clean[i].grad, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(adv[i].grad, ref_adv[i].grad, rtol=1e-4, atol=1e-7)
    assert clean[1].grad is None and adv[1].grad is None


def test_scalar_gamma_is_broadcast():
    clean, adv = features("cpu", requires_grad=False)
    one = lsa_fast.layerwise_regularizer(clean, adv, [0, 1], 2.0)
    two = lsa_fast.layerwise_regularizer(clean, adv, [0, 1], [2.0, 2.0])
    torch.testing.assert_close(one, two)


def test_bad_arguments():
    clean, adv = features("cpu", requires_grad=False)
    with pytest.raises(ValueError, match=r"layer index 3 is outside the 3 probe points \(3 clean, 3 adversarial\)"):
        lsa_fast.layerwise_regularizer(clean, adv, [0, 3], 1.0)
    with pytest.raises(ValueError, match="1 gammas for 2 layers"):
        lsa_fast.layerwise_regularizer(clean, adv, [0, 1], [1.0])
    with pytest.raises(ValueError, match="layers is empty"):
        lsa_fast.layerwise_regularizer(clean, adv, [], 1.0)
    with pytest.raises(ValueError, match=r"layer index 2 is outside the 2 probe points \(3 clean, 2 adversarial\)"):
        lsa_fast.layerwise_regularizer(clean, adv[:2], [2], 1.0)
    # a clean capture stopped after the deepest selected layer is fine
    lsa_fast.layerwise_regularizer(clean[:2], adv, [1], 1.0)


# ------------------------------------------------ lr_grad: the regulariser's gradient paths


def _reference_lr(clean, adversarial, layers, gamma, lr_grad, mode="sample"):
    """LR written with plain torch ops for each gradient-path choice."""
    total = 0
    for i in layers:
        a, b = clean[i], adversarial[i]
        if lr_grad == "adversarial":
            a = a.detach()
        dims = tuple(range(1, a.dim())) if mode == "sample" else None
        diff = torch.linalg.vector_norm(a - b, dim=dims)
        norm_source = a.detach() if lr_grad == "numerator" else a
        cm = diff / torch.linalg.vector_norm(norm_source, dim=dims).clamp_min(1e-12)
        total = total + gamma * cm.mean()
    return total


@pytest.mark.parametrize("lr_grad", ["both", "adversarial", "numerator"])
@pytest.mark.parametrize("mode", ["sample", "batch"])
def test_lr_grad_modes_gradcheck_and_match_plain_torch(lr_grad, mode):
    g = torch.Generator().manual_seed(3)
    clean = [torch.randn(4, 3, 5, generator=g, dtype=torch.float64, requires_grad=True),
             torch.randn(4, 7, generator=g, dtype=torch.float64, requires_grad=True)]
    adversarial = [(c + 0.2 * torch.randn(c.shape, generator=g, dtype=torch.float64)).detach().requires_grad_()
                   for c in clean]
    fn = lambda *t: lsa_fast.layerwise_regularizer(t[:2], t[2:], [0, 1], 0.7, mode=mode, lr_grad=lr_grad)  # noqa: E731
    # the adversarial gradient is the true derivative in every mode (gradcheck); the
    # clean one is the true derivative only for "both" and is compared below
    # with plain torch's detach for the other two
    if lr_grad == "both":
        assert torch.autograd.gradcheck(fn, (*clean, *adversarial))
    else:
        assert torch.autograd.gradcheck(lambda *adv: fn(*clean, *adv), tuple(adversarial))
    ours = torch.autograd.grad(fn(*clean, *adversarial), clean + adversarial, allow_unused=True)
    want = torch.autograd.grad(_reference_lr(clean, adversarial, [0, 1], 0.7, lr_grad, mode), clean + adversarial,
                               allow_unused=True)
    for got, ref in zip(ours, want):
        got = torch.zeros_like(ref) if got is None and ref is not None else got
        if ref is None:
            assert got is None or not got.abs().any()
        else:
            torch.testing.assert_close(got, ref)
    torch.testing.assert_close(fn(*clean, *adversarial), _reference_lr(clean, adversarial, [0, 1], 0.7, "both", mode))


def test_lr_grad_numerator_does_not_reward_growing_the_clean_norm():
    """Scaling phi(x) up lowers CM; with lr_grad="numerator" the clean gradient has
    no component along phi(x) that would do that (it is -dCM/dphi(x_hat))."""
    clean = torch.tensor([[3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    adversarial = torch.tensor([[3.0, 5.0]], dtype=torch.float64, requires_grad=True)
    both = torch.autograd.grad(lsa_fast.layerwise_regularizer([clean], [adversarial], [0], 1.0), clean)[0]
    numerator = torch.autograd.grad(
        lsa_fast.layerwise_regularizer([clean], [adversarial], [0], 1.0, lr_grad="numerator"), clean)[0]
    assert (both * clean).sum() < (numerator * clean).sum()  # "both" pulls towards a larger ||phi(x)||
    with pytest.raises(ValueError, match="lr_grad must be one of"):
        lsa_fast.layerwise_regularizer([clean], [adversarial], [0], 1.0, lr_grad="clean")
