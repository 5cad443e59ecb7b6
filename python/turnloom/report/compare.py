"""Comparing two runs metric by metric, with bootstrap confidence intervals.

When both runs simulate the same conversations (same seed, participants and
profile samplers: e.g. one scenario against two models) the branches are
paired by (conversation index, branch) and the interval is over the mean of
per-conversation differences; otherwise the runs are independent samples.
A difference whose interval contains 0 is reported as within noise.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from turnloom import rundir
from turnloom.exporters.run import read_records
from turnloom.report.data import numeric_scores

DERIVED = ("turns", "completion_tokens", "failed")
_CHUNK_ELEMENTS = 4_000_000


def record_metrics(run_dir: Path) -> dict[str, dict[tuple[int, int], float]]:
    """metric -> (index, branch) -> value: every numeric conversation score, plus the
    number of turns, completion tokens and whether the branch failed."""
    out: dict[str, dict[tuple[int, int], float]] = {}
    for r in read_records(run_dir):
        key = (r.index, r.branch)
        values = dict(numeric_scores(r.scores))
        values["turns"] = float(len(r.turns))
        values["completion_tokens"] = float(sum(t.completion_tokens for t in r.turns))
        values["failed"] = float(r.stop_reason == "error")
        for metric, value in values.items():
            out.setdefault(metric, {})[key] = value
    return out


def same_conversations(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two scenarios draw the same conversations: same seed, first index
    and participants (names, agents, samplers and their settings)."""
    def key(s: dict[str, Any]) -> Any:
        run = s.get("run", {})
        parts = [(p.get("name"), p.get("agent"), p.get("sampler"),
                  json.dumps(p.get("sampler_settings", {}), sort_keys=True))
                 for p in s.get("participants", [])]
        return run.get("seed"), run.get("first_index", 0), parts
    return key(a) == key(b)


@dataclass(frozen=True)
class MetricDiff:
    metric: str
    mean_a: float
    mean_b: float
    diff: float  # mean of B minus mean of A
    ci_low: float
    ci_high: float
    n_a: int
    n_b: int
    paired: bool

    @property
    def within_noise(self) -> bool:
        return self.ci_low <= 0.0 <= self.ci_high

    @property
    def verdict(self) -> str:
        if self.within_noise:
            return "within noise"
        return "B higher" if self.diff > 0 else "B lower"


@dataclass(frozen=True)
class Comparison:
    run_a: str
    run_b: str
    paired: bool
    confidence: float
    resamples: int
    seed: int
    metrics: list[MetricDiff]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for m, row in zip(self.metrics, d["metrics"]):
            row["within_noise"] = m.within_noise
            row["verdict"] = m.verdict
        return d


def bootstrap_ci(a: np.ndarray, b: np.ndarray | None, *, resamples: int, confidence: float,
                 rng: np.random.Generator) -> tuple[float, float]:
    """Percentile interval of mean(b) - mean(a); with `b` None, `a` holds paired
    differences and the interval is of their mean."""
    alpha = (1 - confidence) / 2
    n = max(len(a), 0 if b is None else len(b))
    chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))  # bounds the index arrays' size
    stats = np.empty(resamples)
    for lo in range(0, resamples, chunk):
        k = min(chunk, resamples - lo)
        mean_a = a[rng.integers(0, len(a), size=(k, len(a)))].mean(axis=1)
        if b is None:
            stats[lo:lo + k] = mean_a
        else:
            stats[lo:lo + k] = b[rng.integers(0, len(b), size=(k, len(b)))].mean(axis=1) - mean_a
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


def compare_runs(run_a: str | Path, run_b: str | Path, *, paired: bool | None = None,
                 resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Comparison:
    """Per-metric differences (B - A) with seeded bootstrap intervals. `paired`
    defaults to whether the runs simulate the same conversations."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, not {confidence}")
    if resamples < 100:
        raise ValueError(f"resamples must be at least 100, not {resamples}")
    ma = rundir.read_manifest(Path(run_a)).get("scenario", {})
    mb = rundir.read_manifest(Path(run_b)).get("scenario", {})
    can_pair = same_conversations(ma, mb)
    if paired and not can_pair:
        raise ValueError(f"cannot pair {run_a} and {run_b}: they do not simulate the same "
                         "conversations (seed, first index or participants differ)")
    use_pairs = can_pair if paired is None else paired
    a, b = record_metrics(Path(run_a)), record_metrics(Path(run_b))
    rng = np.random.default_rng(seed)
    out = []
    for metric in sorted(set(a) & set(b), key=lambda m: (m in DERIVED, m)):
        va, vb = a[metric], b[metric]
        if use_pairs:
            keys = sorted(set(va) & set(vb))
            if not keys:
                continue
            xa = np.array([va[k] for k in keys])
            xb = np.array([vb[k] for k in keys])
            low, high = bootstrap_ci(xb - xa, None, resamples=resamples,
                                     confidence=confidence, rng=rng)
        else:
            xa, xb = np.array(list(va.values())), np.array(list(vb.values()))
            low, high = bootstrap_ci(xa, xb, resamples=resamples, confidence=confidence, rng=rng)
        out.append(MetricDiff(metric, float(xa.mean()), float(xb.mean()),
                              float(xb.mean() - xa.mean()), low, high, len(xa), len(xb),
                              use_pairs))
    return Comparison(str(run_a), str(run_b), use_pairs, confidence, resamples, seed, out)


def format_table(c: Comparison) -> str:
    pct = f"{c.confidence:.0%}"
    head = ["metric", "A", "B", "B - A", f"{pct} CI", "n", "verdict"]
    rows = [[m.metric, f"{m.mean_a:.4g}", f"{m.mean_b:.4g}", f"{m.diff:+.4g}",
             f"[{m.ci_low:+.4g}, {m.ci_high:+.4g}]",
             str(m.n_a) if m.paired else f"{m.n_a}/{m.n_b}", m.verdict] for m in c.metrics]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [f"A = {c.run_a}", f"B = {c.run_b}",
             ("paired by conversation index and branch" if c.paired else
              "independent samples")
             + f"; {c.resamples} bootstrap resamples, seed {c.seed}", ""]
    for r in [head, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    noise = [m.metric for m in c.metrics if m.within_noise]
    if noise:
        lines.append("")
        lines.append(f"Within noise ({pct} interval contains 0): {', '.join(noise)}.")
    return "\n".join(lines)


def format_html(c: Comparison) -> str:
    rows = "".join(
        f"<tr><td>{escape(m.metric)}</td><td>{m.mean_a:.4g}</td><td>{m.mean_b:.4g}</td>"
        f"<td>{m.diff:+.4g}</td><td>[{m.ci_low:+.4g}, {m.ci_high:+.4g}]</td>"
        f"<td>{m.n_a if m.paired else f'{m.n_a}/{m.n_b}'}</td><td>{escape(m.verdict)}</td></tr>"
        for m in c.metrics)
    mode = "paired by conversation" if c.paired else "independent samples"
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>turnloom compare"
            f"</title><style>td,th{{padding:.2em .7em;border-bottom:1px solid #eee}}</style>"
            f"</head><body><h1>Compare</h1><p>A = {escape(c.run_a)}<br>B = {escape(c.run_b)}"
            f"<br>{mode}; {c.confidence:.0%} bootstrap intervals ({c.resamples} resamples, "
            f"seed {c.seed})</p><table><tr><th>metric</th><th>A</th><th>B</th><th>B - A</th>"
            f"<th>CI</th><th>n</th><th>verdict</th></tr>{rows}</table></body></html>")
