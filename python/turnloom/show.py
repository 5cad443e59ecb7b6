"""`turnloom show RUN`: a run's summary, then one conversation as it was simulated.

The conversation is read from ``conversations.jsonl`` (OpenAI-style messages): each
message with its speaker and role, the tool calls of assistant messages (tool name and
JSON arguments) and the results of ``role: "tool"`` messages, each turn's scores, then
the conversation's scores and errors. In a terminal it is drawn with `rich`; otherwise
(a pipe, a file) it is plain text.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any, Iterator

from turnloom import errorlog, rundir

MAX_ERRORS_SHOWN = 3
_ROLE_STYLES = {"user": "cyan", "assistant": "green", "system": "magenta", "tool": "yellow",
                "environment": "yellow"}


# -- what to show ----------------------------------------------------------------------


def pick_conversation(run_dir: Path, index: int | None = None,
                      branch: int | None = None) -> dict[str, Any] | None:
    """The record of conversation `index`, branch `branch` (default 0); without an
    index, the first conversation that did not fail (else the first one). None when the
    run wrote no conversations file; RunDirError when the one asked for is not there."""
    path = Path(run_dir) / rundir.CONVERSATIONS
    if not path.is_file():
        return None
    first: dict[str, Any] | None = None
    seen = 0
    for record in _records(path):
        seen += 1
        if index is None:
            if branch is not None and record.get("branch") != branch:
                continue
            if record.get("stop_reason") != "error":
                return record
            first = first or record
        elif record.get("index") == index and record.get("branch", 0) == (branch or 0):
            return record
    if index is None:
        return first
    raise rundir.RunDirError(f"{path}: no conversation {index} branch {branch or 0} "
                             f"among its {seen} records")


def _records(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise rundir.RunDirError(f"{path}:{n}: not JSON: {exc}") from None


# -- the summary ------------------------------------------------------------------------


def summary_lines(s: dict[str, Any], run_dir: Path) -> list[str]:
    """The run's totals, scores, failed conversations, lifecycle hooks and errors."""
    branches = f" ({s['records']} branch records)" if s["records"] != s["conversations"] else ""
    lines = [f"run {s['name']!r}: {s['conversations']} conversations{branches}, "
             f"{s['turns']} turns, {s['failures']} failed"]
    t = s.get("timing", {})
    if t:
        lines.append(f"  time: {t['wall_s']:.2f} s, {_rate(t['turns_per_s'])} turns/s, "
                     f"{_rate(t['tokens_per_s'])} tokens/s"
                     + (f" ({t['replayed_turns']} turns replayed)" if t.get("replayed_turns") else ""))
    lines.append("  participants:")
    for name, u in s["participants"].items():
        lines.append(f"    {name:<16} {u['turns']:>8} turns  {u['prompt_tokens']:>10} prompt  "
                     f"{u['completion_tokens']:>9} completion tokens"
                     + (f"  {u['errors']} backend errors" if u.get("errors") else ""))
    for name, b in s.get("backends", {}).items():
        lines.append(f"  backend {name} ({b['type']}): {b['requests']} requests, "
                     f"mean latency {b['mean_latency_s'] * 1000:.1f} ms, "
                     f"cache hit rate {b['cache_hit_rate']:.1%} ({b['cached_tokens_source']})")
    cache = s.get("cache", {})
    lines.append(f"  cache hit rate: {cache.get('hit_rate', 0.0):.1%}")
    reasons = ", ".join(f"{k}: {v}" for k, v in s["stop_reasons"].items()) or "none"
    lines.append(f"  stop reasons: {reasons}")
    failed = s.get("failed", {})
    if s.get("scores"):
        left_out = failed.get("conversations") and not failed.get("in_score_means")
        lines.append("  mean scores" + (f" (the {failed['conversations']} failed "
                                        "conversations left out)" if left_out else "") + ":")
        for k, v in s["scores"].items():
            lines.append(f"    {k:<32} {v:.4g}")
    if failed.get("conversations"):
        ids = ", ".join(failed.get("ids", [])[:5])
        more = failed["conversations"] - min(5, len(failed.get("ids", [])))
        lines.append(f"  failed conversations: {ids}" + (f" and {more} more" if more > 0 else ""))
    lines.extend(hook_lines(s.get("hooks")))
    lines.extend(error_lines(s, run_dir))
    return lines


def hook_lines(hooks: dict[str, Any] | None) -> list[str]:
    if hooks is None:
        return []
    applied = hooks.get("applied", {})
    out = ["  lifecycle hooks: " + ("; ".join(f"{h} ({', '.join(p)})" for h, p in applied.items())
                                    if applied else "none applied")]
    for plugin, names in hooks.get("not_applied", {}).items():
        out.append(f"    not applied: {plugin} ({', '.join(names)}); the scenario neither lists "
                   "it under `plugins` nor uses its components")
    return out


def error_lines(s: dict[str, Any], run_dir: Path) -> list[str]:
    """The first errors, how many more there are, and where the tracebacks are."""
    out = [f"  plugin error: {e}" for e in s.get("plugin_errors", [])[:MAX_ERRORS_SHOWN]]
    count, heads = errorlog.summarize(run_dir)
    if count:
        log = Path(run_dir) / errorlog.ERRORS_LOG
        out.append(f"  errors: {count}, with tracebacks in {log}")
        for n, head in enumerate(heads[:MAX_ERRORS_SHOWN], 1):
            frame = errorlog.first_frame(run_dir, n)
            out.append(f"    {_clip(head, 200)}" + (f"\n      at {frame}" if frame else ""))
        if count > MAX_ERRORS_SHOWN:
            out.append(f"    ... and {count - MAX_ERRORS_SHOWN} more in {log}")
    else:
        samples = s.get("errors", [])
        out.extend(f"  error: {e}" for e in samples[:MAX_ERRORS_SHOWN])
        if len(samples) > MAX_ERRORS_SHOWN:
            out.append(f"    ... and {len(samples) - MAX_ERRORS_SHOWN} more in summary.json")
    return out


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2g}"


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# -- one conversation ---------------------------------------------------------------------


class Entry:
    """One message as shown: who, in which role, what, and its turn's scores."""

    def __init__(self, speaker: str, role: str, text: str, calls: list[tuple[str, str, str]],
                 call_id: str | None, scores: dict[str, Any]) -> None:
        self.speaker = speaker
        self.role = role
        self.text = text
        self.calls = calls  # (tool name, JSON arguments, call id)
        self.call_id = call_id  # the call a tool message answers
        self.scores = scores


def entries(record: dict[str, Any]) -> list[Entry]:
    """The record's messages, each with its turn's scores. Turns are the messages after
    the leading system prompt, in order."""
    turns = record.get("turns", [])
    out = []
    t = 0
    for k, m in enumerate(record.get("messages", [])):
        role = str(m.get("role", "?"))
        scores: dict[str, Any] = {}
        if not (role == "system" and k == 0):
            if t < len(turns):
                scores = turns[t].get("scores") or {}
            t += 1
        out.append(Entry(str(m.get("name") or role), role, _content(m.get("content")),
                         [_call(c) for c in m.get("tool_calls") or []], m.get("tool_call_id"),
                         scores))
    return out


def _content(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "\n".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return json.dumps(content, ensure_ascii=False)


def _call(call: Any) -> tuple[str, str, str]:
    """(name, arguments, id) of an OpenAI tool call, nested (`function`) or flat."""
    if not isinstance(call, dict):
        return ("?", str(call), "")
    nested = call.get("function")
    fn: dict[str, Any] = nested if isinstance(nested, dict) else call
    args = fn.get("arguments", "")
    if not isinstance(args, str):
        args = json.dumps(args, ensure_ascii=False)
    return (str(fn.get("name", "?")), args, str(call.get("id", "")))


def flat_scores(scores: dict[str, Any]) -> str:
    parts = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            parts.append(f"{prefix}={value:.4g}" if isinstance(value, float) else f"{prefix}={value}")

    walk("", scores)
    return "  ".join(parts)


def conversation_header(record: dict[str, Any]) -> str:
    return (f"conversation {record.get('conversation_id')} (index {record.get('index')}, "
            f"branch {record.get('branch', 0)}): stop reason {record.get('stop_reason')!r}")


def profile_lines(record: dict[str, Any]) -> list[str]:
    out = []
    for name, info in (record.get("participants") or {}).items():
        profile = info.get("profile") if isinstance(info, dict) else None
        if profile:
            out.append(f"{name}'s profile: " + ", ".join(f"{k}={v}" for k, v in profile.items()))
    return out


def render_plain(record: dict[str, Any]) -> str:
    lines = [conversation_header(record)]
    lines += [f"  {p}" for p in profile_lines(record)]
    for e in entries(record):
        lines.append("")
        head = f"  {e.speaker} [{e.role}]" + (f" -> {e.call_id}" if e.call_id else "") + ":"
        lines.append(head)
        if e.text or not e.calls:
            lines.extend(f"    {t}" for t in (e.text or "(empty)").splitlines())
        for name, args, cid in e.calls:
            lines.append(f"    tool call {name}({args})" + (f"  [{cid}]" if cid else ""))
        if e.scores:
            lines.append(f"    scores: {flat_scores(e.scores)}")
    lines.append("")
    if record.get("scores"):
        lines.append(f"  conversation scores: {flat_scores(record['scores'])}")
    for err in record.get("errors", []):
        lines.append(f"  error: {err}")
    return "\n".join(lines)


def render_rich(record: dict[str, Any], file: IO[str], summary: list[str]) -> None:
    from rich.console import Console, Group
    from rich.panel import Panel
    from rich.text import Text

    console = Console(file=file, highlight=False)
    console.print(Text("\n".join(summary)))
    console.print()
    console.print(Text(conversation_header(record), style="bold"))
    for p in profile_lines(record):
        console.print(Text(p, style="dim"))
    for e in entries(record):
        style = _ROLE_STYLES.get(e.role, "white")
        parts: list[Any] = []
        if e.text or not e.calls:
            parts.append(Text(e.text or "(empty)"))
        for name, args, cid in e.calls:
            call = Text("tool call ", style="bold yellow")
            call.append(name, style="bold")
            call.append(f"({args})")
            if cid:
                call.append(f"  {cid}", style="dim")
            parts.append(call)
        if e.scores:
            parts.append(Text(f"scores: {flat_scores(e.scores)}", style="dim"))
        title = f"{e.speaker} · {e.role}" + (f" → {e.call_id}" if e.call_id else "")
        console.print(Panel(Group(*parts), title=Text(title, style=f"bold {style}"),
                            title_align="left", border_style=style))
    if record.get("scores"):
        console.print(Text(f"conversation scores: {flat_scores(record['scores'])}", style="bold"))
    for err in record.get("errors", []):
        console.print(Text(f"error: {err}", style="red"))


def show(run_dir: Path, summary: dict[str, Any], index: int | None, branch: int | None,
         file: IO[str] | None = None, rich: bool | None = None) -> None:
    """Print the summary and one conversation; `rich` defaults to whether `file` is a
    terminal."""
    file = file or sys.stdout
    if rich is None:
        rich = file.isatty()
    lines = summary_lines(summary, run_dir)
    record = pick_conversation(run_dir, index, branch)
    tail = ([f"(no {rundir.CONVERSATIONS} in {run_dir}: add the openai-jsonl exporter to "
             "see conversations)"] if record is None else
            [f"other conversations: turnloom show {run_dir} --conversation N [--branch B]"])
    if record is not None and rich:
        render_rich(record, file, lines)
        print("\n".join(tail), file=file)
        return
    body = [render_plain(record)] if record is not None else []
    print("\n".join(lines + [""] + body + tail), file=file)
