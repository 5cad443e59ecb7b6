#!/usr/bin/env bash
# The benchmarks' peers that cannot share the project's venv: `verifiers` pins
# versions (openai among them) that conflict with turnloom's, so it lives in its
# own venv, .venv-peers (ignored by git). Idempotent: a second run only checks.
#
# Usage: scripts/bench_peers.sh
#        .venv/bin/python bench/bench_chat_api.py   # then adds the "verifiers" row
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS="${TURNLOOM_PEERS_VENV:-.venv-peers}"
VERIFIERS="verifiers==0.3.1"
UV=".venv/bin/uv"
command -v "$UV" >/dev/null 2>&1 || UV="uv"

if [ ! -x "$PEERS/bin/python" ]; then
    python3.11 -m venv "$PEERS" 2>/dev/null || python3 -m venv "$PEERS"
fi
if ! "$PEERS/bin/python" -c "import importlib.metadata as m, sys; \
sys.exit(m.version('verifiers') != '${VERIFIERS#*==}')" >/dev/null 2>&1; then
    "$UV" pip install -q -p "$PEERS/bin/python" "$VERIFIERS"
fi
# Byte-compiled as scripts/setup.sh does the project's venv: with
# PYTHONDONTWRITEBYTECODE set, every start would otherwise compile verifiers'
# imports again (~10 CPU s). Quick when already done.
"$PEERS/bin/python" -m compileall -q -j0 "$PEERS/lib" >/dev/null \
    || echo "bench_peers: byte-compiling was incomplete; imports will compile on the fly" >&2
"$PEERS/bin/python" -c "import verifiers; print('bench_peers: verifiers', verifiers.__version__, \
'in $PEERS')"
