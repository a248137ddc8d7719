"""The compiled training step (TrainConfig.compile, lsa_fast.compiled_step): its code
is the eager step bit for bit; compiled (aot_eager here, inductor through the CLI) it
trains the same weights within float tolerance on models A and B; a model that does
not compile falls back to eager with one warning; no step after the first reads a
tensor's value (counted on CPU; on CUDA under torch.cuda.set_sync_debug_mode)."""
import contextlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch._dynamo.utils
import torch.distributed as dist
from torch import nn

from lsa_fast import cli
from lsa_fast.attacks import no_value_checks
from lsa_fast.checkpoint import load_checkpoint
from lsa_fast.compiled_step import CompiledStep
from lsa_fast.data import load_dataset
from lsa_fast.device_loader import DeviceLoader
from lsa_fast.models import build_model
from lsa_fast.training import ATLRTrainer, TrainConfig
from train_loader import make_train_loader

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def moons():
    return load_dataset("moons", n_samples=128, seed=0)


@pytest.fixture(scope="module")
def digits():
    """Random 28x28 images for model B."""
    generator = torch.Generator().manual_seed(1)
    return torch.utils.data.TensorDataset(torch.rand(16, 1, 28, 28, generator=generator),
                                          torch.randint(0, 10, (16,), generator=generator))


def make_trainer(data, mode, base="pgd", layers=(0, 2), model=lambda: build_model("A"), **overrides):
    """A trainer whose weights come from torch.manual_seed(0) and model()."""
    options = dict(base=base, eps=0.06, steps=3, lr_layers=list(layers) if layers else None, gammas=0.5, epochs=1,
                   batch_size=64, optimizer="sgd", lr=0.1)
    options.update(overrides)
    config = TrainConfig(**options)
    torch.manual_seed(0)
    trainer = ATLRTrainer(model(), config, make_train_loader(data, config))
    trainer.module.train()
    if mode is not None:
        trainer.compiled_step = CompiledStep(trainer, mode)
    return trainer


def run_steps(trainer, x, y, count=3):
    with no_value_checks():  # what _train_epoch does after an epoch's first batch
        return [trainer.train_step(x, y) for _ in range(count)]


def assert_same_training(eager, compiled, stats_eager, stats_compiled, exact):
    for (name, a), b in zip(eager.module.state_dict().items(), compiled.module.state_dict().values()):
        if exact:
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    for a, b in zip(stats_eager, stats_compiled):
        if exact:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


STEPS = [("none", None)] + [(base, layers) for base in ("fgsm", "fast", "pgd", "apgd", "trades")
                            for layers in (None, (0, 2))]


@pytest.mark.parametrize("base,layers", STEPS)
def test_the_compiled_steps_code_is_the_eager_step(moons, base, layers):
    x, y = moons.tensors[0][:64], moons.tensors[1][:64]
    eager = make_trainer(moons, None, base, layers)
    fast = make_trainer(moons, "eager", base, layers)
    assert_same_training(eager, fast, run_steps(eager, x, y), run_steps(fast, x, y), exact=True)
    assert not fast.compiled_step.failed


def test_the_compiled_apgd_step_is_the_eager_step_under_bf16_autocast(moons):
    """The losses' dtype (fp32 under autocast) and the autocast around the whole APGD step."""
    x, y = moons.tensors[0][:64], moons.tensors[1][:64]
    eager = make_trainer(moons, None, "apgd", (0, 2), amp="bf16")
    fast = make_trainer(moons, "eager", "apgd", (0, 2), amp="bf16")
    assert_same_training(eager, fast, run_steps(eager, x, y), run_steps(fast, x, y), exact=True)


def test_stats_count_only_the_real_samples(moons):
    # real < batch: the last samples are an epoch's padding (DDP); they train but are not counted.
    x, y = moons.tensors[0][:64], moons.tensors[1][:64]
    eager, fast = make_trainer(moons, None), make_trainer(moons, "eager")
    with no_value_checks():
        full = eager.train_step(x, y)
        part = fast.compiled_step(x, y, 5)
    assert_same_training(eager, fast, [], [], exact=True)
    torch.testing.assert_close(part[[0, 2]] / 5, full[[0, 2]] / 64)
    assert 0 <= part[1] <= 5 and part[1] <= full[1]


@pytest.mark.parametrize("model_name,base,layers", [("A", "pgd", (0, 2)), ("A", "trades", (1,)), ("A", "fast", (2,)),
                                                    ("B", "pgd", (1,)), ("A", "apgd", (0, 2)), ("B", "apgd", (1,))])
def test_aot_eager_compiled_step_trains_the_eager_weights(moons, digits, model_name, base, layers):
    data = moons if model_name == "A" else digits
    x, y = data.tensors[0][:8], data.tensors[1][:8]
    eager = make_trainer(data, None, base, layers, model=lambda: build_model(model_name), steps=2)
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    fast = make_trainer(data, "aot-eager", base, layers, model=lambda: build_model(model_name), steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        stats = run_steps(fast, x, y)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= graphs_before + 2  # attack + loss graphs
    assert_same_training(eager, fast, run_steps(eager, x, y), stats, exact=False)
    # The last, smaller batch of an epoch is a new shape: compiled once more, still the same training.
    assert_same_training(eager, fast, run_steps(eager, x[:5], y[:5], 1), run_steps(fast, x[:5], y[:5], 1),
                         exact=False)


class DataDependentMLP(nn.Module):
    """A branch on a tensor's value: no single graph can hold it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(2, 16), nn.Linear(16, 16), nn.Linear(16, 1)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        if h.mean() > 10:
            h = h / 2
        return self.fc3(torch.relu(self.fc2(h)))


def test_a_model_that_does_not_compile_trains_eagerly_after_one_warning(moons):
    x, y = moons.tensors[0][:64], moons.tensors[1][:64]
    eager = make_trainer(moons, None, "pgd", (0,), model=DataDependentMLP, probes="hidden")
    fast = make_trainer(moons, "aot-eager", "pgd", (0,), model=DataDependentMLP, probes="hidden")
    with pytest.warns(RuntimeWarning, match="DataDependentMLP does not compile into one graph.*training eagerly") as caught:
        stats = run_steps(fast, x, y)
    assert len([w for w in caught if "does not compile" in str(w.message)]) == 1
    assert fast.compiled_step.failed
    assert_same_training(eager, fast, run_steps(eager, x, y), stats, exact=True)


def test_compile_config_values():
    assert TrainConfig(compile=True).compile == "auto" and TrainConfig(compile=False).compile == "none"
    assert TrainConfig(compile="reduce-overhead").compile == "cudagraphs"
    assert TrainConfig(compile="aot_eager").compile == "aot-eager"
    with pytest.raises(ValueError, match="unknown compile 'fast'"):
        TrainConfig(compile="fast")
    with pytest.raises(ValueError, match="drop_last must be True or False"):
        TrainConfig(drop_last="yes")


# -------------------------------------------------------------------- no host sync

SYNCING = ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def counting_syncs(calls):
    """Counts the calls that read a tensor's value on the host while `calls['on']`."""
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def counted(name):
        original = originals[name]

        def wrapper(self, *args, **kwargs):
            if calls["on"]:
                calls[name] = calls.get(name, 0) + 1
            return original(self, *args, **kwargs)

        return wrapper

    try:
        for name in SYNCING:
            setattr(torch.Tensor, name, counted(name))
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def image_trainer(compile_mode, device="cpu", batches=5, base="pgd"):
    generator = torch.Generator().manual_seed(2)
    x, y = torch.rand(8 * batches, 1, 28, 28, generator=generator), torch.randint(0, 10, (8 * batches,), generator=generator)
    config = TrainConfig(base=base, eps=0.1, steps=2, lr_layers=[1], gammas=0.5, epochs=1, batch_size=8,
                         optimizer="sgd", lr=0.05, augment="crop-flip", compile=compile_mode)
    torch.manual_seed(0)
    loader = DeviceLoader(x, y, 8, device=device, augment="crop-flip")
    return ATLRTrainer(build_model("B"), config, loader, device=device)


@pytest.mark.parametrize("compile_mode,base", [("none", "pgd"), ("aot-eager", "pgd"), ("aot-eager", "apgd")])
def test_no_step_after_the_first_reads_a_tensor_value(compile_mode, base):
    trainer = image_trainer(compile_mode, base=base)
    # Steps 1 (value checks) and 2 (compilation) may read values; from step 3 on nothing may,
    # neither in the step nor in drawing and augmenting the next batch.
    calls = {"on": False}
    step = trainer.train_step
    count = {"n": 0}

    def counted_step(x, y, real=None):
        count["n"] += 1
        calls["on"] = count["n"] >= 3
        return step(x, y, real)

    trainer.train_step = counted_step
    with counting_syncs(calls):
        assert trainer._train_epoch(progress=False)
        calls["on"] = False
    assert count["n"] == 5
    assert {k: v for k, v in calls.items() if k != "on"} == {}
    # The next epoch (its first step eager again, hooks added and removed) reuses the graphs.
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert trainer._train_epoch(progress=False)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


@pytest.mark.cuda
@pytest.mark.parametrize("compile_mode", ["none", "inductor", "cudagraphs"])
def test_cuda_steps_do_not_synchronise(compile_mode):
    trainer = image_trainer(compile_mode, device="cuda", batches=8)
    # Step 1 checks values, 2 compiles, 2-3 warm up the CUDA graph and 4 captures it.
    step = trainer.train_step
    count = {"n": 0}

    def checked_step(x, y, real=None):
        count["n"] += 1
        if count["n"] >= 5:
            torch.cuda.set_sync_debug_mode("error")
        return step(x, y, real)

    trainer.train_step = checked_step
    try:
        assert trainer._train_epoch(progress=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert count["n"] == 8
    assert trainer.compiled_step is None or not trainer.compiled_step.failed


@pytest.mark.cuda
@pytest.mark.parametrize("compile_mode,base", [("inductor", "pgd"), ("cudagraphs", "pgd"), ("cudagraphs", "apgd")])
def test_cuda_compiled_steps_train_the_eager_weights(compile_mode, base, monkeypatch):
    # TF32 off: compiled and eager code may pick different convolution algorithms.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    eager = image_trainer("none", device="cuda", batches=7, base=base)
    fast = image_trainer(compile_mode, device="cuda", batches=7, base=base)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # neither fallback: compiled, and graphed where asked
        for trainer in (eager, fast):
            assert trainer._train_epoch(progress=False)
    if compile_mode == "cudagraphs":  # steps 2-3 warm up, 4 captures, 5-7 replay
        assert fast.compiled_step.use_graphs and fast.compiled_step._graphs
    for (name, a), b in zip(eager.module.state_dict().items(), fast.module.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=name)
    torch.testing.assert_close(fast.epoch_sums, eager.epoch_sums, rtol=1e-3, atol=1e-3)


def test_inductor_compiled_apgd_step_trains_the_eager_weights(moons):
    """AT-APGD-LR compiled by inductor on CPU: one graph serves all of APGD's steps (its
    checkpoints are read from the schedule inside the graph), and it trains the eager weights."""
    x, y = moons.tensors[0][:64], moons.tensors[1][:64]
    eager = make_trainer(moons, None, "apgd", (0, 2), steps=5)
    torch._dynamo.reset()
    fast = make_trainer(moons, "inductor", "apgd", (0, 2), steps=5)
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to eager
        stats = run_steps(fast, x, y, 2)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs - before <= 3  # the clean forward, the APGD step, the loss + backward: not one per APGD step
    assert not fast.compiled_step.failed
    stats += run_steps(fast, x, y, 1)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # no recompilation
    assert_same_training(eager, fast, run_steps(eager, x, y, 3), stats, exact=False)


# ------------------------------------------------------------------ end to end

TRAIN = ["train", "--model", "A", "--dataset", "moons", "--base", "fast", "--lr-layers", "1", "--gamma", "0.5",
         "--eps", "0.3", "--n-train", "256", "--n-test", "128", "--batch-size", "64", "--optimizer", "sgd",
         "--lr", "0.05", "--epochs", "2", "--device", "cpu", "--no-progress"]


def assert_close_runs(a, b):
    first, second = load_checkpoint(a / "final.pt"), load_checkpoint(b / "final.pt")
    for key, value in first["model"].items():
        torch.testing.assert_close(second["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    for m, n in zip(first["metrics"], second["metrics"]):
        assert m["loss"] == pytest.approx(n["loss"], rel=1e-4) and m["test_acc"] == n["test_acc"]
        assert m["regularizer"] == pytest.approx(n["regularizer"], rel=1e-4)


def test_cli_train_compile_equals_eager(tmp_path, capsys):
    assert cli.main(TRAIN + ["--out", str(tmp_path / "eager")]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to eager
        assert cli.main(TRAIN + ["--compile", "--out", str(tmp_path / "compiled")]) == 0
    assert "weights in" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "compiled" / "final.pt")["config"]["compile"] == "auto"
    assert_close_runs(tmp_path / "eager", tmp_path / "compiled")


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_two_gloo_processes_with_the_compiled_step_match_one_process(tmp_path, capsys):
    command = TRAIN + ["--compile", "aot-eager", "--base", "fgsm"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "lsa_fast.cli"] + command + ["--out", str(tmp_path / "ddp")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "does not compile" not in done.stderr
    assert cli.main(TRAIN + ["--base", "fgsm", "--out", str(tmp_path / "single")]) == 0
    capsys.readouterr()
    assert_close_runs(tmp_path / "single", tmp_path / "ddp")


def test_reproduce_trains_with_the_compiled_step_when_asked():
    """`lsa-fast reproduce ... --set compile=auto`: every row's TrainConfig compiles (the
    APGD rows of Tables 3 and 4 included); the default stays eager."""
    from lsa_fast.paper import paper_table
    from lsa_fast.reproduce import ReproduceSettings, apply_overrides, variants
    from lsa_fast.reproduce.running import _train_config

    table = paper_table("mnist")
    eager = ReproduceSettings.defaults("mnist")
    compiled = apply_overrides(eager, ["compile=auto"])
    rows = variants(table, compiled)
    assert any(row.base == "apgd" for row in rows)
    for row in rows:
        assert _train_config(table, row, 0, compiled, {}).compile == "auto"
        assert _train_config(table, row, 0, eager, {}).compile == "none"
