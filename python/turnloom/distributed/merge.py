"""Finished shards -> the run directory's outputs, as one process would have
written them: line-based files concatenated in shard order (shards are
contiguous index blocks, each written in index order, so the result is in
index order), a combined summary recomputed from the merged files where a
summary's figure cannot be combined from the parts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import msgspec

from turnloom import rundir
from turnloom.export import AtomicFile

# Files of a run directory that describe that directory, not the dataset.
_OWN_FILES = {rundir.MANIFEST, rundir.WAL, rundir.SUMMARY}
_LINE_FILES = (".jsonl", ".ndjson", ".jsonlines", ".txt")
_TABLE_FILES = (".csv", ".tsv")  # one header line, then rows
_MAX_ERROR_SAMPLES = 20
_CHUNK = 1 << 20


def output_files(shard_dir: Path) -> list[str]:
    """A shard's dataset files, relative to its directory (hidden files skipped)."""
    return sorted(str(p.relative_to(shard_dir)) for p in shard_dir.rglob("*")
                  if p.is_file() and p.name not in _OWN_FILES
                  and not any(part.startswith(".") for part in p.relative_to(shard_dir).parts))


def merge_outputs(run_dir: Path, shard_dirs: Sequence[Path]) -> tuple[list[str], list[str]]:
    """Concatenate every line-based output of the shards into `run_dir`, in shard
    order. Returns (merged, left): files of other formats stay in the shard
    directories and are listed in `left`."""
    names: list[str] = []
    for d in shard_dirs:
        names.extend(n for n in output_files(d) if n not in names)
    merged, left = [], []
    for name in names:
        parts = [d / name for d in shard_dirs if (d / name).is_file()]
        if name.endswith(_LINE_FILES):
            _concatenate(run_dir / name, parts, header=False)
        elif name.endswith(_TABLE_FILES):
            _concatenate(run_dir / name, parts, header=True)
        else:
            left.append(name)
            continue
        merged.append(name)
    return merged, left


def _concatenate(target: Path, parts: Iterable[Path], header: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    out = AtomicFile(target)
    try:
        for i, part in enumerate(parts):
            with open(part, "rb") as f:
                if header and i > 0:
                    f.readline()
                while chunk := f.read(_CHUNK):
                    out.write(chunk)
        out.commit()
    except BaseException:
        out.abort()
        raise


def combine_summaries(name: str, summaries: Sequence[dict[str, Any]], scores_file: Path,
                      wall_s: float, score_failed: bool = False) -> dict[str, Any]:
    """One summary for the whole run from the shards' summaries (in shard order)
    and the merged scores file (mean scores are recomputed from it, exactly)."""
    def total(key: str) -> int:
        return sum(int(s.get(key, 0)) for s in summaries)

    stop_reasons: Counter[str] = Counter()
    for s in summaries:
        stop_reasons.update(s.get("stop_reasons", {}))
    errors = [e for s in summaries for e in s.get("errors", [])][:_MAX_ERROR_SAMPLES]
    plugin_errors = list(dict.fromkeys(e for s in summaries for e in s.get("plugin_errors", [])))
    backends = _merge_usage(s.get("backends", {}) for s in summaries)
    prompt = sum(b["prompt_tokens"] for b in backends.values())
    cached = sum(b["cached_tokens"] for b in backends.values())
    timing = [s.get("timing", {}) for s in summaries]
    new_turns = sum(t.get("turns_this_session", 0) for t in timing)
    tokens = sum(t.get("tokens_per_s", 0.0) * t.get("wall_s", 0.0) for t in timing)
    wall = max(wall_s, 1e-9)
    memory = [s.get("memory", {}) for s in summaries]
    return {
        "name": name,
        "status": "complete",
        "conversations": total("conversations"),
        "records": total("records"),
        "turns": total("turns"),
        "record_turns": total("record_turns"),
        "failures": total("failures"),
        "stop_reasons": dict(sorted(stop_reasons.items())),
        "errors": errors,
        "plugin_errors": plugin_errors,
        "participants": _merge_usage(s.get("participants", {}) for s in summaries),
        "judges": _merge_usage(s.get("judges", {}) for s in summaries),
        "backends": backends,
        "cache": {"prompt_tokens": prompt, "cached_tokens": cached,
                  "hit_rate": round(cached / prompt, 6) if prompt else 0.0},
        "scores": mean_scores(scores_file, None if score_failed else False),
        "failed": {"conversations": total("failures"),
                   "ids": [i for s in summaries for i in s.get("failed", {}).get("ids", [])],
                   "in_score_means": score_failed,
                   "scores": mean_scores(scores_file, True)},
        "timing": {"wall_s": round(wall_s, 3), "turns_this_session": new_turns,
                   "replayed_turns": sum(t.get("replayed_turns", 0) for t in timing),
                   "turns_per_s": round(new_turns / wall, 1),
                   "tokens_per_s": round(tokens / wall, 1)},
        "memory": {"peak_live_nodes": max((m.get("peak_live_nodes", 0) for m in memory), default=0),
                   "peak_active_conversations": max(
                       (m.get("peak_active_conversations", 0) for m in memory), default=0)},
    }


_USAGE_SUMS = ("requests", "turns", "prompt_tokens", "completion_tokens", "cached_tokens",
               "latency_s", "errors", "retries")


def _merge_usage(tables: Iterable[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per-participant / per-backend usage tables summed over shards; rates
    recomputed from the sums, descriptive fields taken from the first shard."""
    out: dict[str, dict[str, Any]] = {}
    for table in tables:
        for key, usage in table.items():
            if key not in out:
                out[key] = dict(usage)
                continue
            acc = out[key]
            for k in _USAGE_SUMS:
                acc[k] = acc.get(k, 0) + usage.get(k, 0)
    for acc in out.values():
        acc["latency_s"] = round(acc["latency_s"], 6)
        acc["mean_latency_s"] = round(acc["latency_s"] / acc["requests"], 6) if acc["requests"] else 0.0
        acc["cache_hit_rate"] = (round(acc["cached_tokens"] / acc["prompt_tokens"], 6)
                                 if acc["prompt_tokens"] else 0.0)
    return out


class _ScoreLine(msgspec.Struct):
    scores: dict[str, Any] = {}
    turn_scores: list[dict[str, Any]] = []
    stop_reason: str = ""


def mean_scores(scores_file: Path, failed: bool | None = False) -> dict[str, float]:
    """Mean of every numeric metric in a scores.jsonl, keyed as a run's summary
    keys them (``scorer.metric``, ``turn:scorer.metric``): over the conversations
    that did not fail (`failed` False, as a single-process run's summary), those
    that did (True), or all (None)."""
    sums: dict[str, list[float]] = {}

    def add(prefix: str, scores: dict[str, Any]) -> None:
        for scorer, values in scores.items():
            if not isinstance(values, dict):
                continue
            for metric, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    acc = sums.setdefault(f"{prefix}{scorer}.{metric}", [0.0, 0])
                    acc[0] += value
                    acc[1] += 1

    if not scores_file.is_file():
        return {}
    decode = msgspec.json.Decoder(_ScoreLine).decode
    with open(scores_file, "rb") as f:
        for line in f:
            row = decode(line)
            if failed is not None and (row.stop_reason == "error") != failed:
                continue
            add("", row.scores)
            for turn in row.turn_scores:
                add("turn:", turn)
    return {k: round(s / n, 6) for k, (s, n) in sorted(sums.items()) if n}
