"""Layer Sustainability Analysis end to end: streaming statistics against one-shot ones,
the analysis of a small model A trained here on Moons (non-empty MVL, accuracies,
adversarial vs noise), the report's JSON / markdown / PNG, the `lsa-fast analyze`
command, the model left as found, and two gloo ranks giving the single-process report."""
import json
import os
import sys

import pytest
import torch
from torch import nn

from lsa_fast import cli
from lsa_fast.analysis import ShardSampler, analyze, eps_from_input_units, eps_to_input_units
from lsa_fast.attacks import make_attack
from lsa_fast.data import MOONS_SCALE, load_dataset, make_loader
from lsa_fast.models import build_model
from lsa_fast.ops import cm_statistics, relative_error
from lsa_fast.probes import LayerProbe
from lsa_fast.report import LSAReport
from lsa_fast.cm_accumulator import CMAccumulator

torch.set_num_threads(1)  # a shared 2-core machine: keep each test on one core

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPS = 0.1  # the paper's first Moons eps, in moons units


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def moons_test():
    return load_dataset("moons", train=False, n_samples=600)


@pytest.fixture(scope="module")
def trained_a():
    """Model A after 300 Adam steps on 2000 Moons points (about half a second)."""
    torch.manual_seed(0)
    x, y = load_dataset("moons", train=True, n_samples=2000).tensors
    model = build_model("A")
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        index = torch.randint(0, x.shape[0], (128,))
        loss = nn.functional.binary_cross_entropy_with_logits(model(x[index]).squeeze(1), y[index].float())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def _moons_perturbations():
    eps = eps_to_input_units("moons", EPS)
    return {
        "fgsm:0.1": make_attack("fgsm", eps),
        "pgd:0.1": make_attack("pgd", eps),
        "gaussian:0.1": make_attack("gaussian", eps),
    }


@pytest.fixture(scope="module")
def report(trained_a, moons_test):
    torch.manual_seed(1)
    return analyze(trained_a, make_loader(moons_test, 128), _moons_perturbations(), eta=0.5,
                   progress=False, dataset="moons", model_name="A")


# ---------------------------------------------------------------------------- statistics


def test_accumulator_over_batches_equals_one_shot():
    torch.manual_seed(0)
    batches = [torch.rand(m, 5, dtype=torch.float64) * torch.arange(1, 6) for m in (7, 1, 30, 12)]
    acc = CMAccumulator()
    for cm in batches:
        acc.update(cm)
    whole = torch.cat(batches)
    for eta in (0.0, 0.5, 1.0):
        one_shot, streamed = cm_statistics(whole, eta), acc.result(eta)
        torch.testing.assert_close(streamed.mu, one_shot.mu.double(), rtol=1e-12, atol=0)
        torch.testing.assert_close(streamed.sigma, one_shot.sigma.double(), rtol=1e-12, atol=0)
        assert torch.equal(streamed.mvl, one_shot.mvl)
    torch.testing.assert_close(acc.mean, whole.mean(0), rtol=1e-12, atol=0)
    torch.testing.assert_close(acc.std(), whole.std(0, unbiased=False), rtol=1e-12, atol=0)
    assert torch.equal(acc.min, whole.min(0).values) and torch.equal(acc.max, whole.max(0).values)


def test_analysis_streamed_over_batches_equals_one_shot_cm(moons_test):
    """analyze() over uneven batches gives the statistics of the CM matrix of the whole
    set computed in one go (FGSM is deterministic, so both see the same x_hat)."""
    torch.manual_seed(3)
    model = build_model("A").eval()
    attack = make_attack("fgsm", 0.05)
    x, y = moons_test.tensors
    streamed = analyze(model, make_loader(moons_test, 97), {"fgsm": attack}, eta=0.25, progress=False)

    with LayerProbe(model, select="activations") as probe:  # analyze's default probes
        clean, perturbed = probe.capture_pair(x, attack(model, x, y))
    cm = relative_error(clean, perturbed).double()
    one_shot = cm_statistics(cm, 0.25)
    result = streamed["fgsm"]
    assert result.count == x.shape[0] == streamed.num_samples
    close = dict(rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(torch.tensor(result.layer_mean, dtype=torch.float64), cm.mean(0), **close)
    torch.testing.assert_close(torch.tensor(result.layer_std, dtype=torch.float64), cm.std(0, unbiased=False), **close)
    torch.testing.assert_close(torch.tensor(result.layer_min, dtype=torch.float64), cm.min(0).values, **close)
    torch.testing.assert_close(torch.tensor(result.layer_max, dtype=torch.float64), cm.max(0).values, **close)
    assert result.mu == pytest.approx(float(one_shot.mu), rel=1e-6)
    assert result.sigma == pytest.approx(float(one_shot.sigma), rel=1e-6)
    assert result.mvl == [int(i) for i in torch.nonzero(one_shot.mvl).flatten()]
    assert streamed.layer_names == ["act1", "act2", "act3"]

    whole = analyze(model, (x, y), {"fgsm": attack}, eta=0.25, progress=False)
    assert whole["fgsm"].mvl == result.mvl
    assert whole["fgsm"].layer_mean == pytest.approx(result.layer_mean, rel=1e-9)
    assert whole.clean_accuracy == streamed.clean_accuracy


# ---------------------------------------------------------------------------- the analysis


def test_trained_model_a_has_vulnerable_layers(report):
    assert report.layer_names == ["act1", "act2", "act3"]  # the paper's L0, L1, L2 (activation outputs)
    assert report.num_samples == 600
    assert report.clean_accuracy > 90.0
    for p in report.perturbations:
        assert 0.0 <= p.accuracy <= 100.0
        assert p.count == 600 and len(p.layer_mean) == 3
        assert all(lo <= mean <= hi for lo, mean, hi in zip(p.layer_min, p.layer_mean, p.layer_max))
    assert report["fgsm:0.1"].accuracy < report.clean_accuracy
    # A non-empty MVL at eta = 0.5, and the list only shrinks as eta grows.
    assert report.combined.mvl, report.to_markdown()
    assert report.mvl == report.combined.mvl
    for p in report.perturbations + [report.combined]:
        etas = sorted(p.eta_sweep)
        for low, high in zip(etas, etas[1:]):
            assert set(p.eta_sweep[high]) <= set(p.eta_sweep[low])
        assert p.eta_sweep[0.5] == p.mvl
        for eta in etas:
            assert p.mvl_at(eta) == p.eta_sweep[eta]
    # The MVL layers are the ones with the largest mean CM.
    means = report.combined.layer_mean
    assert max(means) in [means[l] for l in report.combined.mvl]


def test_adversarial_cm_exceeds_noise_cm(report):
    """The paper's observation (Fig. 2 / Fig. 5): at the same eps, adversarial
    perturbations move every learnable layer more than Gaussian noise does (held on
    every seed tried, by 10-25 %)."""
    noise = report["gaussian:0.1"]
    for name in ("fgsm:0.1", "pgd:0.1"):
        assert report[name].mu > noise.mu
        assert all(a > b for a, b in zip(report[name].layer_mean, noise.layer_mean))
    assert report["gaussian:0.1"].kind == "noise" and report["fgsm:0.1"].kind == "adversarial"


def test_combined_is_the_pooled_adversarial_cm(report):
    fgsm, pgd, combined = report["fgsm:0.1"], report["pgd:0.1"], report.combined
    assert combined.members == ["fgsm:0.1", "pgd:0.1"]
    assert combined.count == fgsm.count + pgd.count
    pooled = [(a + b) / 2 for a, b in zip(fgsm.layer_mean, pgd.layer_mean)]
    assert combined.layer_mean == pytest.approx(pooled, rel=1e-12)
    assert combined.layer_max == [max(a, b) for a, b in zip(fgsm.layer_max, pgd.layer_max)]
    # Correct on the clean input and under every adversarial perturbation.
    assert combined.accuracy <= min(fgsm.accuracy, pgd.accuracy, report.clean_accuracy)


def test_eps_units_recorded(report):
    p = report["fgsm:0.1"]
    assert p.eps_input == pytest.approx(EPS / MOONS_SCALE) and p.eps_dataset == pytest.approx(EPS)
    assert eps_to_input_units("moons", 0.1) == pytest.approx(0.02)
    assert eps_to_input_units("mnist", 0.1) == 0.1 and eps_to_input_units("cifar10", 0.03) == 0.03
    assert eps_from_input_units("moons", 0.02) == 0.1
    # A probability or a relative factor does not change with the input scale.
    assert eps_to_input_units("moons", 0.05, attack="salt") == 0.05
    assert eps_to_input_units("moons", 0.1, attack="speckle") == 0.1
    with pytest.raises(ValueError, match="unknown dataset"):
        eps_to_input_units("imagenet", 0.1)


def test_multi_logit_accuracy_and_spec_strings():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.rand(50, 2), torch.randint(0, 3, (50,))
    result = analyze(model, (x, y), "fgsm:0.05, gaussian:0.05", progress=False)
    with torch.no_grad():
        expected = 100.0 * (model(x).argmax(1) == y).float().mean().item()
    assert result.clean_accuracy == pytest.approx(expected)
    assert [p.name for p in result.perturbations] == ["fgsm:0.05", "gaussian:0.05"]
    assert result.layer_names == ["1", "3"]  # the ReLU modules: the output Linear has none after it
    hidden = analyze(model, (x, y), "fgsm:0.05", select="hidden", progress=False)
    assert hidden.layer_names == ["0", "2"]  # the last Linear is the output layer, not probed
    assert result["fgsm:0.05"].eps_input == 0.05 and result["fgsm:0.05"].eps_dataset is None


def test_model_left_as_found():
    torch.manual_seed(0)
    model = build_model("A")
    model.train()
    model.fc2.eval()  # a mixed state must come back exactly
    model.fc1.weight.grad = torch.ones_like(model.fc1.weight)
    kept = model.fc1.weight.grad

    def noisy(model_, x, y):  # a user callable that leaves gradients and train mode behind
        model_.train()
        nn.functional.binary_cross_entropy_with_logits(model_(x).squeeze(1), y.float()).backward()
        return (x + 0.01).clamp(0, 1)

    seen_modes = []
    model.register_forward_pre_hook(lambda module, args: seen_modes.append(module.training))
    x, y = torch.rand(20, 2), torch.randint(0, 2, (20,))
    analyze(model, (x, y), {"fgsm": make_attack("fgsm", 0.02), "custom": noisy}, progress=False)
    assert model.training and not model.fc2.training and model.fc1.training
    assert model.fc1.weight.grad is kept and torch.equal(kept, torch.ones_like(kept))
    assert all(p.grad is None for name, p in model.named_parameters() if name != "fc1.weight")
    # The probed forwards run in eval mode: clean, fgsm's (the attack's own forward is in
    # eval mode too), custom's train-mode forward, then eval again for its probed forward.
    assert seen_modes[:3] == [False, False, False] and seen_modes[-1] is False


def test_bad_inputs_give_clear_errors():
    model = build_model("A")
    x, y = torch.rand(10, 2), torch.randint(0, 2, (10,))
    with pytest.raises(ValueError, match="unknown attack 'nope'"):
        analyze(model, (x, y), ["nope:0.1"], progress=False)
    with pytest.raises(ValueError, match="has no eps"):
        analyze(model, (x, y), ["fgsm"], progress=False)
    with pytest.raises(ValueError, match="given twice"):
        analyze(model, (x, y), ["fgsm:0.1", "fgsm:0.1"], progress=False)
    with pytest.raises(ValueError, match="no perturbation"):
        analyze(model, (x, y), [], progress=False)
    with pytest.raises(TypeError, match="not a callable"):
        analyze(model, (x, y), {"fgsm": 0.1}, progress=False)
    with pytest.raises(ValueError, match="no samples"):
        analyze(model, [], ["fgsm:0.1"], progress=False)
    with pytest.raises(ValueError, match="returned shape"):
        analyze(model, (x, y), {"bad": lambda m, a, b: a[:5]}, progress=False)
    # One Linear only: "hidden" drops the output layer, so nothing is left to probe.
    with pytest.raises(ValueError, match="matches no module"):
        analyze(nn.Sequential(nn.Linear(2, 1)), (x, y), ["fgsm:0.1"], progress=False)


def test_progress_goes_to_stderr(capsys):
    model = build_model("A")
    data = load_dataset("moons", train=False, n_samples=64)
    analyze(model, make_loader(data, 16), ["gaussian:0.01"], progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "4" in captured.err  # tqdm's n/total or the plain "batch 4/4" line


def test_progress_without_tqdm_prints_plain_lines(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    model = build_model("A")
    data = load_dataset("moons", train=False, n_samples=64)
    analyze(model, make_loader(data, 16), ["gaussian:0.01"], progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "LSA: batch 4/4" in captured.err


# ---------------------------------------------------------------------------- the report


def test_report_json_round_trip(report, tmp_path):
    text = report.to_json()
    parsed = json.loads(text)
    assert parsed["format"] == "lsa_fast.LSAReport/1"
    assert parsed["mvl"] == report.combined.mvl == parsed["combined"]["mvl"]  # what the trainer reads
    assert parsed["perturbations"][0]["eta_sweep"][0] == {"eta": 0.0, "mvl": report.perturbations[0].eta_sweep[0.0]}
    assert LSAReport.from_json(text) == report
    path = tmp_path / "report.json"
    assert report.to_json(path) == text
    assert LSAReport.from_json(path) == report
    assert LSAReport.from_json(str(path)) == report
    assert [f.name for f in tmp_path.iterdir()] == ["report.json"]  # no temporary file left
    with pytest.raises(ValueError, match="not an LSA report"):
        LSAReport.from_json({"format": "something else"})


def test_report_markdown_has_the_table(report):
    text = report.to_markdown()
    assert "| layer | name | fgsm:0.1 | pgd:0.1 | gaussian:0.1 | adversarial (pooled) |" in text
    for l, name in enumerate(report.layer_names):
        assert f"| L{l} | {name} |" in text
    assert f"| clean | - | - | - | {report.clean_accuracy:.2f} |" in text
    assert "| fgsm:0.1 | adversarial | 0.1 | 0.02 |" in text
    assert "## Most vulnerable layers" in text and "**MVL**" in text
    short = report.to_markdown(details=False)
    assert "## Per-layer statistics" not in short and "| mu |" in short


def test_report_png_is_valid(report, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "lsa.png"
    assert report.plot(path) == str(path)
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    assert [f.name for f in tmp_path.iterdir()] == ["lsa.png"]


def test_plot_without_matplotlib_says_what_to_install(report, tmp_path, monkeypatch):
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")] + [
        "matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"
    ]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        report.plot(tmp_path / "lsa.png")
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------- the command


def test_cli_analyze_end_to_end(trained_a, tmp_path, capsys):
    checkpoint = tmp_path / "ckpt.pt"
    # The trainer's format: the model name comes from "config" when --model is omitted.
    torch.save({"model": trained_a.state_dict(), "config": {"model": "A"}, "epoch": 3}, checkpoint)
    out = tmp_path / "out"
    code = cli.main(["analyze", "--checkpoint", str(checkpoint), "--limit", "300", "--perturbations",
                     "fgsm:0.1,pgd:0.1,gaussian:0.1", "--eta", "0.5", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sorted(f.name for f in out.iterdir()) == ["lsa.png", "report.json", "report.md"]
    loaded = LSAReport.from_json(out / "report.json")
    assert loaded.model_name == "A" and loaded.dataset == "moons" and loaded.num_samples == 300
    assert loaded["fgsm:0.1"].eps_dataset == 0.1 and loaded["fgsm:0.1"].eps_input == pytest.approx(0.02)
    assert loaded.clean_accuracy > 90.0 and loaded.combined.mvl
    assert (out / "report.md").read_text().startswith("# Layer Sustainability Analysis")
    assert (out / "lsa.png").read_bytes()[:8] == PNG_MAGIC
    lines = captured.out.strip().splitlines()
    assert "| L0 | act1 |" in captured.out and "MVL adversarial (pooled) (eta=0.5)" in captured.out
    assert str(out) in lines[-1] and "report.json" in lines[-1]

    # A plain state_dict file needs --model.
    plain = tmp_path / "weights.pt"
    torch.save(trained_a.state_dict(), plain)
    code = cli.main(["analyze", "--model", "A", "--checkpoint", str(plain), "--limit", "50",
                     "--perturbations", "fgsm:0.1", "--out", str(tmp_path / "out2"), "--no-progress"])
    assert code == 0 and (tmp_path / "out2" / "report.json").is_file()
    assert cli.main(["analyze", "--checkpoint", str(plain), "--out", str(tmp_path / "o3"), "--no-progress"]) == 2
    assert "--model is required" in capsys.readouterr().err

    # The trainer's config also records the model's constructor arguments.
    small = build_model("A", hidden=16)
    torch.save({"model": small.state_dict(), "config": {"model": "A", "model_kwargs": {"hidden": 16}}}, checkpoint)
    code = cli.main(["analyze", "--checkpoint", str(checkpoint), "--limit", "20", "--perturbations", "fgsm:0.1",
                     "--out", str(tmp_path / "o4"), "--no-progress"])
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "A", "--perturbations", "fgsm:0.1,blur:0.1"], "unknown attack 'blur'"),
        (["--model", "A", "--perturbations", "fgsm:abc"], "is not a number"),
        (["--model", "A", "--perturbations", "pgd"], "has no eps"),
        (["--model", "B", "--data", "/nonexistent-lsa-data"], "MNIST (test split): missing"),
        (["--model", "Z"], "unknown model 'Z'"),
    ],
)
def test_cli_errors_are_clear(argv, message, tmp_path, capsys):
    code = cli.main(["analyze", "--out", str(tmp_path / "out"), "--no-progress"] + argv)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_bad_checkpoints(tmp_path, capsys):
    good = tmp_path / "good.pt"
    torch.save({"model": build_model("A").state_dict()}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    foreign = tmp_path / "foreign.pt"
    foreign.write_text("not a checkpoint")
    cases = [
        (truncated, "truncated checkpoint (200 bytes on disk"),
        (foreign, "a text file (16 bytes), not a checkpoint; expected a checkpoint written by lsa-fast train"),
        (tmp_path / "missing.pt", "no such checkpoint file"),
        (good, "do not fit model 'B'"),
    ]
    for path, message in cases:
        code = cli.main(["analyze", "--model", "A" if path != good else "B", "--checkpoint", str(path),
                         "--out", str(tmp_path / "out"), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and message in err and str(path) in err, err


# ---------------------------------------------------------------------------- distributed


def _ddp_worker(rank, world_size, init_file, weights, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        report = _ddp_report(weights, sharded=True)
        if rank == 0:
            report.to_json(os.path.join(out_dir, "ddp.json"))
    finally:
        dist.destroy_process_group()


def _ddp_report(weights, sharded):
    model = build_model("A")
    model.load_state_dict(torch.load(weights, weights_only=True))
    data = load_dataset("moons", train=False, n_samples=203)
    sampler = ShardSampler(len(data)) if sharded else None
    perturbations = {"fgsm": make_attack("fgsm", 0.03), "pgd": make_attack("pgd", 0.03, random_start=False, steps=3)}
    return analyze(model, make_loader(data, 32, sampler=sampler), perturbations, eta=0.5, progress=False)


def test_two_gloo_ranks_give_the_single_process_report(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    torch.manual_seed(5)
    weights = tmp_path / "a.pt"
    torch.save(build_model("A").state_dict(), weights)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(weights), str(tmp_path)), nprocs=2, join=True)
    ddp = LSAReport.from_json(tmp_path / "ddp.json")
    single = _ddp_report(str(weights), sharded=False)
    assert ddp.world_size == 2 and single.world_size == 1
    assert ddp.num_samples == single.num_samples == 203
    assert ddp.clean_accuracy == single.clean_accuracy
    assert ddp.layer_names == single.layer_names
    for a, b in zip(ddp.perturbations + [ddp.combined], single.perturbations + [single.combined]):
        assert (a.name, a.count, a.accuracy, a.mvl, a.eta_sweep) == (b.name, b.count, b.accuracy, b.mvl, b.eta_sweep)
        # The merge itself is exact to fp64 rounding; the per-sample CM (fp32) may differ in
        # its last bits because a sample's forward runs in batches of other sizes.
        for field in ("layer_mean", "layer_std", "layer_min", "layer_max"):
            assert getattr(a, field) == pytest.approx(getattr(b, field), rel=1e-6, abs=1e-9), field
        assert a.mu == pytest.approx(b.mu, rel=1e-6) and a.sigma == pytest.approx(b.sigma, rel=1e-6)


def test_shard_sampler_covers_every_sample_once():
    shards = [list(ShardSampler(10, rank, 3)) for rank in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))
    assert [len(ShardSampler(10, rank, 3)) for rank in range(3)] == [4, 3, 3]
    assert list(ShardSampler(5)) == list(range(5))
    with pytest.raises(ValueError, match="rank 3"):
        ShardSampler(10, 3, 3)
