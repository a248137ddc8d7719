"""The reproduction's robustness columns (issue 25 item 4): lsa_fast.reproduce.robustness
and the settings that choose them."""
import dataclasses

import pytest
import torch
from torch import nn

from lsa_fast.attacks import autoattack
from lsa_fast.evaluation import robust_accuracy
from lsa_fast.paper import TABLE_3
from lsa_fast.reproduce import ReproduceSettings, variants
from lsa_fast.reproduce.robustness import autoattack_accuracy, column_key, titles, weight_sets

torch.set_num_threads(1)


def five_class_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 5)).eval()  # APGD-T needs >= 4 classes


def points(n=24):
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(n, 2, generator=generator)
    return x, (x[:, 0] * 5).long().clamp(max=4)


def test_columns_are_keyed_by_attack_and_weights():
    settings = ReproduceSettings.defaults("mnist", quick=True)
    assert weight_sets(settings) == ("final", "best")
    assert weight_sets(dataclasses.replace(settings, val_size=0)) == ("final",)
    assert weight_sets(dataclasses.replace(settings, weights="best")) == ("best",)
    assert column_key("pgd", "final") == "pgd" and column_key("pgd", "best") == "pgd@best"
    named = titles(settings, ["fgsm", "autoattack@best"], str.upper)
    assert named["fgsm"] == "FGSM"
    assert named["autoattack@best"] == "APGD-CE + APGD-T (2 steps; not the full AutoAttack) (best-robust weights)"
    assert titles(ReproduceSettings.defaults("mnist"), ["autoattack"], str)["autoattack"] == "AutoAttack (standard)"


def test_autoattack_column_is_the_library_autoattack_or_its_two_apgd_stages():
    model = five_class_mlp()
    x, y = points()
    standard = dataclasses.replace(ReproduceSettings.defaults("mnist"), aa_steps=5)
    expected = autoattack(model, x, y, 0.1, norm="Linf", version="standard", seed=3, batch_size=10)
    assert autoattack_accuracy(model, x, y, 0.1, standard, seed=3, batch_size=10) == pytest.approx(
        100.0 * float((expected.broken_by == -1).double().mean()))
    cheap = dataclasses.replace(standard, autoattack="apgd")
    generator = torch.Generator().manual_seed(3)
    bound = robust_accuracy(model, [(x[:10], y[:10]), (x[10:20], y[10:20]), (x[20:], y[20:])], 0.1,
                            attacks=("apgd-ce", "apgd-t"), steps=5, generator=generator)
    assert autoattack_accuracy(model, x, y, 0.1, cheap, seed=3, batch_size=10) == pytest.approx(bound)


def test_mnist_rows_put_the_pgd_base_beside_table_3():
    rows = variants(TABLE_3, ReproduceSettings.defaults("mnist"))
    assert [(v.name, v.base_row, v.extra, v.sweep) for v in rows] == [
        ("Normal", None, False, False), ("AT-APGD", None, False, False), ("AT-APGD-LR-L0", "AT-APGD", False, False),
        ("AT-PGD", None, True, False), ("AT-PGD-LR-L0", "AT-PGD", True, False)]
    assert ReproduceSettings.defaults("mnist").seeds == 3


@pytest.mark.parametrize("changes, words", [
    ({"weights": "best", "val_size": 0}, "--weights best evaluates the best robust validation epoch"),
    ({"autoattack": "full"}, "autoattack must be one of standard, apgd, none"),
    ({"n_train": 100, "val_size": 100}, "val_size 100 leaves nothing to train on"),
    ({"extra_rows": ("AT-PGD-LR-L0",)}, "needs its base row AT-PGD"),
])
def test_bad_settings_are_one_line(changes, words):
    with pytest.raises(ValueError, match=words) as error:
        variants(TABLE_3, dataclasses.replace(ReproduceSettings.defaults("mnist"), **changes))
    assert "\n" not in str(error.value)
