"""Every bad input to relative_error is a clear error naming the layer and the problem."""
import pytest
import torch

import lsa_fast


def ok(batch=4):
    return [torch.randn(batch, 3), torch.randn(batch, 2, 2)]


CASES = [
    ("different lengths", lambda: (ok(), ok()[:1]), ValueError, "2 clean layers but 1 perturbed"),
    ("empty lists", lambda: ([], []), ValueError, "lists are empty"),
    ("batch differs between layers", lambda: ([torch.randn(4, 3), torch.randn(5, 3)], [torch.randn(4, 3), torch.randn(5, 3)]), ValueError, "layer 1 has batch size 5 but layer 0 has 4"),
    ("shape mismatch", lambda: (ok(), [torch.randn(4, 3), torch.randn(4, 2, 3)]), ValueError, r"layer 1 has clean shape \(4, 2, 2\) but perturbed shape \(4, 2, 3\)"),
    ("mixed devices", lambda: (ok(), [torch.randn(4, 3), torch.randn(4, 2, 2, device="meta")]), ValueError, r"layer 1 \(perturbed\) is on meta"),
    ("integer dtype", lambda: ([torch.ones(4, 3, dtype=torch.int64)], [torch.ones(4, 3, dtype=torch.int64)]), TypeError, r"layer 0 \(clean\) has dtype torch.int64"),
    ("mixed dtypes", lambda: (ok(), [torch.randn(4, 3), torch.randn(4, 2, 2, dtype=torch.float64)]), TypeError, r"layer 1 \(perturbed\) has dtype torch.float64"),
    ("0-d tensor", lambda: ([torch.tensor(1.0)], [torch.tensor(1.0)]), ValueError, "0-d tensor"),
    ("empty batch", lambda: ([torch.randn(0, 3)], [torch.randn(0, 3)]), ValueError, "batch is empty"),
    ("not a list", lambda: (torch.randn(4, 3), torch.randn(4, 3)), TypeError, "lists of tensors"),
    ("not a tensor", lambda: ([torch.randn(4, 3), [1.0]], ok()), TypeError, r"layer 1 \(clean\) is a list"),
]


@pytest.mark.parametrize("name,make,error,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(name, make, error, message):
    clean, perturbed = make()
    with pytest.raises(error, match=message):
        lsa_fast.relative_error(clean, perturbed)


@pytest.mark.parametrize("side", ["clean", "perturbed"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_names_layer_and_side(side, bad):
    clean, perturbed = ok(), ok()
    target = clean if side == "clean" else perturbed
    target[1][2, 1, 0] = bad
    with pytest.raises(ValueError, match=rf"layer 1 \({side}\) contains NaN or Inf"):
        lsa_fast.relative_error(clean, perturbed)


def test_bad_mode_and_eps():
    with pytest.raises(ValueError, match="mode must be one of"):
        lsa_fast.relative_error(ok(), ok(), mode="layer")
    with pytest.raises(ValueError, match="eps must be > 0"):
        lsa_fast.relative_error(ok(), ok(), eps=0.0)


def test_raw_operator_checks_too():
    """torch.ops.lsa_fast.* called directly still names the layer."""
    with pytest.raises(RuntimeError, match="layer 1 has batch size 5 but layer 0 has 4"):
        torch.ops.lsa_fast.relative_error(
            [torch.randn(4, 3), torch.randn(5, 3)], [torch.randn(4, 3), torch.randn(5, 3)], False, 1e-12
        )
    with pytest.raises(RuntimeError, match="layer 0 has different clean and perturbed shapes"):
        torch.ops.lsa_fast.relative_error([torch.randn(4, 3)], [torch.randn(4, 2)], False, 1e-12)
    with pytest.raises(RuntimeError, match="unsupported dtype"):
        torch.ops.lsa_fast.relative_error([torch.ones(4, 3, dtype=torch.int32)], [torch.ones(4, 3, dtype=torch.int32)], False, 1e-12)
