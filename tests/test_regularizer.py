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
