"""The release files: the sdist holds everything `pip install lsa_fast-*.tar.gz`
compiles (csrc/ with its headers and flag lists, CMakeLists.txt) and no built library,
the wheel's abi3 tag agrees with requires-python, and the version is written once."""
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import lsa_fast

ROOT = Path(__file__).resolve().parents[1]
# What a source checkout holds besides the Python package (copied, so that building the
# sdist writes no egg-info into the checkout).
SOURCE_ENTRIES = ["csrc", "tests", "scripts", "lsa_fast", "setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "CMakeLists.txt", "Makefile"]

needs_checkout = pytest.mark.skipif(
    not (ROOT / "setup.py").is_file() or not (ROOT / "csrc").is_dir(),
    reason="testing an installed package: no source checkout beside the tests",
)


def source_files(root: Path, top: str) -> set:
    return {
        str(path.relative_to(root))
        for path in (root / top).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in {".pyc", ".so", ".o"}
    }


@needs_checkout
def test_sdist_holds_every_source_file_and_no_library(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    for entry in SOURCE_ENTRIES:
        source = ROOT / entry
        if source.is_dir():
            shutil.copytree(source, tree / entry, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.is_file():
            shutil.copy2(source, tree / entry)
    # A built library left in the tree must stay out of the sdist.
    (tree / "lsa_fast" / "_C.abi3.so").write_bytes(b"\x7fELF stale")
    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(tmp_path / 'dist')!r}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    name = out.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / "dist" / name) as archive:
        members = {member.split("/", 1)[1] for member in archive.getnames() if "/" in member}
    expected = set().union(*(source_files(ROOT, top) for top in ("csrc", "tests")))
    expected |= {"CMakeLists.txt", "setup.py", "pyproject.toml", "README.md", "MANIFEST.in"}
    assert {path for path in expected if path.endswith(".h")}, "no header found in csrc/"
    missing = sorted(expected - members)
    assert not missing, f"missing from the sdist: {missing}"
    libraries = sorted(m for m in members if m.endswith((".so", ".o")))
    assert not libraries, f"built files in the sdist: {libraries}"


@needs_checkout
def test_abi3_tag_agrees_with_requires_python():
    """The wheel is cp3X-abi3 for the oldest Python that requires-python allows, and
    that is the oldest torch >= 2.10 supports (3.10)."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    setup = (ROOT / "setup.py").read_text()
    requires = re.search(r'^requires-python\s*=\s*">=\s*3\.(\d+)"', pyproject, re.M)
    tag = re.search(r'"py_limited_api":\s*"cp3(\d+)"', setup)
    assert requires and tag, "requires-python or the bdist_wheel py_limited_api tag not found"
    assert requires.group(1) == tag.group(1) == "10", (requires.group(0), tag.group(0))


def test_version_is_written_once():
    """pyproject.toml reads the version from lsa_fast.__version__; the installed
    metadata must agree with it."""
    try:
        installed = importlib.metadata.version("lsa_fast")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("lsa_fast is not installed (only on PYTHONPATH)")
    assert installed == lsa_fast.__version__
    if (ROOT / "pyproject.toml").is_file():
        pyproject = (ROOT / "pyproject.toml").read_text()
        assert 'dynamic = ["version"]' in pyproject and 'attr = "lsa_fast.__version__"' in pyproject
        assert not re.search(r'^version\s*=\s*"', pyproject, re.M), "a second version in pyproject.toml"
