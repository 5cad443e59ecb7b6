"""Non-JSON environment state as JSON: SQLite databases and sandbox directories.

An environment's state travels as JSON (`Reply.state`, `ConversationState.state`): that
is what the write-ahead log stores, what `turnloom resume` restores and what branches
fork copy-on-write. State held elsewhere is snapshotted into a JSON string after each
change and restored from it before the next call. The snapshots are deterministic (same
content, same bytes), so a resumed run's state equals an uninterrupted run's.
"""

from __future__ import annotations

import base64
import io
import os
import sqlite3
import tarfile
import tempfile
from pathlib import Path


def snapshot_sqlite(conn: sqlite3.Connection) -> str:
    """The database behind `conn` as base64 text (SQLite's own file image)."""
    if hasattr(conn, "serialize"):  # Python 3.11+
        image = conn.serialize()
    else:  # 3.10: back up into a file and read its bytes
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "db.sqlite")
            target = sqlite3.connect(path)
            try:
                conn.backup(target)
            finally:
                target.close()
            image = Path(path).read_bytes()
    return base64.b64encode(image).decode("ascii")


def restore_sqlite(snapshot: str | None) -> sqlite3.Connection:
    """An in-memory database holding `snapshot` (a fresh, empty one for None)."""
    conn = sqlite3.connect(":memory:")
    if snapshot is None:
        return conn
    try:
        image = base64.b64decode(snapshot.encode("ascii"), validate=True)
    except ValueError as exc:
        raise ValueError(f"restore_sqlite: the snapshot is not base64 ({exc})") from None
    if hasattr(conn, "deserialize"):
        conn.deserialize(image)
        return conn
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "db.sqlite")
        Path(path).write_bytes(image)
        source = sqlite3.connect(path)
        try:
            source.backup(conn)
        finally:
            source.close()
    return conn


def snapshot_directory(root: str | Path) -> str:
    """The files under `root` as base64 text of a tar archive: entries sorted, times,
    owners and modes normalised, so the same tree gives the same snapshot."""
    root = Path(root)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            info = tarfile.TarInfo(rel)
            info.mtime = 0
            if path.is_symlink():
                raise ValueError(f"snapshot_directory: {rel} is a link; snapshot files only")
            if path.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                data = path.read_bytes()
                info.size, info.mode = len(data), 0o755 if os.access(path, os.X_OK) else 0o644
                tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(buf.getvalue()).decode("ascii")


def restore_directory(snapshot: str, root: str | Path) -> Path:
    """Unpack `snapshot` into `root` (created; it should be empty). Members that would
    land outside `root` are refused (the "data" filter)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    data = base64.b64decode(snapshot.encode("ascii"), validate=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(root, filter="data")
        else:  # before the filters: check every member by hand
            for member in tar.getmembers():
                target = (root / member.name).resolve()
                if not target.is_relative_to(root.resolve()) or not (member.isfile() or member.isdir()):
                    raise ValueError(f"restore_directory: unsafe member {member.name!r}")
            tar.extractall(root)
    return root
