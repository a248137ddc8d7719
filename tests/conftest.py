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
