"""The fused PGD projection step against the eager sequence in lsa_fast/reference.py."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lsa_fast
from lsa_fast import reference
from conftest import DEVICES


def inputs(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    x_adv = (x + 0.05 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    grad.view(-1)[:3] = 0  # sign(0) = 0
    return [t.to(dtype).to(device) for t in (x_adv, grad, x)]


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    eps=st.floats(0.0, 0.5),
    alpha=st.floats(0.0, 0.2),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    norm=st.sampled_from(["linf", "l2"]),
    seed=st.integers(0, 2**16),
)
def test_matches_eager_sequence(shape, eps, alpha, dtype, norm, seed):
    x_adv, grad, x = inputs(shape, dtype, "cpu", seed)
    got = lsa_fast.pgd_step(x_adv, grad, x, alpha, eps, norm)
    step = reference.pgd_step_linf if norm == "linf" else reference.pgd_step_l2
    want = step(x_adv, grad, x, alpha, eps)
    assert got.dtype == dtype and got.shape == x.shape
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert got.min() >= 0 and got.max() <= 1
    delta = (got - x).reshape(x.shape[0], -1).double()
    if norm == "linf":
        assert delta.abs().max() <= eps + 1e-6
    else:
        assert (delta.norm(dim=1) <= eps * (1 + 1e-5) + 1e-7).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_devices_and_dtypes(device, norm, dtype):
    x_adv, grad, x = inputs((16, 3, 8, 8), dtype, device, seed=1)
    got = lsa_fast.pgd_step(x_adv, grad, x, 0.01, 0.03, norm)
    step = reference.pgd_step_linf if norm == "linf" else reference.pgd_step_l2
    # the kernel computes in fp32 (fp64) between the loads and the store
    want = step(*(t.to(reference.accumulation_dtype(dtype)) for t in (x_adv, grad, x)), 0.01, 0.03).to(dtype)
    tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3}.get(dtype, 1e-6)
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    x_adv, grad, x = inputs((4, 5), torch.float32, device)
    for name in ("pgd_step_linf", "pgd_step_l2"):
        torch.library.opcheck(getattr(torch.ops.lsa_fast, name), (x_adv, grad, x, 0.01, 0.1))


def test_bad_arguments():
    x_adv, grad, x = inputs((4, 5), torch.float32, "cpu")
    with pytest.raises(ValueError, match="norm must be"):
        lsa_fast.pgd_step(x_adv, grad, x, 0.1, 0.1, "l1")
    with pytest.raises(ValueError, match="grad has shape"):
        lsa_fast.pgd_step(x_adv, grad[:2], x, 0.1, 0.1)
    with pytest.raises(ValueError, match="eps and alpha must be >= 0"):
        lsa_fast.pgd_step(x_adv, grad, x, 0.1, -0.1)
    with pytest.raises(RuntimeError, match="same dtype"):
        torch.ops.lsa_fast.pgd_step_linf(x_adv, grad.double(), x, 0.1, 0.1)
