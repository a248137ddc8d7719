#!/usr/bin/env bash
# One command for a machine with a GPU and no network (torch, pytest, hypothesis,
# ninja preinstalled): install the wheel built elsewhere (or build in place when none
# is given), install the test-only oracles from a folder of wheels when one is given,
# run the test suite (CUDA tests included), compute-sanitizer memcheck and racecheck
# on a small workload, and the GPU benchmarks; logs and results go to OUTDIR.
#
#   benchmarks/gpu_check.sh [dist/lsa_fast-...whl] [OUTDIR] [ORACLE_WHEEL_DIR]
# OUTDIR defaults to $OUT, else ./gpu_check_out. ORACLE_WHEEL_DIR holds pure-Python
# wheels of the oracles (torchattacks, LayersSustainabilityAnalysis, foolbox, ...),
# fetched where there is a network (README, "Checking on a GPU"); they go to a
# private --target folder with --no-deps. Without it the oracle tests skip and the
# rest runs. GPU_CHECK_STEPS picks steps (default "tests sanitizer bench"); two more:
#   relerr  the public relative_error call on VGG-19's 16 activations (fp32, bf16; about 20 s)
#   epoch   bench_training.py --preset gpu-issue24: the epoch slices of models C and B, AT-PGD-10-LR
#           and AT-APGD-10-LR, fp32 and bf16, plain / eager / --compile / compiled + CUDA graphs;
#           its plain loop needs torchattacks (ORACLE_WHEEL_DIR). Its graphs are compiled first in
#           8 background processes, beside the untimed steps (install, tests, sanitizer); the timed
#           run (about 2-3 min on an H200) waits for them and stops starting workloads after
#           EPOCH_BUDGET_S seconds (default 200).
# LSA_FAST_COMMIT names the source commit when the tree has no .git (the device
# tool copies the working tree only).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WHEEL=${1:-}
OUTDIR=$(mkdir -p "${2:-${OUT:-gpu_check_out}}" && cd "${2:-${OUT:-gpu_check_out}}" && pwd)
ORACLES=${3:-}
STEPS=${GPU_CHECK_STEPS:-tests sanitizer bench}
wants() { [[ " $STEPS " == *" $1 "* ]]; }
PYTHON=${PYTHON:-python3}
export LSA_FAST_COMMIT=${LSA_FAST_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export PYTHONUNBUFFERED=1
status=0
step() { echo; echo "== $*"; }

step "environment" | tee "$OUTDIR/env.txt"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  "$PYTHON" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
  echo "commit $LSA_FAST_COMMIT"; } 2>&1 | tee -a "$OUTDIR/env.txt"

step "install"
if [ -n "$WHEEL" ]; then
  "$PYTHON" -m pip install --no-deps --force-reinstall -q "$WHEEL" 2>&1 | tee "$OUTDIR/install.log"
else
  "$PYTHON" -m pip install --no-build-isolation --no-deps -q . 2>&1 | tee "$OUTDIR/install.log"
fi
if [ -n "$ORACLES" ]; then
  SITE=$(mktemp -d)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$ORACLES"/*.whl 2>&1 | tee -a "$OUTDIR/install.log"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  echo "oracles from $ORACLES: $(ls "$ORACLES" | tr '\n' ' ')" | tee -a "$OUTDIR/install.log"
fi
# Run from a copy of the tests, so that the installed package (not the source) is used.
WORK=$(mktemp -d); cp -r tests benchmarks pyproject.toml "$WORK/"; cd "$WORK"
STAMP=$(mktemp)  # made after the copy: results newer than this are this run's
"$PYTHON" -c 'import lsa_fast; b = lsa_fast.backend(); print(b); assert b["cuda"], "no CUDA kernels"' 2>&1 | tee -a "$OUTDIR/install.log" || status=1

WARM_PID=
if wants epoch; then
  step "epoch: compiling the graphs in the background (inductor's cache), beside the untimed steps"
  timeout 420 "$PYTHON" benchmarks/bench_training.py --device cuda --preset gpu-issue24 --warm-and-exit \
    > "$OUTDIR/epoch_warm.log" 2>&1 &
  WARM_PID=$!
fi
# Every timed step waits for the background compiles first (they would load the CPU).
wait_warm() {
  [ -n "$WARM_PID" ] || return 0
  step "epoch: waiting for the background compiles"
  wait "$WARM_PID"; echo "compile warming: status $?"; tail -12 "$OUTDIR/epoch_warm.log"; WARM_PID=
}

if wants tests; then
  step "tests (CUDA ones included; -rs lists what skipped and why)"
  PARALLEL=$("$PYTHON" -c 'import xdist' 2>/dev/null && echo "-n 8")  # pytest-xdist, where present
  timeout 420 "$PYTHON" -m pytest -q -p no:cacheprovider -rs $PARALLEL tests 2>&1 | tee "$OUTDIR/tests.log" | tail -25
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
for tool in $(wants sanitizer && echo memcheck racecheck); do
  step "compute-sanitizer --tool $tool"
  if [ -z "$SANITIZER" ]; then echo "compute-sanitizer not found" | tee "$OUTDIR/sanitizer_$tool.log"; continue; fi
  timeout 120 "$SANITIZER" --tool "$tool" --error-exitcode 3 "$PYTHON" benchmarks/sanitizer_workload.py \
    > "$OUTDIR/sanitizer_$tool.log" 2>&1
  code=$?; tail -3 "$OUTDIR/sanitizer_$tool.log"; [ $code -eq 0 ] || status=1
done

wants bench && {
wait_warm
step "benchmarks"
timeout 240 "$PYTHON" benchmarks/bench_relative_error.py --device cuda 2>&1 | tee "$OUTDIR/bench_relative_error.log" | tail -30
if [ -f benchmarks/bench_attacks.py ]; then
  timeout 240 "$PYTHON" benchmarks/bench_attacks.py --device cuda --batch 512 --quick 2>&1 | tee "$OUTDIR/bench_attacks.log" | tail -20
fi
# only what this run wrote (the committed CPU results stay behind)
find benchmarks/results -name '*.json' -newer "$STAMP" -exec cp {} "$OUTDIR/" \; 2>/dev/null
}
if wants relerr; then
  wait_warm
  step "relerr: the relative_error call on VGG-19's 16 activations"
  timeout 180 "$PYTHON" benchmarks/bench_relative_error.py --device cuda --only vgg19-call 2>&1 \
    | tee "$OUTDIR/bench_relerr.log" | tail -45
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if wants epoch; then
  wait_warm
  step "epoch: bench_training.py --preset gpu-issue24"
  timeout 360 "$PYTHON" benchmarks/bench_training.py --device cuda --preset gpu-issue24 --warm-jobs 0 \
    --budget "${EPOCH_BUDGET_S:-200}" 2>&1 | tee "$OUTDIR/bench_epoch.log" | tail -40
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
if wants relerr || wants epoch; then  # only what this run wrote
  find benchmarks/results -name '*.json' -newer "$STAMP" -exec cp {} "$OUTDIR/" \; 2>/dev/null
fi
echo; echo "gpu_check: status $status; logs and results in $OUTDIR"
exit $status
