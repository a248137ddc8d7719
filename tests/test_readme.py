"""The README works as written: every ```python block runs in a fresh interpreter,
every `lsa-fast` command line of its ```bash blocks is accepted by the real parser,
every file it names exists, and the two commands' prerequisites are what the Makefile
checks (Python >= 3.10; cmake comes from pip, its absence is a clear message)."""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lsa_fast.cli import _attach_negative_values, build_parser

ROOT = Path(__file__).resolve().parents[1]
if not (ROOT / "README.md").is_file():  # the tests copied beside an installed wheel (gpu_check.sh)
    pytest.skip("testing an installed package: no README.md beside the tests", allow_module_level=True)
README = (ROOT / "README.md").read_text()


def blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


PYTHON_BLOCKS = blocks("python")


def test_the_readme_has_python_and_bash_blocks():
    assert len(PYTHON_BLOCKS) >= 2 and blocks("bash")


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_block_runs_as_written(index, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", PYTHON_BLOCKS[index]], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def test_every_lsa_fast_command_line_parses():
    parser = build_parser()
    lines = [shlex.split(line, comments=True) for block in blocks("bash") for line in block.splitlines()]
    commands = [tokens for tokens in lines if tokens and tokens[0] == "lsa-fast"]
    assert len(commands) >= 8
    for tokens in commands:
        try:
            args = parser.parse_args(_attach_negative_values(parser, tokens[1:]))
        except SystemExit:
            pytest.fail(f"the README's command does not parse: {' '.join(tokens)}")
        assert callable(args.run)
    makefile = (ROOT / "Makefile").read_text()
    for tokens in lines:
        if tokens and tokens[0] == "make":
            assert re.search(rf"^{tokens[1]}:", makefile, re.M), tokens


def test_every_file_the_readme_names_exists():
    links = [target for target in re.findall(r"\]\(([^)#]+)\)", README) if "://" not in target]
    assert "docs/DESIGN.md" in links
    top = {path.name for path in ROOT.iterdir()}
    named = [name for name in re.findall(r"`([\w.][\w./-]*)`", README)
             if "/" in name and name.split("/")[0] in top]
    assert "scripts/check_abi.sh" in named
    for name in links + named:
        assert (ROOT / name).exists(), f"the README names {name}, which is not in the repository"
    assert "shared/DESIGN.md" not in README


def test_the_stated_python_minimum_is_the_one_make_checks():
    stated = re.search(r"Python ≥ (\d+)\.(\d+)", README).groups()
    checked = re.search(r"sys\.version_info < \((\d+), (\d+)\)", (ROOT / "Makefile").read_text()).groups()
    assert stated == checked == ("3", "10")


# ------------------------------------------------------------------ the Makefile

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is a prerequisite of the two commands")


def make(*args):
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *map(str, args)], capture_output=True,
                          text=True, timeout=120)


@needs_make
def test_make_refuses_a_python_older_than_3_10_in_one_clear_line(tmp_path):
    old = tmp_path / "python3.9"
    old.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo "Python 3.9.18"; exit 0; }\nexit 1\n')
    old.chmod(0o755)
    done = make("setup", f"PYTHON={old}", f"VENV={tmp_path / 'venv'}")
    assert done.returncode != 0
    assert "lsa_fast needs Python >= 3.10" in done.stderr and "Python 3.9.18" in done.stderr
    assert not (tmp_path / "venv").exists()


@needs_make
def test_make_installs_cmake_and_says_so_when_it_is_missing(tmp_path):
    dry = make("-n", "setup", f"VENV={tmp_path / 'fresh'}")
    assert re.search(r"pip install .*\"cmake>=3\.18\"", dry.stdout), dry.stdout
    venv = tmp_path / "venv"  # an environment already set up, but without cmake
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / ".installed").touch()
    done = make("cpp-test", f"VENV={venv}", "CMAKE=/nonexistent/cmake")
    assert done.returncode != 0
    assert "cmake not found" in done.stderr and "pip install cmake" in done.stderr
    assert "Error 127" not in done.stderr


@needs_make
def test_make_demo_installs_the_runtime_only_and_make_test_adds_the_extras(tmp_path):
    venv = tmp_path / "venv"
    demo = make("-n", "demo", f"VENV={venv}").stdout
    assert 'pip install -q --no-build-isolation -e .\n' in demo and "[test]" not in demo
    assert "test-requirements" not in demo
    # After `make demo` (its stamp written), `make test` installs the test extras.
    (venv / "bin").mkdir(parents=True)
    pip_log = tmp_path / "pip.log"
    fake = venv / "bin" / "python"  # the real Python, except that pip only logs what it would install
    fake.write_text(f'#!/bin/sh\nif [ "$1" = -m ] && [ "$2" = pip ]; then shift 2; echo "$@" >> {pip_log}; '
                    f'cat "$(echo "$@" | sed -n "s/.*-r //p")" >> {pip_log} 2>/dev/null; exit 0; fi\n'
                    f'exec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    (venv / ".installed").touch()  # newer than the sources: no reinstall
    done = make("setup-test", f"VENV={venv}")
    assert done.returncode == 0, done.stderr
    installed = pip_log.read_text().split()
    names = {re.split(r"[<>=!~\[;]", item)[0] for item in installed}  # "torchattacks==3.3.0" -> "torchattacks"
    assert {"pytest", "hypothesis", "torchattacks", "timm"} <= names, installed
    assert "torch>=2.10" not in installed and "--no-build-isolation" not in installed  # no rebuild
    assert (venv / ".installed-test").is_file()
    assert "test-requirements" not in make("-n", "test", f"VENV={venv}").stdout  # both stamps there: nothing to do
