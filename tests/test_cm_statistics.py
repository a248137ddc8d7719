"""cm_statistics, most_vulnerable_layers and the streaming CMAccumulator."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lsa_fast
from lsa_fast import reference
from conftest import DEVICES


@settings(max_examples=40, deadline=None)
@given(
    samples=st.integers(1, 300),
    layers=st.integers(1, 20),
    eta=st.floats(-2.0, 2.0),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(samples, layers, eta, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    cm = torch.rand(samples, layers, generator=g, dtype=dtype) * torch.rand(layers, generator=g, dtype=dtype) * 3
    got = lsa_fast.cm_statistics(cm, eta)
    want = reference.cm_statistics(cm, eta)
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    for name in ("mu", "sigma", "layer_mean"):
        assert getattr(got, name).dtype == dtype
        torch.testing.assert_close(getattr(got, name), getattr(want, name), **tol)
    # the mask may only differ where a layer sits on the threshold to rounding
    margin = (want.layer_mean - want.mu - eta * want.sigma).abs()
    assert ((got.mvl == want.mvl) | (margin < 1e-5)).all()


@pytest.mark.parametrize("device", DEVICES)
def test_known_answer_and_mvl_list(device):
    cm = torch.tensor([[0.1, 0.2, 0.9, 0.1], [0.1, 0.2, 1.1, 0.1]], device=device)
    stats = lsa_fast.cm_statistics(cm, eta=1.0)
    values = cm.flatten().double()
    assert stats.mu.item() == pytest.approx(values.mean().item(), rel=1e-6)
    assert stats.sigma.item() == pytest.approx(values.std(unbiased=False).item(), rel=1e-6)
    assert stats.mvl.tolist() == [False, False, True, False]
    assert lsa_fast.most_vulnerable_layers(cm, eta=1.0) == [2]
    assert lsa_fast.most_vulnerable_layers(cm, eta=-10.0) == [0, 1, 2, 3]
    # a [L] vector (batch mode) is one sample
    assert lsa_fast.cm_statistics(cm[0], 0.5).layer_mean.shape == (4,)


@pytest.mark.parametrize("device", DEVICES)
def test_layer_moments(device):
    cm = torch.rand(50, 6, dtype=torch.float64, device=device)
    count, mean, m2, low, high = lsa_fast.layer_moments(cm)
    assert count == 50
    torch.testing.assert_close(mean, cm.mean(0))
    torch.testing.assert_close(m2, ((cm - cm.mean(0)) ** 2).sum(0))
    torch.testing.assert_close(low, cm.min(0).values)
    torch.testing.assert_close(high, cm.max(0).values)


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=8), layers=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_streaming_merge_equals_one_shot(sizes, layers, seed):
    g = torch.Generator().manual_seed(seed)
    batches = [torch.rand(n, layers, generator=g) * 2 for n in sizes]
    acc = lsa_fast.CMAccumulator()
    for batch in batches:
        acc.update(batch)
    whole = torch.cat(batches)
    want = lsa_fast.cm_statistics(whole.double(), 0.3)
    got = acc.result(0.3)
    assert acc.count == whole.shape[0]
    torch.testing.assert_close(got.mu, want.mu, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got.sigma, want.sigma, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got.layer_mean, want.layer_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(acc.min, whole.min(0).values.double())
    torch.testing.assert_close(acc.max, whole.max(0).values.double())
    torch.testing.assert_close(acc.std(), whole.double().std(0, unbiased=False), rtol=1e-6, atol=1e-7)
    # merging two accumulators (two DDP ranks) equals one
    left, right = lsa_fast.CMAccumulator(), lsa_fast.CMAccumulator()
    for i, batch in enumerate(batches):
        (left if i % 2 else right).update(batch)
    merged = lsa_fast.CMAccumulator.from_state(left.state()).merge(right) if left.count else right
    torch.testing.assert_close(merged.result(0.3).sigma, want.sigma, rtol=1e-6, atol=1e-7)


def test_bad_inputs():
    with pytest.raises(ValueError, match="NaN or Inf in layer 1"):
        lsa_fast.cm_statistics(torch.tensor([[0.1, float("nan")]]), 1.0)
    with pytest.raises(ValueError, match="empty"):
        lsa_fast.cm_statistics(torch.empty(0, 3), 1.0)
    with pytest.raises(TypeError, match="floating"):
        lsa_fast.cm_statistics(torch.ones(2, 3, dtype=torch.int64), 1.0)
    with pytest.raises(ValueError, match=r"\[M, L\]"):
        lsa_fast.cm_statistics(torch.ones(2, 3, 4), 1.0)
    with pytest.raises(ValueError, match="no batch"):
        lsa_fast.CMAccumulator().result(1.0)
    acc = lsa_fast.CMAccumulator().update(torch.rand(3, 4))
    with pytest.raises(ValueError, match="expected 4"):
        acc.update(torch.rand(3, 5))
