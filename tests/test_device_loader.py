"""Training data on the device (lsa_fast.device_loader): the batched crop-flip equals the
per-sample definition, every epoch visits every sample once in a seeded order, W
processes together see the global batches of one, drop_last, CIFAR-10 augments by
default, and a trainer over a DeviceLoader resumes bit for bit inside an epoch."""
import pytest
import torch
import torch.nn.functional as F

from lsa_fast.data import load_dataset
from lsa_fast.device_loader import DeviceLoader, make_device_loader, random_crop_flip
from lsa_fast.models import build_model
from lsa_fast.training import ATLRTrainer, TrainConfig

torch.set_num_threads(1)


def test_crop_flip_is_a_padded_window_mirrored_per_sample():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 10, generator=generator)
    offsets = torch.tensor([[0, 0], [8, 8], [4, 4], [0, 8], [3, 1], [8, 0]])
    flips = torch.tensor([False, True, False, True, True, False])
    out = random_crop_flip(x, offsets, flips)
    assert out.shape == x.shape and out.is_contiguous()
    for m in range(6):
        padded = F.pad(x[m], (4, 4, 4, 4))
        row, column = offsets[m].tolist()
        window = padded[:, row:row + 8, column:column + 10]
        expected = window.flip(2) if flips[m] else window
        assert torch.equal(out[m], expected), m
    assert torch.equal(out[2], x[2])  # the centred window without flip is the image itself
    assert (out[0, :, :4, :] == 0).all() and (out[0, :, :, :4] == 0).all()  # zero padding shows at a corner


def test_an_epoch_visits_every_sample_once_in_a_seeded_order():
    x = torch.arange(10.0).reshape(10, 1)
    y = torch.arange(10)
    loader = DeviceLoader(x, y, 4, seed=3)
    assert len(loader) == 3
    first = [b for b in loader]
    assert [len(yb) for _, yb in first] == [4, 4, 2]
    order = torch.cat([yb for _, yb in first])
    assert sorted(order.tolist()) == list(range(10))
    assert all(torch.equal(xb[:, 0], yb.float()) for xb, yb in first)  # x and y stay paired
    second = torch.cat([yb for _, yb in loader])
    assert not torch.equal(order, second)  # a new order every epoch
    again = torch.cat([yb for _, yb in DeviceLoader(x, y, 4, seed=3)])
    assert torch.equal(order, again)  # the same seed, the same first epoch

    dropped = DeviceLoader(x, y, 4, seed=3, drop_last=True)
    assert len(dropped) == 2 and [len(yb) for _, yb in dropped] == [4, 4]


def test_world_size_shards_give_the_global_batches_of_one_process():
    x = torch.rand(10, 1, 4, 4)
    y = torch.arange(10)
    single = DeviceLoader(x, y, 4, seed=1, augment="crop-flip")
    ranks = [DeviceLoader(x, y, 2, seed=1, augment="crop-flip", rank=r, world_size=2) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 3
    for (xs, ys), (x0, y0), (x1, y1) in zip(single, *ranks):
        assert torch.equal(ys, torch.cat([y0, y1]))
        assert torch.equal(xs, torch.cat([x0, x1]))  # the same crops and flips too
    # 9 samples on 2 processes: the epoch is padded with its first sample, as DistributedSampler pads.
    ranks = [DeviceLoader(x[:9], y[:9], 2, seed=1, rank=r, world_size=2) for r in range(2)]
    seen = [torch.cat([yb for _, yb in loader]) for loader in ranks]
    assert [len(s) for s in seen] == [5, 5]
    assert sorted(set(torch.cat(seen).tolist())) == list(range(9)) and seen[1][-1] == seen[0][0]
    assert [[loader.real_samples(b) for b in range(3)] for loader in ranks] == [[2, 2, 1], [2, 2, 0]]
    assert [single.real_samples(b) for b in range(3)] == [4, 4, 2]


def test_crop_flip_draws_both_flips_and_every_offset():
    x = torch.rand(2000, 1, 2, 2)
    loader = DeviceLoader(x, torch.zeros(2000, dtype=torch.long), 2000, seed=0, augment="crop-flip")
    _, offsets, flips = loader._draw_epoch()
    assert sorted(offsets.unique().tolist()) == list(range(9))
    assert 0.45 < flips.float().mean().item() < 0.55


def test_bad_loader_arguments_are_clear_errors():
    x, y = torch.rand(4, 2), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"crop-flip' needs image batches \[N, C, H, W\]"):
        DeviceLoader(x, y, 2, augment="crop-flip")
    with pytest.raises(ValueError, match="augment must be one of"):
        DeviceLoader(x, y, 2, augment="rotate")
    with pytest.raises(ValueError, match="same number of samples"):
        DeviceLoader(x, y[:3], 2)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        DeviceLoader(x, y, 0)
    with pytest.raises(ValueError, match="leaves no batch"):
        DeviceLoader(x, y, 8, drop_last=True)
    with pytest.raises(ValueError, match="divisible by the 3 processes"):
        make_device_loader(load_dataset("moons", n_samples=8), TrainConfig(batch_size=4), "cpu", 0, 3)


def test_cifar10_augments_by_default_and_other_datasets_do_not():
    images = torch.utils.data.TensorDataset(torch.rand(8, 3, 32, 32), torch.zeros(8, dtype=torch.long))
    assert make_device_loader(images, TrainConfig(dataset="cifar10", batch_size=4), "cpu").augment == "crop-flip"
    assert make_device_loader(images, TrainConfig(dataset="mnist", batch_size=4), "cpu").augment == "none"
    off = TrainConfig(dataset="cifar10", augment="none", batch_size=4)
    assert make_device_loader(images, off, "cpu").augment == "none"
    assert TrainConfig(augment=True).augment == "crop-flip" and TrainConfig(augment=False).augment == "none"
    with pytest.raises(ValueError, match="unknown augment 'mixup'"):
        TrainConfig(augment="mixup")


def test_a_trainer_warns_when_its_loader_does_not_augment_as_configured():
    data = torch.utils.data.TensorDataset(torch.rand(8, 1, 28, 28), torch.zeros(8, dtype=torch.long))
    config = TrainConfig(base="fgsm", eps=0.1, dataset="cifar10", batch_size=4, epochs=1)
    with pytest.warns(UserWarning, match="does not apply it"):
        ATLRTrainer(build_model("B"), config, torch.utils.data.DataLoader(data, batch_size=4))


def _image_trainer(stop_at=None, init_seed=0):
    generator = torch.Generator().manual_seed(5)
    x = torch.rand(48, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (48,), generator=generator)
    config = TrainConfig(base="fgsm", eps=0.1, lr_layers=[1], gammas=0.5, epochs=2, batch_size=16, optimizer="sgd",
                         lr=0.05, augment="crop-flip", seed=7)
    torch.manual_seed(init_seed)
    model = build_model("B")
    trainer = ATLRTrainer(model, config, DeviceLoader(x, y, 16, seed=config.seed, augment="crop-flip"))
    if stop_at is not None:
        calls = {"n": 0}

        def stop(module, inputs, output):
            calls["n"] += 1
            if calls["n"] == stop_at:
                trainer.request_stop()

        trainer.module.register_forward_hook(stop)
    return trainer


def test_a_device_loader_run_resumes_bit_for_bit_inside_an_epoch():
    full = _image_trainer()
    full.fit()
    # 2 complete forwards per batch (FGSM, adversarial; the clean pass stops early), 3
    # batches per epoch: forward 10 is in batch 2 of epoch 2.
    cut = _image_trainer(stop_at=10)
    result = cut.fit()
    assert result.interrupted and cut.epoch == 1 and cut.step_in_epoch == 2
    state = cut.state_dict()
    resumed = _image_trainer(init_seed=9)
    resumed.load_state_dict(state)
    assert resumed.fit().epochs_completed == 2
    for key, value in full.module.state_dict().items():
        assert torch.equal(resumed.module.state_dict()[key], value), key
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("time_s", "images_per_s")} for m in ms]  # noqa: E731
    assert strip(full.metrics) == strip(resumed.metrics)
