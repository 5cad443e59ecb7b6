#!/usr/bin/env bash
# Set everything up, then run the whole test suite: Rust (cargo) and Python (pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --exclude turnloom-py --release
# A real OpenAI-compatible server for tests/test_server_conformance.py: llama.cpp's
# Python server on loopback (built into the venv once, ~10 min). TURNLOOM_SERVER_URL
# points the suite at another server instead; TURNLOOM_NO_REAL_SERVER=1 skips it.
if [ -z "${TURNLOOM_SERVER_URL:-}" ] && [ "${TURNLOOM_NO_REAL_SERVER:-}" != 1 ]; then
    scripts/servers.sh start >/dev/null
    trap 'scripts/servers.sh stop' EXIT
    export TURNLOOM_REQUIRE_REAL_SERVER=1
fi
.venv/bin/python -m pytest "$@"
