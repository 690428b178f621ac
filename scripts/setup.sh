#!/usr/bin/env bash
# Create .venv and install md-export with every backend, pinned to what CI tested
# (constraints/ci.txt). torch is installed first and alone, pinned, so pip takes the CPU build
# and never an unpinned CUDA one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -c constraints/ci.txt "torch==2.13.0"
.venv/bin/python -m pip install -q -c constraints/ci.txt -e ".[all,dev,npu,ray]"
.venv/bin/md-export env
echo "md-export is ready: .venv/bin/md-export"
