from pathlib import Path

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# Devices every kernel test runs on; the CUDA one only where a GPU is present.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


# Real MNIST digits for the tests of the MNIST path: 2 000 training and 1 000 test images
# (tests/data/mnist/README.md gives their source and licence).
MNIST_SUBSET = Path(__file__).parent / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return MNIST_SUBSET
