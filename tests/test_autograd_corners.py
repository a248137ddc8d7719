"""relative_error's autograd corners (issue 11, point 4): double backward is exact,
torch.func transforms are refused with a clear message, and the NaN policy under
torch.compile is the documented one (eager raises; a compiled graph, which must not
wait on the device, propagates NaN)."""
import pytest
import torch

import lsa_fast
from lsa_fast import reference
from conftest import DEVICES


def pair(device, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    return a.to(device), (a + 0.1 * torch.randn(a.shape, generator=g, dtype=torch.float64)).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["sample", "batch"])
def test_double_backward_is_exact(device, mode):
    a, b = pair(device)
    inputs = (a.clone().requires_grad_(), b.clone().requires_grad_())
    assert torch.autograd.gradgradcheck(lambda x, y: lsa_fast.relative_error([x], [y], mode), inputs)
    # and equals the reference's second derivative, not PyTorch's silent zeros
    x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
    (gx,) = torch.autograd.grad(lsa_fast.relative_error([x], [y], mode).sum(), x, create_graph=True)
    (hy,) = torch.autograd.grad(gx.square().sum(), y)
    x2, y2 = a.clone().requires_grad_(), b.clone().requires_grad_()
    (gx2,) = torch.autograd.grad(reference.relative_error([x2], [y2], mode).sum(), x2, create_graph=True)
    (hy2,) = torch.autograd.grad(gx2.square().sum(), y2)
    assert hy.abs().max() > 0
    torch.testing.assert_close(hy, hy2)


def test_first_backward_still_uses_the_fused_kernel():
    a, b = pair("cpu")
    x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
    with torch.profiler.profile() as prof:
        lsa_fast.relative_error([x], [y]).sum().backward()
    names = {e.name for e in prof.events()}
    assert "lsa_fast::relative_error_backward" in names and "aten::linalg_vector_norm" not in names


@pytest.mark.parametrize("transform", ["grad", "vmap"])
def test_func_transforms_are_refused_clearly(transform):
    a, b = pair("cpu")
    if transform == "grad":
        call = lambda: torch.func.grad(lambda x, y: lsa_fast.relative_error([x], [y]).sum())(a, b)  # noqa: E731
    else:
        call = lambda: torch.vmap(lambda x, y: lsa_fast.relative_error([x], [y]))(a, b)  # noqa: E731
    with pytest.raises(NotImplementedError, match="torch.func transforms .* are not supported"):
        call()


def test_nan_policy_eager_raises_compiled_propagates():
    a, b = pair("cpu")
    a[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer 0 \\(clean\\) contains NaN or Inf"):
        lsa_fast.relative_error([a], [b])
    compiled = torch.compile(lambda x, y: lsa_fast.relative_error([x], [y]), backend="aot_eager", fullgraph=True)
    cm = compiled(a, b)
    assert torch.isnan(cm[1, 0]) and torch.isfinite(cm[[0, 2], 0]).all()
