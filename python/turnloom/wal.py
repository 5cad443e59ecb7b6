"""The write-ahead log: completed turns and finished conversations, append-only.

The file is a magic header, then records ``<u32 length><u32 crc32><payload>``;
a payload is a msgpack array of events (a tagged union), all those appended
since the previous `flush` — one record per engine step, so a record is never
half of a step. Records are written on `flush` and fsync'd at most every
`sync_s` seconds: a crash loses at most the unsynced tail, which a resumed run
regenerates identically. A torn or corrupt record ends the log: `read_events`
stops there and truncates the file to the last good record.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any, Iterator, Union

import msgspec

from turnloom.export import with_filename


log = logging.getLogger(__name__)

MAGIC = b"TLWAL001"
_HEADER = struct.Struct("<II")


class TurnEvent(msgspec.Struct, tag="turn", array_like=True, frozen=True):
    """A completed turn. `branch` owns the new node, `parent_branch` the node it
    hangs under (-1: the root). `output_ids` are the speaker's exact generated ids
    (None for environments), so its lane is rebuilt without re-tokenizing."""

    index: int
    branch: int
    parent_branch: int
    turn: int
    speaker: int
    role: str
    text: str
    output_ids: Union[list[int], None]
    finish_reason: str
    seed: Union[int, None]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    latency_s: float
    reply_meta: Union[dict[str, Any], None]
    scores: Union[dict[str, Any], None]
    conv_meta: Union[dict[str, Any], None]
    errors: Union[list[str], None]
    stop: Union[str, None]
    # The message's structure, when it has any (older logs end before these).
    tool_calls: Union[list[list[str]], None] = None  # [id, name, arguments]
    tool_call_id: Union[str, None] = None
    reasoning: Union[str, None] = None
    state: Union[list[msgspec.Raw], None] = None  # [new environment state], when replaced


class EndEvent(msgspec.Struct, tag="end", array_like=True, frozen=True):
    """A finished conversation branch; `tree_done` when it was the tree's last.
    With the branch's turn events it determines the exported record."""

    index: int
    branch: int
    tree_done: bool
    stop_reason: str
    scores: dict[str, Any]
    errors: list[str]
    meta: dict[str, Any]


Event = Union[TurnEvent, EndEvent]


class WalWriter:
    def __init__(self, path: Path, sync_s: float = 0.2) -> None:
        self.path = Path(path)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._f = open(self.path, "ab", buffering=0)
        if new:
            self._f.write(MAGIC)
        self._pending: list[Event] = []
        self._enc = msgspec.msgpack.Encoder()
        self.sync_s = sync_s
        self._last_sync = time.monotonic()
        self.records = 0
        self._dirty = False

    def append(self, event: Event) -> None:
        self._pending.append(event)

    def flush(self, sync: bool = False) -> None:
        """Write the pending events as one record; fsync when `sync` or when
        `sync_s` has passed since the last fsync."""
        if self._pending:
            payload = self._enc.encode(self._pending)
            self.records += len(self._pending)
            self._pending.clear()
            self._write(_HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
            self._dirty = True
        if self._dirty and (sync or time.monotonic() - self._last_sync >= self.sync_s):
            try:
                os.fsync(self._f.fileno())
            except OSError as e:
                raise with_filename(e, self.path) from e
            self._last_sync = time.monotonic()
            self._dirty = False

    def _write(self, data: bytes) -> None:
        # An unbuffered write may be short (a disk filling up): finish it or fail.
        view = memoryview(data)
        try:
            while view:
                view = view[self._f.write(view):]
        except OSError as e:
            raise with_filename(e, self.path) from e

    def close(self) -> None:
        if not self._f.closed:
            self.flush(sync=True)
            self._f.close()


def read_events(path: Path, truncate: bool = True) -> Iterator[Event]:
    """The log's events in order. A torn or corrupt tail is dropped (and, with
    `truncate`, cut from the file once the iterator is exhausted)."""
    path = Path(path)
    dec = msgspec.msgpack.Decoder(list[Event])
    good = len(MAGIC)
    with open(path, "rb") as f:
        data = f.read()
    if data[: len(MAGIC)] != MAGIC:
        if len(data) < len(MAGIC) and MAGIC.startswith(data):
            data = b""
        else:
            raise ValueError(f"{path} is not a turnloom write-ahead log")
    pos = len(MAGIC)
    end = len(data)
    size = _HEADER.size
    while pos < end:
        if pos + size > end:
            break
        n, crc = _HEADER.unpack_from(data, pos)
        start = pos + size
        payload = data[start:start + n]
        if len(payload) < n or zlib.crc32(payload) != crc:
            break
        try:
            events = dec.decode(payload)
        except msgspec.DecodeError:
            break
        pos = good = start + n
        yield from events
    if good < end or not data:
        if data:
            log.warning("%s: dropped %d bytes of a torn or corrupt record at offset %d",
                        path, end - good, good)
        if truncate:
            with open(path, "r+b") as f:
                if not data:
                    f.write(MAGIC)
                f.truncate(max(good, len(MAGIC)))
                f.flush()
                os.fsync(f.fileno())
