"""What every dataset exporter shares: settings, the record filter, the output
file, and streaming (a record in, rows out; nothing kept but the current tree)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Any, ClassVar, Iterator, Literal, Mapping, TypeVar

import msgspec

from turnloom.exporters.filter import FilterError, parse_filter
from turnloom.exporters.runinfo import RunInfo
from turnloom.exporters.sinks import Sink, open_sink
from turnloom.records import ConversationRecord


class CommonSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings every exporter takes."""

    file: str | None = None  # relative to the run directory; default: NAME.FORMAT
    format: Literal["jsonl", "parquet"] = "jsonl"
    filter: str | None = None  # e.g. "scores.length.turns >= 4" (see exporters.filter)
    include_errors: bool = False  # export conversations that ended with an error
    batch_rows: Annotated[int, msgspec.Meta(ge=1)] = 512  # Parquet rows per row group


S = TypeVar("S", bound=CommonSettings)


def parse_settings(cls: type[S], settings: Mapping[str, Any], exporter: str) -> S:
    try:
        return msgspec.convert(dict(settings), cls)
    except msgspec.ValidationError as exc:
        allowed = ", ".join(cls.__struct_fields__)
        raise ValueError(f"{exporter} settings: {exc} (allowed: {allowed})") from None


class StreamingExporter:
    """Base of the dataset exporters: subclasses turn a record into rows (`rows`),
    declare their `columns`, and may keep state between records."""

    name: ClassVar[str]
    Settings: ClassVar[type[CommonSettings]] = CommonSettings
    columns: ClassVar[dict[str, str]]

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = parse_settings(self.Settings, settings, self.name)
        try:
            self._keep = parse_filter(self.settings.filter) if self.settings.filter else None
        except FilterError as exc:
            raise FilterError(f"{self.name} settings: {exc}") from None
        self.stats: Counter[str] = Counter()
        self._sink: Sink | None = None
        self.path: Path | None = None

    def open(self, run_dir: Path) -> None:
        self.info = RunInfo.from_run_dir(Path(run_dir))
        self.prepare()
        s = self.settings
        self.path = Path(run_dir) / (s.file or f"{self.name}.{s.format}")
        self._sink = open_sink(self.path, s.format, self.columns, s.batch_rows)

    def prepare(self) -> None:
        """Called once the run's scenario (`self.info`) is known."""

    def write(self, record: ConversationRecord) -> None:
        self.stats["records"] += 1
        if record.stop_reason == "error" and not self.settings.include_errors:
            self.stats["skipped: error"] += 1
            return
        if self._keep is not None and not self._keep(record):
            self.stats["skipped: filter"] += 1
            return
        self._emit(self.rows(record))

    def rows(self, record: ConversationRecord) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def finish(self) -> Iterator[dict[str, Any]]:
        """Rows still owed at the end of the run."""
        return iter(())

    def _emit(self, rows: Iterator[dict[str, Any]]) -> None:
        assert self._sink is not None, "open() first"
        for row in rows:
            self._sink.write(row)
            self.stats["rows"] += 1

    def close(self) -> None:
        if self._sink is not None:
            self._emit(self.finish())
            self._sink.commit()

    def abort(self) -> None:
        if self._sink is not None:
            self._sink.abort()


class TreeExporter(StreamingExporter):
    """An exporter of pairs within a conversation tree. Records arrive in (index,
    branch) order, so a tree's records are consecutive: hold one tree, emit its
    rows when the next tree starts."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self._tree: list[ConversationRecord] = []

    def rows(self, record: ConversationRecord) -> Iterator[dict[str, Any]]:
        if self._tree and self._tree[0].index != record.index:
            if record.index < self._tree[0].index:
                raise ValueError(f"{self.name}: records out of order (index {record.index} "
                                 f"after {self._tree[0].index})")
            yield from self._drain()
        self._tree.append(record)

    def finish(self) -> Iterator[dict[str, Any]]:
        return self._drain()

    def _drain(self) -> Iterator[dict[str, Any]]:
        tree, self._tree = self._tree, []
        if tree:
            self.stats["trees"] += 1
            yield from self.tree_rows(tree)

    def tree_rows(self, tree: list[ConversationRecord]) -> Iterator[dict[str, Any]]:
        raise NotImplementedError
