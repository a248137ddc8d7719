"""AutoAttack over a test set (lsa_fast.robust_eval, `lsa-fast eval --attack autoattack`):
per-stage and final robust accuracy, a state file that lets an interrupted run (an
exception, kill -9) continue to the same numbers, shards over two torchrun processes
that give the one-process numbers, and one error line per bad input before any work.

The runner's own logic is tested with tests/fake_autoattack.py (the attack's API, a
deterministic per-sample outcome, optional sleep); the real attack is tested end to end
where lsa_fast.attacks.autoattack is present."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import fake_autoattack
from cli_errors import one_error
from fake_autoattack import fake_autoattack as fake
from lsa_fast import cli
from lsa_fast.robust_eval import evaluate_autoattack, state_path_for

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--model", "A", "--dataset", "moons", "--base", "fgsm", "--n-train", "128", "--n-test", "64",
         "--batch-size", "64", "--optimizer", "adam", "--lr", "0.01", "--epochs", "1", "--device", "cpu",
         "--no-progress"]


def linear_problem(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 6, generator=g)
    model = torch.nn.Sequential(torch.nn.Linear(6, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(3, 6, generator=g))
        model[0].bias.zero_()
        y = model(x).argmax(1)
    y[::5] = (y[::5] + 1) % 3  # some points misclassified clean
    return model.eval(), x, y


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert cli.main(TRAIN + ["--out", str(out)]) == 0
    return out


@pytest.fixture
def with_fake(monkeypatch):
    monkeypatch.setattr("lsa_fast.robust_eval.autoattack", fake)
    fake_autoattack.CALLS.clear()
    return fake_autoattack.CALLS


def interrupted_in_call(number, attack):
    """`attack`, except that its call `number` raises KeyboardInterrupt (Ctrl-C in that chunk)."""
    calls = []

    def attack_until_interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            raise KeyboardInterrupt
        return attack(*args, **kwargs)

    return attack_until_interrupted


# ------------------------------------------------------------------- the runner


def test_counts_per_stage_match_the_per_point_results():
    model, x, y = linear_problem()
    result = evaluate_autoattack(model, x, y, 0.5, batch_size=7, attack=fake)
    whole = fake(model, x, y, 0.5, sample_ids=torch.arange(len(x)))
    assert torch.equal(result.broken_by, whole.broken_by)  # chunks of 7 = one batch of 40
    assert torch.equal(result.clean_correct, whole.clean_correct)
    assert result.stages == fake_autoattack.STAGES and result.n_examples == 40
    b = whole.broken_by
    assert result.clean_acc == pytest.approx(100 * (b != 0).sum().item() / 40)
    assert result.autoattack_acc == pytest.approx(100 * (b == -1).sum().item() / 40)
    after = [100 * ((b == -1) | (b > k)).sum().item() / 40 for k in range(1, 5)]
    assert result.stage_accs == pytest.approx(after)
    assert result.stage_accs[-1] == result.autoattack_acc
    assert 0 < result.autoattack_acc < result.clean_acc < 100
    # 6 chunks all say one message; the chunks holding ids 0, 7, ..., 35 the other.
    assert result.warnings == {"fake check: every chunk says this": 6, "fake check: a point id divisible by 7": 6}
    record = result.to_dict(checkpoint="c.pt")
    for key in ("clean_acc", "autoattack_acc", "eps", "norm", "n_examples", "version", "seed", "stages", "seconds",
                "images_per_s", "torch", "checkpoint"):
        assert key in record
    assert [s["name"] for s in record["stages"]] == list(fake_autoattack.STAGES)
    assert sum(s["broken"] for s in record["stages"]) == int((b > 0).sum())
    assert "| apgd-t |" in result.table()
    # Messages that differ only in their per-chunk counts are one line.
    result.warnings = {"Square broke 2 points": 1, "Square broke 5 points": 2, "the model is in training mode": 6}
    assert result.warning_lines() == ["Square broke 2 points (3 times, with other numbers in other chunks)",
                                      "the model is in training mode (6 time(s))"]


def test_an_interrupted_run_continues_from_its_state_file_to_the_same_numbers(tmp_path):
    model, x, y = linear_problem()
    state = tmp_path / "out.json.state"
    calls, interrupt = [], [True]

    def failing_after_two_chunks(*args, **kwargs):
        calls.append(int(kwargs["sample_ids"][0]))
        if len(calls) == 3 and interrupt and interrupt.pop():
            raise KeyboardInterrupt  # Ctrl-C in the third chunk of the first run
        return fake(*args, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        evaluate_autoattack(model, x, y, 0.5, batch_size=8, state_path=state, attack=failing_after_two_chunks)
    saved = json.loads(state.read_text())
    assert sorted(saved["chunks"]) == ["0", "1"] and saved["settings"]["n_examples"] == 40

    calls.clear()
    resumed = evaluate_autoattack(model, x, y, 0.5, batch_size=8, state_path=state, attack=failing_after_two_chunks)
    assert calls == [16, 24, 32]  # only the chunks not done before
    assert not state.exists()  # removed when the run completes
    whole = evaluate_autoattack(model, x, y, 0.5, batch_size=8, attack=fake)
    assert resumed.resumed_chunks == 2 and whole.resumed_chunks == 0
    assert torch.equal(resumed.broken_by, whole.broken_by) and torch.equal(resumed.clean_correct, whole.clean_correct)
    assert (resumed.clean_acc, resumed.stage_accs, resumed.warnings) == (whole.clean_acc, whole.stage_accs,
                                                                         whole.warnings)


def test_a_run_killed_after_its_last_chunk_but_before_its_output_finishes_from_the_state(tmp_path):
    model, x, y = linear_problem()
    state = tmp_path / "out.json.state"
    first = evaluate_autoattack(model, x, y, 0.5, batch_size=16, state_path=state, keep_state=True, attack=fake)
    assert sorted(json.loads(state.read_text())["chunks"]) == ["0", "1", "2"]  # the caller writes, then removes

    def must_not_run(*args, **kwargs):
        raise AssertionError("every chunk is in the state file")

    again = evaluate_autoattack(model, x, y, 0.5, batch_size=16, state_path=state, attack=must_not_run)
    assert again.resumed_chunks == 3 and not state.exists()
    assert torch.equal(again.broken_by, first.broken_by) and again.warnings == first.warnings
    assert again.seconds == pytest.approx(first.seconds)


def test_a_state_file_of_other_settings_is_refused_unless_restarted(tmp_path):
    model, x, y = linear_problem()
    state = tmp_path / "out.json.state"

    def stop_after_one(*args, **kwargs):
        if kwargs["sample_ids"][0] > 0:
            raise KeyboardInterrupt
        return fake(*args, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        evaluate_autoattack(model, x, y, 0.5, batch_size=8, state_path=state, attack=stop_after_one)
    before = state.read_text()
    other_model = torch.nn.Sequential(torch.nn.Linear(6, 3)).eval()
    for kwargs, what in [(dict(eps=0.25), "eps 0.5 there, 0.25 here"), (dict(seed=3), "seed 0 there, 3 here"),
                         (dict(norm="L2"), "norm Linf there, L2 here"), (dict(batch_size=4), "batch_size 8 there"),
                         (dict(y=y.flip(0)), "data "), (dict(model=other_model), "weights "),
                         (dict(x=x[:32], y=y[:32]), "n_examples 40 there, 32 here")]:
        call = {**dict(model=model, x=x, y=y, eps=0.5, batch_size=8), **kwargs}
        with pytest.raises(ValueError, match="an unfinished run with other settings") as error:
            evaluate_autoattack(call.pop("model"), call.pop("x"), call.pop("y"), call.pop("eps"), state_path=state,
                                attack=fake, **call)
        assert what in str(error.value) and "--restart" in str(error.value) and "\n" not in str(error.value)
    assert state.read_text() == before  # a refusal leaves the state alone
    state.write_text("{not json")
    with pytest.raises(ValueError, match="not a state file of lsa-fast eval"):
        evaluate_autoattack(model, x, y, 0.5, batch_size=8, state_path=state, attack=fake)
    fresh = evaluate_autoattack(model, x, y, 0.25, batch_size=8, state_path=state, restart=True, attack=fake)
    assert fresh.resumed_chunks == 0 and not state.exists()


@pytest.mark.parametrize("bad, message", [
    (dict(eps=-0.1), "eps must be a finite number >= 0"), (dict(eps=math.nan), "eps must be a finite number >= 0"),
    (dict(eps=math.inf), "eps must be a finite number >= 0"), (dict(norm="L3"), "unknown norm; use Linf or L2"),
    (dict(version="fast"), "unknown AutoAttack version"), (dict(batch_size=0), "batch_size must be a positive int"),
])
def test_runner_arguments_are_checked(bad, message):
    model, x, y = linear_problem(8)
    call = {"eps": 0.1, **bad}
    with pytest.raises(ValueError, match=message):
        evaluate_autoattack(model, x, y, call.pop("eps"), attack=fake, **call)


def four_class_problem(n=40):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 8, generator=g)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::5] = (y[::5] + 1) % 4
    return model, x, y


def test_the_real_autoattack_resumed_in_chunks_gives_its_whole_batch_result(tmp_path):
    from lsa_fast.attacks.autoattack import autoattack

    model, x, y = four_class_problem()
    state = tmp_path / "out.json.state"
    interrupted_in_chunk_three = interrupted_in_call(3, autoattack)

    with pytest.raises(KeyboardInterrupt):
        evaluate_autoattack(model, x, y, 0.25, batch_size=8, state_path=state, attack=interrupted_in_chunk_three)
    assert len(json.loads(state.read_text())["chunks"]) == 2
    with pytest.warns(UserWarning, match="skipping square"):  # 8 features, not images
        whole = autoattack(model, x, y, 0.25)
    resumed = evaluate_autoattack(model, x, y, 0.25, batch_size=8, state_path=state)  # the real one by default
    assert resumed.resumed_chunks == 2 and not state.exists()
    assert resumed.stages == whole.stages == ("apgd-ce", "apgd-t", "fab-t")
    assert torch.equal(resumed.broken_by, whole.broken_by) and torch.equal(resumed.clean_correct, whole.clean_correct)
    assert 0 < resumed.autoattack_acc < resumed.clean_acc == 80.0
    # Each chunk's check said so once; the message names the chunk's shape, so they group into one line.
    assert sum(resumed.warnings.values()) == 5 and len(resumed.warning_lines()) == 1


# ------------------------------------------------------------------- the command


def test_eval_autoattack_prints_the_stage_table_and_writes_the_json(tmp_path, capsys, run, with_fake):
    out = tmp_path / "aa.json"
    argv = ["eval", "--checkpoint", str(run), "--attack", "autoattack", "--eps", "0.3", "--n-examples", "40",
            "--batch-size", "16", "--device", "cpu", "--out", str(out)]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert with_fake == [0, 16, 32]
    record = json.loads(out.read_text())
    assert record["eps"] == 0.3 and record["eps_input_units"] == pytest.approx(0.3 / 5)  # moons: x / 5
    assert (record["norm"], record["version"], record["n_examples"], record["seed"]) == ("Linf", "standard", 40, 0)
    assert record["checkpoint"].endswith("final.pt") and record["device"] == "cpu" and record["processes"] == 1
    assert [s["name"] for s in record["stages"]] == list(fake_autoattack.STAGES)
    assert record["autoattack_acc"] == record["stages"][-1]["robust_acc"] <= record["clean_acc"]
    assert f"clean accuracy: {record['clean_acc']:.2f}%" in captured.out
    assert f"robust accuracy (AutoAttack standard, Linf, eps 0.3): {record['autoattack_acc']:.2f}%" in captured.out
    assert "| square |" in captured.out and "img/s" in captured.out
    # Not a terminal: one progress line per chunk, the last one says done.
    lines = [line for line in captured.err.splitlines() if line.startswith("autoattack: ")]
    assert len(lines) == 3 and lines[0].startswith("autoattack: 16/40 points") and "ETA" in lines[0]
    assert lines[-1].startswith("autoattack: 40/40 points") and lines[-1].endswith("done")
    assert "warning: fake check: every chunk says this (3 time(s))" in captured.err
    assert captured.err.count("AutoAttack standard, Linf, eps 0.3 on 40 points (3 chunk(s) of 16, seed 0") == 1
    assert not Path(state_path_for(out)).exists()
    assert oct(out.stat().st_mode & 0o777) == oct(0o644)


def test_eval_autoattack_bad_input_is_one_line_before_any_work(tmp_path, capsys, run, with_fake):
    base = ["eval", "--checkpoint", str(run), "--attack", "autoattack", "--device", "cpu"]
    cases = [
        (["--eps", "-0.1"], "--eps: eps must be a finite number >= 0, got -0.1"),
        (["--eps", "nan"], "--eps: eps must be a finite number >= 0"),
        (["--eps", "inf"], "--eps: eps must be a finite number >= 0"),
        (["--eps", "0.1,0.2"], "--attack autoattack takes one eps, got 2"),
        ([], "--attack autoattack needs --eps"),
        (["--eps", "0.3", "--norm", "L1.5"], "--norm 'L1.5': unknown norm; use Linf or L2"),
        (["--eps", "0.3", "--version", "fast"], "--version 'fast': unknown AutoAttack version"),
        (["--eps", "0.3", "--n-examples", "0"], "--n-examples (--limit) must be >= 1, got 0"),
        (["--eps", "0.3", "--n-examples", "65"], "--n-examples 65: more than the 64 samples of the test set"),
        (["--eps", "0.3", "--out", str(tmp_path / "missing" / "aa.json")], "the directory"),
        (["--eps", "0.3", "--steps", "5"], "--steps does not apply to --attack autoattack"),
    ]
    for extra, message in cases:
        one_error(capsys, cli.main(base + extra), message, "lsa-fast eval: error: ")
    # AutoAttack's options with another attack.
    one_error(capsys, cli.main(["eval", "--checkpoint", str(run), "--eps", "0.1", "--norm", "L2"]),
              "--norm applies to --attack autoattack, not fgsm")
    assert with_fake == [] and list(tmp_path.iterdir()) == []

    # A state file of other settings: refused before any chunk, kept; --restart discards it.
    out = tmp_path / "aa.json"
    state = Path(state_path_for(out))
    run_args = base + ["--eps", "0.3", "--n-examples", "32", "--batch-size", "16", "--out", str(out)]
    state.write_text(json.dumps({"format": "lsa_fast.autoattack-state/1", "settings": {"eps": 0.1}, "chunks": {},
                                 "seconds": 0.0}))
    code, err = cli.main(run_args), capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "AutoAttack standard" not in err  # no header: nothing began
    last = err.splitlines()[-1]  # after the line that says which data the run's record rebuilt
    assert last.startswith(f"lsa-fast eval: error: {state}: an unfinished run with other settings"), err
    assert "(weights None there" in last and ", and 5 more); give --restart" in last
    assert with_fake == [] and state.exists()
    assert cli.main(run_args + ["--restart"]) == 0
    assert with_fake == [0, 16] and out.exists() and not state.exists()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_kill_9_then_the_same_command_gives_the_uninterrupted_numbers(tmp_path, run):
    env = dict(os.environ, OMP_NUM_THREADS="1", FAKE_AUTOATTACK_SLEEP="0.4",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "aa.json"
    state = Path(state_path_for(out))
    argv = [sys.executable, str(ROOT / "tests" / "fake_autoattack.py"), "eval", "--checkpoint", str(run),
            "--attack", "autoattack", "--eps", "0.4", "--batch-size", "8", "--device", "cpu", "--out", str(out)]
    process = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (state.exists() and json.loads(state.read_text())["chunks"]) and time.time() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    saved = len(json.loads(state.read_text())["chunks"])
    assert 1 <= saved < 8 and not out.exists()

    env["FAKE_AUTOATTACK_SLEEP"] = "0"
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"on 64 points (8 chunk(s) of 8, seed 0, 1 process(es) on cpu); {8 * saved} points done before" \
        in done.stderr
    resumed = json.loads(out.read_text())
    uninterrupted = tmp_path / "whole.json"
    argv[argv.index(str(out))] = str(uninterrupted)
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    whole = json.loads(uninterrupted.read_text())
    for key in ("clean_acc", "autoattack_acc", "stages", "warnings", "n_examples"):
        assert resumed[key] == whole[key], key
    assert not state.exists()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_two_torchrun_processes_finish_an_interrupted_run_with_the_one_process_result(tmp_path, run, capsys,
                                                                                      monkeypatch):
    # The real attack (model A has one logit: APGD-CE alone applies), 64 points in 8 chunks.
    from lsa_fast.attacks.autoattack import autoattack

    args = ["eval", "--checkpoint", str(run), "--attack", "autoattack", "--eps", "0.4", "--batch-size", "8",
            "--device", "cpu"]
    # One process, Ctrl-C in its fourth chunk: three chunks in two.json.state ...
    interrupted_in_chunk_four = interrupted_in_call(4, autoattack)
    monkeypatch.setattr("lsa_fast.robust_eval.autoattack", interrupted_in_chunk_four)
    assert cli.main(args + ["--out", str(tmp_path / "two.json"), "--no-progress"]) == 130
    assert len(json.loads((tmp_path / "two.json.state").read_text())["chunks"]) == 3
    monkeypatch.undo()
    # ... which two processes finish.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    sharded = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              "-m", "lsa_fast.cli"] + args + ["--out", str(tmp_path / "two.json")],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert sharded.returncode == 0, sharded.stdout[-3000:] + sharded.stderr[-3000:]
    assert sharded.stdout.count("clean accuracy:") == 1  # rank 0 alone prints
    assert "2 process(es) on cpu); 24 points done before, read from the state file" in sharded.stderr
    assert not (tmp_path / "two.json.state").exists()
    assert cli.main(args + ["--out", str(tmp_path / "one.json"), "--no-progress"]) == 0
    capsys.readouterr()
    two, one = (json.loads((tmp_path / name).read_text()) for name in ("two.json", "one.json"))
    assert two["processes"] == 2 and one["processes"] == 1 and two["n_examples"] == one["n_examples"] == 64
    assert [s["name"] for s in one["stages"]] == ["apgd-ce"] and one["autoattack_acc"] < one["clean_acc"]
    for key in ("clean_acc", "autoattack_acc", "stages", "warnings"):
        assert two[key] == one[key], key


def test_analyze_takes_autoattack_and_agrees_with_eval(tmp_path, run, capsys):
    common = ["--checkpoint", str(run), "--device", "cpu", "--limit", "32"]
    assert cli.main(["eval", "--attack", "autoattack", "--eps", "0.4", "--out", str(tmp_path / "aa.json"),
                     "--no-progress"] + common) == 0
    assert cli.main(["analyze", "--perturbations", "autoattack:0.4", "--out", str(tmp_path / "lsa"),
                     "--no-progress"] + common) == 0
    err = capsys.readouterr().err
    evaluated = json.loads((tmp_path / "aa.json").read_text())
    report = json.loads((tmp_path / "lsa" / "report.json").read_text())
    (entry,) = report["perturbations"]
    assert entry["name"] == "autoattack:0.4" and entry["eps_input"] == pytest.approx(0.4 / 5)
    # One batch of the same 32 points, the same per-point seeds: the same robust accuracy.
    assert entry["accuracy"] == pytest.approx(evaluated["autoattack_acc"])
    assert len(entry["layer_mean"]) == len(report["layer_names"]) and max(entry["layer_mean"]) > 0
    # The points no stage broke keep their clean input, by design; analyze says so when most did.
    said = "AutoAttack returns the clean input wherever it breaks nothing" in err
    assert said == (entry["unmoved"] > 0.5), (entry["unmoved"], err)
    assert "an input gradient of exactly 0" not in err
