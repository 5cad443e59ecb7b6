"""Exporter interface and the atomic file every output goes through.

An exporter receives finished conversation records in a deterministic order
(by conversation index, then branch) and writes them to a file format. Its
output appears only when the run completes (`close`): written to a temporary
file and renamed, so a killed run never leaves a half-written dataset behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from turnloom.records import ConversationRecord


@runtime_checkable
class Exporter(Protocol):
    """Streams conversation records into one or more files of a run directory."""

    def open(self, run_dir: Path) -> None:
        """Prepare to write into `run_dir` (nothing visible yet)."""

    def write(self, record: ConversationRecord) -> None:
        """One finished conversation branch, in (index, branch) order."""

    def close(self) -> None:
        """Make the output visible, atomically."""


class AtomicFile:
    """A file written under a temporary name and renamed into place on `commit`."""

    def __init__(self, path: Path, buffering: int = 1 << 20) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._f = open(self.tmp, "wb", buffering=buffering)

    def write(self, data: bytes) -> None:
        try:
            self._f.write(data)
        except OSError as e:
            raise with_filename(e, self.path) from e

    def commit(self) -> None:
        if self._f.closed:
            return
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            os.replace(self.tmp, self.path)
        except OSError as e:
            raise with_filename(e, self.path) from e
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        try:
            if not self._f.closed:
                self._f.close()
        except OSError:
            pass  # the buffered tail cannot be written (a full disk): it is discarded anyway
        finally:
            self.tmp.unlink(missing_ok=True)


def with_filename(error: OSError, path: Path) -> OSError:
    """`error` naming `path`, so a full or read-only disk says which file it hit."""
    if error.filename is not None or error.errno is None:
        return error
    return type(error)(error.errno, error.strerror, str(path))


def atomic_write(path: Path, data: bytes) -> None:
    """Write a whole file atomically (temp file, fsync, rename)."""
    f = AtomicFile(Path(path))
    try:
        f.write(data)
        f.commit()
    except BaseException:
        f.abort()
        raise


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
