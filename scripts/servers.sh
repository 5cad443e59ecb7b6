#!/usr/bin/env bash
# A real OpenAI-compatible server for the conformance suite: llama.cpp's Python
# server (llama-cpp-python) serving the embedded SmolLM2 GGUF on loopback.
#
# Usage: scripts/servers.sh install      build llama-cpp-python into the venv (once, ~10 min)
#        scripts/servers.sh start [PORT] install if needed, start, wait until it answers,
#                                        print its base URL (also written to $STATE/url)
#        scripts/servers.sh stop         stop the server started by `start`
#        scripts/servers.sh url          print the running server's base URL (exit 1 if none)
#
# The suite finds the server through $STATE/url; TURNLOOM_SERVER_URL overrides it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TURNLOOM_VENV:-.venv}"
PY="$VENV/bin/python"
STATE="$VENV/servers"
NAME="servers"
WAIT_S=120
LLAMA_CPP_PYTHON="llama-cpp-python[server]>=0.3.9,<0.4"
MODEL_ALIAS="smollm2"

installed() {
    "$PY" -c "import llama_cpp.server.app" >/dev/null 2>&1
}

install() {
    if installed; then
        return 0
    fi
    echo "servers: building llama-cpp-python (about 10 minutes)" >&2
    # A portable build (no CPU-specific flags), without the multimodal library
    # (about a third of the build; text serving never loads it).
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF}" \
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        "$VENV/bin/uv" pip install -q -p "$PY" "$LLAMA_CPP_PYTHON"
    installed
}

launch() {
    local gguf
    gguf="$("$PY" -c 'from turnloom.models import find_gguf; print(find_gguf())')"
    # One sequence slot, the model's training context; the seed is per request.
    exec "$PY" -m llama_cpp.server --model "$gguf" --model_alias "$MODEL_ALIAS" \
        --host 127.0.0.1 --port "$1" --n_ctx 2048 --n_threads "$(nproc)"
}

# shellcheck source=scripts/served.sh
. scripts/served.sh
served_main "$@"
