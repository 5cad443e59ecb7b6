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
  changing anything outside the private directory, and reading or listing
  anything outside it except the standard library (``forbidden``);
- results: the child gets each test's arguments, never its expected value. It
  sends back what the function returned as plain JSON data (None, bool, int,
  float, str, lists, dicts with str keys; tuples become lists), and the
  comparison happens here, on the decoded data: an object whose ``__eq__`` is
  always true cannot pass, nor can a process that reads its own memory, since
  the answers are not in it. A second result for the same test (a forged event)
  makes the run ``forbidden``.

The audit hook is a guard against accidents and the usual escapes (sockets,
subprocess, os.fork, ctypes), not a security boundary: code that runs in the
runner's process could forge its result. Untrusted code from an adversary needs
a container or VM around the whole run.
"""

from __future__ import annotations

import functools
import json
import math
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
_MESSAGE = 300  # characters of one test's error message


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
    spec_cases, expected = [], []
    for case in cases:
        args, want = (case.args, case.expected) if hasattr(case, "args") else case
        spec_cases.append({"args": list(args)})  # the expected value stays in this process
        expected.append(want)
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
        return _run(box, spec, prefix, isolation, limits, expected)
    finally:
        shutil.rmtree(box, ignore_errors=True)


def _run(box: Path, spec: dict[str, Any], prefix: tuple[str, ...], isolation: str,
         limits: Limits, expected: list[Any]) -> SandboxResult:
    total = len(expected)
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
    verdicts, forged = _judge(events, expected)
    passed = sum(1 for ok, _ in verdicts if ok)
    errors = tuple(e for e in (
        [str(e["error"]) for e in events
         if e.get("event") in ("compile_error", "load_error") and e.get("error")]
        + [err for _, err in verdicts if err]) if e)[:10]
    violations = tuple(f"{e.get('what')}: {e.get('detail')}" for e in events
                       if e.get("event") == "violation") + forged
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


def _judge(events: list[dict[str, Any]],
           expected: list[Any]) -> tuple[list[tuple[bool, str | None]], tuple[str, ...]]:
    """(passed, error) per test received, compared here with the expected values;
    and violations: results for unknown tests or more than one per test, which
    only code writing to the result channel itself produces."""
    results: dict[int, dict[str, Any]] = {}
    forged: list[str] = []
    for e in events:
        if e.get("event") != "test":
            continue
        index = e.get("index")
        if type(index) is not int or not 0 <= index < len(expected) or index in results:
            forged.append(f"forged result: a second or unknown result for test {index!r}")
            continue
        results[index] = e
    verdicts: list[tuple[bool, str | None]] = []
    for index in sorted(results):
        e, want = results[index], expected[index]
        if "value" not in e:
            verdicts.append((False, str(e.get("error") or "no result")[:_MESSAGE]))
            continue
        try:
            got = json.loads(e["value"])
        except (TypeError, ValueError):
            verdicts.append((False, "the result could not be decoded"))
            continue
        if same(got, normalise(want)):
            verdicts.append((True, None))
        else:
            verdicts.append((False, f"returned {got!r}, expected {want!r}"[:_MESSAGE]))
    return verdicts, tuple(forged)


def normalise(value: Any) -> Any:
    """Expected values in the results' form: tuples as lists."""
    if isinstance(value, (tuple, list)):
        return [normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    return value


def same(got: Any, expected: Any) -> bool:
    """Plain-data equality: bools only equal bools; numbers within a relative (and
    absolute) tolerance of 1e-9; lists and dicts element by element."""
    if isinstance(got, bool) or isinstance(expected, bool):
        return type(got) is type(expected) and got == expected
    if isinstance(got, (int, float)) and isinstance(expected, (int, float)):
        return math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(same(a, b) for a, b in zip(got, expected))
    if isinstance(got, dict) and isinstance(expected, dict):
        return got.keys() == expected.keys() and all(same(got[k], expected[k]) for k in got)
    return type(got) is type(expected) and got == expected


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
