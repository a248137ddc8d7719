"""The suite on a machine without the test-only oracles (the GPU machines have none of
them and no network): everything collects, the CUDA selection included, and the tests
that need no oracle run. The oracles are made unimportable by a plugin."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ORACLES = ("torchattacks", "LayerSustainabilityAnalysis", "foolbox", "art", "torchvision", "timm", "autoattack")

BLOCKER = textwrap.dedent(
    f"""
    import sys

    class BlockOracles:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {ORACLES!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: the suite without the oracles)")
            return None

    sys.meta_path.insert(0, BlockOracles())
    """
)


def run_pytest(tmp_path, *args):
    (tmp_path / "block_oracles.py").write_text(BLOCKER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "block_oracles", "-p", "no:cacheprovider", "-q", *args],
        cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=600,
    )


def test_cuda_selection_collects_without_any_oracle(tmp_path):
    result = run_pytest(tmp_path, "--collect-only", "-m", "cuda", "tests")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert not re.search(r"\d+ errors?\b|^ERROR", output, re.M), output[-3000:]
    collected = [line for line in result.stdout.splitlines() if "::" in line]
    for module in ("test_relative_error.py", "test_kernel_edges.py", "test_probes.py"):
        assert any(module in line for line in collected), f"no CUDA test collected from {module}"


def test_attack_and_compat_tests_that_need_no_oracle_still_run(tmp_path):
    result = run_pytest(tmp_path, "-x", "-rs", "tests/test_attacks.py", "tests/test_compat.py", "-m", "not cuda")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert " passed" in output and not re.search(r"\d+ errors?\b|^ERROR", output, re.M), output[-3000:]
    assert "skipped" in output and "No module named 'torchattacks'" in output  # the oracle tests did skip
