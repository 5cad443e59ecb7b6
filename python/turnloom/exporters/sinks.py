"""Where exported rows go: JSON lines or Parquet, written under a temporary name
and renamed on commit, holding at most one batch of rows in memory.

Every exporter declares its columns with the kinds below, so a Parquet file has
one schema from the first row group to the last (no inference from a batch).
Columns of kind "json" (free-form mappings such as scores) are JSON strings in
Parquet and plain objects in JSON lines; kind "tools" (tool schemas) the same, with
their key order kept, since chat templates render the schemas in that order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Protocol

import msgspec

from turnloom.export import AtomicFile, fsync_dir

FORMATS = ("jsonl", "parquet")
KINDS = ("string", "int", "float", "ids", "mask", "messages", "sharegpt", "json", "tools")


class Sink(Protocol):
    def write(self, row: dict[str, Any]) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


def open_sink(path: Path, fmt: str, columns: Mapping[str, str], batch_rows: int) -> Sink:
    if fmt == "jsonl":
        return JsonlSink(path)
    if fmt == "parquet":
        return ParquetSink(path, columns, batch_rows)
    raise ValueError(f"unknown format {fmt!r} (formats: {', '.join(FORMATS)})")


class JsonlSink:
    def __init__(self, path: Path) -> None:
        self._out = AtomicFile(path)
        self._encode = msgspec.json.Encoder().encode

    def write(self, row: dict[str, Any]) -> None:
        self._out.write(self._encode(row) + b"\n")

    def commit(self) -> None:
        self._out.commit()

    def abort(self) -> None:
        self._out.abort()


def arrow_schema(columns: Mapping[str, str]) -> Any:
    import pyarrow as pa

    # OpenAI's message fields, tool calls and results included (absent ones are null).
    call = pa.struct([("id", pa.string()), ("type", pa.string()),
                      ("function", pa.struct([("name", pa.string()),
                                              ("arguments", pa.string())]))])
    message = pa.struct([("role", pa.string()), ("content", pa.string()), ("name", pa.string()),
                         ("tool_calls", pa.list_(call)), ("tool_call_id", pa.string()),
                         ("reasoning_content", pa.string())])
    turn = pa.struct([("from", pa.string()), ("value", pa.string())])
    types = {"string": pa.string(), "int": pa.int64(), "float": pa.float64(),
             "ids": pa.list_(pa.int32()), "mask": pa.list_(pa.int8()),
             "messages": pa.list_(message), "sharegpt": pa.list_(turn), "json": pa.string(),
             "tools": pa.string()}
    unknown = {k for k in columns.values() if k not in types}
    if unknown:
        raise ValueError(f"unknown column kinds {sorted(unknown)} (kinds: {', '.join(KINDS)})")
    return pa.schema([(name, types[kind]) for name, kind in columns.items()])


class ParquetSink:
    def __init__(self, path: Path, columns: Mapping[str, str], batch_rows: int) -> None:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError("format = \"parquet\" needs pyarrow: pip install 'turnloom[data]'") from None
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.schema = arrow_schema(columns)
        self._json = [name for name, kind in columns.items() if kind == "json"]
        self._ordered = [name for name, kind in columns.items() if kind == "tools"]
        self._batch: list[dict[str, Any]] = []
        self._batch_rows = batch_rows
        self._writer = pq.ParquetWriter(self.tmp, self.schema)
        self._open = True

    def write(self, row: dict[str, Any]) -> None:
        for name in self._json:
            row[name] = json.dumps(row.get(name), ensure_ascii=False, sort_keys=True)
        for name in self._ordered:
            row[name] = json.dumps(row.get(name), ensure_ascii=False)
        self._batch.append(row)
        if len(self._batch) >= self._batch_rows:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._batch:
            self._writer.write_table(pa.Table.from_pylist(self._batch, schema=self.schema))
            self._batch = []

    def commit(self) -> None:
        if not self._open:
            return
        self._flush()
        self._writer.close()
        self._open = False
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        if self._open:
            self._open = False
            self._batch = []
            try:
                self._writer.close()
            finally:
                self.tmp.unlink(missing_ok=True)
