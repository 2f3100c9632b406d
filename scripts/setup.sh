#!/usr/bin/env bash
# Create .venv (once) and install the package with its test dependencies. Safe to run again.
#   bash scripts/setup.sh
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
# The demo page's browser test drives Debian's Chromium (no browser download). Installed here when this
# runs as root on a Debian-like system (CI, containers); MWL_NO_BROWSER=1 skips it; without it that test skips.
if [ -z "${MWL_NO_BROWSER:-}" ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ]; then
  echo "setup: installing Debian's chromium for the demo page test (MWL_NO_BROWSER=1 to skip)"
  apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 \
    && apt-get install -y -q chromium >/dev/null 2>&1) || echo "setup: chromium not installed; the browser test will skip"
fi
# The ONNX export's browser test runs transformers.js (npm's @huggingface/transformers with onnxruntime-web) from
# .cache/npm (git-ignored), served locally: no CDN at test time. --ignore-scripts: onnxruntime-node's download of
# native binaries is not needed in a browser. Without npm that test skips.
if command -v npm >/dev/null 2>&1 && [ ! -f .cache/npm/node_modules/@huggingface/transformers/package.json ]; then
  npm install --no-save --ignore-scripts --no-audit --no-fund --prefix .cache/npm "@huggingface/transformers@^4.3" \
    >/dev/null 2>&1 || echo "setup: transformers.js not installed (npm); the ONNX browser test will skip"
fi
echo "setup: ready (.venv)"
