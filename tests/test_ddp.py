"""torchrun DDP: two CPU processes (gloo) train the same weights as one process on the
same global batch (DistributedSampler shards every global batch; FGSM is deterministic,
so the per-rank attacks see exactly what the single process sees)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from lsa_fast import cli
from lsa_fast.checkpoint import load_checkpoint

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--model", "A", "--dataset", "moons", "--base", "fgsm", "--lr-layers", "1,2", "--gamma", "0.5",
         "--eps", "0.3", "--n-train", "256", "--n-test", "128", "--batch-size", "64", "--optimizer", "sgd",
         "--lr", "0.05", "--epochs", "2", "--device", "cpu", "--no-progress"]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_two_gloo_processes_match_one_process(tmp_path, capsys):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "lsa_fast.cli"] + TRAIN + ["--out", str(tmp_path / "ddp")]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Only rank 0 speaks and writes.
    assert done.stdout.count("weights in") == 1
    assert "2 process(es) on cpu" in done.stderr

    assert cli.main(TRAIN + ["--out", str(tmp_path / "single")]) == 0
    capsys.readouterr()

    ddp = load_checkpoint(tmp_path / "ddp" / "final.pt")
    single = load_checkpoint(tmp_path / "single" / "final.pt")
    assert ddp["world_size"] == 2 and len(ddp["rng"]) == 2 and single["world_size"] == 1
    for key, value in single["model"].items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=1e-5, atol=1e-6, msg=f"{key} differs")
    ddp_metrics = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    single_metrics = [json.loads(line) for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in ddp_metrics] == [1, 2]
    for a, b in zip(ddp_metrics, single_metrics):
        assert a["train_acc"] == b["train_acc"] and a["test_acc"] == b["test_acc"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["regularizer"] == pytest.approx(b["regularizer"], rel=1e-5)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_uneven_dataset_counts_each_sample_once_and_rank0_errors_stop_every_rank(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "lsa_fast.cli"] + TRAIN + ["--n-train", "257", "--epochs", "1", "--out", str(tmp_path / "ddp")]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # DistributedSampler pads 257 to 258 (one repeat, trained on); the metrics count 257.
    metrics = json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text())
    assert metrics["samples"] == 257
    correct = metrics["train_acc"] * 257 / 100
    assert abs(correct - round(correct)) < 1e-6

    # Rank 0 alone finds the directory taken; every rank stops, and the error is said once.
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if "lsa-fast train: error:" in line]
    assert len(errors) == 1 and errors[0].startswith("lsa-fast train: error: "), done.stderr[-3000:]
    assert "already holds a run (checkpoint.pt)" in errors[0]
