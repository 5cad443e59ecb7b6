"""The run's error log: every plugin fault of a run, with its traceback, in one file.

A conversation record keeps one line per error ("plugin 'x' raised in on_turn_end: ...");
this log keeps where it happened (file, line, the whole traceback) for whoever has to fix
it. The running engine's log is found through a context variable, so that code deep in
the call stack (`turnloom.plugins.call_hook_safely`, the scorer guards of
`turnloom.runtime`) can record into it without being handed it.

With debugging on (``--debug`` on the command line, or ``TURNLOOM_DEBUG=1``) a plugin
fault is raised at once instead of recorded.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import os
import re
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import IO

ERRORS_LOG = "errors.log"
ENV_DEBUG = "TURNLOOM_DEBUG"
_HEADER = "=== error "
_HEADER_LINE = re.compile(r"^=== error (\d+) ")


class PluginFault(BaseException):
    """A plugin raised while debugging is on. A BaseException, so that the engine's
    guards, which record a plugin's `Exception` and go on, let it through; the
    plugin's own exception is its `__cause__`."""


def debugging() -> bool:
    return os.environ.get(ENV_DEBUG, "").strip().lower() in ("1", "true", "yes", "on")


class ErrorLog:
    """Appends numbered entries to ``RUN_DIR/errors.log``; the file is created on the
    first error only, so a clean run has none."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ERRORS_LOG
        self.count = _count_entries(self.path)  # a resumed run appends after its entries
        self._file: IO[str] | None = None

    def record(self, what: str, exc: BaseException, conversation: str | None = None) -> None:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        self.count += 1
        when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        where = f" [{conversation}]" if conversation else ""
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self._file.write(f"{_HEADER}{self.count} {when}{where}: {what}\n{text}\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


_current: contextvars.ContextVar[ErrorLog | None] = contextvars.ContextVar(
    "turnloom_error_log", default=None)


@contextlib.contextmanager
def active(log: ErrorLog) -> Iterator[ErrorLog]:
    """Make `log` the one `record` writes to, for the code run inside."""
    token = _current.set(log)
    try:
        yield log
    finally:
        _current.reset(token)
        log.close()


def record(what: str, exc: BaseException, conversation: str | None = None) -> None:
    """Log a plugin fault with its traceback into the active run's log (if any); with
    debugging on, raise `PluginFault` from it instead. Call it from the `except` block
    that caught the fault."""
    if debugging():
        raise PluginFault(f"{what} (raised at once: debugging is on)") from exc
    log = _current.get()
    if log is not None:
        log.record(what, exc, conversation)


def conversation_of(value: object) -> str | None:
    """"ID#BRANCH" of a ConversationState-like object, for an entry's header."""
    cid = getattr(value, "conversation_id", None)
    if cid is None:
        return None
    return f"{cid}#{getattr(value, 'branch', 0)}"


def _count_entries(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, encoding="utf-8", errors="replace") as f:
        return sum(1 for line in f if _HEADER_LINE.match(line))


def summarize(run_dir: Path) -> tuple[int, list[str]]:
    """The number of entries in a run's error log and each entry's header line."""
    path = Path(run_dir) / ERRORS_LOG
    if not path.is_file():
        return 0, []
    with open(path, encoding="utf-8", errors="replace") as f:
        heads = [line.rstrip("\n")[len(_HEADER):] for line in f if _HEADER_LINE.match(line)]
    return len(heads), heads


def first_frame(run_dir: Path, entry: int) -> str | None:
    """'FILE:LINE in FUNCTION' of the innermost frame of entry `entry` (1-based), where
    the exception was raised."""
    path = Path(run_dir) / ERRORS_LOG
    if not path.is_file():
        return None
    frame = None
    inside = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = _HEADER_LINE.match(line)
            if m:
                if inside:
                    break
                inside = int(m.group(1)) == entry
                continue
            if inside:
                fm = re.match(r'\s*File "(.+)", line (\d+), in (.+)', line)
                if fm:
                    frame = f"{fm.group(1)}:{fm.group(2)} in {fm.group(3).strip()}"
    return frame
