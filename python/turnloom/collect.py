"""Finished conversation trees -> exporters, scores.jsonl and run statistics,
in a deterministic order (conversation index, then branch) whatever order they
finished in."""

from __future__ import annotations

import errno
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import msgspec

from turnloom import errorlog
from turnloom.export import AtomicFile
from turnloom.records import ConversationRecord
from turnloom.rundir import SCORES

log = logging.getLogger(__name__)
_MAX_ERROR_SAMPLES = 20
# A full or failing disk stops the run instead of dropping the exporter.
_DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


class Collector:
    def __init__(self, run_dir: Path, exporters: Sequence[tuple[str, Any]]) -> None:
        self.exporters = list(exporters)
        self.plugin_errors: list[str] = []
        for name, exp in list(self.exporters):
            self._guard(name, exp, "open", Path(run_dir))
        self._scores = AtomicFile(Path(run_dir) / SCORES)
        self._encode = msgspec.json.Encoder().encode
        self.next_index = 0
        self._pending: dict[int, list[ConversationRecord]] = {}
        self.trees = 0
        self.records = 0
        self.turns = 0
        self.failures = 0
        self.stop_reasons: Counter[str] = Counter()
        self.error_samples: list[str] = []
        # Conversations ended by an error are scored apart: their means are kept
        # separately and stay out of `mean_scores` unless `include_failed`.
        self.include_failed = False
        self.failed_ids: list[str] = []
        self._sums: dict[str, list[float]] = {}
        self._failed_sums: dict[str, list[float]] = {}

    def add_tree(self, index: int, records: Sequence[ConversationRecord]) -> None:
        self.trees += 1
        self._pending[index] = sorted(records, key=lambda r: r.branch)
        while self.next_index in self._pending:
            for record in self._pending.pop(self.next_index):
                self._emit(record)
            self.next_index += 1

    def skip_to(self, index: int) -> None:
        """Indices below `index` will never come (a run asked for fewer)."""
        self.next_index = max(self.next_index, index)

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def _emit(self, record: ConversationRecord) -> None:
        self.records += 1
        self.turns += len(record.turns)
        self.stop_reasons[record.stop_reason] += 1
        failed = record.stop_reason == "error"
        if failed:
            self.failures += 1
            if len(self.failed_ids) < _MAX_ERROR_SAMPLES:
                self.failed_ids.append(f"{record.conversation_id}#{record.branch}")
        for err in record.errors:
            if len(self.error_samples) < _MAX_ERROR_SAMPLES:
                self.error_samples.append(f"{record.conversation_id}#{record.branch}: {err}")
        for name, exp in list(self.exporters):
            self._guard(name, exp, "write", record)
        self._scores.write(self._encode({
            "conversation_id": record.conversation_id, "index": record.index,
            "branch": record.branch, "stop_reason": record.stop_reason,
            "scores": record.scores, "turn_scores": [t.scores for t in record.turns],
        }) + b"\n")
        sums = self._failed_sums if failed else self._sums
        _add_scores(sums, "", record.scores)
        for t in record.turns:
            if t.scores:
                _add_scores(sums, "turn:", t.scores)

    def mean_scores(self) -> dict[str, float]:
        """Means over the conversations that did not fail (all of them with
        `include_failed`)."""
        if not self.include_failed:
            return _means(self._sums)
        both = {k: list(v) for k, v in self._sums.items()}
        for k, (total, n) in self._failed_sums.items():
            acc = both.setdefault(k, [0.0, 0])
            acc[0] += total
            acc[1] += n
        return _means(both)

    def failed_mean_scores(self) -> dict[str, float]:
        """Means over the conversations that ended by an error alone."""
        return _means(self._failed_sums)

    def _guard(self, name: str, exp: Any, method: str, *args: Any) -> None:
        # A broken exporter is dropped and reported; the run and other outputs go on.
        # A failing disk is not the exporter's fault: it stops the run (the log keeps
        # every turn, and `turnloom resume` writes the outputs once there is room).
        try:
            getattr(exp, method)(*args)
        except OSError as exc:
            if exc.errno not in _DISK_ERRORS:
                self._drop(name, exp, method, exc)
                return
            raise OSError(exc.errno, f"exporter {name!r} could not write ({exc})") from exc
        except Exception as exc:
            self._drop(name, exp, method, exc)

    def _drop(self, name: str, exp: Any, method: str, exc: Exception) -> None:
        msg = f"exporter {name!r} raised in {method}: {type(exc).__name__}: {exc}; disabled"
        errorlog.record(msg, exc)
        log.warning("%s", msg)
        self.plugin_errors.append(msg)
        self.exporters = [(n, e) for n, e in self.exporters if e is not exp]
        _abort(exp)

    def close(self) -> None:
        if self._pending:
            raise RuntimeError(f"conversations {sorted(self._pending)[:5]}... finished but "
                               f"conversation {self.next_index} never did")
        self._scores.commit()
        for name, exp in list(self.exporters):
            self._guard(name, exp, "close")

    def abort(self) -> None:
        self._scores.abort()
        for _, exp in self.exporters:
            _abort(exp)


def _add_scores(sums: dict[str, list[float]], prefix: str, scores: dict[str, Any]) -> None:
    """Add every number of `scores` (scorer -> metric -> number, sub-metrics nested)
    to `sums`, keyed PREFIX + "scorer.metric[.sub]"."""
    for scorer, values in scores.items():
        if isinstance(values, dict):
            _add_metrics(sums, f"{prefix}{scorer}.", values)


def _add_metrics(sums: dict[str, list[float]], prefix: str, values: dict[str, Any]) -> None:
    for metric, value in values.items():
        if isinstance(value, dict):
            _add_metrics(sums, f"{prefix}{metric}.", value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            acc = sums.setdefault(f"{prefix}{metric}", [0.0, 0])
            acc[0] += value
            acc[1] += 1


def _means(sums: dict[str, list[float]]) -> dict[str, float]:
    return {k: round(s / n, 6) for k, (s, n) in sorted(sums.items()) if n}


def _abort(exporter: Any) -> None:
    """Remove an exporter's unfinished output, if it knows how; best effort."""
    abort = getattr(exporter, "abort", None)
    if callable(abort):
        try:
            abort()
        except Exception:
            pass
