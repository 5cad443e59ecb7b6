# Shared by the scripts that serve the embedded model on loopback (servers.sh,
# vllm_cpu.sh); sourced, not run. The sourcing script sets NAME (for messages),
# PY (turnloom's python), STATE (a folder for pid, url and log) and WAIT_S (how
# long the server may take to answer), and defines `install` and `launch PORT`
# (start the server in the background, its log in $STATE/server.log). This file
# gives them `start [PORT]`, `stop`, `url` and the command line.

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
    local port
    port="${1:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
    launch "$port" >"$STATE/server.log" 2>&1 &
    echo $! >"$STATE/pid"
    local url="http://127.0.0.1:$port/v1"
    for _ in $(seq 1 $((WAIT_S * 2))); do
        if ! kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then
            echo "$NAME: the server exited; last log lines:" >&2
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
    echo "$NAME: the server did not answer within $WAIT_S s (log: $STATE/server.log)" >&2
    stop
    return 1
}

stop() {
    if [ -f "$STATE/pid" ]; then
        local pid
        pid="$(cat "$STATE/pid")"
        if kill -0 "$pid" 2>/dev/null; then
            # Its process group where it leads one (a server with worker processes
            # is launched under setsid), else the process.
            kill -- "-$pid" 2>/dev/null || kill "$pid"
            for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            kill -0 "$pid" 2>/dev/null && { kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid"; }
        fi
    fi
    rm -f "$STATE/pid" "$STATE/url"
}

served_main() {
    case "${1:-}" in
        install) install ;;
        start) shift; start "$@" ;;
        stop) stop ;;
        url) running_url ;;
        *) echo "usage: $0 install | start [PORT] | stop | url" >&2; exit 2 ;;
    esac
}
