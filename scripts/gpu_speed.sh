#!/usr/bin/env bash
# GPU speed: the DPO step's levers at 160m and 1b (32 pairs, bf16, one GPU) and a one-GPU FSDP
# smoke run (torchrun, --fsdp on --mixed-precision: sharded save, resume, full-weight export).
# Needs no network (random Pythia-shaped models). Budget: within 4 minutes on one H200; every
# stage has its own timeout, and a failed stage leaves the others' rows in the table.
#
#   bash scripts/gpu_speed.sh                 # one GPU
#   bash scripts/gpu_speed.sh --cpu-dry-run   # the same code path on the CPU at tiny size
#
# PYTHON (default .venv/bin/python) runs everything; results go to $OUT (default
# results/gpu_speed, or results/gpu_speed-dry): results.csv and results.json (one row per
# measurement: stage, item, metric, value), bench-*.json/.log, fsdp/ and fsdp.log, timings.txt.
# TRL's DPOTrainer is not run: it is not installed on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"

if [[ "${1:-}" == "--cpu-dry-run" ]]; then
  OUT=${OUT:-results/gpu_speed-dry}
  # fp32 base and short rows: bf16 matmuls crawl on most CPUs; one bench stage runs every
  # lever (compile with dynamo only: inductor's C++ build takes minutes on a CPU)
  DEVICE=cpu DTYPE=fp32 PEAK=1 NPAIRS=8 STEPS=2 EXTRA=(--prompt-tokens 8,32 --matmul-n 128)
  SMALL=tiny LARGE="" FSDP_MODEL=tiny
  LAUNCH="$PY"  # --fsdp on without torchrun: a process group of one (saves the launcher)
  V_SMALL=base,eager,autocast,micro8,fp32,compile V_LARGE=""
  BACKEND=eager
  T_SMALL=120 T_LARGE=120 T_COMPILE=120 T_FSDP=120
elif [[ $# -eq 0 ]]; then
  OUT=${OUT:-results/gpu_speed}
  DEVICE=cuda DTYPE=bf16 PEAK=989 NPAIRS=32 STEPS=5 EXTRA=()  # PEAK: H200 SXM dense bf16
  SMALL=160m LARGE=1b FSDP_MODEL=160m
  LAUNCH="$PY -m torch.distributed.run --nproc-per-node 1 --master-addr 127.0.0.1 --master-port 29531"
  V_SMALL=base,eager,autocast,micro8,fp32 V_LARGE=base,autocast,fp32
  BACKEND=inductor
  T_SMALL=45 T_LARGE=55 T_COMPILE=55 T_FSDP=70  # 225 s of stages + ~10 s around them
else
  echo "usage: $0 [--cpu-dry-run]" >&2
  exit 2
fi
mkdir -p "$OUT"
: > "$OUT/timings.txt"
[[ $DEVICE == cuda ]] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
status=0

stage() {  # stage NAME TIMEOUT CMD...: run with a timeout, log, record its wall time
  local name=$1 limit=$2 t0=$SECONDS rc=0
  shift 2
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  tail -n 15 "$OUT/$name.log"
  echo "$name $((SECONDS - t0)) s (rc $rc)" | tee -a "$OUT/timings.txt"
  [[ $rc -eq 0 ]] || status=1
}

bench() {  # bench NAME SHAPES VARIANTS TIMEOUT
  stage "$1" "$4" "$PY" benchmarks/llm_dpo_step.py --shapes "$2" --variants "$3" --no-trl \
    --device "$DEVICE" --dtype "$DTYPE" --batch "$NPAIRS" --steps "$STEPS" --peak-tflops "$PEAK" \
    --compile-backend "$BACKEND" "${EXTRA[@]}" --json "$OUT/$1.json"
}
bench bench-small "$SMALL" "$V_SMALL" "$T_SMALL"
if [[ -n $LARGE ]]; then
  bench bench-large "$LARGE" "$V_LARGE" "$T_LARGE"
  # torch.compile last and on its own: its compile time must not cost the other rows
  bench bench-compile "$SMALL,$LARGE" compile "$T_COMPILE"
fi

# FSDP smoke run on one process: 4 steps with sharded checkpoints at steps 2 and 4, then the
# run is rolled back to step 2 and resumed; the resumed steps 3-4 must match the first run's.
FSDP=(experiments/llm_train.py --fsdp on --mixed-precision --model "$FSDP_MODEL" --source tree
      --tree-pairs 0\>1,5\>7,3\>20,11\>2 --batch-size 4 --micro-batch-size 2 --lr 1e-4
      --warmup-steps 0 --epochs 4 --checkpoint-every 8 --device "$DEVICE" --out "$OUT/fsdp"
      --run-name smoke --no-progress)
fsdp_smoke() {
  $LAUNCH "${FSDP[@]}"
  cp "$OUT/fsdp/smoke/log.csv" "$OUT/fsdp/first-log.csv"
  rm -rf "$OUT/fsdp/smoke/step-0000004"
  echo '{"checkpoint": "step-0000002", "step": 2}' > "$OUT/fsdp/smoke/latest.json"
  $LAUNCH "${FSDP[@]}" --resume
}
rm -rf "$OUT/fsdp"
stage fsdp "$T_FSDP" bash -c "$(declare -p PY OUT FSDP LAUNCH); $(declare -f fsdp_smoke); fsdp_smoke"

"$PY" - "$OUT" <<'PYEOF'
"""Collect the stages into results.csv/json: stage, item, metric, value."""
import json, sys
from pathlib import Path

import pandas as pd

out = Path(sys.argv[1])
rows = []
for name in ("bench-small", "bench-large", "bench-compile"):
    path = out / f"{name}.json"
    if not path.is_file():
        continue
    for r in json.loads(path.read_text())["results"]:
        item = f"{r['shape']} {r['impl']} {r['pairs']} pairs {r['dtype']}"
        for m in ("seconds_per_step", "tokens_per_s", "mfu", "mfu_needed", "peak_memory_gib",
                  "first_loss", "first_loss_vs_fp32"):
            if m in r:
                rows.append(("benchmark", item, m, r[m]))
smoke = out / "fsdp" / "smoke"
if (smoke / "log.csv").is_file() and (out / "fsdp" / "first-log.csv").is_file():
    first = pd.read_csv(out / "fsdp" / "first-log.csv").set_index("step")
    again = pd.read_csv(smoke / "log.csv").set_index("step")
    for step in again.index:
        for m in ("loss", "grad_norm", "tokens_per_s"):
            rows.append(("fsdp", f"step {step}", m, again.loc[step, m]))
    cols = ["loss", "grad_norm", "margins"]
    diff = (again.loc[[3, 4], cols] - first.loc[[3, 4], cols]).abs().to_numpy().max()
    rows.append(("fsdp", "resume from step 2", "max |resumed - first run| (steps 3-4)", diff))
    final = smoke / "step-0000004"
    rows.append(("fsdp", "sharded checkpoint", "dcp files", len(list((final / "dcp").glob("*")))))
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(final))
    rows.append(("fsdp", "export", "from_pretrained parameters",
                 sum(p.numel() for p in model.parameters())))
for line in (out / "timings.txt").read_text().splitlines():
    name, seconds = line.split()[:2]
    rows.append(("timing", name, "wall_s", float(seconds)))
table = pd.DataFrame(rows, columns=["stage", "item", "metric", "value"])
table.to_csv(out / "results.csv", index=False)
(out / "results.json").write_text(json.dumps(table.to_dict("records"), indent=1, default=str))
print(table.to_string(index=False))
print(f"results table: {out / 'results.csv'} ({len(table)} rows)")
PYEOF
echo "gpu_speed: total $SECONDS s" | tee -a "$OUT/timings.txt"
exit $status
