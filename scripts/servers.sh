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

running_url() {
    [ -f "$STATE/pid" ] && [ -f "$STATE/url" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null \
        && cat "$STATE/url"
}

start() {
    if url="$(running_url)"; then
        echo "$url"
        return 0
    fi
    install
    mkdir -p "$STATE"
    local gguf port
    gguf="$("$PY" -c 'from turnloom.models import find_gguf; print(find_gguf())')"
    port="${1:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
    # One sequence slot, the model's training context; the seed is per request.
    "$PY" -m llama_cpp.server --model "$gguf" --model_alias "$MODEL_ALIAS" \
        --host 127.0.0.1 --port "$port" --n_ctx 2048 --n_threads "$(nproc)" \
        >"$STATE/server.log" 2>&1 &
    echo $! >"$STATE/pid"
    local url="http://127.0.0.1:$port/v1"
    for _ in $(seq 1 240); do
        if ! kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then
            echo "servers: llama-cpp-python exited; last log lines:" >&2
            tail -20 "$STATE/server.log" >&2
            rm -f "$STATE/pid"
            return 1
        fi
        if "$PY" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
                "$url/models" >/dev/null 2>&1; then
            echo "$url" >"$STATE/url"
            echo "$url"
            return 0
        fi
        sleep 0.5
    done
    echo "servers: llama-cpp-python did not answer within 120 s (log: $STATE/server.log)" >&2
    stop
    return 1
}

stop() {
    if [ -f "$STATE/pid" ]; then
        local pid
        pid="$(cat "$STATE/pid")"
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        fi
    fi
    rm -f "$STATE/pid" "$STATE/url"
}

case "${1:-}" in
    install) install ;;
    start) shift; start "$@" ;;
    stop) stop ;;
    url) running_url ;;
    *) echo "usage: $0 install | start [PORT] | stop | url" >&2; exit 2 ;;
esac
