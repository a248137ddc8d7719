"""torch.compile(fullgraph=True) of the attacks on a channels_last model equals eager
(issue 11, point 3: the fused pgd_step keeps the input's memory format, so inductor's
stride assertions hold). Compiling an attack needs torch.autograd.grad inside the
graph: torch._dynamo.config.trace_autograd_ops = True (README, "torch.compile"); and
inductor's fallback_random for random starts that equal eager's."""
import pytest
import torch

from lsa_fast import attacks as A

ATTACKS = {
    "fgsm": lambda m, x, y: A.fgsm(m, x, y, eps=0.03),
    "pgd-linf": lambda m, x, y: A.pgd(m, x, y, eps=0.03, alpha=0.01, steps=3),
    "pgd-l2": lambda m, x, y: A.pgd(m, x, y, eps=0.3, alpha=0.1, steps=3, norm="l2"),
    "apgd": lambda m, x, y: A.apgd(m, x, y, eps=0.03, steps=3),
}


@pytest.mark.skipif(tuple(int(p) for p in torch.__version__.split(".")[:2]) < (2, 14),
                    reason="dynamo before torch 2.14 cannot trace an attack's requires_grad_ and ContextVar "
                           "(seen on 2.11); the attacks then run eagerly")
@pytest.mark.parametrize("name", list(ATTACKS))
def test_compiled_attack_on_channels_last_equals_eager(name):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10),
    ).eval().to(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (4,))
    attack = ATTACKS[name]
    torch._dynamo.reset()
    with torch._dynamo.config.patch(trace_autograd_ops=True), torch._inductor.config.patch(fallback_random=True), \
            A.no_value_checks():
        compiled = torch.compile(attack, fullgraph=True, backend="inductor")
        torch.manual_seed(1)
        got = compiled(model, x, y)
        torch.manual_seed(1)
        want = attack(model, x, y)
    torch.testing.assert_close(got, want)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(got, x)  # the attack moved the input
