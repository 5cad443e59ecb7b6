"""Run untrusted code against unit tests in a separate, limited process.

Each run gets a fresh private directory (deleted afterwards) and a new Python
process (``python -I -S -B`` on the package's `_runner.py`, so no site packages,
no environment variables, no bytecode writes) started in its own session. The
runner lowers its own limits before touching the code:

- memory: RLIMIT_AS (address space), reported as ``memory`` on MemoryError;
- CPU time: RLIMIT_CPU, and a wall-time limit enforced here by killing the
  whole process group; both reported as ``timeout``;
- processes: RLIMIT_NPROC (a fork bomb's forks fail; the kernel exempts root,
  so the audit hook below refuses fork/exec/spawn as well);
- file size: RLIMIT_FSIZE on every file the process writes, stdout and stderr
  included (they are files in the private directory); past ``output_bytes``
  the run is reported as ``output_truncated`` and only that much is kept;
- network: the process runs in a new network namespace (``unshare --net``, with
  ``--map-root-user`` when not root) where only a downed loopback exists, when
  `unshare` works on this machine; in every case a runner-level audit hook
  (``sys.addaudithook``) refuses socket creation and use, reported as ``forbidden``;
- files: the audit hook refuses opening for writing, deleting, renaming or
  changing anything outside the private directory (``forbidden``).

The audit hook is a guard against accidents and the usual escapes (sockets,
subprocess, os.fork, ctypes), not a security boundary: code that runs in the
runner's process could forge its result. Untrusted code from an adversary needs
a container or VM around the whole run.
"""

from __future__ import annotations

import functools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Literal

import msgspec

Status = Literal["ok", "timeout", "memory", "crash", "output_truncated", "forbidden"]
Network = Literal["auto", "unshare", "audit"]
RUNNER = Path(__file__).with_name("_runner.py")
_EVENTS_CAP = 1 << 20  # bytes of runner events read at most
_TAIL = 2000


class Limits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Resource limits of one sandboxed run."""

    wall_s: float = 5.0
    cpu_s: int = 4
    memory_mb: int = 512
    max_processes: int = 1  # RLIMIT_NPROC: below the user's count, so no fork succeeds
    file_size_bytes: int = 1 << 20
    output_bytes: int = 64 * 1024
    network: Network = "auto"

    def __post_init__(self) -> None:
        for name in ("wall_s", "cpu_s", "memory_mb", "file_size_bytes", "output_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"sandbox limit {name} must be positive")


class SandboxResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one run did. `failed` counts every test that did not pass, including
    those never reached; `errors` holds the first failure messages."""

    status: Status
    passed: int
    failed: int
    total: int
    errors: tuple[str, ...] = ()
    violations: tuple[str, ...] = ()
    stdout: str = ""
    stderr_tail: str = ""
    output_bytes: int = 0
    returncode: int | None = None
    wall_s: float = 0.0
    network_isolation: str = "audit"

    @property
    def all_passed(self) -> bool:
        return self.status == "ok" and self.total > 0 and self.passed == self.total


@functools.cache
def unshare_prefix() -> tuple[str, ...] | None:
    """The command prefix that puts a process in a new network namespace, or None
    where that is not possible here (no unshare, no user namespaces)."""
    exe = shutil.which("unshare")
    if exe is None:
        return None
    prefix = (exe, "--net") if os.geteuid() == 0 else (exe, "--net", "--map-root-user")
    try:
        ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return prefix if ok else None


def run_tests(code: str, entry: str, cases: Iterable[Any], limits: Limits | None = None) -> SandboxResult:
    """Run `entry` from `code` on each case ((args, expected) pairs or objects with
    `.args` and `.expected`) in a sandboxed process."""
    limits = limits or Limits()
    spec_cases = []
    for case in cases:
        args, expected = (case.args, case.expected) if hasattr(case, "args") else case
        spec_cases.append({"args": list(args), "expected": expected})
    spec = {"code": code, "entry": entry, "cases": spec_cases,
            "limits": {"memory_mb": limits.memory_mb, "cpu_s": limits.cpu_s,
                       "file_size_bytes": max(limits.file_size_bytes, limits.output_bytes),
                       "max_processes": limits.max_processes}}
    prefix: tuple[str, ...] = ()
    isolation = "audit"
    if limits.network != "audit":
        found = unshare_prefix()
        if found is None and limits.network == "unshare":
            raise RuntimeError("network isolation by unshare is not available on this machine")
        if found is not None:
            prefix, isolation = found, "unshare+audit"
    box = Path(tempfile.mkdtemp(prefix="turnloom-sandbox-"))
    try:
        return _run(box, spec, prefix, isolation, limits, len(spec_cases))
    finally:
        shutil.rmtree(box, ignore_errors=True)


def _run(box: Path, spec: dict[str, Any], prefix: tuple[str, ...], isolation: str,
         limits: Limits, total: int) -> SandboxResult:
    work = box / "work"
    work.mkdir()
    spec_file = box / "spec.json"
    spec_file.write_text(json.dumps(spec), encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
    read_end, write_end = os.pipe()
    t0 = time.perf_counter()
    with open(box / "stdout", "wb") as out, open(box / "stderr", "wb") as err:
        try:
            proc = subprocess.Popen(
                [*prefix, sys.executable, "-I", "-S", "-B", str(RUNNER), str(spec_file),
                 str(write_end)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=work, env=env,
                pass_fds=(write_end,), start_new_session=True)
        finally:
            os.close(write_end)
        try:
            raw, timed_out = _read_events(read_end, t0 + limits.wall_s)
            if not timed_out:
                try:
                    proc.wait(timeout=max(0.05, t0 + limits.wall_s - time.perf_counter()))
                except subprocess.TimeoutExpired:
                    timed_out = True
        finally:
            os.close(read_end)
            _kill_group(proc)
    wall = time.perf_counter() - t0
    events = _parse_events(raw)
    stdout_size = (box / "stdout").stat().st_size
    stderr_size = (box / "stderr").stat().st_size
    stdout = _read_head(box / "stdout", limits.output_bytes)
    stderr_tail = _read_tail(box / "stderr", _TAIL)
    passed = sum(1 for e in events if e.get("event") == "test" and e.get("ok"))
    errors = tuple(str(e["error"]) for e in events if e.get("event") in
                   ("test", "compile_error", "load_error", "memory") and e.get("error"))[:10]
    violations = tuple(f"{e.get('what')}: {e.get('detail')}" for e in events
                       if e.get("event") == "violation")
    kinds = {e.get("event") for e in events}
    rc = proc.returncode
    status: Status
    if violations:
        status = "forbidden"
    elif "memory" in kinds or "MemoryError" in stderr_tail:
        status = "memory"
    elif timed_out or rc in (-signal.SIGXCPU, -signal.SIGKILL):
        status = "timeout"
    elif stdout_size + stderr_size > limits.output_bytes:
        status = "output_truncated"
    elif "done" not in kinds or rc != 0:
        status = "crash"
    else:
        status = "ok"
    return SandboxResult(status=status, passed=passed, failed=total - passed, total=total,
                         errors=errors, violations=violations, stdout=stdout,
                         stderr_tail=stderr_tail, output_bytes=stdout_size + stderr_size,
                         returncode=rc, wall_s=round(wall, 4), network_isolation=isolation)


def _read_events(fd: int, deadline: float) -> tuple[bytes, bool]:
    """Read the runner's event channel until it closes; True if the deadline passed."""
    chunks: list[bytes] = []
    size = 0
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return b"".join(chunks), True
            if not sel.select(remaining):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks), False
            if size < _EVENTS_CAP:
                chunks.append(chunk)
                size += len(chunk)


def _parse_events(raw: bytes) -> list[dict[str, Any]]:
    events = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line cut short when the process was killed
        if isinstance(event, dict):
            events.append(event)
    return events


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The session holds the runner and anything it managed to start.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _read_head(path: Path, cap: int) -> str:
    with open(path, "rb") as f:
        return f.read(cap).decode("utf-8", errors="replace")


def _read_tail(path: Path, cap: int) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - cap))
        return f.read().decode("utf-8", errors="replace")
