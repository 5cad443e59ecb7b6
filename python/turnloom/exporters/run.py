"""Exporting a finished run directory after the fact (``turnloom export``).

The records are read from ``conversations.jsonl`` one line at a time and fed
to the exporter in file order, which is (index, branch) order: exactly what
the exporter would have received during the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import msgspec

from turnloom import rundir
from turnloom.records import ConversationRecord


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote, and how many records it read, kept or skipped (by reason)."""

    path: Path | None
    stats: dict[str, int] = field(default_factory=dict)


def read_records(run_dir: str | Path) -> Iterator[ConversationRecord]:
    """Stream a run's conversation records (bounded memory)."""
    path = Path(run_dir) / rundir.CONVERSATIONS
    if not path.is_file():
        raise rundir.RunDirError(f"{run_dir} has no {rundir.CONVERSATIONS}: is the run finished? "
                                 f"(`turnloom resume {run_dir}` finishes it)")
    decode = msgspec.json.Decoder(ConversationRecord).decode
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield decode(line)
            except msgspec.DecodeError as exc:
                raise rundir.RunDirError(f"{path}:{line_no}: not a conversation record: {exc}") from None


def export_run(run_dir: str | Path, exporter: str, settings: Mapping[str, Any] | None = None, *,
               plugin_manager: Any = None) -> ExportResult:
    """Run the exporter plugin named `exporter` over a finished run directory.
    Its output goes where its `file` setting says, relative to `run_dir`
    (an absolute path is used as it is)."""
    from turnloom.plugins import Registry, get_plugin_manager

    run_dir = Path(run_dir)
    rundir.read_manifest(run_dir)
    registry = Registry.from_plugin_manager(plugin_manager or get_plugin_manager())
    factory = registry.get("exporters", exporter)
    exp = factory(dict(settings or {}))
    records = read_records(run_dir)
    exp.open(run_dir)
    try:
        for record in records:
            exp.write(record)
        exp.close()
    except BaseException:
        abort = getattr(exp, "abort", None)
        if callable(abort):
            abort()
        raise
    path = getattr(exp, "path", None)
    stats = dict(getattr(exp, "stats", {}))
    return ExportResult(Path(path) if path is not None else None, stats)
