"""lsa_fast.evaluation: accuracy, accuracy over an eps grid, the R&G score, robust
accuracy over an attack ensemble, and the EvaluationTable (markdown, JSON)."""
import json
import math
import os

import pytest
import torch

from lsa_fast import attacks as A
from lsa_fast.evaluation import (
    PAPER_EPS_GRIDS,
    EvaluationTable,
    accuracy,
    evaluate,
    rg_score,
    robust_accuracy,
)


def moons(n, seed):
    """Two interleaved half circles with noise, scaled into [0, 1]^2."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    t = torch.rand(n, generator=g) * math.pi
    upper = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    lower = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
    x = torch.where(y[:, None].bool(), lower, upper) + 0.1 * torch.randn(n, 2, generator=g)
    x = (x + torch.tensor([1.2, 0.8])) / torch.tensor([4.4, 2.6])
    return x.clamp(0, 1), y


class MoonsMLP(torch.nn.Module):
    """Paper model A's shape on Moons: an MLP with one logit."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(2, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)
        )

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def moons_model():
    x, y = moons(600, seed=0)
    torch.manual_seed(0)
    model = MoonsMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for p in model.parameters():
        p.grad = None
    x_test, y_test = moons(300, seed=1)
    return model, x_test, y_test


def loader(x, y, batch_size=64):
    dataset = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)


def test_accuracy_on_pairs_and_loaders(moons_model):
    model, x, y = moons_model
    with torch.no_grad():
        expected = 100.0 * ((model(x).squeeze(1) > 0).long() == y).float().mean().item()
    assert accuracy(model, (x, y)) == pytest.approx(expected)
    assert accuracy(model, loader(x, y)) == pytest.approx(expected)
    assert expected > 90, "the fixture model must learn the task"


def test_evaluate_grid_and_rg(moons_model):
    model, x, y = moons_model
    model.train()
    table = evaluate(model, loader(x, y), attack="fgsm", eps_grid=PAPER_EPS_GRIDS["moons"], row="Normal")
    assert model.training, "evaluate restores the model's mode"
    assert table.eps_grid == PAPER_EPS_GRIDS["moons"]
    cells = table.rows["Normal"]
    assert len(cells) == 6 and all(0 <= c <= 100 for c in cells)
    assert cells[0] == pytest.approx(accuracy(model, (x, y)))
    assert cells[-1] < cells[0], "FGSM at eps 0.5 must hurt"
    assert table.rg("Normal") == pytest.approx(sum(cells))
    assert rg_score(table) == pytest.approx(sum(cells))
    assert table.rg_scores() == {"Normal": pytest.approx(sum(cells))}


def test_evaluate_matches_the_attack_done_by_hand(moons_model):
    model, x, y = moons_model
    table = evaluate(model, (x, y), attack="pgd", eps_grid=(0.0, 0.1), steps=5, random_start=False)
    x_adv = A.pgd(model, x, y, 0.1, steps=5, random_start=False)
    assert table.rows["MoonsMLP"][1] == pytest.approx(accuracy(model, (x_adv, y)))


def test_evaluate_takes_a_callable(moons_model):
    model, x, y = moons_model

    def my_attack(model, x, y, eps, steps):
        return A.pgd(model, x, y, eps, steps=steps, random_start=False)

    table = evaluate(model, loader(x, y), attack=my_attack, eps_grid=(0, 0.2), row="mine", steps=3)
    assert table.attack == "my_attack" and list(table.rows) == ["mine"]


def test_evaluate_rejects_bad_grids(moons_model):
    model, x, y = moons_model
    with pytest.raises(ValueError, match="eps_grid is empty"):
        evaluate(model, (x, y), eps_grid=())
    with pytest.raises(ValueError, match=">= 0"):
        evaluate(model, (x, y), eps_grid=(0, -0.1))
    with pytest.raises(ValueError, match="unknown attack"):
        evaluate(model, (x, y), attack="nope")


def test_rg_score_reproduces_the_paper():
    # Table 2, Moons, "Normal" row.
    assert rg_score([97.07, 93.63, 82.5, 76.83, 63.79, 52.35]) == pytest.approx(466.17)
    assert rg_score({0.0: 50.0, 0.1: 25.5}) == pytest.approx(75.5)


def test_paper_eps_grids():
    assert PAPER_EPS_GRIDS["moons"] == (0, 0.1, 0.2, 0.3, 0.4, 0.5)
    assert PAPER_EPS_GRIDS["mnist"] == (0, 0.1, 0.2, 0.3, 0.4, 0.5)
    assert PAPER_EPS_GRIDS["cifar10"] == (0, 0.01, 0.03, 0.1, 0.2)


def test_robust_accuracy_is_the_per_sample_worst_case(moons_model):
    """With deterministic attacks the ensemble result equals the per-sample AND."""
    model, x, y = moons_model

    def pgd_fixed(model, x, y, eps):
        return A.pgd(model, x, y, eps, steps=5, random_start=False)

    def right(x_eval):
        with torch.no_grad():
            return (model(x_eval).squeeze(1) > 0).long() == y

    eps = 0.1
    expected = right(x) & right(A.fgsm(model, x, y, eps)) & right(pgd_fixed(model, x, y, eps))
    result = robust_accuracy(model, loader(x, y, batch_size=50), eps, attacks=("fgsm", pgd_fixed))
    assert result == pytest.approx(100.0 * expected.float().mean().item())
    assert result <= min(accuracy(model, (A.fgsm(model, x, y, eps), y)), accuracy(model, (x, y)))


def test_robust_accuracy_default_ensemble_on_a_multiclass_model():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 8, generator=g)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 5)
    y = model(x).argmax(1).detach()  # all correct when clean
    def seeded():
        return torch.Generator().manual_seed(0)

    robust = robust_accuracy(model, (x, y), 0.3, steps=5, n_target_classes=2, generator=seeded())
    ce_only = robust_accuracy(model, (x, y), 0.3, attacks=("apgd-ce",), steps=5, generator=seeded())
    assert 0 <= robust <= ce_only < 100
    assert robust_accuracy(model, (x, y), 0.0, steps=5, n_target_classes=2) == 100.0


def test_table_markdown():
    table = EvaluationTable(eps_grid=(0, 0.1, 0.2), attack="fgsm")
    table.add_row("Normal", [97.07, 93.63, 82.5])
    table.add_row("AT-FGSM-LR-L1", [96.0, 95.0, 90.0])
    text = str(table)
    assert text == table.to_markdown()
    assert "| Method | 0 | 0.1 | 0.2 | R&G |" in text
    assert "| Normal | 97.07 | 93.63 | 82.50 | 273.20 |" in text
    assert "| AT-FGSM-LR-L1 | 96.00 | 95.00 | 90.00 | 281.00 |" in text
    with pytest.raises(ValueError, match="3 eps values"):
        table.add_row("short", [1.0, 2.0])


def test_table_json_round_trip(tmp_path, moons_model):
    model, x, y = moons_model
    table = evaluate(model, (x, y), eps_grid=(0, 0.1, 0.3), row="Normal")
    table.add_row("other", [1 / 3, 2 / 3, 0.1])
    path = tmp_path / "table.json"
    table.to_json(path)
    assert os.listdir(tmp_path) == ["table.json"], "no temporary file is left behind"
    again = EvaluationTable.from_json(path)
    assert again == table and again.rows["other"][0] == 1 / 3
    data = json.loads(path.read_text())
    assert data["rg"]["other"] == pytest.approx(1 / 3 + 2 / 3 + 0.1)
    table.to_json(str(path))  # overwrite in place
    assert EvaluationTable.from_json(str(path)) == table
    path.write_text('{"rows": {}}')
    with pytest.raises(ValueError, match="not an evaluation table"):
        EvaluationTable.from_json(path)
