#!/usr/bin/env bash
# One prepared GPU call (issue 28): the stages that have never run on a GPU, by priority, each
# with its own timeout, inside 9 minutes (540 s) including setup, so a 15-minute device window
# (start-up included) holds it:
#   0. setup     nvidia-smi, versions                                             cap  15 s
#   1. figures   scripts/gpu_figures.sh at 1b, 2.8b, 6.9b (β 0.1: DPO, IPO, SLiC at each size,
#                R-DPO at 1b): the 18 *_evolution_over_epoch_for_*_{1B,2.8B,6.9B} figures and
#                the llm figure family; 6.9b picks its precision for the card     cap 340 s
#   2. speed     scripts/gpu_speed.sh: the packed attention's CUDA tests and the DPO step's MFU
#                at 160m and 1b (base, packed rows, packed pairs)                 cap 100 s
#   3. trl       scripts/gpu_speed.sh's TRL stage at 1b (benchmarks/wheels/)      cap  85 s
#   4. confirm   scripts/gpu_confirm.sh as it is, in the time the stages above left (the rest)
#
#   PYTHON=python3 bash scripts/gpu_all.sh      # on the device (no carry needed)
#   bash scripts/gpu_all.sh --cpu-dry-run       # the same stages on the CPU at tiny size (tested)
#   bash scripts/gpu_all.sh --plan              # print the stages and their caps, run nothing
#
# Each stage runs in its own session and is stopped whole (every process it started) at its
# timeout; what it finished stays: each writes under $OUT/<stage>/ as it goes (runs, figures,
# bench-*.json, results.csv), and $OUT/summary.csv (stage, status, seconds, limit_s) gains a row
# as each stage ends. Status: ok, timeout, failed (exit N), or skipped (why). A stage never
# starts when less than 30 s of the budget is left. Files over 50 MB left under $OUT (the
# weights of a run cut mid-way) are removed at the end (removed-large-files.txt). Exit status 0
# when every stage that ran finished, else 1. $OUT: default results/gpu_all (dry run:
# results/gpu_all-dry); commit it as benchmarks/gpu/<date>-all/ (docs/llm.md, "One GPU call").
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"

MIN_STAGE=${MIN_STAGE:-30}  # seconds: below this a stage is skipped, not started
GRACE=5       # seconds between TERM and KILL when a stage is stopped
PLAN=0
ARGS=()
for a in "$@"; do
  if [[ $a == --plan ]]; then PLAN=1; else ARGS+=("$a"); fi
done
case "${ARGS[0]:-}" in
  --cpu-dry-run)
    MODE=(--cpu-dry-run)
    OUT=${OUT:-results/gpu_all-dry}
    # the GPU's stages at tiny size; a CPU shared with other jobs gets roomier limits. The
    # figures stages are gpu_figures.sh --cpu-dry-run's own three, as on the GPU the last in
    # bf16-weights (tests/llm/test_gpu_all.py checks them: the suite runs this dry run only)
    BUDGET=${BUDGET:-1000}
    FIGURES_STAGES="tiny dpo,rdpo 0.1,0.3 100;tiny ipo,slic 0.1 100"
    FIGURES_STAGES+=";tiny ipo,slic 0.3 100 bf16-weights"
    FIGURES_PLOT=150
    SPEED=(ONLY=packing-cuda,bench-small V_SMALL=base,pairs T_PACKING=60 T_SMALL=120)
    TRL=(ONLY=bench-trl T_TRL=120)
    CAPS=(setup=60 figures=460 speed=190 trl=130)
    ;;
  "")
    MODE=()
    OUT=${OUT:-results/gpu_all}
    BUDGET=${BUDGET:-540}
    # inner limits: 70 + 95 + 140 + 25 (figures) = 330 s of the stage's 340 (3 precision checks,
    # a few s each); each training stage keeps its finished runs when cut
    FIGURES_STAGES="1b dpo,ipo,slic,rdpo 0.1 70;2.8b dpo,ipo,slic 0.1 95;6.9b dpo,ipo,slic 0.1 140"
    FIGURES_PLOT=25
    # 25 + 30 + 35 = 90 s of stages, then the results table
    SPEED=(ONLY=packing-cuda,bench-small,bench-large V_SMALL=base,packed,pairs
           V_LARGE=base,packed,pairs T_PACKING=25 T_SMALL=30 T_LARGE=35)
    # installing the wheels and importing trl (~20 s), then ours and TRL's step at 1b
    TRL=(ONLY=bench-trl T_TRL=60)
    CAPS=(setup=15 figures=340 speed=100 trl=85)
    ;;
  *)
    echo "usage: $0 [--cpu-dry-run] [--plan]" >&2
    exit 2
    ;;
esac
declare -A CAP
for c in "${CAPS[@]}"; do CAP[${c%=*}]=${c#*=}; done

inner() {  # the timeouts a stage's script runs under, summed (what must fit in its cap)
  local sum=0 entry f
  case $1 in
    figures)
      IFS=';' read -r -a f <<< "$FIGURES_STAGES"
      for entry in "${f[@]}"; do
        read -r -a entry <<< "$entry"
        sum=$((sum + entry[3]))
      done
      echo $((sum + FIGURES_PLOT)) ;;
    speed|trl)
      local -n list=${1^^}
      for entry in "${list[@]}"; do
        [[ $entry == T_*=* ]] && sum=$((sum + ${entry#*=}))
      done
      echo "$sum" ;;
    *) echo 0 ;;
  esac
}
if ((PLAN)); then
  total=0
  for c in "${CAPS[@]}"; do
    echo "${c%=*} ${c#*=} inner $(inner "${c%=*}")"
    total=$((total + ${c#*=}))
  done
  echo "confirm $((BUDGET - total)) (what is left)"
  echo "total $BUDGET"
  exit 0
fi

mkdir -p "$OUT"
echo "stage,status,seconds,limit_s" > "$OUT/summary.csv"
DEADLINE=$((SECONDS + BUDGET))
failed=0

processes() {  # "pid ppid sid" of every process, read from /proc (procps may be absent)
  local stat line pid ppid sid
  for stat in /proc/[0-9]*/stat; do
    read -r line < "$stat" 2> /dev/null || continue
    pid=${line%% *}
    line=${line##*) }  # after the command name, which may hold spaces: state ppid pgrp session
    read -r _ ppid _ sid _ <<< "$line"
    echo "$pid $ppid $sid"
  done
}

stage_pids() {  # stage_pids PID: the processes of the session PID leads (setsid did not fork),
  # or of the one its child leads (setsid --wait forked); never this script's own session
  local self
  self=$(processes | awk -v me="$$" '$1 == me { print $3 }')
  processes | awk -v p="$1" -v self="$self" '
    { pid[NR] = $1; sid[NR] = $3; if ($1 == p || $2 == p) s[$3] = 1 }
    END { for (i = 1; i <= NR; i++) if ((sid[i] in s) && sid[i] != self) print pid[i] }'
}

stop_stage() {  # stop_stage PID: TERM, then KILL, every process of the stage's session
  local pids
  pids=$(stage_pids "$1")
  [[ -n $pids ]] && kill -TERM $pids 2> /dev/null
  sleep "$GRACE"
  pids=$(stage_pids "$1")
  [[ -n $pids ]] && kill -KILL $pids 2> /dev/null
  return 0
}

stage() {  # stage NAME CMD...: run CMD under the stage's cap (and the budget); one summary row
  local name=$1 left limit pid rc=0 status t0=$SECONDS
  shift
  left=$((DEADLINE - SECONDS - GRACE))
  limit=${CAP[$name]:-$left}
  ((left < limit)) && limit=$left
  if ((left < MIN_STAGE)); then
    status="skipped ($((DEADLINE - SECONDS)) s of the budget left)"
    limit=0
  else
    # its own session: a stage cut by its timeout is stopped with every process it started
    # (the scripts' own `timeout`s run in process groups of their own)
    setsid --wait "$@" > "$OUT/$name.log" 2>&1 < /dev/null &
    pid=$!
    while kill -0 "$pid" 2>/dev/null && ((SECONDS - t0 < limit)); do
      sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
      stop_stage "$pid"
      wait "$pid" 2>/dev/null
      status=timeout
    else
      wait "$pid" || rc=$?
      status=ok
      ((rc == 0)) || status="failed (exit $rc)"
    fi
    tail -n 5 "$OUT/$name.log"
  fi
  [[ $status == ok || $status == skipped* ]] || failed=1
  echo "$name,$status,$((SECONDS - t0)),$limit" >> "$OUT/summary.csv"
  echo "== $name: $status, $((SECONDS - t0)) s (limit $limit s)"
}

setup() {
  if [[ ${#MODE[@]} -eq 0 ]]; then
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
  fi
  "$PY" -c "import json, sys; from llm.compat import version_report as v; json.dump(v(), sys.stdout)" \
    | tee "$OUT/versions.json"
  echo
}

stage setup bash -c "$(declare -p MODE OUT PY); $(declare -f setup); setup"
stage figures env OUT="$OUT/figures" FIGURES_STAGES="$FIGURES_STAGES" PLOT_LIMIT="$FIGURES_PLOT" \
  PYTHON="$PY" bash scripts/gpu_figures.sh "${MODE[@]}"
stage speed env OUT="$OUT/speed" "${SPEED[@]}" PYTHON="$PY" bash scripts/gpu_speed.sh "${MODE[@]}"
stage trl env OUT="$OUT/trl" "${TRL[@]}" PYTHON="$PY" bash scripts/gpu_speed.sh "${MODE[@]}"
stage confirm env OUT="$OUT/confirm" PYTHON="$PY" bash scripts/gpu_confirm.sh "${MODE[@]}"

# Weights a stage cut mid-run leaves behind (an SFT model, checkpoints: GBs at 1b-6.9b) are not
# results, and would not come back from the device: removed, and listed.
find "$OUT" -type f -size +50M -print -delete > "$OUT/removed-large-files.txt"
echo "gpu_all: $SECONDS s of the $BUDGET s budget; $OUT/summary.csv:"
column -s, -t < "$OUT/summary.csv" 2>/dev/null || cat "$OUT/summary.csv"
exit $failed
