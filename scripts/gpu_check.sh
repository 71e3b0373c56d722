#!/usr/bin/env bash
# GPU check: the confirm experiment at a larger size (every sampled estimate checked against its
# exact value), the 16-bit numerics, and the DPO-step benchmark in bf16 on one GPU, then one results
# table. Needs no network (random Pythia-shaped models, tokenizers built in code). Budget: within
# 8 minutes on one H100/H200 (the stages' own timeouts add up to 7.5 minutes).
#
#   bash scripts/gpu_check.sh                 # one GPU: 70m model, depth-4 tree; 160m/410m bench
#   bash scripts/gpu_check.sh --cpu-dry-run   # the same code path on the CPU at tiny size
#
# Writes $OUT (default results/gpu_check, or results/gpu_check-dry) /{results.csv, versions.json,
# confirm.log, numerics.json, numerics.log, bench.log, bench.json, confirm/...}. Exits 1 when a
# stage fails or any sampled estimate lies more than 5 standard errors from its exact value.
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
  NUMERICS=(--shape tiny --pairs 4 --prompt-tokens 16 --response-tokens 6 --samples 4)
  PEAK=1  # a nominal 1 TFLOP/s, so the MFU column is exercised
  DTYPE=fp32  # CPUs without bf16 matmul units take minutes for the bf16 matmul-rate probe
  T_CONFIRM=300 T_BENCH=300 T_NUMERICS=300
elif [[ $# -eq 0 ]]; then
  OUT=${OUT:-results/gpu_check}
  DEVICE=cuda
  # 81 leaves scored exactly at every checkpoint; 70m = Pythia-70m's shape, random init.
  CONFIRM=(--model 70m --depth 4 --sft-samples 2048 --sft-epochs 4 --sft-batch-size 64
           --steps 300 --checkpoints 10 --eval-samples 1024 --lr 1e-4 --sft-lr 1e-4)
  BENCH=(--shapes 160m,410m --steps 6 --batch 8)
  NUMERICS=(--shape 410m --pairs 32 --samples 16)
  # dense bf16 TFLOP/s (datasheets): H100 SXM and H200 989, H100 PCIe 756, A100 312
  case "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" in
    *H200*|*H100*SXM*|*H100*HBM3*) PEAK=989 ;;
    *H100*PCIe*) PEAK=756 ;;
    *A100*) PEAK=312 ;;
    *) PEAK=989; echo "unknown GPU: MFU against 989 TFLOP/s" >&2 ;;
  esac
  DTYPE=bf16
  T_CONFIRM=240 T_BENCH=120 T_NUMERICS=90
else
  echo "usage: $0 [--cpu-dry-run]" >&2
  exit 2
fi
mkdir -p "$OUT"
[[ $DEVICE == cuda ]] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" -c "import json, sys; from llm.compat import version_report as v; json.dump(v(), sys.stdout)" \
  | tee "$OUT/versions.json"; echo

status=0
timeout "$T_CONFIRM" "$PY" experiments/llm_confirm.py "${CONFIRM[@]}" --device "$DEVICE" \
  --out "$OUT/confirm" --no-progress 2>&1 | tee "$OUT/confirm.log" || status=1
timeout "$T_NUMERICS" "$PY" benchmarks/llm_numerics.py "${NUMERICS[@]}" --device "$DEVICE" \
  --json "$OUT/numerics.json" 2>&1 | tee "$OUT/numerics.log" || status=1
timeout "$T_BENCH" "$PY" benchmarks/llm_dpo_step.py "${BENCH[@]}" --no-trl --device "$DEVICE" \
  --dtype "$DTYPE" --peak-tflops "$PEAK" --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" \
  || status=1

"$PY" - "$OUT" <<'PYEOF' || status=1
"""Collect the checks into results.csv: check, item, metric, value. Exits 1 when a sampled
estimate is flagged (more than 5 SE from its exact value) or no estimate was checked."""
import glob, json, sys
from pathlib import Path

import pandas as pd

out = Path(sys.argv[1])
rows = [("versions", k, "version", v) for k, v in json.loads((out / "versions.json").read_text()).items()]
checked, flagged = 0, []
for path in sorted(glob.glob(str(out / "confirm" / "**" / "eval.csv"), recursive=True)):
    run = str(Path(path).parent.relative_to(out / "confirm"))
    for _, r in pd.read_csv(path, keep_default_na=False).iterrows():
        if r.get("sampled_exact_z", "") == "":
            continue
        checked += 1
        rows.append(("sampled_vs_exact", f"{run} step {r['checkpoint']}", "max_z", r["sampled_exact_z"]))
        if r["sampled_exact_flag"]:
            flagged.append(f"{run} step {r['checkpoint']}: {r['sampled_exact_flag']}")
numerics = out / "numerics.json"
if numerics.is_file():
    data = json.loads(numerics.read_text())
    for dtype, values in data["reference"].items():
        for m, v in values.items():
            rows.append(("numerics", f"reference {dtype}, policy fp32", m, v))
    for dtype, values in data["sampling"].items():
        for m, v in values.items():
            rows.append(("numerics", f"sampling {dtype}", m, v))
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
print(f"sampled vs exact: {checked} checkpoints checked, {len(flagged)} flagged")
for line in flagged:
    print(f"  FLAGGED {line}")
if flagged or checked == 0:
    sys.exit(1)
PYEOF
exit $status
