"""Datasets: the moons generator, and the MNIST / CIFAR-10 readers on tiny files written
here in the exact standard formats (nothing is downloaded)."""
import gzip
import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import SequentialSampler, TensorDataset

from lsa_fast.data import (
    MOONS_LOW,
    MOONS_SCALE,
    load_cifar10,
    load_dataset,
    load_mnist,
    make_loader,
    make_moons,
    moons_from_unit,
    moons_split,
    moons_to_unit,
)
from lsa_fast.models import MoonsMLP


@pytest.fixture(autouse=True)
def _small_threads():
    # The test machine is shared; one thread is plenty for these sizes.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---------------------------------------------------------------------------- moons

def test_moons_shapes_dtypes_range_balance():
    x, y = make_moons(1001, noise=0.3, seed=3)
    assert x.shape == (1001, 2) and x.dtype == torch.float32
    assert y.shape == (1001,) and y.dtype == torch.int64
    assert x.min() >= 0 and x.max() <= 1
    # scikit-learn's split: n // 2 outer (class 0), the rest inner (class 1)
    assert int((y == 0).sum()) == 500 and int((y == 1).sum()) == 501
    # noise 0.3 stays inside the box: the clamp touches (almost) nothing
    assert float(((x == 0) | (x == 1)).float().mean()) < 0.002


def test_moons_deterministic_under_seed():
    a = make_moons(200, 0.1, 7)
    b = make_moons(200, 0.1, 7)
    c = make_moons(200, 0.1, 8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_moons_geometry_matches_scikit_learn_definition():
    x, y = make_moons(400, noise=0.0, seed=0, to_unit=False)
    outer, inner = x[y == 0].double(), x[y == 1].double()
    # outer: unit circle around (0, 0), upper half; inner: unit circle around (1, 0.5), lower half
    torch.testing.assert_close(outer.norm(dim=1), torch.ones(200, dtype=torch.float64))
    assert outer[:, 1].min() >= -1e-6
    torch.testing.assert_close((inner - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1),
                               torch.ones(200, dtype=torch.float64))
    assert inner[:, 1].max() <= 0.5 + 1e-6
    assert math.isclose(float(x[:, 0].min()), -1.0, abs_tol=1e-6)
    assert math.isclose(float(x[:, 0].max()), 2.0, abs_tol=1e-6)


def test_moons_unit_map_is_the_documented_affine_map():
    raw, _ = make_moons(300, noise=0.2, seed=1, to_unit=False)
    unit, _ = make_moons(300, noise=0.2, seed=1)
    expected = ((raw.double() - torch.tensor(MOONS_LOW, dtype=torch.float64)) / MOONS_SCALE).clamp(0, 1)
    torch.testing.assert_close(unit.double(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(moons_from_unit(unit.double()), raw.double(), atol=1e-5, rtol=0)
    assert torch.equal(moons_to_unit(torch.tensor([[-5.0, 9.0]])), torch.tensor([[0.0, 1.0]]))


def test_moons_split_independent_draws():
    (xtr, ytr), (xte, yte) = moons_split(300, 100, noise=0.1, seed=5)
    assert xtr.shape == (300, 2) and xte.shape == (100, 2)
    xm, ym = make_moons(300, 0.1, 5)
    assert torch.equal(xtr, xm) and torch.equal(ytr, ym)
    # the test draw is its own stream: it does not depend on n_train, and differs from train
    (_, _), (xte2, yte2) = moons_split(50, 100, noise=0.1, seed=5)
    assert torch.equal(xte, xte2) and torch.equal(yte, yte2)
    assert not torch.equal(xte, xtr[:100])


@pytest.mark.parametrize("kwargs, match", [
    ({"n_samples": 0}, "n_samples"), ({"noise": -0.1}, "noise"),
    ({"noise": float("nan")}, "noise"), ({"seed": -1}, "seed"), ({"n_samples": 2.5}, "n_samples"),
])
def test_moons_bad_arguments(kwargs, match):
    args = {"n_samples": 10, "noise": 0.1, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_moons(**args)


def test_moons_separable_by_model_a():
    torch.manual_seed(0)
    x, y = make_moons(512, noise=0.1, seed=0)
    model = MoonsMLP()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y.float())
        loss.backward()
        opt.step()
    acc = ((model(x).squeeze(1) > 0).long() == y).float().mean()
    assert acc > 0.95


def test_load_dataset_moons():
    train = load_dataset("Moons", n_samples=100, seed=2)
    test = load_dataset("moons", train=False, n_samples=40, seed=2, limit=30)
    assert isinstance(train, TensorDataset) and len(train) == 100 and len(test) == 30
    (xtr, _), (xte, _) = moons_split(100, 40, noise=0.2, seed=2)
    assert torch.equal(train.tensors[0], xtr) and torch.equal(test.tensors[0], xte[:30])


# ---------------------------------------------------------------------------- MNIST

def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write(path, payload: bytes, gz: bool):
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def _tiny_mnist(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def _write_mnist(folder, gz, n_train=3, n_test=2):
    files = {}
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        images, labels = _tiny_mnist(n, seed=n)
        files[split] = (images, labels,
                        _write(folder / f"{prefix}-images-idx3-ubyte", _idx_bytes(images), gz),
                        _write(folder / f"{prefix}-labels-idx1-ubyte", _idx_bytes(labels), gz))
    return files


@pytest.mark.parametrize("layout", ["", "MNIST/raw", "raw"])
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_standard_files(tmp_path, layout, gz):
    files = _write_mnist(tmp_path / layout if layout else tmp_path, gz)
    for train, split in ((True, "train"), (False, "test")):
        images, labels = files[split][:2]
        x, y = load_mnist(tmp_path, train=train)
        assert x.shape == (len(labels), 1, 28, 28) and x.dtype == torch.float32
        assert y.dtype == torch.int64
        torch.testing.assert_close(x, torch.from_numpy(images).float().unsqueeze(1) / 255)
        assert y.tolist() == labels.tolist()
        assert x.min() >= 0 and x.max() <= 1


def test_mnist_through_load_dataset_with_limit(tmp_path, monkeypatch):
    _write_mnist(tmp_path / "MNIST" / "raw", gz=True)
    ds = load_dataset("MNIST", data_dir=tmp_path, limit=2)
    assert isinstance(ds, TensorDataset) and len(ds) == 2
    monkeypatch.setenv("LSA_FAST_DATA", str(tmp_path))
    assert len(load_dataset("mnist", train=False)) == 2


def test_mnist_missing_files_names_directories_and_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path, train=True)
    msg = str(info.value)
    assert "train-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg and ".gz" in msg
    for directory in (tmp_path, tmp_path / "MNIST" / "raw", tmp_path / "raw"):
        assert str(directory) in msg
    # One short line: the directories, not every spelling in every directory (24 paths).
    assert "\n" not in msg and len(msg) < 600 + 3 * len(str(tmp_path))
    assert "--data" in msg


def test_mnist_missing_one_file(tmp_path):
    files = _write_mnist(tmp_path, gz=False)
    files["test"][3].unlink()
    with pytest.raises(FileNotFoundError, match="missing t10k-labels-idx1-ubyte "):
        load_mnist(tmp_path, train=False)


def test_mnist_truncated_raw_file(tmp_path):
    files = _write_mnist(tmp_path, gz=False)
    path = files["train"][2]
    path.write_bytes(path.read_bytes()[:-100])
    full = 16 + 3 * 28 * 28
    with pytest.raises(ValueError) as info:
        load_mnist(tmp_path)
    msg = str(info.value)
    assert str(path) in msg and "truncated" in msg
    assert str(full) in msg and str(full - 100) in msg


def test_mnist_truncated_gz_content_and_stream(tmp_path):
    images, _ = _tiny_mnist(3, 0)
    _, labels = _tiny_mnist(3, 0)
    # gz whose decompressed content is short
    _write(tmp_path / "train-images-idx3-ubyte", _idx_bytes(images)[:-5], gz=True)
    _write(tmp_path / "train-labels-idx1-ubyte", _idx_bytes(labels), gz=True)
    with pytest.raises(ValueError, match="after gunzip"):
        load_mnist(tmp_path)
    # gz stream cut in the middle
    path = _write(tmp_path / "train-images-idx3-ubyte", _idx_bytes(images), gz=True)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="truncated or corrupt gzip") as info:
        load_mnist(tmp_path)
    assert str(path) in str(info.value)


def test_mnist_bad_magic_and_mismatched_counts(tmp_path):
    images, labels = _tiny_mnist(3, 0)
    _write(tmp_path / "train-images-idx3-ubyte", _idx_bytes(labels), gz=False)
    _write(tmp_path / "train-labels-idx1-ubyte", _idx_bytes(labels), gz=False)
    with pytest.raises(ValueError, match="magic number 0x00000801, expected 0x00000803"):
        load_mnist(tmp_path)
    _write(tmp_path / "train-images-idx3-ubyte", _idx_bytes(images), gz=False)
    _write(tmp_path / "train-labels-idx1-ubyte", _idx_bytes(labels[:2]), gz=False)
    with pytest.raises(ValueError, match="3 images but .* 2 labels"):
        load_mnist(tmp_path)
    _write(tmp_path / "train-images-idx3-ubyte", _idx_bytes(np.zeros((3, 32, 32))), gz=False)
    _write(tmp_path / "train-labels-idx1-ubyte", _idx_bytes(labels), gz=False)
    with pytest.raises(ValueError, match="32x32 images, expected 28x28"):
        load_mnist(tmp_path)


# ---------------------------------------------------------------------------- CIFAR-10

def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"tiny batch", b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"img%d.png" % i for i in range(n)]}


def _write_cifar(folder, per_batch=2, protocol=2):
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batches[name] = _cifar_batch(per_batch, seed=i)
        with open(folder / name, "wb") as f:
            pickle.dump(batches[name], f, protocol=protocol)
    return batches


@pytest.mark.parametrize("layout, protocol", [("", 2), ("cifar-10-batches-py", 2),
                                              ("cifar-10-batches-py", pickle.HIGHEST_PROTOCOL)])
def test_cifar_reads_standard_batches(tmp_path, layout, protocol):
    batches = _write_cifar(tmp_path / layout if layout else tmp_path, protocol=protocol)
    x, y = load_cifar10(tmp_path, train=True)
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    data = np.concatenate([batches[f"data_batch_{k}"][b"data"] for k in range(1, 6)])
    labels = sum((batches[f"data_batch_{k}"][b"labels"] for k in range(1, 6)), [])
    assert y.tolist() == labels
    # plane layout: the first 1024 bytes are red, row-major 32x32
    assert x[0, 0, 0, 1] == data[0, 1] / 255 and x[0, 1, 0, 0] == data[0, 1024] / 255
    assert x[3, 2, 31, 31] == data[3, 3071] / 255
    xt, yt = load_cifar10(tmp_path, train=False)
    assert xt.shape == (2, 3, 32, 32) and yt.tolist() == batches["test_batch"][b"labels"]


def test_cifar_reads_numpy1_style_pickles(tmp_path):
    # The official batches name numpy.core.multiarray (NumPy 1.x); NumPy 2 moved it.
    batches = _write_cifar(tmp_path)
    payload = pickle.dumps(batches["test_batch"], protocol=2).replace(
        b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"cnumpy.core.multiarray\n" in payload
    (tmp_path / "test_batch").write_bytes(payload)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, y = load_cifar10(tmp_path, train=False)
    assert y.tolist() == batches["test_batch"][b"labels"]
    assert torch.equal(x.flatten(1), torch.from_numpy(batches["test_batch"][b"data"]).float() / 255)


def test_cifar_limit_and_load_dataset(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_5").write_bytes(b"junk")
    # limit=3 needs only the first two batches, so the broken fifth is never opened
    ds = load_dataset("CIFAR-10", data_dir=tmp_path, limit=3)
    assert len(ds) == 3 and ds.tensors[0].shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match="data_batch_5"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_cifar_missing_files(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(tmp_path, train=True)
    msg = str(info.value)
    for k in range(1, 6):
        assert f"data_batch_{k}" in msg
    assert str(tmp_path / "cifar-10-batches-py") in msg and "\n" not in msg
    assert "extract it" in msg


def test_cifar_truncated_and_malformed(tmp_path):
    batches = _write_cifar(tmp_path)
    path = tmp_path / "test_batch"
    full = path.read_bytes()
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(ValueError) as info:
        load_cifar10(tmp_path, train=False)
    msg = str(info.value)
    assert str(path) in msg and "truncated" in msg and str(len(full) // 2) in msg

    bad = dict(batches["test_batch"])
    bad[b"data"] = np.zeros((2, 3000), dtype=np.uint8)
    path.write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(ValueError, match="uint8 \\[N, 3072\\], got uint8 \\[2, 3000\\]"):
        load_cifar10(tmp_path, train=False)

    bad[b"data"] = np.zeros((2, 3072), dtype=np.uint8)
    bad[b"labels"] = [1, 2, 3]
    path.write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(ValueError, match="2 images but labels"):
        load_cifar10(tmp_path, train=False)

    path.write_bytes(pickle.dumps({b"nothing": 1}))
    with pytest.raises(ValueError, match="without 'data' and 'labels'"):
        load_cifar10(tmp_path, train=False)


class _Evil:
    def __reduce__(self):
        import os
        return (os.getcwd, ())


def test_cifar_refuses_foreign_pickles(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="refusing to load"):
        load_cifar10(tmp_path, train=False)


# ---------------------------------------------------------------------------- names, loader

def test_unknown_dataset_and_option():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'.*moons, mnist, cifar10"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match="unexpected option.*'noise'"):
        load_dataset("mnist", data_dir=".", noise=0.1)
    with pytest.raises(ValueError, match="limit"):
        load_dataset("moons", limit=0)


def test_make_loader_reproducible_shuffle():
    ds = TensorDataset(torch.arange(20))

    def order(seed):
        return torch.cat([b[0] for b in make_loader(ds, 4, shuffle=True, seed=seed)]).tolist()

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(order(1)) == list(range(20))
    plain = torch.cat([b[0] for b in make_loader(ds, 6, shuffle=False, seed=0)]).tolist()
    assert plain == list(range(20))


def test_make_loader_errors():
    ds = TensorDataset(torch.arange(4))
    with pytest.raises(ValueError, match="sampler"):
        make_loader(ds, 2, shuffle=True, seed=0, sampler=SequentialSampler(ds))
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(ds, 0, shuffle=False, seed=0)
    loader = make_loader(ds, 2, shuffle=False, seed=0, sampler=SequentialSampler(ds))
    assert [b[0].tolist() for b in loader] == [[0, 1], [2, 3]]
