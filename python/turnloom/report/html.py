"""The run report: one self-contained HTML file (figures inline as base64 PNG,
no scripts, no external resources). Everything that comes from a run (messages,
names, errors, scores) is HTML-escaped."""

from __future__ import annotations

import base64
import math
from html import escape
from pathlib import Path
from typing import Any, Iterable, Sequence

from turnloom.export import atomic_write
from turnloom.exporters.runinfo import Fork, RunInfo
from turnloom.exporters.views import transcript
from turnloom.records import ConversationRecord
from turnloom.report import plots
from turnloom.report.data import RunData, load_run, numeric_scores

REPORT = "report.html"

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .5em 0; } td, th { padding: .2em .7em; border-bottom: 1px solid #eee; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; }
details { margin: .25em 0 .25em 1em; } summary { cursor: pointer; }
.msg { margin: .3em 0; padding: .35em .6em; border-radius: 6px; white-space: pre-wrap; }
.role-user { background: #eef4ff; } .role-assistant { background: #f1f9ee; }
.role-system { background: #f6f6f6; color: #555; } .role-environment { background: #fff6e6; }
.who { font-weight: 600; font-size: .85em; color: #555; }
.fork { border-left: 3px solid #b5c9e8; padding-left: .6em; }
.end { color: #666; font-size: .85em; margin: .2em 0 .6em; }
.muted { color: #777; }
"""


def write_report(run_dir: str | Path, out: str | Path | None = None, *, sample: int = 20) -> Path:
    """Write the HTML report of a finished run (default ``RUN_DIR/report.html``)."""
    data = load_run(run_dir, sample=sample)
    path = Path(out) if out is not None else Path(run_dir) / REPORT
    atomic_write(path, render(data).encode("utf-8"))
    return path


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return f'<p class="muted">No data for {escape(alt)}.</p>'
    b64 = base64.b64encode(png).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{b64}">'


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append(f'<td class="n">{_num(v)}</td>')
            elif isinstance(v, int):
                cells.append(f'<td class="n">{v:,}</td>')
            else:
                cells.append(f"<td>{escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _num(v: float) -> str:
    if math.isnan(v):
        return "–"
    return f"{v:,.4g}" if abs(v) < 1e6 else f"{v:,.0f}"


def render(data: RunData) -> str:
    s = data.summary
    name = s.get("name", data.run_dir.name)
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8>"
             f"<title>turnloom report: {escape(name)}</title><style>{STYLE}</style></head><body>",
             f"<h1>Run report: {escape(name)}</h1>", _overview(data),
             "<h2>Scores per turn</h2>", _img(plots.score_curves(data), "per-turn score curves"),
             "<h2>Conversation scores</h2>", _conversation_scores(data),
             "<h2>Lengths</h2>", _img(plots.length_distributions(data), "length distributions"),
             "<h2>Stop reasons</h2>",
             _img(plots.bar_chart(data.stop_reasons, "stop reasons", "branches"), "stop reasons"),
             _table(["stop reason", "branches"], data.stop_reasons.most_common()),
             "<h2>Failures</h2>", _failures(data),
             "<h2>Tokens and cache</h2>", _tokens(data),
             f"<h2>Conversations</h2><p class=muted>The first {len(data.sample)} of "
             f"{data.trees:,} conversations; branches open under the message where they fork.</p>",
             *(_tree(tree, data.info, expanded=i == 0) for i, tree in enumerate(data.sample)),
             "</body></html>"]
    return "\n".join(parts)


def _overview(data: RunData) -> str:
    s, m = data.summary, data.manifest
    timing = s.get("timing", {})
    rows = [("scenario", m.get("scenario_file") or "(given in Python)"),
            ("created", m.get("created", "")),
            ("status", s.get("status", "")),
            ("conversations", s.get("conversations", data.trees)),
            ("branch records", s.get("records", data.records)),
            ("turns", s.get("turns", 0)),
            ("failed branches", s.get("failures", 0)),
            ("cache hit rate", f"{s.get('cache', {}).get('hit_rate', 0.0):.1%}")]
    if timing:
        rows.append(("wall time", f"{timing.get('wall_s', 0):.2f} s"))
    versions = m.get("versions", {})
    rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v)))
    participants = ", ".join(data.participant_label(p) for p in data.info.participants)
    rows.append(("participants", participants))
    return _table(["", ""], rows)


def _conversation_scores(data: RunData) -> str:
    if not data.conversation_scores:
        return '<p class="muted">No conversation scores.</p>'
    return _table(["metric", "mean", "branches"],
                  [(k, m.value, m.n) for k, m in sorted(data.conversation_scores.items())])


def _failures(data: RunData) -> str:
    if not data.failures:
        return "<p>No conversation failed.</p>"
    return (_img(plots.bar_chart(data.failures, "failures by cause", "branches"), "failures")
            + _table(["cause", "branches", "example"],
                     [(c, n, data.failure_examples.get(c, "")) for c, n in data.failures.most_common()]))


def _tokens(data: RunData) -> str:
    s = data.summary
    rows = [(name, u.get("turns", 0), u.get("prompt_tokens", 0), u.get("cached_tokens", 0),
             u.get("completion_tokens", 0), f"{u.get('cache_hit_rate', 0.0):.1%}")
            for name, u in s.get("participants", {}).items()]
    out = [_table(["participant", "turns", "prompt tokens", "cached", "completion tokens",
                   "cache hit rate"], rows)]
    backends = [(name, b.get("type", ""), b.get("requests", 0), f"{b.get('cache_hit_rate', 0.0):.1%}",
                 b.get("cached_tokens_source", ""))
                for name, b in s.get("backends", {}).items()]
    if backends:
        out.append(_table(["backend", "type", "requests", "cache hit rate", "cached tokens from"],
                          backends))
    out.append(_img(plots.tokens_and_cache(s), "tokens per participant"))
    return "\n".join(out)


# -- conversation trees -----------------------------------------------------------------


def _message(m: Any) -> str:
    role = m.role if m.role in ("user", "assistant", "system", "environment") else "environment"
    who = escape(m.name or m.role)
    return (f'<div class="msg role-{role}"><div class="who">{who} · {escape(m.role)}</div>'
            f"{escape(m.content)}</div>")


def _ending(r: ConversationRecord) -> str:
    scores = ", ".join(f"{k} = {_num(v)}" for k, v in numeric_scores(r.scores))
    errors = "".join(f"<div>error: {escape(e)}</div>" for e in r.errors)
    return (f'<div class="end">branch {r.branch} ended: {escape(r.stop_reason)}'
            + (f" · {escape(scores)}" if scores else "") + f"{errors}</div>")


def _tree(tree: list[ConversationRecord], info: RunInfo, expanded: bool = False) -> str:
    first = tree[0]
    reasons = ", ".join(sorted({r.stop_reason for r in tree}))
    branches = f", {len(tree)} branches" if len(tree) > 1 else ""
    system = "".join(_message(m) for m in first.messages[:len(first.messages) - len(first.turns)])
    return (f"<details{' open' if expanded else ''}><summary>{escape(first.conversation_id)} — "
            f"{len(first.turns)} turns"
            f"{branches} — {escape(reasons)}</summary>{system}"
            f"{_subtree(tree, info.forks_for(tree[0].seed), 0, 0)}</details>")


def _subtree(records: list[ConversationRecord], forks: tuple[Fork, ...], start: int,
             fork: int) -> str:
    """Messages shared by `records` from turn `start`, then one nested block per
    choice at the next fork they all reach."""
    lead = records[0]
    if len(records) == 1 or fork >= len(forks):
        return "".join(_message(m) for m in transcript(lead)[start:]) + _ending(lead)
    f = forks[fork]
    groups: dict[int, list[ConversationRecord]] = {}
    for r in records:
        groups.setdefault(f.choice(r.branch), []).append(r)
    if len(groups) == 1:
        return _subtree(records, forks, start, fork + 1)
    shared = "".join(_message(m) for m in transcript(lead)[start:f.turn])
    children = []
    for choice, group in sorted(groups.items()):
        label = f"fork at turn {f.turn}: choice {choice + 1} of {f.n}"
        children.append(f'<details open class="fork"><summary>{escape(label)}</summary>'
                        f"{_subtree(group, forks, f.turn, fork + 1)}</details>")
    return shared + "".join(children)
