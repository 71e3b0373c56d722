#!/usr/bin/env bash
# Wheels of TRL's DPOTrainer for the GPU machine, which has no network and no package index
# (shared/GPU.md): scripts/gpu_speed.sh installs the tracked benchmarks/wheels/ (checked against
# its SHA256SUMS) and whatever lies in the git-ignored .whl/, and runs TRL side by side with
# llm.train there (benchmarks/llm_dpo_step.py). Not a dependency of the project.
#
#   bash scripts/trl_wheels.sh             # benchmarks/wheels/ again from PyPI: trl, datasets,
#                                          # dill, multiprocess (1.8 MB), and its SHA256SUMS
#   bash scripts/trl_wheels.sh --pyarrow   # pyarrow (55 MB) into .whl/: only for an image whose
#                                          # pyarrow is older than 21 (gpu_speed.sh says so)
#   bash scripts/trl_wheels.sh --here DIR  # the same pins for this machine's Python, plus what
#       # the project's venvs lack (accelerate, pyarrow, xxhash, psutil), installed into
#       # DIR/site-packages; then PYTHONPATH=DIR/site-packages runs TRL on the CPU
#
# Then, on the device: `PYTHON=python3 bash scripts/gpu_speed.sh` (carry .whl if it holds pyarrow).
#
# The GPU image (Python 3.12, transformers 5.17, accelerate 1.15, pyarrow of unknown version,
# pandas, xxhash, fsspec, huggingface_hub 1.33) lacks exactly these four. The pins work together
# with transformers 5.17 and 5.24 (CPU runs of the whole benchmark on both). TRL's dataset mapping
# ran on Python 3.12 with pyarrow 21 and 26 (trl declares >= 21, datasets 5.2 >= 24); with 18
# datasets fails at import (no pyarrow.json_), hence --pyarrow. datasets 5.2 is the oldest
# datasets that accepts huggingface_hub 2.x (the project's .venv has 2.4).
#
# Where they are installed matters: dill pickles a module by value unless its file lies under
# sys.prefix or has "site-packages" in its path, and datasets' fingerprinting (every map) then
# dies on pyarrow's Cython MonthDayNano ("Can't pickle <class 'MonthDayNano'>: it's not found as
# builtins.MonthDayNano"). That is the failure GPU.md records for a `--target /tmp/site` install;
# install into a folder named site-packages (gpu_speed.sh and --here do).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PINS=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)
PYARROW=pyarrow==26.0.1
HERE_EXTRA=(accelerate==1.15.0 "$PYARROW" xxhash==4.1.0 psutil==7.2.2)  # the image has these

if [[ "${1:-}" == "--here" ]]; then
  [[ -n "${2:-}" ]] || { echo "usage: $0 --here DIR" >&2; exit 2; }
  site="$2/site-packages"
  "$PY" -m pip install -q --no-deps --only-binary=:all: --upgrade --target "$site" \
    "${PINS[@]}" "${HERE_EXTRA[@]}"
  echo "installed for $("$PY" -c 'import sys; print(sys.version.split()[0])') into $site:"
  ls "$site" | grep -E '\.dist-info$' | sed 's/\.dist-info$//'
  echo "use: PYTHONPATH=$site (after the repository)"
  exit 0
fi

case "${1:-}" in
  --pyarrow) dest=.whl want=("$PYARROW") ;;
  "") dest=benchmarks/wheels want=("${PINS[@]}") ;;
  *) echo "usage: $0 [--pyarrow | --here DIR]" >&2; exit 2 ;;
esac
mkdir -p "$dest"
rm -f "$dest"/*.whl  # one version of each: two stop the whole install on the device
# The device README's recipe: CPython 3.12 wheels for the manylinux platforms pip must name.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$dest" "${want[@]}"
(cd "$dest" && sha256sum ./*.whl | sed 's| \./| |' > SHA256SUMS && cat SHA256SUMS)
echo "$dest/: $(ls "$dest"/*.whl | wc -l) wheels, $(du -ch "$dest"/*.whl | tail -n 1 | cut -f1) (the device carries at most 64 MiB with the repository)"
