#!/usr/bin/env bash
# GPU speed: the DPO step's levers at 160m and 1b (32 pairs, bf16, one GPU; packed rows and pairs
# among them), the packed attention's CUDA tests (torch's varlen flash kernel against each
# sequence alone), TRL's DPOTrainer side by side with ours (padded and packed by pairs) at 1b
# and 160m, and a one-GPU FSDP smoke run (torchrun, --fsdp on --mixed-precision --packing pairs:
# sharded save, resume, full-weight export). Needs no network (random Pythia-shaped models).
# Budget: within 8 minutes on one H200 (stage timeouts sum to 410 s); every stage has its own
# timeout, and a failed stage leaves the others' rows in the table.
#
#   bash scripts/gpu_speed.sh                 # one GPU (PYTHON=python3 on the device)
#   bash scripts/gpu_speed.sh --cpu-dry-run   # the same code path on the CPU at tiny size
#   ONLY=bench-trl,fsdp bash scripts/gpu_speed.sh   # only these stages (a rerun within a lease;
#     the others' files of the last run are kept). Stages: packing-cuda, bench-small,
#     bench-large, bench-compile, bench-trl, bench-trl-small, fsdp.
#   V_SMALL, V_LARGE (levers at 160m / 1b), T_PACKING, T_SMALL, T_LARGE, T_TRL (timeouts, s)
#     override those defaults (scripts/gpu_all.sh sets them).
#
# TRL and datasets are not on the GPU machine (nor dependencies of the project): when PYTHON is
# 3.12 (what they are built for), the wheels in benchmarks/wheels/ (checked against SHA256SUMS)
# and any in the git-ignored .whl/ (scripts/trl_wheels.sh --pyarrow) are installed into a fresh
# .../site-packages folder that only the TRL stages see (trl-wheels.log). Elsewhere, without an
# importable trl, the TRL stages are skipped with one line in the log and a row in results.csv
# (stage "skipped") that says why; a failed check, install or import of the wheels is a failure
# (exit 1) that the other stages survive.
#
# PYTHON (default .venv/bin/python) runs everything; results go to $OUT (default
# results/gpu_speed, or results/gpu_speed-dry): results.csv and results.json (one row per
# measurement: stage, item, metric, value), bench-*.json/.log, fsdp/ and fsdp.log, timings.txt.
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
  V_SMALL=${V_SMALL:-base,eager,autocast,micro8,fp32,packed,pairs,compile} V_LARGE=""
  BACKEND=eager
  T_PACKING=${T_PACKING:-120} T_SMALL=${T_SMALL:-120} T_LARGE=120 T_COMPILE=120 T_FSDP=120
  TRL_LARGE=tiny TRL_SMALL="" T_TRL=${T_TRL:-120} T_TRL_SMALL=0  # only where trl is importable
elif [[ $# -eq 0 ]]; then
  OUT=${OUT:-results/gpu_speed}
  DEVICE=cuda DTYPE=bf16 PEAK=989 NPAIRS=32 STEPS=5 EXTRA=()  # PEAK: H200 SXM dense bf16
  SMALL=160m LARGE=1b FSDP_MODEL=160m
  LAUNCH="$PY -m torch.distributed.run --nproc-per-node 1 --master-addr 127.0.0.1 --master-port 29531"
  V_SMALL=${V_SMALL:-base,eager,autocast,micro8,fp32,packed,pairs}
  V_LARGE=${V_LARGE:-base,autocast,fp32,packed,pairs}
  BACKEND=inductor
  T_PACKING=${T_PACKING:-40} T_SMALL=${T_SMALL:-55} T_LARGE=${T_LARGE:-70}  # 280 s of stages
  T_COMPILE=55 T_FSDP=60
  # TRL at 1b: ~0.3-0.6 s/step, its first step compiles Triton kernels; 160m only after it
  TRL_LARGE=1b TRL_SMALL=160m T_TRL=${T_TRL:-85} T_TRL_SMALL=45  # ours padded and packed, TRL
else
  echo "usage: $0 [--cpu-dry-run]" >&2
  exit 2
fi
mkdir -p "$OUT"
: > "$OUT/timings.txt"
[[ $DEVICE == cuda ]] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
status=0

selected() { [[ -z ${ONLY:-} || ",$ONLY," == *",$1,"* ]]; }

stage() {  # stage NAME TIMEOUT CMD...: run with a timeout, log, record its wall time
  local name=$1 limit=$2 t0=$SECONDS rc=0
  selected "$name" || return 0
  shift 2
  rm -f "$OUT/$name.json"  # a stage that fails leaves no stale rows of an earlier run
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
# The packed attention's CUDA tests first: the packed levers below are only as good as they are
# (on a CPU they are skipped, and the row says so).
stage packing-cuda "$T_PACKING" "$PY" -m pytest -q -rs -p no:cacheprovider \
  tests/llm/test_llm_packing.py -k cuda
bench bench-small "$SMALL" "$V_SMALL" "$T_SMALL"
if [[ -n $LARGE ]]; then
  bench bench-large "$LARGE" "$V_LARGE" "$T_LARGE"
  # torch.compile last and on its own: its compile time must not cost the other rows
  bench bench-compile "$SMALL,$LARGE" compile "$T_COMPILE"
fi

# TRL's DPOTrainer side by side with ours (base): the same policy, reference, rows and settings
# (benchmarks/llm_dpo_step.py), bf16 weights and TRL's bf16 autocast on the GPU.
TRL_PATH="" TRL_SKIP="" TRL_TMP=""
trap '[[ -z $TRL_TMP ]] || rm -rf "$TRL_TMP"' EXIT
trl_setup() {  # sets TRL_PATH (a folder for PYTHONPATH, may be empty) or TRL_SKIP (why not)
  local log="$OUT/trl-wheels.log" pyver wheels=(benchmarks/wheels/*.whl) why
  : > "$log"
  compgen -G ".whl/*.whl" > /dev/null && wheels+=(.whl/*.whl)  # e.g. pyarrow for an old image
  pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  why="the wheels are for Python 3.12 (the GPU image), PYTHON is $pyver"
  if [[ $pyver == 3.12 ]]; then
    if ! (cd benchmarks/wheels && sha256sum --quiet -c SHA256SUMS) >> "$log" 2>&1; then
      TRL_SKIP="skipped: benchmarks/wheels/ does not match its SHA256SUMS (trl-wheels.log)"
      return 1
    fi
    # A folder named site-packages: dill pickles any module outside sys.prefix and such a folder
    # by value, and datasets' fingerprinting then fails on pyarrow (scripts/trl_wheels.sh).
    TRL_TMP=$(mktemp -d)
    TRL_PATH="$TRL_TMP/site-packages"
    if ! timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$TRL_PATH" "${wheels[@]}" >> "$log" 2>&1; then
      TRL_SKIP="skipped: installing the wheels failed (trl-wheels.log)"
      return 1
    fi
  else
    echo "wheels not installed: $why" | tee -a "$log"
  fi
  if ! PYTHONPATH="$PYTHONPATH${TRL_PATH:+:$TRL_PATH}" timeout 60 "$PY" -c \
      'import importlib.metadata as m, datasets, trl
for p in ("trl", "datasets", "dill", "multiprocess", "pyarrow", "fsspec", "accelerate"):
    try:
        print(p, m.version(p))
    except m.PackageNotFoundError:
        print(p, "absent")' \
      >> "$log" 2>&1; then
    if [[ -z $TRL_PATH ]]; then
      TRL_SKIP="skipped: trl not importable ($why)"
      return 0
    fi
    local pa
    pa=$("$PY" -c 'import pyarrow; print(pyarrow.__version__)' 2>/dev/null || echo none)
    TRL_SKIP="skipped: trl not importable after installing the wheels (pyarrow $pa here; if"
    TRL_SKIP+=" below 21: bash scripts/trl_wheels.sh --pyarrow, carry .whl; the error:"
    TRL_SKIP+=" trl-wheels.log)"
    return 1
  fi
}

trl_bench() {  # trl_bench NAME SHAPE TIMEOUT
  selected "$1" || return 0
  if [[ -n $TRL_SKIP ]]; then
    printf '%s\t%s\n' "$1" "$TRL_SKIP" >> "$OUT/skipped.txt"
    echo "$1: $TRL_SKIP" | tee -a "$OUT/trl-wheels.log"
    return 0
  fi
  stage "$1" "$3" env PYTHONPATH="$PYTHONPATH${TRL_PATH:+:$TRL_PATH}" "$PY" \
    benchmarks/llm_dpo_step.py --shapes "$2" --variants base,pairs --device "$DEVICE" \
    --dtype "$DTYPE" \
    --batch "$NPAIRS" --steps "$STEPS" --peak-tflops "$PEAK" "${EXTRA[@]}" --json "$OUT/$1.json"
}
: > "$OUT/skipped.txt"
if selected bench-trl || selected bench-trl-small; then
  trl_setup || status=1
fi
trl_bench bench-trl "$TRL_LARGE" "$T_TRL"
if [[ -n $TRL_SMALL ]]; then
  trl_bench bench-trl-small "$TRL_SMALL" "$T_TRL_SMALL"
fi

# FSDP smoke run on one process: 4 steps with sharded checkpoints at steps 2 and 4, then the
# run is rolled back to step 2 and resumed; the resumed steps 3-4 must match the first run's.
FSDP=(experiments/llm_train.py --fsdp on --mixed-precision --model "$FSDP_MODEL" --source tree
      --tree-pairs 0\>1,5\>7,3\>20,11\>2 --batch-size 4 --micro-batch-size 2 --lr 1e-4
      --warmup-steps 0 --epochs 4 --checkpoint-every 8 --device "$DEVICE" --out "$OUT/fsdp"
      --packing pairs --run-name smoke --no-progress)
fsdp_smoke() {
  $LAUNCH "${FSDP[@]}"
  cp "$OUT/fsdp/smoke/log.csv" "$OUT/fsdp/first-log.csv"
  rm -rf "$OUT/fsdp/smoke/step-0000004"
  echo '{"checkpoint": "step-0000002", "step": 2}' > "$OUT/fsdp/smoke/latest.json"
  $LAUNCH "${FSDP[@]}" --resume
}
if selected fsdp; then
  rm -rf "$OUT/fsdp"
fi
stage fsdp "$T_FSDP" bash -c "$(declare -p PY OUT FSDP LAUNCH); $(declare -f fsdp_smoke); fsdp_smoke"

"$PY" - "$OUT" <<'PYEOF'
"""Collect the stages into results.csv/json: stage, item, metric, value."""
import json, sys
from pathlib import Path

import pandas as pd

out = Path(sys.argv[1])
rows = []
stages = {"bench-small": "benchmark", "bench-large": "benchmark", "bench-compile": "benchmark",
          "bench-trl": "trl", "bench-trl-small": "trl"}
for name, kind in stages.items():
    path = out / f"{name}.json"
    if not path.is_file():
        continue
    for r in json.loads(path.read_text())["results"]:
        item = f"{r['shape']} {r['impl']} {r['pairs']} pairs {r['dtype']}"
        for m in ("seconds_per_step", "tokens_per_s", "mfu", "mfu_needed", "mfu_run", "tokens_run",
                  "peak_memory_gib", "first_loss", "first_loss_vs_fp32", "speedup_vs_trl",
                  "first_loss_vs_trl"):
            if m in r:
                rows.append((kind, item, m, r[m]))
packing = out / "packing-cuda.log"
if packing.is_file():  # pytest's summary line: the CUDA tests passed, failed, or were skipped
    import re

    summary = packing.read_text().strip().splitlines()[-1]
    for n, outcome in re.findall(r"(\d+) (passed|failed|skipped|error)", summary):
        rows.append(("packing", "cuda attention tests", outcome, float(n)))
skipped = out / "skipped.txt"
for line in skipped.read_text().splitlines() if skipped.is_file() else []:
    name, why = line.split("\t", 1)
    rows.append(("skipped", name, why, float("nan")))  # the reason, never a silent pass
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
