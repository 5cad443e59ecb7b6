"""Sandbox runner: calls untrusted code on test arguments, in its own process.

Run as ``python -I -S _runner.py SPEC_FILE RESULT_FD`` with the private working
directory as cwd. Standard library only (the interpreter starts without site).
It reads the spec (the code, the entry point and each test's arguments: never
the expected results, which stay in the parent), lowers its own resource
limits, installs an audit hook that refuses network access, new processes,
signals, native code loading, writes outside the working directory and reads
outside it and the standard library, then calls the function on each test's
arguments. Each result goes to RESULT_FD as plain JSON data (one JSON object
per line, so nothing the code prints can be mistaken for one); the parent
compares it with the expected value, so an object that claims to equal
anything has nothing to claim equality with.
"""

import builtins
import json
import os
import resource
import signal
import sys

MESSAGE_CAP = 300
VALUE_CAP = 256 * 1024  # characters of one result's JSON

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


def read_roots():
    """Where reading is allowed besides the working directory: the standard library
    (imports), this process's own /proc entry, and /dev/null. Not the package that
    holds this runner: its data files hold the problems' reference solutions."""
    roots = [os.path.realpath(p) for p in sys.path if p and os.path.exists(p)]
    return [*roots, os.path.realpath(f"/proc/{os.getpid()}"), "/dev/null"]


def install_guard(root, emit):
    root = os.path.realpath(root)
    readable = read_roots()

    def resolve(path):
        try:
            return os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return None

    def under(full, base):
        return full is not None and (full == base or full.startswith(base.rstrip(os.sep) + os.sep))

    def inside(path):
        if isinstance(path, int):
            return True  # an already-open descriptor
        return under(resolve(path), root)

    def may_read(path):
        if isinstance(path, int):
            return True
        full = resolve(path)
        return under(full, root) or any(under(full, base) for base in readable)

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
            if not writing and not may_read(path):
                refuse("open for reading outside the working directory", path)
        elif event in ("os.listdir", "os.scandir"):
            if args and args[0] is not None and not may_read(args[0]):
                refuse(f"{event} (read) outside the working directory", args[0])
        elif event in _PATH_EVENTS:
            for path in args[:2]:
                if isinstance(path, (str, bytes, os.PathLike)) and not inside(path):
                    refuse(event, path)

    sys.addaudithook(hook)


class NotPlain(TypeError):
    """A result that is not plain data."""


def to_plain(value, depth=0):
    """`value` as plain JSON data built from the objects' stored contents (never
    their own methods): None, bool, int, float, str; tuples and lists become
    lists, dicts need str keys. Anything else (sets, custom objects) raises
    NotPlain, so a result cannot carry behaviour, such as an `__eq__` that is
    always true, to the comparison."""
    if depth > 100:
        raise NotPlain("the result is nested more than 100 levels deep")
    if value is None or type(value) is bool:  # bool cannot be subclassed
        return value
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (list, tuple)):
        items = list.__iter__(value) if isinstance(value, list) else tuple.__iter__(value)
        return [to_plain(v, depth + 1) for v in items]
    if isinstance(value, dict):
        out = {}
        for k, v in dict.items(value):
            if not isinstance(k, str):
                raise NotPlain(f"a dict key is a {type(k).__name__}, not a str")
            out[str.__str__(k)] = to_plain(v, depth + 1)
        return out
    raise NotPlain(f"returned a {type(value).__name__}, which is not plain data "
                   "(None, bool, int, float, str, list, tuple, dict with str keys)")


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
        event = {"event": "test", "index": i}
        try:
            text = json.dumps(to_plain(func(*case["args"])))
            if len(text) > VALUE_CAP:
                raise NotPlain(f"the result's JSON is over {VALUE_CAP} characters")
            event["value"] = text
        except MemoryError:
            event["error"] = "MemoryError"
            emit({"event": "memory", "error": f"test {i}: MemoryError"})
        except BaseException as exc:
            event["error"] = describe(exc)
        emit(event)
    emit({"event": "done"})


if __name__ == "__main__":
    main()
