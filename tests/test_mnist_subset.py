"""The committed subset of real MNIST (tests/data/mnist) reads through the product's own
loader as the real thing: 28x28 digits in [0, 1], every class present."""
import torch

from lsa_fast.data import load_dataset


def test_mnist_subset_loads_as_real_digits(mnist_dir):
    train = load_dataset("mnist", train=True, data_dir=mnist_dir)
    test = load_dataset("mnist", train=False, data_dir=mnist_dir)
    for dataset, count in ((train, 2000), (test, 1000)):
        x, y = dataset.tensors
        assert x.shape == (count, 1, 28, 28) and x.dtype == torch.float32
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        assert sorted(y.unique().tolist()) == list(range(10))
        # Real digits are mostly background: about a fifth of the pixels are ink.
        assert 0.1 < float((x > 0.5).float().mean()) < 0.3
