"""Run directories of `lsa-fast train` lose nothing and mix nothing: one process per
directory (a lock, taken over from a killed holder), a kill -9 during any save leaves a
run that the next start cleans and completes bit for bit, --resume never writes into
another run, and the data is found again (absolute path, --data, $LSA_FAST_DATA) and
checked against the run's fingerprint. Kill tests run the real command in a subprocess
and stop it with SIGKILL inside a save (tests/held_save.py)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lsa_fast import cli
from lsa_fast.checkpoint import load_checkpoint

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--model", "A", "--dataset", "moons", "--base", "fgsm", "--n-train", "256", "--n-test", "128",
         "--batch-size", "64", "--optimizer", "adam", "--lr", "0.01", "--epochs", "2", "--device", "cpu",
         "--no-progress"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def without_times(path):
    lines = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return [{k: v for k, v in m.items() if k not in ("time_s", "images_per_s")} for m in lines]


def temporaries(directory):
    return sorted(p.name for p in Path(directory).iterdir() if p.name.endswith(".tmp"))


def start_held(args, hold, tmp_path):
    """The real command in a subprocess, stopped inside the save `hold` (NAME:N) with
    its temporary file written; returns the process once it waits there."""
    marker = tmp_path / f"held-{time.monotonic_ns()}"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    held = [sys.executable, str(ROOT / "tests" / "held_save.py"), f"{hold}:{marker}"]
    process = subprocess.Popen(held + args, cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (rc {process.returncode}) before the save {hold}: "
                                 f"{process.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, "the held save never came"
        time.sleep(0.05)
    return process


def kill(process):
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, the one every interrupted run must end up equal to."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert cli.main(TRAIN + ["--out", str(out)]) == 0
    return out


# ------------------------------------------------------------- kills and restarts


def test_kill_while_final_pt_is_written_then_resume_completes_it(reference, tmp_path, capsys):
    run = tmp_path / "run"
    kill(start_held(TRAIN + ["--out", str(run)], "final.pt:1", tmp_path))
    # What the kill left: a complete checkpoint, no final.pt, its temporary, a short log.
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2 and not (run / "final.pt").exists()
    assert len(temporaries(run)) == 1 and temporaries(run)[0].startswith(".final.pt.")
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1

    assert cli.main(["train", "--resume", str(run)]) == 0
    captured = capsys.readouterr()
    assert "already complete (2 epochs)" in captured.out and "wrote final.pt" in captured.out
    assert "removed 1 temporary file(s)" in captured.err and "took over a stale lock of pid" in captured.err
    assert temporaries(run) == [] and not (run / ".lsa-fast.lock").exists()
    assert_same_weights(load_checkpoint(run / "final.pt")["model"], load_checkpoint(reference / "final.pt")["model"])
    assert without_times(run / "metrics.jsonl") == without_times(reference / "metrics.jsonl")

    # The deterministic repro: a finished run without its final.pt.
    (run / "final.pt").unlink()
    assert cli.main(["train", "--resume", str(run)]) == 0
    assert "wrote final.pt" in capsys.readouterr().out
    assert_same_weights(load_checkpoint(run / "final.pt")["model"], load_checkpoint(reference / "final.pt")["model"])


def test_kill_during_a_checkpoint_save_leaves_nothing_behind_after_resume(reference, tmp_path, capsys):
    run = tmp_path / "run"
    kill(start_held(TRAIN + ["--out", str(run)], "checkpoint.pt:2", tmp_path))  # the save after epoch 2
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    assert len(temporaries(run)) == 1 and temporaries(run)[0].startswith(".checkpoint.pt.")

    assert cli.main(["train", "--resume", str(run)]) == 0
    captured = capsys.readouterr()
    assert "removed 1 temporary file(s) that an interrupted write left: .checkpoint.pt." in captured.err
    assert "resuming" in captured.err and "weights in" in captured.out
    assert temporaries(run) == []
    assert_same_weights(load_checkpoint(run / "final.pt")["model"], load_checkpoint(reference / "final.pt")["model"])
    assert without_times(run / "metrics.jsonl") == without_times(reference / "metrics.jsonl")


def test_two_trainings_cannot_share_a_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    first = start_held(TRAIN + ["--out", str(run), "--seed", "1"], "checkpoint.pt:1", tmp_path)
    try:
        # Neither has a checkpoint yet; the second is refused by the lock, not by luck.
        assert cli.main(TRAIN + ["--out", str(run), "--seed", "2"]) == 2
        err = capsys.readouterr().err
        assert f"is in use by another lsa-fast process (pid {first.pid} on" in err
        assert "--seed 1" in err and err.count("\n") == 1
        assert cli.main(["train", "--resume", str(run)]) == 2  # nor can anyone resume it meanwhile
        assert "is in use by another lsa-fast process" in capsys.readouterr().err
    finally:
        kill(first)
    # The holder died: its lock is stale, reported and taken over; a new run starts there.
    assert cli.main(TRAIN + ["--out", str(run), "--seed", "2"]) == 0
    err = capsys.readouterr().err
    assert f"took over a stale lock of pid {first.pid}" in err and "removed 1 temporary file(s)" in err
    assert json.loads((run / "config.json").read_text())["seed"] == 2
    assert load_checkpoint(run / "final.pt")["config"]["seed"] == 2
    assert [m["epoch"] for m in without_times(run / "metrics.jsonl")] == [1, 2]


# ------------------------------------------------------------------- resume


def test_resume_into_another_run_is_refused(tmp_path, capsys):
    ra, rb, rc = tmp_path / "ra", tmp_path / "rb", tmp_path / "rc"
    assert cli.main(TRAIN + ["--seed", "2", "--out", str(rb)]) == 0
    assert cli.main(TRAIN + ["--seed", "1", "--out", str(ra), "--stop-after-epoch", "1"]) == 0
    before = {name: (rb / name).read_bytes() for name in ("checkpoint.pt", "final.pt", "config.json", "metrics.jsonl")}
    capsys.readouterr()

    assert cli.main(["train", "--resume", str(ra), "--out", str(rb)]) == 2
    err = capsys.readouterr().err
    assert f"--out {rb} already holds another run (checkpoint.pt)" in err and f"continue it in {ra}" in err
    assert {name: (rb / name).read_bytes() for name in before} == before

    # Into an empty directory it is a copy of the run that goes on there.
    assert cli.main(["train", "--resume", str(ra), "--out", str(rc)]) == 0
    assert load_checkpoint(rc / "final.pt")["config"]["seed"] == 1
    assert load_checkpoint(ra / "checkpoint.pt")["epoch"] == 1  # the source is untouched


@pytest.mark.parametrize("value", ["0", "-1"])
def test_stop_after_epoch_below_one_is_refused(tmp_path, capsys, value):
    assert cli.main(TRAIN + ["--out", str(tmp_path / "run"), "--stop-after-epoch", value]) == 2
    assert f"--stop-after-epoch must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------- data


def write_mnist(folder, seed, n_train=48, n_test=16):
    """The four IDX files of a tiny MNIST."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, array in (("images-idx3", rng.integers(0, 256, (n, 28, 28))), ("labels-idx1", rng.integers(0, 10, n))):
            header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            (folder / f"{prefix}-{kind}-ubyte").write_bytes(header + array.astype(np.uint8).tobytes())


def test_data_is_found_again_and_checked(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LSA_FAST_DATA", raising=False)
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_mnist(work / "data", seed=0)
    write_mnist(tmp_path / "other", seed=1)  # the same shapes, other images
    monkeypatch.chdir(work)
    mnist = ["train", "--model", "B", "--base", "none", "--epochs", "2", "--batch-size", "16", "--device", "cpu",
             "--no-progress", "--optimizer", "adam", "--lr", "0.001"]
    assert cli.main(mnist + ["--data", "data", "--out", "run", "--stop-after-epoch", "1"]) == 0
    config = json.loads((work / "run" / "config.json").read_text())
    assert config["data_dir"] == str(work / "data") and "data_dir" not in config["data_options"]
    assert config["extra"]["data_fingerprint"]["train"]["samples"] == 48
    run = str(work / "run")

    # Another working directory: the absolute path finds the data.
    monkeypatch.chdir(elsewhere)
    assert cli.main(["eval", "--checkpoint", run, "--eps-grid", "0,0.1"]) == 0
    # Moved data: the error says where the run had it and how to point elsewhere.
    (work / "data").rename(work / "moved")
    capsys.readouterr()
    assert cli.main(["train", "--resume", run]) == 2
    err = capsys.readouterr().err
    assert "MNIST (train split): missing" in err and f"The run read its data from {work / 'data'}" in err
    assert "give --data DIR" in err
    # Other data under the same names is refused, by --data or by $LSA_FAST_DATA.
    assert cli.main(["train", "--resume", run, "--data", str(tmp_path / "other")]) == 2
    assert "the train split read from" in capsys.readouterr().err
    monkeypatch.setenv("LSA_FAST_DATA", str(tmp_path / "other"))
    for argv in (["train", "--resume", run], ["eval", "--checkpoint", run, "--eps-grid", "0"],
                 ["analyze", "--checkpoint", run, "--perturbations", "fgsm:0.1", "--out", "lsa", "--no-progress"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "is not the data the run recorded" in err and str(tmp_path / "other") in err, err
    monkeypatch.delenv("LSA_FAST_DATA")
    # The data where it now is: resume, eval and analyze take it, and the run records the move.
    assert cli.main(["train", "--resume", run, "--data", str(work / "moved")]) == 0
    assert json.loads((work / "run" / "config.json").read_text())["data_dir"] == str(work / "moved")
    assert load_checkpoint(work / "run" / "final.pt")["epoch"] == 2
    assert cli.main(["eval", "--checkpoint", run, "--eps-grid", "0,0.1", "--limit", "8"]) == 0
    assert cli.main(["analyze", "--checkpoint", run, "--perturbations", "fgsm:0.1", "--limit", "8", "--out", "lsa",
                     "--no-progress"]) == 0
    assert json.loads((elsewhere / "lsa" / "report.json").read_text())["num_samples"] == 8


def test_lock_without_flock_uses_an_exclusive_file(tmp_path, monkeypatch):
    import socket

    from lsa_fast import run_lock

    monkeypatch.setattr(run_lock, "fcntl", None)  # as on Windows
    with run_lock.RunLock(tmp_path / "run") as lock:
        assert lock.stale is None
        with pytest.raises(run_lock.RunDirectoryInUse, match=f"pid {os.getpid()} on"):
            run_lock.RunLock(tmp_path / "run").acquire()
    assert not (tmp_path / "run").exists()  # released, and the empty directory it made is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / run_lock.LOCK_NAME).write_text(json.dumps(
        {"pid": int(dead.stdout), "host": socket.gethostname(), "started": "then", "command": "lsa-fast train"}))
    with run_lock.RunLock(tmp_path / "run") as lock:
        assert f"took over a stale lock of pid {int(dead.stdout)}" in lock.stale
