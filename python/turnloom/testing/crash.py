"""Crash-test helpers: kill a run mid-way, compare its outputs with a reference."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Mapping, Sequence

OUTPUTS = ("conversations.jsonl", "scores.jsonl")


def kill_when(cmd: Sequence[str], wal: Path, size: int, *, env: Mapping[str, str] | None = None,
              timeout_s: float = 60.0) -> bool:
    """Run `cmd` and SIGKILL it once `wal` holds at least `size` bytes; False if it
    finished (or `timeout_s` passed) first."""
    proc = subprocess.Popen(list(cmd), env=None if env is None else dict(env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            if wal.exists() and wal.stat().st_size >= size:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.002)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def assert_same_outputs(expected: Path, got: Path, names: Sequence[str] = OUTPUTS) -> None:
    """The run folders' output files are byte-identical."""
    for name in names:
        assert (Path(got) / name).read_bytes() == (Path(expected) / name).read_bytes(), name
