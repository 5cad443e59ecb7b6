"""Sandbox runner: executes untrusted code against unit tests, in its own process.

Run as ``python -I -S _runner.py SPEC_FILE RESULT_FD`` with the private working
directory as cwd. Standard library only (the interpreter starts without site).
It reads the spec, lowers its own resource limits, installs an audit hook that
refuses network access, new processes, signals, native code loading and writes
outside the working directory, then runs the tests. Events go to RESULT_FD, one
JSON object per line, so that nothing the code prints can be mistaken for them.
"""

import builtins
import json
import math
import os
import resource
import signal
import sys

MESSAGE_CAP = 300

_FORBIDDEN = {
    "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
    "socket.gethostbyname", "socket.gethostbyaddr", "socket.sendto",
    "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system",
    "os.kill", "os.killpg", "signal.pthread_kill", "subprocess.Popen", "pty.spawn",
    "ctypes.dlopen", "ctypes.dlsym", "os.chroot", "os.setuid", "resource.setrlimit",
}
# Events whose first argument is a path that must stay inside the working directory.
_PATH_EVENTS = {
    "os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.replace", "os.symlink", "os.link",
    "os.chmod", "os.chown", "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile",
    "shutil.copytree", "shutil.move", "os.mkfifo", "os.mknod",
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def set_limits(limits):
    as_bytes = limits["memory_mb"] * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))
    cpu = limits["cpu_s"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    fsize = limits["file_size_bytes"]
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    nproc = limits["max_processes"]
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Past the file-size limit a write fails with EFBIG instead of killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def install_guard(root, emit):
    root = os.path.realpath(root)
    prefix = root + os.sep

    def inside(path):
        if isinstance(path, int):
            return True  # an already-open descriptor
        try:
            full = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return full == root or full.startswith(prefix)

    def refuse(event, detail):
        emit({"event": "violation", "what": event, "detail": str(detail)[:MESSAGE_CAP]})
        raise PermissionError(f"sandbox: {event} is not allowed")

    def hook(event, args):
        if event in _FORBIDDEN or event.startswith(("socket.", "os.exec", "os.spawn",
                                                    "os.posix_spawn")):
            refuse(event, args[:1] if args else "")
        elif event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writing and not inside(path):
                refuse("open for writing outside the working directory", path)
        elif event in _PATH_EVENTS:
            for path in args[:2]:
                if isinstance(path, (str, bytes, os.PathLike)) and not inside(path):
                    refuse(event, path)

    sys.addaudithook(hook)


def normalise(value):
    if isinstance(value, (tuple, list)):
        return [normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    return value


def same(got, expected):
    if isinstance(got, bool) or isinstance(expected, bool):
        return type(got) is type(expected) and got == expected
    if isinstance(got, (int, float)) and isinstance(expected, (int, float)):
        return math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(same(a, b) for a, b in zip(got, expected))
    if isinstance(got, dict) and isinstance(expected, dict):
        return got.keys() == expected.keys() and all(same(got[k], expected[k]) for k in got)
    return got == expected


def describe(exc):
    return f"{type(exc).__name__}: {exc}"[:MESSAGE_CAP]


def main():
    sys.dont_write_bytecode = True  # a .pyc write would count as a write outside the cwd
    spec_path, fd = sys.argv[1], int(sys.argv[2])
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    channel = os.fdopen(fd, "w", buffering=1, encoding="utf-8")

    def emit(obj):
        channel.write(json.dumps(obj) + "\n")

    set_limits(spec["limits"])
    install_guard(os.getcwd(), emit)
    emit({"event": "start"})
    try:
        compiled = compile(spec["code"], "<student>", "exec")
    except (SyntaxError, ValueError) as exc:
        emit({"event": "compile_error", "error": describe(exc)})
        return
    namespace = {"__name__": "__student__", "__builtins__": builtins}
    try:
        exec(compiled, namespace)
        func = namespace[spec["entry"]]
    except MemoryError:
        emit({"event": "memory", "error": "MemoryError while defining the code"})
        return
    except BaseException as exc:  # the code may raise anything, SystemExit included
        emit({"event": "load_error", "error": describe(exc)})
        return
    for i, case in enumerate(spec["cases"]):
        try:
            got = normalise(func(*case["args"]))
            ok = same(got, case["expected"])
            error = None if ok else f"returned {got!r}, expected {case['expected']!r}"[:MESSAGE_CAP]
        except MemoryError:
            ok, error = False, "MemoryError"
            emit({"event": "memory", "error": f"test {i}: MemoryError"})
        except BaseException as exc:
            ok, error = False, describe(exc)
        emit({"event": "test", "index": i, "ok": ok, "error": error})
    emit({"event": "done"})


if __name__ == "__main__":
    main()
