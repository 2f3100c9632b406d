#!/usr/bin/env bash
# Create .venv (once) and install the package with its test dependencies. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null
# PyTorch is optional (reference tests, .pt checkpoints, torch back end). Prefer a CPU build:
# an unpinned `torch` would pull several GB of CUDA packages on Linux.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  $PIP install -q "torch==2.13.0" 2>/dev/null \
    || $PIP install -q torch --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
    || echo "setup: PyTorch not installed; tests that compare against torch references will be skipped"
fi
if .venv/bin/python -c "import torch" 2>/dev/null; then
  $PIP install -q -e ".[test,reference,quantize,exports]"
else
  $PIP install -q -e ".[test,exports]"
fi
echo "setup: ready (.venv)"
