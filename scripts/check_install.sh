#!/usr/bin/env bash
# The release files installed as a user installs them, checked end to end:
#   a fresh virtual environment -> pip install torch (and the other dependencies) from
#   the package index -> pip install lsa_fast from DIST alone (--no-index --find-links):
#     1. the repaired wheel;
#     2. in its place, the sdist, compiled here (CUDA kernels where nvcc is found);
#     3. the sdist again with LSA_FAST_CUDA=0: the CPU-only build, with its one line
#        (skipped with CHECK_CPU_ONLY=0: it adds a build, about a minute);
#   and for each, from a directory outside the checkout: lsa_fast.backend() shows the
#   compiled kernels, `lsa-fast demo --quick` runs (the wheel), and a subset of the tests
#   runs against the installed package.
#
#   scripts/check_install.sh [DIST]     (default dist/; filled by scripts/build_wheel.sh
#                                        first when it holds no wheel)
# Environment: PYTHON (the build interpreter, as in build_wheel.sh), BASE_PYTHON (makes
# the fresh environment, default python3), CHECK_VENV (where it goes, default
# /tmp/lsa_fast_check_venv, about 6 GB; removed at the end unless KEEP_VENV=1).
set -euo pipefail
cd "$(dirname "$0")/.."
DIST=$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)
BASE_PYTHON=${BASE_PYTHON:-python3}
VENV=${CHECK_VENV:-/tmp/lsa_fast_check_venv}
TESTS=(tests/test_build.py tests/test_packaging.py tests/test_cm_statistics.py tests/test_pgd_step.py)
START=$SECONDS
step() { echo "== [$((SECONDS - START)) s] $*"; }

if ! ls "$DIST"/lsa_fast-*-manylinux_*.whl >/dev/null 2>&1; then
  step "no repaired wheel in $DIST: scripts/build_wheel.sh"
  scripts/build_wheel.sh "$DIST"
fi
WHEEL=$(ls "$DIST"/lsa_fast-*-manylinux_*.whl)
SDIST=$(ls "$DIST"/lsa_fast-*.tar.gz)
echo "wheel: $WHEEL"
echo "sdist: $SDIST"

WORK=$(mktemp -d)   # outside the checkout: `import lsa_fast` can only find the installed one
cleanup() { rm -rf "$WORK"; [ "${KEEP_VENV:-0}" = 1 ] || rm -rf "$VENV"; }
trap cleanup EXIT
cp -r tests "$WORK/tests"
cp pyproject.toml "$WORK/"   # pytest settings and markers only: no setup.py, no csrc/ there
cd "$WORK"

step "a fresh environment ($VENV) with torch and the dependencies"
rm -rf "$VENV"
"$BASE_PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
# setuptools and ninja build the sdist (--no-build-isolation); pytest and hypothesis run the tests.
{ "$PY" -m pip install --upgrade pip &&
  "$PY" -m pip install "torch>=2.10" numpy matplotlib tqdm "setuptools>=77" ninja pytest hypothesis
} > "$WORK/dependencies.log" 2>&1 || { tail -50 "$WORK/dependencies.log"; exit 1; }
"$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA build:", torch.version.cuda)'

# DIST is the only place pip may look for lsa_fast: no index, no configured find-links.
local_pip() { env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$PY" -m pip install --no-index --find-links "$DIST" "$@"; }

# check_installed EXPECT_CUDA(0|1) RUN_DEMO(0|1)
check_installed() {
  EXPECT_CUDA=$1 "$PY" - <<'PY'
import os, sys
import lsa_fast
info = lsa_fast.backend()
print("lsa_fast", lsa_fast.__version__, "from", lsa_fast.__file__)
print("backend:", info)
assert lsa_fast.__file__.startswith(sys.prefix), "not the installed lsa_fast"
assert info["extension"] and info["cpu"], "the compiled CPU kernels did not load"
assert info["cuda"] == (os.environ["EXPECT_CUDA"] == "1"), "CUDA kernels: expected " + os.environ["EXPECT_CUDA"]
PY
  if [ "$2" = 1 ]; then
    "$VENV/bin/lsa-fast" demo --quick --no-progress --out "$WORK/demo" > "$WORK/demo.log" 2>&1 || {
      cat "$WORK/demo.log"; exit 1; }
    tail -2 "$WORK/demo.log"
  fi
  "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" > "$WORK/pytest.log" 2>&1 || {
    cat "$WORK/pytest.log"; exit 1; }
  echo "pytest ${TESTS[*]}: $(tail -1 "$WORK/pytest.log")"
}

step "1. the wheel: pip install --no-index --find-links $DIST --only-binary lsa_fast lsa_fast"
local_pip -q --only-binary lsa_fast lsa_fast
# The wheel's CUDA kernels are there when its library holds a CUDA fat binary.
HAS_FATBIN=$("$PY" -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); print(int(b".nv_fatbin" in z.read("lsa_fast/_C.abi3.so")))' "$WHEEL")
check_installed "$HAS_FATBIN" 1

step "2. the sdist: pip install --no-index --find-links $DIST --no-binary lsa_fast --no-build-isolation lsa_fast"
"$PY" -m pip uninstall -q -y lsa_fast
local_pip -v --no-binary lsa_fast --no-build-isolation --no-cache-dir lsa_fast > "$WORK/sdist.log" 2>&1 || {
  tail -50 "$WORK/sdist.log"; exit 1; }
BUILT=$(grep -m1 -o "lsa_fast: building .*" "$WORK/sdist.log")
echo "$BUILT"
case "$BUILT" in *"CPU and CUDA"*) SDIST_CUDA=1 ;; *) SDIST_CUDA=0 ;; esac
check_installed "$SDIST_CUDA" 0

[ "${CHECK_CPU_ONLY:-1}" = 1 ] || { step "all install checks passed (CPU-only build skipped)"; exit 0; }
step "3. the sdist, CPU-only (LSA_FAST_CUDA=0)"
"$PY" -m pip uninstall -q -y lsa_fast
export LSA_FAST_CUDA=0   # for the build, and for tests/test_build.py, which then expects no CUDA kernels
local_pip -v --no-binary lsa_fast --no-build-isolation --no-cache-dir lsa_fast > "$WORK/sdist-cpu.log" 2>&1 || {
  tail -50 "$WORK/sdist-cpu.log"; exit 1; }
grep -m1 -o "lsa_fast: building .*" "$WORK/sdist-cpu.log"
check_installed 0 0

step "all install checks passed"
