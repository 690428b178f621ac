#!/usr/bin/env bash
# The test suite: the layer contract (import-linter) and the import graph (no cycle, counting imports
# inside functions), ruff, the pure-Kotlin core of the Android demo on the JVM, then pytest (fast
# suite; pass -m slow for the slow one). pytest runs last so its summary is the closing line; any
# failure, and pytest's "no tests collected" (exit 5), fails the run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
.venv/bin/lint-imports
.venv/bin/python scripts/import_graph.py > /dev/null
.venv/bin/ruff check src tests benchmarks scripts
bash android_demo/core/run-jvm-tests.sh
.venv/bin/python -m pytest "$@"
