"""The two models of the AutoAttack tests and benchmark, with their data: lsa_fast's
model B on real MNIST and a small CNN on synthetic CIFAR-shaped images. Their
weights (fp16) are made by scripts/make_autoattack_models.py (which says how) and
live in tests/data/autoattack/."""
from pathlib import Path

import torch
import torch.nn.functional as F

from lsa_fast.data import load_mnist
from lsa_fast.models import build_model

WEIGHTS = Path(__file__).parent / "data" / "autoattack"
MNIST_SUBSET = Path(__file__).parent / "data" / "mnist"


def cifar_shaped_cnn() -> torch.nn.Module:
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def synthetic_cifar(n: int, seed: int):
    """Ten smooth class prototypes in [0.2, 0.8] plus uniform noise of +-0.15."""
    g = torch.Generator().manual_seed(seed)
    prototypes = F.interpolate(torch.rand(10, 3, 4, 4, generator=torch.Generator().manual_seed(1234)), size=32,
                               mode="bilinear", align_corners=False) * 0.6 + 0.2
    y = torch.randint(0, 10, (n,), generator=g)
    x = (prototypes[y] + (torch.rand(n, 3, 32, 32, generator=g) - 0.5) * 0.3).clamp(0, 1)
    return x, y


def _load(model, name):
    state = torch.load(WEIGHTS / name, map_location="cpu", weights_only=True)
    model.load_state_dict({key: value.float() for key, value in state.items()})
    return model.eval()


def mnist_model_b(data_dir=MNIST_SUBSET):
    """(model B adversarially trained on 2 000 real MNIST digits, the test digits x, y of
    data_dir: by default the tests' subset, the first 1 000)."""
    x, y = load_mnist(data_dir, train=False)
    return _load(build_model("B"), "model_b_mnist.pt"), x, y


def cifar_shaped():
    """(the small CNN, synthetic test images x, y drawn apart from its training set)."""
    x, y = synthetic_cifar(1000, seed=1)
    return _load(cifar_shaped_cnn(), "cnn_cifar_shaped.pt"), x, y
