"""relative_error and its backward against lsa_fast/reference.py."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lsa_fast
from lsa_fast import reference
from conftest import DEVICES

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Both sides accumulate the same low-precision inputs in fp32 (fp64 for fp64); only
# the order of additions differs.
RTOL = {torch.float32: 1e-4, torch.float64: 1e-12, torch.float16: 1e-4, torch.bfloat16: 1e-4}
GRAD_RTOL = {torch.float32: 1e-4, torch.float64: 1e-10, torch.float16: 2e-2, torch.bfloat16: 2e-2}


def make_pair(shapes, dtype, device, scale=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype).to(device) for s in shapes]
    perturbed = [(a.double().cpu() + scale * torch.randn(a.shape, generator=g, dtype=torch.float64)).to(dtype).to(device) for a in clean]
    return clean, perturbed


layer_shapes = st.integers(1, 64).flatmap(
    lambda batch: st.lists(
        st.lists(st.integers(1, 9), min_size=0, max_size=4).map(lambda rest: (batch, *rest)),
        min_size=1,
        max_size=20,
    )
)


@settings(max_examples=40, deadline=None)
@given(shapes=layer_shapes, dtype=st.sampled_from(DTYPES), mode=st.sampled_from(["sample", "batch"]), seed=st.integers(0, 2**16))
def test_forward_matches_reference(shapes, dtype, mode, seed):
    clean, perturbed = make_pair(shapes, dtype, "cpu", seed=seed)
    got = lsa_fast.relative_error(clean, perturbed, mode)
    want = reference.relative_error(clean, perturbed, mode)
    assert got.shape == want.shape == ((len(shapes),) if mode == "batch" else (shapes[0][0], len(shapes)))
    assert got.dtype == reference.accumulation_dtype(dtype)
    torch.testing.assert_close(got, want, rtol=RTOL[dtype], atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["sample", "batch"])
def test_forward_and_backward_match_reference(device, dtype, mode):
    shapes = [(6, 3, 17, 17), (6, 40000), (6, 5), (6,), (6, 2, 3, 4, 5)]
    clean, perturbed = make_pair(shapes, dtype, device, seed=1)
    ours_a = [t.clone().requires_grad_() for t in clean]
    ours_b = [t.clone().requires_grad_() for t in perturbed]
    ref_a = [t.clone().requires_grad_() for t in clean]
    ref_b = [t.clone().requires_grad_() for t in perturbed]
    got = lsa_fast.relative_error(ours_a, ours_b, mode)
    want = reference.relative_error(ref_a, ref_b, mode)
    torch.testing.assert_close(got, want, rtol=RTOL[dtype], atol=1e-7)
    weights = torch.rand(got.shape, generator=torch.Generator().manual_seed(3), dtype=got.dtype).to(device)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    for mine, theirs in zip(ours_a + ours_b, ref_a + ref_b):
        assert mine.grad.dtype == dtype and mine.grad.shape == theirs.grad.shape
        torch.testing.assert_close(mine.grad.double(), theirs.grad.double(), rtol=GRAD_RTOL[dtype], atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["sample", "batch"])
def test_gradcheck_fp64_both_inputs(device, mode):
    clean, perturbed = make_pair([(3, 4), (3, 2, 5), (3,)], torch.float64, device, scale=0.5, seed=2)
    inputs = [t.requires_grad_() for t in clean + perturbed]
    fn = lambda *t: lsa_fast.relative_error(t[:3], t[3:], mode)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for dtype in (torch.float32, torch.float64):
        clean, perturbed = make_pair([(4, 3, 5), (4, 7)], dtype, device, seed=4)
        for batch_mode in (False, True):
            args = ([t.requires_grad_() for t in clean], [t.requires_grad_() for t in perturbed], batch_mode, 1e-12)
            torch.library.opcheck(torch.ops.lsa_fast.relative_error, args)
    cm = torch.rand(16, 5, dtype=torch.float32, device=device)
    torch.library.opcheck(torch.ops.lsa_fast.cm_statistics, (cm, 0.5))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["sample", "batch"])
def test_zero_norm_clean_layer_and_unmoved_layer_are_finite(device, mode):
    dead = torch.zeros(4, 8, device=device, dtype=torch.float64)
    moved = torch.ones(4, 8, device=device, dtype=torch.float64)
    same = torch.randn(4, 6, device=device, dtype=torch.float64)
    clean = [dead.clone().requires_grad_(), same.clone().requires_grad_(), dead.clone().requires_grad_()]
    perturbed = [moved.clone().requires_grad_(), same.clone().requires_grad_(), dead.clone().requires_grad_()]
    cm = lsa_fast.relative_error(clean, perturbed, mode)
    assert torch.isfinite(cm).all()
    cm = cm.reshape(-1, 3)
    # dead clean layer: ||diff|| / eps, as the reference defines it
    torch.testing.assert_close(cm[:, 0], reference.relative_error(clean, perturbed, mode).reshape(-1, 3)[:, 0])
    assert (cm[:, 1] == 0).all() and (cm[:, 2] == 0).all()
    cm.sum().backward()
    for t in clean + perturbed:
        assert torch.isfinite(t.grad).all()
    # at a zero difference the subgradient 0 is taken
    for t in (clean[1], perturbed[1], clean[2], perturbed[2]):
        assert (t.grad == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_bitwise(device):
    clean, perturbed = make_pair([(64, 16, 12, 12), (64, 50000)], torch.float32, device, seed=5)
    first = lsa_fast.relative_error(clean, perturbed)
    threads = torch.get_num_threads()
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            assert torch.equal(lsa_fast.relative_error(clean, perturbed), first)
            assert torch.equal(lsa_fast.relative_error(clean, perturbed, "batch"), lsa_fast.relative_error(clean, perturbed, "batch"))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_matches_contiguous_without_copies(device):
    clean, perturbed = make_pair([(8, 6, 9, 9), (8, 3, 4, 5, 6)], torch.float32, device, seed=6)
    formats = [torch.channels_last, torch.channels_last_3d]
    clean_cl = [t.contiguous(memory_format=f) for t, f in zip(clean, formats)]
    perturbed_cl = [t.contiguous(memory_format=f) for t, f in zip(perturbed, formats)]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        got, _ = torch.ops.lsa_fast.relative_error(clean_cl, perturbed_cl, False, 1e-12)
    names = {event.name for event in prof.events()}
    assert not names & {"aten::copy_", "aten::clone", "aten::contiguous"}, names
    # ...while a layout that needs one copy does make it
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.ops.lsa_fast.relative_error([clean[0].transpose(2, 3)], [perturbed[0]], False, 1e-12)
    assert "aten::copy_" in {event.name for event in prof.events()}
    torch.testing.assert_close(got, lsa_fast.relative_error(clean, perturbed), rtol=1e-5, atol=1e-7)
    # the gradients keep the channels_last layout
    a = [t.clone().requires_grad_() for t in clean_cl]
    lsa_fast.relative_error(a, perturbed_cl).sum().backward()
    assert a[0].grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    base_a = torch.randn(10, 7, 12, device=device)
    base_b = base_a + 0.1 * torch.randn_like(base_a)
    clean = [base_a.transpose(1, 2)[:, ::2], base_a[:, 3]]
    perturbed = [base_b.transpose(1, 2)[:, ::2], base_b[:, 3]]
    torch.testing.assert_close(
        lsa_fast.relative_error(clean, perturbed), reference.relative_error(clean, perturbed), rtol=1e-5, atol=1e-7
    )
    a = base_a.clone().requires_grad_()
    lsa_fast.relative_error([a.transpose(1, 2)[:, ::2]], [base_b.transpose(1, 2)[:, ::2]]).sum().backward()
    a_ref = base_a.clone().requires_grad_()
    reference.relative_error([a_ref.transpose(1, 2)[:, ::2]], [base_b.transpose(1, 2)[:, ::2]]).sum().backward()
    torch.testing.assert_close(a.grad, a_ref.grad, rtol=1e-4, atol=1e-6)


def test_layer_over_two_to_the_31_elements_uses_64_bit_offsets():
    """One sample of 2^31 + 4096 bf16 elements; only the very last one differs, so a
    32-bit offset would miss it and give CM = 0. The tensors are zeros from calloc
    (numpy.zeros): pages that are only read map the kernel's zero page, so the 8 GiB the
    kernel reads cost a few MB of memory, not 8 GiB (the test suite's peak memory)."""
    available_gib = _mem_available_gib()
    if available_gib < 2:
        pytest.skip(f"needs ~1 GiB of free memory, {available_gib:.1f} GiB available")
    n = 2**31 + 4096
    # int16 zeros viewed as bf16 zeros (numpy has no bfloat16); only the pages written
    # below are ever backed by memory.
    clean, perturbed = (torch.from_numpy(np.zeros((1, n), dtype=np.int16)).view(torch.bfloat16) for _ in range(2))
    clean[0, 0] = perturbed[0, 0] = 1
    perturbed[0, -1] = 1  # ||clean|| = 1, ||clean - perturbed|| = 1
    cm = lsa_fast.relative_error([clean], [perturbed])
    assert cm.item() == pytest.approx(1.0, rel=1e-6)


def _mem_available_gib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return 0.0
