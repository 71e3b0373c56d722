#!/usr/bin/env bash
# The paper's LLM figure family at the Pythia 1b, 2.8b and 6.9b shapes (issue 14), on one GPU:
# experiments/llm_overopt.py (tree language with a stop action, SFT, one epoch over Bradley–Terry
# pairs of π_ref's samples, 10 checkpoints inside it, each evaluated exactly and by samples IN
# MEMORY: no checkpoint weights are written), then figures/make_all.py --only llm on those runs.
# No network (random init at the Pythia shapes; the tokenizer is built in code).
#
#   bash scripts/gpu_figures.sh                 # one H100 or H200: ESTIMATED ~7.5 min (docs/llm.md)
#   bash scripts/gpu_figures.sh --cpu-dry-run   # the same path on the CPU at tiny size (< 2 min)
#   FIGURES_STAGES="1b dpo 0.1 60;6.9b dpo 0.1 120" PLOT_LIMIT=30 bash scripts/gpu_figures.sh
#     # other stages ("size objectives betas timeout [precision]", ';'-separated; scripts/gpu_all.sh)
#
# Precision per stage (llm.precision): "auto" (the default) asks `python -m llm.precision` for
# the card's memory (nvidia-smi): fp32 weights, gradients and RMSProp state with an fp16
# reference where they fit (1b and 2.8b everywhere, 6.9b on an H200), else bf16-weights (bf16
# weights and gradients, fp32 RMSProp state with stochastic rounding, the reference in bf16:
# 6.9b on an 80 GB H100). The choice is in timings.txt and each run's config.json.
#
# Writes everything under $OUT (default results/gpu_figures, or results/gpu_figures-dry):
#   runs/<size>/<run>/{summary.csv, runs.csv, llm/<size>-<objective>-beta<β>/eval.csv, ...},
#   figures/llm/... (every figure and table of the llm family), logs/*.log, timings.txt, gpu.txt.
# A stage that runs past its timeout is stopped; the next stages still run, and make_all draws
# whatever finished. Rerunning the same command (same $OUT) reuses the finished runs.
#
# What was cut to fit 8 minutes (the estimate, from GPU.md's measured numbers, is in docs/llm.md):
# a small tree (4 actions, responses of 1-6 tokens: 1,093 responses), 256 pairs in 32 steps of 8,
# β ∈ {0.1, 0.3} at 1b, β = 0.1 at 2.8b and 6.9b; R-DPO at 1b and 2.8b only (6.9b: the paper's
# DPO, IPO and SLiC); one seed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"

# The problem and schedule every size shares (the same flags give the same tree, gold reward,
# π_ref and pairs, so the sizes' runs are comparable).
if [[ "${1:-}" == "--cpu-dry-run" ]]; then
  OUT=${OUT:-results/gpu_figures-dry}
  DEVICE=cpu
  # the smallest problem with the GPU run's shape: responses of 1-3 tokens, 10 steps of 2 pairs
  # with a checkpoint after each (the suite runs this: tests/llm/test_llm_overopt.py)
  COMMON=(--branching 3 --max-length 3 --pairs 20 --batch 2 --checkpoints 10 --lr 3e-3
          --sft-samples 32 --sft-epochs 1 --toy-sft-steps 10 --eval-samples 4 --eval-pairs 4
          --no-keep-weights)
  # "size objectives betas timeout [precision]": three stages, as on the GPU, all at the CPU's
  # tiny shape (disjoint objectives and β: 8 evaluation runs, none twice); the last one in
  # bf16-weights, the layout the 6.9b stage gets on an 80 GB card
  STAGES=("tiny dpo,rdpo 0.1,0.3 120" "tiny ipo,slic 0.1 120" "tiny ipo,slic 0.3 120 bf16-weights")
  PLOT_LIMIT=${PLOT_LIMIT:-120}
  FP32_REFERENCE=fp32  # the reference of an fp32 stage (fp16 matmuls crawl on a CPU)
elif [[ $# -eq 0 ]]; then
  OUT=${OUT:-results/gpu_figures}
  DEVICE=cuda
  # learning rates: those of scripts/gpu_confirm.sh (random-init Pythia shapes SFT'd on a tree
  # language at 70m-1b); not tried at 2.8b or 6.9b
  COMMON=(--branching 4 --max-length 6 --pairs 256 --batch 8 --checkpoints 10 --lr 3e-4
          --sft-samples 1024 --sft-epochs 2 --sft-lr 1e-4 --sft-batch-size 64
          --eval-samples 128 --eval-pairs 64 --no-keep-weights)
  # the limits sum to 475 s: the whole command stays inside 8 minutes whatever happens
  STAGES=("1b dpo,ipo,slic,rdpo 0.1,0.3 120" "2.8b dpo,ipo,slic,rdpo 0.1 130"
          "6.9b dpo,ipo,slic 0.1 180")
  PLOT_LIMIT=${PLOT_LIMIT:-45}
  FP32_REFERENCE=fp16  # the reference of an fp32 stage: half the memory
  # a card's memory is reused run after run: one growable segment avoids fragmentation at 6.9b
  export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
else
  echo "usage: $0 [--cpu-dry-run]" >&2
  exit 2
fi
if [[ -n ${FIGURES_STAGES:-} ]]; then
  IFS=';' read -r -a STAGES <<< "$FIGURES_STAGES"
fi
mkdir -p "$OUT/logs"
MEMORY_MIB=""
if [[ $DEVICE == cuda ]]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
  MEMORY_MIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
fi

precision_of() {  # precision_of SIZE PRECISION: "auto" resolved for this card (fp32 on a CPU)
  if [[ $2 != auto ]]; then
    echo "$2"
  elif [[ -z $MEMORY_MIB ]]; then
    echo fp32
  else
    "$PY" -m llm.precision --size "$1" --memory-mib "$MEMORY_MIB" --reference-dtype fp16
  fi
}

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
start=$(date +%s.%N)
status=0
: > "$OUT/timings.txt"
for stage in "${STAGES[@]}"; do
  read -r size objectives betas limit precision <<< "$stage"
  name="$size-${objectives//,/-}-beta${betas//,/-}"
  t0=$(date +%s.%N)
  rc=0
  precision=$(precision_of "$size" "${precision:-auto}") || rc=$?
  # bf16-weights: the reference in bf16 is the SFT weights exactly
  reference=$FP32_REFERENCE
  [[ $precision == bf16-weights ]] && reference=bf16
  [[ $rc -eq 0 ]] && { timeout "$limit" "$PY" experiments/llm_overopt.py "${COMMON[@]}" \
    --sizes "$size" --objectives ${objectives//,/ } --betas ${betas//,/ } \
    --precision "$precision" --reference-dtype "$reference" --device "$DEVICE" \
    --out "$OUT/runs/$size" --no-progress > "$OUT/logs/$name.log" 2>&1 || rc=$?; }
  tail -n 3 "$OUT/logs/$name.log" 2>/dev/null || true
  echo "stage $name: $(elapsed "$t0") s (limit $limit s), precision $precision, exit status $rc" \
    | tee -a "$OUT/timings.txt"
  [[ $rc -ne 0 ]] && status=$rc
done

# Every finished evaluation run (its "done" marker: a run cut by a timeout has a partial
# eval.csv and is left out) feeds the figures.
mapfile -t RUNS < <(find "$OUT/runs" -name done -path '*beta*' -printf '%h\n' 2>/dev/null | sort)
t0=$(date +%s.%N)
rc=0
if [[ ${#RUNS[@]} -gt 0 ]]; then
  timeout "$PLOT_LIMIT" "$PY" figures/make_all.py --only llm --llm-runs "${RUNS[@]}" \
    --out "$OUT/figures" --results "$OUT/runs" > "$OUT/logs/figures.log" 2>&1 || rc=$?
  tail -n 3 "$OUT/logs/figures.log"
else
  echo "no finished runs to draw" | tee "$OUT/logs/figures.log"
  rc=1
fi
echo "stage figures: $(elapsed "$t0") s (limit $PLOT_LIMIT s), exit status $rc" | tee -a "$OUT/timings.txt"
[[ $rc -ne 0 ]] && status=$rc
echo "total: $(elapsed "$start") s, ${#RUNS[@]} evaluation runs, exit status $status" \
  | tee -a "$OUT/timings.txt"
exit $status
