#!/usr/bin/env bash
# Create a virtual environment and install treemdp + llm with every extra (scale: Ray).
#
#   bash scripts/setup.sh            # .venv: the pinned versions of constraints.txt (CPU torch)
#   bash scripts/setup.sh --lowest   # .venv-lowest: the lowest supported llm stack
#                                    # (constraints-lowest.txt: torch 2.11, transformers 5.17)
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  "") VENV=.venv CONSTRAINTS=constraints.txt ;;
  --lowest) VENV=.venv-lowest CONSTRAINTS=constraints-lowest.txt ;;
  *) echo "usage: $0 [--lowest]" >&2; exit 2 ;;
esac
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet -c "$CONSTRAINTS" -e '.[dev,llm,scale,trl]'
echo "treemdp installed in $(pwd)/$VENV ($CONSTRAINTS)"
