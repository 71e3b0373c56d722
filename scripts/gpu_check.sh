#!/usr/bin/env bash
# GPU check: the confirm experiment at a larger size and the DPO-step benchmark in bf16 on one
# GPU, then a small results table. Needs no network (random Pythia-shaped models, tokenizers built
# in code). Budget: within 8 minutes on one H100 (each stage also has its own timeout).
#
#   bash scripts/gpu_check.sh                 # one GPU: 70m model, depth-4 tree; 160m/410m bench
#   bash scripts/gpu_check.sh --cpu-dry-run   # the same code path on the CPU at tiny size
#
# Writes $OUT (default results/gpu_check, or results/gpu_check-dry) /{results.csv, confirm.log,
# bench.log, bench.json, confirm/...}.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"

if [[ "${1:-}" == "--cpu-dry-run" ]]; then
  OUT=${OUT:-results/gpu_check-dry}
  DEVICE=cpu
  CONFIRM=(--model tiny --depth 2 --toy-steps 30 --toy-sft-steps 30 --sft-samples 32
           --sft-epochs 1 --steps 4 --checkpoints 2 --eval-samples 16)
  BENCH=(--shapes tiny --steps 3 --batch 2)
  PEAK=1  # a nominal 1 TFLOP/s, so the MFU column is exercised
  T_CONFIRM=120 T_BENCH=120
elif [[ $# -eq 0 ]]; then
  OUT=${OUT:-results/gpu_check}
  DEVICE=cuda
  # 81 leaves scored exactly at every checkpoint; 70m = Pythia-70m's shape, random init.
  CONFIRM=(--model 70m --depth 4 --sft-samples 2048 --sft-epochs 4 --sft-batch-size 64
           --steps 300 --checkpoints 10 --eval-samples 1024 --lr 1e-4 --sft-lr 1e-4)
  BENCH=(--shapes 160m,410m --steps 6 --batch 8)
  PEAK=989  # H100 SXM dense bf16 TFLOP/s (datasheet); PCIe cards: 756
  T_CONFIRM=300 T_BENCH=150
else
  echo "usage: $0 [--cpu-dry-run]" >&2
  exit 2
fi
mkdir -p "$OUT"
[[ $DEVICE == cuda ]] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

status=0
timeout "$T_CONFIRM" "$PY" experiments/llm_confirm.py "${CONFIRM[@]}" --device "$DEVICE" \
  --out "$OUT/confirm" --no-progress 2>&1 | tee "$OUT/confirm.log" || status=1
timeout "$T_BENCH" "$PY" benchmarks/llm_dpo_step.py "${BENCH[@]}" --no-trl --device "$DEVICE" \
  --dtype bf16 --peak-tflops "$PEAK" --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" \
  || status=1

"$PY" - "$OUT" <<'PYEOF'
"""Collect the two checks into results.csv: check, item, metric, value."""
import glob, json, sys
from pathlib import Path

import pandas as pd

out = Path(sys.argv[1])
rows = []
for path in glob.glob(str(out / "confirm" / "*" / "comparison.csv")):
    for _, r in pd.read_csv(path).iterrows():
        item = f"{r['objective']} beta={r['beta']:g} {r['side']}"
        for m in ("mass_ood_start", "mass_ood_final", "kl_reverse_final", "win_rate_final",
                  "degrades"):
            rows.append(("confirm", item, m, r[m]))
    verdict = (Path(path).parent / "verdict.txt").read_text().strip().splitlines()[-1]
    rows.append(("confirm", "all", "verdict", verdict))
bench = out / "bench.json"
if bench.is_file():
    data = json.loads(bench.read_text())
    for r in data["results"]:
        item = f"{r['shape']} {r['impl']} {r['device']} {r['dtype']}"
        for m in ("seconds_per_step", "tokens_per_s", "mfu", "mfu_needed", "matmul_fraction"):
            if m in r:
                rows.append(("benchmark", item, m, r[m]))
table = pd.DataFrame(rows, columns=["check", "item", "metric", "value"])
table.to_csv(out / "results.csv", index=False)
print(table.to_string(index=False))
print(f"results table: {out / 'results.csv'} ({len(table)} rows)")
PYEOF
exit $status
