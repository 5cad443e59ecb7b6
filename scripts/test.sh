#!/usr/bin/env bash
# Set everything up, then run the whole test suite: Rust (cargo) and Python (pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --exclude turnloom-py --release
.venv/bin/python -m pytest "$@"
