#!/usr/bin/env bash
# Set everything up, then run the demo simulation on the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/turnloom run examples/demo.toml --out runs/demo --overwrite
# The totals, then one simulated conversation (`--conversation N` shows another).
.venv/bin/turnloom show runs/demo
