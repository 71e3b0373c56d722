#!/usr/bin/env bash
# GPU toy: the exact Tree-MDP engine on CUDA. The CUDA equality tests (tests/test_devices.py:
# float64 on CUDA equals the CPU, a float32 sweep passes its own check against float64), then
# benchmarks/toy_device.py: run-steps per second for 10^3-10^5 runs (b=3 D=3 and a deep b=2 D=8
# tree) on the CPU and on CUDA in one run, with the ratio. Needs no network. Budget: under
# 3 minutes on one H100/H200 (the stages' timeouts add up to 170 s).
#
#   bash scripts/gpu_toy.sh                 # one GPU (PYTHON=python3 on the device)
#   bash scripts/gpu_toy.sh --cpu-dry-run   # the same code path on the CPU at tiny size
#
# Writes $OUT (default results/gpu_toy, or results/gpu_toy-dry): toy_device.json (rows and
# ratios), bench.log, tests.log, timings.txt. Exits 1 when a stage fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"

if [[ "${1:-}" == "--cpu-dry-run" ]]; then
  OUT=${OUT:-results/gpu_toy-dry}
  DEVICE=cpu BENCH=(--runs 10,100 --steps 2 --problems 4 --devices cpu)
  T_TESTS=0 T_BENCH=120  # the CUDA tests skip on a CPU: not run here (the suite runs them)
elif [[ $# -eq 0 ]]; then
  OUT=${OUT:-results/gpu_toy}
  DEVICE=cuda BENCH=(--runs 1000,10000,100000 --steps 10 --problems 100 --devices cpu,cuda)
  T_TESTS=50 T_BENCH=120
else
  echo "usage: $0 [--cpu-dry-run]" >&2
  exit 2
fi
mkdir -p "$OUT"
: > "$OUT/timings.txt"
[[ $DEVICE == cuda ]] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
status=0

stage() {  # stage NAME TIMEOUT LOG COMMAND...: run it, time it, keep going on failure
  local name=$1 limit=$2 log=$3 rc=0 start end
  shift 3
  start=$(date +%s.%N)
  timeout "$limit" "$@" > "$log" 2>&1 || rc=$?
  end=$(date +%s.%N)
  tail -n 25 "$log"
  echo "$name: $(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.1f", b-a}') s wall (limit $limit s), exit $rc" | tee -a "$OUT/timings.txt"
  [[ $rc -eq 0 ]] || status=1
}

if [[ $T_TESTS -gt 0 ]]; then
  stage tests "$T_TESTS" "$OUT/tests.log" "$PY" -m pytest -n 0 -q -p no:cacheprovider \
    tests/test_devices.py -k cuda -rs
fi
stage bench "$T_BENCH" "$OUT/bench.log" "$PY" benchmarks/toy_device.py "${BENCH[@]}" \
  --out "$OUT/toy_device.json"
exit $status
