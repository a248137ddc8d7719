#!/usr/bin/env bash
# The cross-version check of the stable-ABI build: build the wheel once under the
# torch installed here, install it with --no-deps into a fresh virtual environment
# that has torch==2.11.0 (the GPU machines' version), and run the whole test suite
# there against the installed wheel, not against the source tree.
#
#   scripts/check_abi.sh [OTHER_TORCH_VERSION]      (default 2.11.0)
# Environment: PYTHON (the build interpreter, default .venv/bin/python),
#              ABI_VENV (where the second environment goes, default /tmp/lsa_fast_abi_venv)
set -euo pipefail
cd "$(dirname "$0")/.."
OTHER_TORCH=${1:-2.11.0}
PYTHON=${PYTHON:-.venv/bin/python}
ABI_VENV=${ABI_VENV:-/tmp/lsa_fast_abi_venv}

echo "== building the wheel under torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
rm -rf dist
"$PYTHON" -m pip wheel . --no-build-isolation --no-deps -w dist -q
WHEEL=$(ls dist/lsa_fast-*.whl)
echo "wheel: $(basename "$WHEEL")"
case "$WHEEL" in *-cp310-abi3-*) ;; *) echo "error: the wheel is not cp310-abi3" >&2; exit 1 ;; esac

echo "== a fresh environment with torch==$OTHER_TORCH"
rm -rf "$ABI_VENV"
python3 -m venv "$ABI_VENV"
"$ABI_VENV/bin/pip" install -q "torch==$OTHER_TORCH" numpy pytest hypothesis matplotlib tqdm torchattacks LayersSustainabilityAnalysis
"$ABI_VENV/bin/pip" install -q --no-deps "$WHEEL"

echo "== the test suite against the installed wheel"
WORK=$(mktemp -d)
cp -r tests "$WORK/tests"
cp pyproject.toml "$WORK/"   # pytest settings and markers only: no source next to the tests
cd "$WORK"
"$ABI_VENV/bin/python" - <<'PY'
import torch, lsa_fast
print("torch", torch.__version__, "| lsa_fast from", lsa_fast.__file__, "| backend", lsa_fast.backend())
assert lsa_fast.backend()["extension"], "the wheel's library did not load"
PY
"$ABI_VENV/bin/python" -m pytest -q -p no:cacheprovider tests
