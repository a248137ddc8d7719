"""LayerProbe: selection, call order, in-place capture, hook hygiene, stop_after, grad."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # the extension may be absent: fallback is fine
    import lsa_fast
from lsa_fast.probes import LayerProbe, check_same_sequence


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ELU(), nn.Linear(8, 8), nn.LeakyReLU(0.1), nn.Linear(8, 3)
    )


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.fc(x))


class Nested(nn.Module):
    """Registration order (stem, blocks, head_act, head) differs from call order."""

    def __init__(self):
        super().__init__()
        self.head_act = nn.ELU()
        self.stem = nn.Sequential(nn.Linear(4, 6), nn.LeakyReLU(0.2))
        self.blocks = nn.ModuleList([Block(6), Block(6)])
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.head_act(x))


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class Reused(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.fc2(self.act(self.fc1(x))))


# ---------------------------------------------------------------------- selection


def test_sequential_default_probes_activations_in_order_with_exact_values():
    model, x = _mlp(), torch.randn(5, 6)
    outputs = LayerProbe(model).capture(x)
    h1 = model[1](model[0](x))
    h3 = model[3](model[2](h1))
    h5 = model[5](model[4](h3))
    probe = LayerProbe(model)
    probe.capture(x)
    assert probe.names == ["1", "3", "5"]
    assert [type(m) for m in probe.modules] == [nn.ReLU, nn.ELU, nn.LeakyReLU]
    for got, want in zip(outputs, (h1, h3, h5)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_learnable_preset_and_other_selections():
    model, x = Nested(), torch.randn(3, 4)
    probe = LayerProbe(model, select="learnable")
    outs = probe.capture(x)
    assert probe.names == ["stem.0", "blocks.0.fc", "blocks.1.fc", "head"]
    assert outs[-1].shape == (3, 2)
    # call order, not registration order: head_act is registered first but called last
    probe = LayerProbe(model)
    probe.capture(x)
    assert probe.names == ["stem.1", "blocks.0.act", "blocks.1.act", "head_act"]
    by_glob = LayerProbe(model, select="blocks.*.act")
    by_glob.capture(x)
    assert by_glob.names == ["blocks.0.act", "blocks.1.act"]
    by_list = LayerProbe(model, select=["head", "stem.0"])
    by_list.capture(x)
    assert by_list.names == ["stem.0", "head"]
    by_type = LayerProbe(model, select=(nn.ELU, nn.LeakyReLU))
    by_type.capture(x)
    assert by_type.names == ["stem.1", "head_act"]
    # a container's output is produced after its children's, so it comes after them
    by_pred = LayerProbe(model, select=lambda name, m: name.startswith("blocks.1"))
    by_pred.capture(x)
    assert by_pred.names == ["blocks.1.fc", "blocks.1.act", "blocks.1"]


def test_no_selectable_probe_is_a_clear_error():
    with pytest.raises(ValueError, match=r"select='activations'.*matches no module of Functional.*F\.relu"):
        LayerProbe(Functional())
    with pytest.raises(ValueError, match=r"pattern 'fc3' matches no module of Functional"):
        LayerProbe(Functional(), select=["fc1", "fc3"])
    with pytest.raises(ValueError, match=r"select=Conv2d matches no module"):
        LayerProbe(Functional(), select=nn.Conv2d)
    with pytest.raises(TypeError, match="select must be"):
        LayerProbe(Functional(), select=3)
    with pytest.raises(ValueError, match="stop_after"):
        LayerProbe(_mlp(), stop_after=-1)


def test_functional_activation_is_not_probed_by_type_but_learnable_sees_the_preactivation():
    # F.relu is not a module: only the modules around it can be probed; the Linear output
    # is the pre-activation (it holds negatives), the relu itself is invisible.
    model, x = Functional(), torch.randn(16, 4)
    probe = LayerProbe(model, select="learnable")
    outs = probe.capture(x)
    assert probe.names == ["fc1", "fc2"]
    torch.testing.assert_close(outs[0], model.fc1(x))
    assert (outs[0] < 0).any()


def test_selected_module_never_called_is_a_clear_error():
    model = Functional()
    model.unused = nn.ReLU()  # defined, but forward uses F.relu
    with pytest.raises(ValueError, match=r"called none of the 1 selected modules \('unused'\)"):
        LayerProbe(model).capture(torch.randn(2, 4))


# ---------------------------------------------------------------------- repeated calls


def test_module_called_twice_gives_two_probe_points():
    model, x = Reused(), torch.randn(3, 4)
    probe = LayerProbe(model)
    outs = probe.capture(x)
    assert probe.names == ["act", "act#1"]
    first = torch.relu(model.fc1(x))
    torch.testing.assert_close(outs[0], first)
    torch.testing.assert_close(outs[1], torch.relu(model.fc2(first)))


def test_shared_instance_in_sequential():
    torch.manual_seed(0)
    act = nn.ReLU()
    model = nn.Sequential(nn.Linear(4, 4), act, nn.Linear(4, 4), act)
    probe = LayerProbe(model)
    outs = probe.capture(torch.randn(2, 4))
    assert probe.names == ["1", "1#1"]
    assert len(outs) == 2


def test_new_forward_starts_a_new_record():
    model, x = Reused(), torch.randn(3, 4)
    with LayerProbe(model) as probe:
        model(x)
        model(x)
        assert probe.names == ["act", "act#1"]


# ---------------------------------------------------------------------- in-place


def test_inplace_activation_keeps_value_at_its_probe_point():
    # ReLU(inplace) output is then clamped in place and passed to a second in-place
    # LeakyReLU: each probe must hold the value it had when recorded.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 16), nn.ReLU(inplace=True), nn.Hardtanh(0.0, 0.05, inplace=True),
        nn.Linear(16, 16), nn.LeakyReLU(0.1, inplace=True), nn.LeakyReLU(0.5, inplace=True),
    )
    x = torch.randn(8, 4)
    z1 = model[0](x)
    relu = torch.relu(z1)
    z3 = model[3](relu.clamp(0.0, 0.05))
    leaky1 = F.leaky_relu(z3, 0.1)
    leaky2 = F.leaky_relu(leaky1, 0.5)
    probe = LayerProbe(model, select=["0", "1", "4", "5"])
    outs = probe.capture(x)
    assert relu.max() > 0.05  # the clamp would change an uncopied capture
    for got, want in zip(outs, (z1, relu, leaky1, leaky2)):
        torch.testing.assert_close(got, want)


def test_learnable_output_overwritten_by_inplace_relu_is_kept_with_grad():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 2))
    x = torch.randn(6, 4)
    probe = LayerProbe(model, select="learnable", capture_grad=True)
    outs = probe.capture(x)
    torch.testing.assert_close(outs[0], model[0](x))
    assert (outs[0] < 0).any()
    outs[0].sum().backward()  # d/dW of sum(Wx + b): independent of the relu after it
    torch.testing.assert_close(model[0].weight.grad, x.sum(0).expand(8, 4))


def test_no_copy_when_nothing_overwrites_the_output():
    # The probe point and the model's tensor share one copy-on-write memory: nothing was
    # copied (a copy would leave neither copy-on-write), and the gradient path is the model's.
    model, x = nn.Sequential(nn.Linear(4, 4), nn.ReLU()), torch.randn(2, 4)
    with LayerProbe(model, capture_grad=True) as probe:
        out = model(x)
    recorded = probe.outputs[0]
    assert torch._C._is_cow_tensor(recorded) and torch._C._is_cow_tensor(out)
    assert recorded.grad_fn.next_functions[0][0] is out.grad_fn
    torch.testing.assert_close(recorded, out, rtol=0, atol=0)


class Residual(nn.Module):
    """The issue's minimal case: torchvision's BasicBlock pattern, `out += identity` outside
    any module, then an in-place ReLU whose input is the probed tensor."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.conv(x)
        out += x
        return self.relu(out)


@pytest.mark.parametrize("capture_grad", [False, True])
@pytest.mark.parametrize("grad_mode", ["no_grad", "grad", "inference_mode"])
def test_residual_add_then_inplace_relu_keeps_the_returned_value(capture_grad, grad_mode):
    torch.manual_seed(0)
    model, x = Residual().eval(), torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        want = model.conv(x)
    context = {"no_grad": torch.no_grad, "grad": torch.enable_grad, "inference_mode": torch.inference_mode}[grad_mode]
    with context():
        probe = LayerProbe(model, select=(nn.Conv2d, nn.ReLU), capture_grad=capture_grad)
        conv_out, relu_out = probe.capture(x)
    torch.testing.assert_close(conv_out, want, rtol=0, atol=0)
    torch.testing.assert_close(relu_out, torch.relu(want + x), rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("capture_grad", [False, True])
def test_residual_on_cuda_keeps_the_returned_value_without_a_copy_where_nothing_writes(capture_grad):
    torch.manual_seed(0)
    model = Residual().cuda().eval()
    x = torch.randn(2, 4, 6, 6, device="cuda")
    with torch.no_grad():
        want = model.conv(x)
    with torch.set_grad_enabled(capture_grad):
        probe = LayerProbe(model, select=(nn.Conv2d, nn.ReLU), capture_grad=capture_grad)
        conv_out, relu_out = probe.capture(x)
    torch.testing.assert_close(conv_out, want, rtol=0, atol=0)
    torch.testing.assert_close(relu_out, torch.relu(want + x), rtol=0, atol=0)
    # the ReLU's output is written by nobody: a copy-on-write snapshot, no copy made
    assert torch._C._is_cow_tensor(relu_out)


def test_residual_gradients_flow_from_the_returned_value_only():
    # d/dx of sum(conv(x)) must not see the identity branch that `out += x` added later.
    torch.manual_seed(0)
    model = Residual()
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    (conv_out,) = LayerProbe(model, select="learnable", capture_grad=True).capture(x)
    (got,) = torch.autograd.grad(conv_out.sum(), x)
    x2 = x.detach().requires_grad_()
    (want,) = torch.autograd.grad(model.conv(x2).sum(), x2)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_residual_under_torch_compile_keeps_the_returned_value():
    # Dynamo traces the hooks into the graph (fullgraph: no graph break), where the
    # snapshot is a clone that functionalisation keeps apart from the later writes.
    torch.manual_seed(0)
    model, x = Residual().eval(), torch.randn(2, 4, 6, 6)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        want = model.conv(x)
        with LayerProbe(model, select=(nn.Conv2d, nn.ReLU)) as probe:
            compiled(x)
        conv_out, relu_out = probe.outputs
    torch.testing.assert_close(conv_out, want, rtol=0, atol=0)
    torch.testing.assert_close(relu_out, torch.relu(want + x), rtol=1e-6, atol=1e-6)
    assert _hook_count(model) == 0


class Writers(nn.Module):
    """A probed Linear whose output the forward then changes in one of many ways."""

    def __init__(self, how):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.how = how

    def forward(self, x):
        h = self.fc(x)
        if self.how == "functional inplace relu":
            h = F.relu(h, inplace=True)
        elif self.how == "method":
            h.mul_(3.0)
        elif self.how == "out=":
            torch.add(h, 1.0, out=h)
        elif self.how == ".data":
            h.data.zero_()
        elif self.how == "view of it":
            h[:, :3].fill_(5.0)
        elif self.how == "setitem":
            h[0] = 7.0
        elif self.how == "copy_":
            h.copy_(torch.ones_like(h))
        elif self.how == "chunk relu_":
            for part in h.chunk(2, dim=1):
                part.relu_()
        elif self.how == "inplace module on a view":
            nn.Hardtanh(0.0, 0.1, inplace=True)(h[1:])
        return h.sum(1)


WRITES = ["functional inplace relu", "method", "out=", ".data", "view of it", "setitem", "copy_",
          "chunk relu_", "inplace module on a view"]


@pytest.mark.parametrize("how", WRITES)
@pytest.mark.parametrize("clone", [False, True])
def test_any_later_write_leaves_the_recorded_value(how, clone):
    torch.manual_seed(0)
    model, x = Writers(how), torch.randn(3, 4)
    with torch.no_grad():
        want = model.fc(x)
        outs = LayerProbe(model, select="learnable", clone=clone).capture(x)
    torch.testing.assert_close(outs[0], want, rtol=0, atol=0)


def test_a_write_after_the_forward_leaves_the_recorded_value():
    # The probed module's output is the model's return value, which the caller then changes.
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(4, 3)), torch.randn(2, 4)
    with torch.no_grad(), LayerProbe(model, select="learnable") as probe:
        logits = model(x)
        want = logits.clone()
        logits.zero_()
        assert (probe.outputs[0] == want).all() and (logits == 0).all()


def test_probe_point_that_is_a_view_of_a_later_overwritten_tensor():
    # nn.Flatten returns a view of its input; the forward then writes into that input.
    class FlattenThenWrite(nn.Module):
        def __init__(self):
            super().__init__()
            self.flat = nn.Flatten()

        def forward(self, x):
            h = x * 2
            flat = self.flat(h)
            h.add_(100.0)
            return flat

    x = torch.randn(2, 3, 2)
    with torch.no_grad():
        (got,) = LayerProbe(FlattenThenWrite(), select="flat").capture(x)
    torch.testing.assert_close(got, (x * 2).flatten(1), rtol=0, atol=0)


def test_functional_inplace_change_keeps_the_returned_value_with_and_without_clone():
    # Before copy-on-write snapshots this raised and asked for clone=True; now the default
    # records the value returned, and clone=True gives the same value.
    class InplaceFunctional(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 8)

        def forward(self, x):
            return F.relu(self.fc(x), inplace=True)

    torch.manual_seed(0)
    model, x = InplaceFunctional(), torch.randn(8, 4)
    for clone in (False, True):
        outs = LayerProbe(model, select="learnable", clone=clone).capture(x)
        torch.testing.assert_close(outs[0], model.fc(x))
        assert (outs[0] < 0).any()


def test_inplace_model_under_inference_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True))
    x = torch.randn(3, 4)
    with torch.inference_mode():
        outs = LayerProbe(model, select="learnable").capture(x)
    torch.testing.assert_close(outs[0], model[0](x))


# ---------------------------------------------------------------------- hook hygiene


def test_hooks_exist_only_inside_the_with():
    model, x = _mlp(), torch.randn(2, 6)
    assert _hook_count(model) == 0
    with LayerProbe(model) as probe:
        assert _hook_count(model) > 0 and probe.active
        model(x)
    assert _hook_count(model) == 0 and not probe.active
    LayerProbe(model).capture(x)
    assert _hook_count(model) == 0


def test_hooks_removed_when_the_forward_or_the_body_raises():
    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.ReLU(inplace=True)

        def forward(self, x):
            self.act(x)
            raise KeyError("boom")

    model = Fails()
    with pytest.raises(KeyError):
        with LayerProbe(model):
            model(torch.randn(2))
    assert _hook_count(model) == 0
    with pytest.raises(KeyError):
        LayerProbe(model).capture(torch.randn(2))
    assert _hook_count(model) == 0
    mlp = _mlp()
    with pytest.raises(ZeroDivisionError):
        with LayerProbe(mlp):
            mlp(torch.randn(2, 6))
            1 / 0
    assert _hook_count(mlp) == 0
    assert all(not m._forward_hooks for m in mlp.modules())


def test_probe_cannot_be_entered_twice():
    model = _mlp()
    probe = LayerProbe(model)
    with probe:
        with pytest.raises(RuntimeError, match="already active"):
            probe.__enter__()
    assert _hook_count(model) == 0


# ---------------------------------------------------------------------- stop_after


def test_stop_after_skips_the_rest_of_the_forward():
    class Tripwire(nn.Module):
        def forward(self, x):
            raise AssertionError("the forward should have stopped before this module")

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ELU(), Tripwire())
    x = torch.randn(2, 4)
    probe = LayerProbe(model, stop_after=1)
    outs = probe.capture(x)
    assert probe.names == ["1", "3"] and len(outs) == 2
    assert _hook_count(model) == 0
    first = LayerProbe(model, stop_after=0)
    a, b = first.capture_pair(x, x + 0.1)
    assert first.names == ["1"] and len(a) == len(b) == 1
    with pytest.raises(ValueError, match=r"stop_after=5 but the forward reached only 2"):
        LayerProbe(nn.Sequential(*list(model)[:4]), stop_after=5).capture(x)


# ---------------------------------------------------------------------- gradients


def test_capture_grad_false_detaches_under_callers_grad_mode():
    model, x = _mlp(), torch.randn(2, 6, requires_grad=True)
    outs = LayerProbe(model).capture(x)
    assert all(not t.requires_grad for t in outs)
    assert torch.is_grad_enabled()


def test_capture_grad_true_lets_the_regulariser_reach_both_passes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 8), nn.ELU(), nn.Linear(8, 2))
    x = torch.randn(5, 4, requires_grad=True)
    x_hat = (x.detach() + 0.1 * torch.randn(5, 4)).requires_grad_()
    probe = LayerProbe(model, capture_grad=True)
    clean, perturbed = probe.capture_pair(x, x_hat)
    assert all(t.requires_grad for t in clean + perturbed)
    lsa_fast.relative_error(clean, perturbed, mode="sample").mean().backward()
    assert x.grad.abs().sum() > 0 and x_hat.grad.abs().sum() > 0
    assert model[0].weight.grad.abs().sum() > 0


def _clone_hooks(model, select):
    """An independent capture: plain forward hooks that copy (clone) each selected output."""
    records, handles = [], []
    for module in model.modules():
        if isinstance(module, select):
            handles.append(module.register_forward_hook(lambda m, args, out: records.append(out.clone())))
    return records, handles


def test_resnet18_probe_points_and_input_gradients_equal_an_independent_capture():
    # torchvision's BasicBlock: bn2's output gets `+= identity`, then an in-place ReLU.
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    select = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU)
    x = torch.randn(2, 3, 32, 32)
    records, handles = _clone_hooks(model, select)
    x_ref = x.clone().requires_grad_()
    model(x_ref)
    for handle in handles:
        handle.remove()
    weights = [torch.randn(r.shape, generator=torch.Generator().manual_seed(i)) for i, r in enumerate(records)]
    (want,) = torch.autograd.grad(sum((w * r).sum() for w, r in zip(weights, records)), x_ref)

    x_got = x.clone().requires_grad_()
    outs = LayerProbe(model, select=select, capture_grad=True).capture(x_got)
    assert len(outs) == len(records) == 57
    for index, (got, ref) in enumerate(zip(outs, records)):
        assert torch.equal(got, ref), f"probe point {index} differs from the independent capture"
    (got,) = torch.autograd.grad(sum((w * o).sum() for w, o in zip(weights, outs)), x_got)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    assert _hook_count(model) == 0


# ---------------------------------------------------------------------- sequences


def test_pair_with_different_control_flow_says_where():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act, self.other = nn.ReLU(), nn.ELU()

        def forward(self, x):
            h = self.act(self.fc(x))
            return self.act(h) if x.sum() > 0 else self.other(h)

    model = Branchy()
    x = torch.ones(1, 4)
    with pytest.raises(ValueError, match=r"differ at probe point 1: the clean pass called 'act#1' but the perturbed pass called 'other'"):
        LayerProbe(model).capture_pair(x, -x)
    assert _hook_count(model) == 0


def test_check_same_sequence():
    check_same_sequence(["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match=r"clean pass has 3 probe points and the perturbed pass 2.*goes on with 'c'"):
        check_same_sequence(["a", "b", "c"], ["a", "b"])
    with pytest.raises(ValueError, match=r"differ at probe point 0: the x pass called 'a' but the y pass called 'b'"):
        check_same_sequence(["a"], ["b"], labels=("x", "y"))
