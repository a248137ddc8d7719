"""Edge cases of the kernels that a careful read found (issue 12) and the memory
layouts torch.compile keeps (issue 11): overflow-free gradients, one NaN policy,
device checks in C++, any dense layout in and the same layout out, huge batches."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lsa_fast
from lsa_fast import reference
from conftest import DEVICES

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


# ------------------------------------------------------------ backward without overflow


def fp64_gradients(clean, perturbed, eps=1e-12):
    a = clean.double().requires_grad_()
    b = perturbed.double().requires_grad_()
    reference.relative_error([a], [b], "sample", eps).sum().backward()
    return a.grad, b.grad


def test_backward_of_tiny_clean_norm_and_large_difference_is_finite():
    clean = torch.tensor([[2e-12, 0.0, 1e-12]], requires_grad=True)
    perturbed = torch.tensor([[1e4, 0.0, 0.0]], requires_grad=True)
    lsa_fast.relative_error([clean], [perturbed]).sum().backward()
    want_clean, want_perturbed = fp64_gradients(clean.detach(), perturbed.detach())
    assert torch.isfinite(clean.grad).all() and torch.isfinite(perturbed.grad).all()
    torch.testing.assert_close(clean.grad.double(), want_clean, rtol=1e-5, atol=0)
    torch.testing.assert_close(perturbed.grad.double(), want_perturbed, rtol=1e-5, atol=0)


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    clean_exponent=st.integers(-11, 18),
    diff_exponent=st.integers(-11, 18),
    size=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_backward_never_inf_or_nan_where_fp64_is_representable(dtype, clean_exponent, diff_exponent, size, seed):
    """Tiny and huge norms in every dtype: where the fp64 gradient fits the input's
    dtype, ours is finite and close to it (fp16 may saturate: never inf)."""
    info = torch.finfo(dtype)
    g = torch.Generator().manual_seed(seed)
    clean64 = torch.randn(1, size, generator=g, dtype=torch.float64) * 10.0**clean_exponent
    perturbed64 = clean64 + torch.randn(1, size, generator=g, dtype=torch.float64) * 10.0**diff_exponent
    clean, perturbed = clean64.to(dtype), perturbed64.to(dtype)
    if not (torch.isfinite(clean).all() and torch.isfinite(perturbed).all()):
        return  # the inputs themselves do not fit the dtype
    sums = torch.stack([(clean.double() - perturbed.double()).square().sum(), clean.double().square().sum()])
    if sums.max() > torch.finfo(reference.accumulation_dtype(dtype)).max / 4:
        return  # the sums of squares overflow the accumulator: the forward raises (tested below)
    a, b = clean.clone().requires_grad_(), perturbed.clone().requires_grad_()
    lsa_fast.relative_error([a], [b]).sum().backward()
    want_a, want_b = fp64_gradients(clean, perturbed)
    for got, want in ((a.grad, want_a), (b.grad, want_b)):
        assert not torch.isnan(got).any()
        if dtype == torch.float16:
            assert torch.isfinite(got).all()  # saturated at 65504, never inf
        elif torch.isfinite(want).all() and want.abs().max() < info.max:
            assert torch.isfinite(got).all()
            # elements far below the largest one are rounding noise of the computation
            scale = want.abs().max().item()
            tol = {torch.float32: 1e-4, torch.float64: 1e-10}.get(dtype, 2e-2)
            assert (got.double() - want).abs().max().item() <= tol * scale + info.tiny


def test_overflowing_sums_of_squares_are_a_clear_error():
    clean = torch.full((1, 4), 1e30)
    with pytest.raises(ValueError, match="layer 0: the sum of squares overflows float32"):
        lsa_fast.relative_error([clean], [clean * 0.5])


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_dead_clean_sample_gradient_is_finite(device):
    """A dead (all-zero) clean sample in fp16: the norm floor is fp16's smallest normal
    number, not 1e-12, and what still exceeds fp16 saturates instead of becoming inf."""
    clean = torch.zeros(2, 64, dtype=torch.float16, device=device)
    clean[1] = 0.5
    perturbed = (clean + 0.01).requires_grad_()
    clean.requires_grad_()
    cm = lsa_fast.relative_error([clean], [perturbed])
    assert cm[0, 0].item() == pytest.approx(0.08 / torch.finfo(torch.float16).tiny, rel=1e-3)  # ||diff|| / 6.1e-5
    cm.mean().backward()
    assert perturbed.grad[0].abs().max().item() == pytest.approx(0.5 / 6.103515625e-05 / 8, rel=1e-3)
    clean.grad = perturbed.grad = None
    (lsa_fast.relative_error([clean], [perturbed]).sum() * 1e6).backward()
    for grad in (clean.grad, perturbed.grad):
        assert torch.isfinite(grad).all()
    assert perturbed.grad[0].abs().max().item() == 65504.0  # saturated


def test_bf16_autocast_training_step_with_a_dead_sample_has_finite_gradients():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every hidden unit dead for every sample
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        clean = model[1](model[0](x))
        perturbed = model[1](model[0](x + 0.1))
        loss = lsa_fast.layerwise_regularizer([clean], [perturbed], layers=[0], gammas=1.0)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.cuda
def test_fp16_autocast_grad_scaler_keeps_stepping_with_a_dead_sample():
    """With a 1e-12 floor the scaler skipped every step while the dead sample was
    probed; now it lowers its scale a few times and then steps."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # fixed weights: the scaler's dynamics alone
    scaler = torch.amp.GradScaler("cuda")
    x = torch.randn(4, 8, device="cuda")
    x[0] = 0  # with a zero bias below, this sample's hidden layer is all zero
    with torch.no_grad():
        model[0].bias.zero_()
    taken = []
    for _ in range(40):
        optimizer.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            hidden = model[0](x)
            hidden_adv = model[0](x + 0.01)
            loss = torch.nn.functional.cross_entropy(model[2](model[1](hidden)), torch.zeros(4, dtype=torch.long, device="cuda"))
            loss = loss + lsa_fast.layerwise_regularizer([hidden], [hidden_adv], layers=[0], gammas=1.0)
        scaler.scale(loss).backward()
        before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        taken.append(scaler.get_scale() >= before)
    assert all(taken[-20:]), taken
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ------------------------------------------------------------------ NaN policy of min/max


@pytest.mark.parametrize("device", DEVICES)
def test_cm_statistics_min_max_propagate_nan_on_every_device(device):
    cm = torch.rand(300, 3, dtype=torch.float64, device=device)
    cm[17, 1] = float("nan")
    _, _, _, _, low, high, _ = torch.ops.lsa_fast.cm_statistics(cm, 1.0)
    assert torch.isnan(low[1]) and torch.isnan(high[1])
    assert torch.isfinite(low[[0, 2]]).all() and torch.isfinite(high[[0, 2]]).all()
    cm[0, 2] = float("nan")  # in the first row too (the CPU kernel seeded min/max from it)
    _, _, _, _, low, high, _ = torch.ops.lsa_fast.cm_statistics(cm, 1.0)
    assert torch.isnan(low[2]) and torch.isnan(high[2]) and torch.isfinite(low[0])


# ------------------------------------------------------------------------ device checks


@pytest.mark.cuda
def test_raw_ops_refuse_mixed_devices():
    x = torch.rand(4, 5, device="cuda")
    for name in ("pgd_step_linf", "pgd_step_l2"):
        op = getattr(torch.ops.lsa_fast, name)
        with pytest.raises(RuntimeError, match="x_orig is on a different device from x_adv"):
            op(x, torch.randn_like(x), x.cpu(), 0.1, 0.1)
        with pytest.raises(RuntimeError, match="grad is on a different device from x_adv"):
            op(x, torch.randn(4, 5), x, 0.1, 0.1)
    a, b = torch.rand(4, 5, device="cuda"), torch.rand(4, 5, device="cuda")
    cm, norms = torch.ops.lsa_fast.relative_error([a], [b], False, 1e-12)
    with pytest.raises(RuntimeError, match="grad_cm is on a different device from layer 0"):
        torch.ops.lsa_fast.relative_error_backward(torch.ones_like(cm).cpu(), [a], [b], norms, False, 1e-12)
    with pytest.raises(RuntimeError, match="norms is on a different device from layer 0"):
        torch.ops.lsa_fast.relative_error_backward(torch.ones_like(cm), [a], [b], norms.cpu(), False, 1e-12)
    with pytest.raises(RuntimeError, match="layer 0 \\(perturbed\\) is on a different device"):
        torch.ops.lsa_fast.relative_error([a], [b.cpu()], False, 1e-12)
    torch.cuda.synchronize()  # the context survived


@pytest.mark.cuda
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_step_batch_over_two_to_the_31(norm):
    free, _ = torch.cuda.mem_get_info()
    batch = 2**31 + 5
    if free < 24 * 2**30:
        pytest.skip(f"needs ~17 GiB of GPU memory, {free / 2**30:.1f} GiB free")
    x = torch.full((batch, 1), 0.5, dtype=torch.float16, device="cuda")
    grad = torch.ones_like(x)
    grad[-3:] = -1
    out = lsa_fast.pgd_step(x, grad, x, 0.25, 0.125, norm)
    tail = out[-8:].float().cpu().flatten()
    assert tail[:5].tolist() == [0.625] * 5 and tail[5:].tolist() == [0.375] * 3
    del x, grad, out
    torch.cuda.empty_cache()


# ------------------------------------------------------- pgd_step: any dense layout


def layouts(shape=(6, 3, 5, 4)):
    """name -> function making a tensor of `shape` values in that layout."""
    return {
        "contiguous": lambda t: t.contiguous(),
        "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
        "batch_inner": lambda t: t.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2),  # dense, batch not outermost
        "strided_view": lambda t: torch.cat([t, t], dim=3)[..., ::2],  # not dense
    }


def step_inputs(dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 3, 5, 4, generator=g, dtype=torch.float64)
    x_adv = (x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    grad = torch.randn(x.shape, generator=g, dtype=torch.float64)
    return [t.to(dtype).to(device) for t in (x_adv, grad, x)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", list(layouts()))
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_pgd_step_any_layout_returns_x_adv_memory_format(device, layout, norm, dtype):
    make = layouts()[layout]
    x_adv, grad, x = (make(t) for t in step_inputs(dtype, device))
    op = getattr(torch.ops.lsa_fast, f"pgd_step_{norm}")
    got = op(x_adv, grad, x, 0.01, 0.03)
    assert got.stride() == torch.empty_like(x_adv).stride()  # what the fake kernel says
    want = op(x_adv.contiguous(), grad.contiguous(), x.contiguous(), 0.01, 0.03)
    tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3}.get(dtype, 1e-6)
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    torch.library.opcheck(op, (x_adv, grad, x, 0.01, 0.03))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_step_reads_channels_last_in_place(norm):
    x_adv, grad, x = (t.contiguous(memory_format=torch.channels_last) for t in step_inputs(torch.float32, "cpu"))
    with torch.profiler.profile() as prof:
        out = lsa_fast.pgd_step(x_adv, grad, x, 0.01, 0.03, norm)
    names = {e.name for e in prof.events()}
    assert "aten::copy_" not in names and "aten::contiguous" not in names, names
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_step_mixed_layouts_follow_x_adv(norm):
    x_adv, grad, x = step_inputs(torch.float32, "cpu")
    got = lsa_fast.pgd_step(x_adv.contiguous(memory_format=torch.channels_last), grad, x, 0.01, 0.03, norm)
    want = lsa_fast.pgd_step(x_adv, grad, x, 0.01, 0.03, norm)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want)


def test_pgd_step_compiled_on_channels_last_equals_eager():
    x_adv, grad, x = (t.contiguous(memory_format=torch.channels_last) for t in step_inputs(torch.float32, "cpu"))

    def two_steps(x_adv, grad, x):
        once = lsa_fast.pgd_step(x_adv, grad, x, 0.01, 0.03, "linf")
        return lsa_fast.pgd_step(once * 1.0, grad, x, 0.01, 0.03, "l2")

    compiled = torch.compile(two_steps, fullgraph=True, backend="inductor")
    torch.testing.assert_close(compiled(x_adv, grad, x), two_steps(x_adv, grad, x))
    assert math.isfinite(float(compiled(x_adv, grad, x).sum()))


# ------------------------------------ the CUDA work split: short rows, peeled heads, grids


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["sample", "batch"])
def test_relative_error_short_rows_and_unaligned_views_match_reference(dtype, mode):
    """Rows up to 2048 elements get a warp each (batches not a multiple of 8 too);
    views that start off a 16-byte boundary take a scalar head, then vectors."""
    torch.manual_seed(0)
    shapes = [(13, 1), (13, 31), (13, 100), (13, 2048), (13, 2049), (13, 3, 7, 9), (13, 40000)]
    base = [torch.randn(s[0], int(math.prod(s[1:])) + 3, device="cuda", dtype=dtype) for s in shapes]
    clean = [b[:, 3:].reshape(s) if len(s) > 2 else b[:, 3:] for b, s in zip(base, shapes)]  # offset 3 elements
    clean = [c.contiguous() if i % 2 else c for i, c in enumerate(clean)]  # aligned and unaligned mixed
    perturbed = [(c + 0.1 * torch.randn_like(c)).requires_grad_() for c in clean]
    clean = [c.detach().requires_grad_() for c in clean]
    cm = lsa_fast.relative_error(clean, perturbed, mode)
    want = reference.relative_error([c.double() for c in clean], [p.double() for p in perturbed], mode)
    tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2}.get(dtype, 1e-5)
    torch.testing.assert_close(cm.double(), want, rtol=tol, atol=tol)
    cm.sum().backward()
    a = [c.detach().double().requires_grad_() for c in clean]
    b = [p.detach().double().requires_grad_() for p in perturbed]
    reference.relative_error(a, b, mode).sum().backward()
    for got, ref in zip([c.grad for c in clean] + [p.grad for p in perturbed], [t.grad for t in a + b]):
        torch.testing.assert_close(got.double(), ref, rtol=10 * tol, atol=10 * tol * ref.abs().max().item())
    again = lsa_fast.relative_error(clean, perturbed, mode)
    assert torch.equal(cm, again)  # deterministic


@pytest.mark.cuda
@pytest.mark.parametrize("samples", [1, 300, 8192, 8193, 50000])
def test_cm_statistics_grid_matches_cpu(samples):
    cm = torch.rand(samples, 7, dtype=torch.float64) ** 3
    want = torch.ops.lsa_fast.cm_statistics(cm, 0.5)
    got = torch.ops.lsa_fast.cm_statistics(cm.cuda(), 0.5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.cpu(), w, rtol=1e-12, atol=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(got, torch.ops.lsa_fast.cm_statistics(cm.cuda(), 0.5)))
