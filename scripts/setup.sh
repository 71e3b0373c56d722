#!/usr/bin/env bash
# Create .venv and install treemdp + llm with every extra, pinned by constraints.txt (CPU torch).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[dev,llm]'
echo "treemdp installed in $(pwd)/.venv"
