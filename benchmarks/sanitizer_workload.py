"""A small CUDA workload for compute-sanitizer (memcheck, racecheck): every kernel
once, on odd shapes (unaligned tails, several layers, fp16/fp32/fp64), forward and
backward. Exits non-zero if a result disagrees with the reference."""
import torch

import lsa_fast
from lsa_fast import reference


def main():
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float16, torch.float64):
        shapes = [(5, 3, 7, 9), (5, 16385), (5, 1), (5, 2, 3)]
        clean = [torch.randn(s, device="cuda", dtype=dtype, requires_grad=True) for s in shapes]
        perturbed = [(c + 0.1 * torch.randn_like(c)).detach().requires_grad_() for c in clean]
        for mode in ("sample", "batch"):
            cm = lsa_fast.relative_error(clean, perturbed, mode)
            want = reference.relative_error(clean, perturbed, mode)
            torch.testing.assert_close(cm, want, rtol=1e-3, atol=1e-5)
            cm.sum().backward()
        stats = lsa_fast.cm_statistics(lsa_fast.relative_error(clean, perturbed).detach(), 0.5)
        torch.testing.assert_close(stats.mu, reference.cm_statistics(want.detach().reshape(1, -1), 0.5).mu, rtol=1e-2, atol=1)
        x = torch.rand(7, 3, 5, 5, device="cuda", dtype=dtype)
        for norm in ("linf", "l2"):
            out = lsa_fast.pgd_step(x, torch.randn_like(x), x, 0.01, 0.03, norm)
            assert out.isfinite().all()
    torch.cuda.synchronize()
    print("sanitizer workload done")


if __name__ == "__main__":
    main()
