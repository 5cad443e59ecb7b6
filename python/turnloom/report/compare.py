"""Comparing two runs metric by metric, with cluster-bootstrap confidence intervals.

The unit of resampling is the conversation: the branches of one conversation
share their history (and the backend's state) and are not independent draws,
so a bootstrap that resampled (conversation, branch) records would understate
the noise. Each resample draws conversation indices with replacement and takes
every branch of each drawn conversation; the statistic is the mean over the
drawn records (a ratio of the drawn sums to the drawn counts).

When both runs simulate the same conversations (same seed, participants and
profile samplers: e.g. one scenario against two models) the branches are
paired by (conversation index, branch) and the interval is over the mean of
the paired differences, still resampled by conversation; otherwise each run's
conversations are resampled independently.

Many metrics are compared at once, so the intervals are Bonferroni-adjusted by
default: with m metrics each interval has confidence 1 - (1 - confidence) / m,
and the chance that any metric without a real difference is reported as
different is at most 1 - confidence. A difference whose interval contains 0 is
reported as within noise.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from html import escape
from pathlib import Path
from typing import Any, Literal

import numpy as np

from turnloom import rundir
from turnloom.exporters.run import read_records
from turnloom.report.data import numeric_scores

DERIVED = ("turns", "completion_tokens", "failed")
CORRECTIONS = ("bonferroni", "none")
_CHUNK_ELEMENTS = 4_000_000

Correction = Literal["bonferroni", "none"]


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
class Clusters:
    """Per-conversation sums and record counts of one metric (one entry per
    conversation index): all a cluster bootstrap of the mean needs."""

    sums: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, values: dict[tuple[int, int], float]) -> Clusters:
        by_index: dict[int, list[float]] = {}
        for (index, _branch), v in values.items():
            by_index.setdefault(index, []).append(v)
        groups = [by_index[i] for i in sorted(by_index)]
        return cls(np.array([sum(g) for g in groups], dtype=float),
                   np.array([len(g) for g in groups], dtype=float))

    @property
    def mean(self) -> float:
        return float(self.sums.sum() / self.counts.sum())

    @property
    def records(self) -> int:
        return int(self.counts.sum())

    def resampled_means(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """The mean over records of `k` resamples of whole conversations."""
        n = len(self.sums)
        idx = rng.integers(0, n, size=(k, n))
        return self.sums[idx].sum(axis=1) / self.counts[idx].sum(axis=1)


@dataclass(frozen=True)
class MetricDiff:
    metric: str
    mean_a: float
    mean_b: float
    diff: float  # mean of B minus mean of A
    ci_low: float
    ci_high: float
    n_a: int  # records (branches) of A; paired: the paired records
    n_b: int
    paired: bool
    conversations: int = 0  # resampled clusters (paired: shared conversations; else A's + B's)
    level: float = 0.95  # this interval's own confidence, after the correction

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
    confidence: float  # family-wise, over every metric compared (with a correction)
    resamples: int
    seed: int
    metrics: list[MetricDiff]
    correction: str = "bonferroni"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for m, row in zip(self.metrics, d["metrics"]):
            row["within_noise"] = m.within_noise
            row["verdict"] = m.verdict
        return d


def per_metric_level(confidence: float, metrics: int, correction: str) -> float:
    """Each interval's confidence so that the family of `metrics` intervals has
    `confidence` (Bonferroni), or `confidence` itself with no correction."""
    if correction == "none" or metrics <= 1:
        return confidence
    return 1.0 - (1.0 - confidence) / metrics


def cluster_bootstrap_ci(a: Clusters, b: Clusters | None, *, resamples: int, level: float,
                         rng: np.random.Generator) -> tuple[float, float]:
    """Percentile interval of mean(b) - mean(a), resampling conversations; with `b`
    None, `a` holds paired differences and the interval is of their mean."""
    alpha = (1 - level) / 2
    n = max(len(a.sums), 0 if b is None else len(b.sums))
    chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))  # bounds the index arrays' size
    stats = np.empty(resamples)
    for lo in range(0, resamples, chunk):
        k = min(chunk, resamples - lo)
        mean_a = a.resampled_means(k, rng)
        stats[lo:lo + k] = mean_a if b is None else b.resampled_means(k, rng) - mean_a
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


def compare_runs(run_a: str | Path, run_b: str | Path, *, paired: bool | None = None,
                 resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
                 correction: Correction = "bonferroni") -> Comparison:
    """Per-metric differences (B - A) with seeded cluster-bootstrap intervals,
    family-wise at `confidence` over all metrics (`correction = "none"`: each
    interval at `confidence`). `paired` defaults to whether the runs simulate
    the same conversations."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, not {confidence}")
    if resamples < 100:
        raise ValueError(f"resamples must be at least 100, not {resamples}")
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}, not {correction!r}")
    ma = rundir.read_manifest(Path(run_a)).get("scenario", {})
    mb = rundir.read_manifest(Path(run_b)).get("scenario", {})
    can_pair = same_conversations(ma, mb)
    if paired and not can_pair:
        raise ValueError(f"cannot pair {run_a} and {run_b}: they do not simulate the same "
                         "conversations (seed, first index or participants differ)")
    use_pairs = can_pair if paired is None else paired
    a, b = record_metrics(Path(run_a)), record_metrics(Path(run_b))
    plans: list[tuple[str, Clusters, Clusters | None, float, float, int, int]] = []
    for metric in sorted(set(a) & set(b), key=lambda m: (m in DERIVED, m)):
        va, vb = a[metric], b[metric]
        if use_pairs:
            keys = set(va) & set(vb)
            if not keys:
                continue
            ca, cb = Clusters.of({k: va[k] for k in keys}), Clusters.of({k: vb[k] for k in keys})
            diffs = Clusters.of({k: vb[k] - va[k] for k in keys})
            plans.append((metric, diffs, None, ca.mean, cb.mean, len(keys), len(keys)))
        else:
            ca, cb = Clusters.of(va), Clusters.of(vb)
            plans.append((metric, ca, cb, ca.mean, cb.mean, ca.records, cb.records))
    level = per_metric_level(confidence, len(plans), correction)
    rng = np.random.default_rng(seed)
    out = []
    for metric, first, second, mean_a, mean_b, n_a, n_b in plans:
        low, high = cluster_bootstrap_ci(first, second, resamples=resamples, level=level, rng=rng)
        clusters = len(first.sums) + (0 if second is None else len(second.sums))
        out.append(MetricDiff(metric, mean_a, mean_b, mean_b - mean_a, low, high, n_a, n_b,
                              use_pairs, clusters, level))
    return Comparison(str(run_a), str(run_b), use_pairs, confidence, resamples, seed, out,
                      correction)


def _method(c: Comparison) -> str:
    mode = ("paired by conversation index and branch" if c.paired else "independent samples")
    if c.correction == "bonferroni" and len(c.metrics) > 1:
        level = c.metrics[0].level
        corr = (f"Bonferroni over {len(c.metrics)} metrics: each interval {level:.4%}, "
                f"family-wise {c.confidence:.0%}")
    else:
        corr = f"{c.confidence:.0%} intervals, no multiple-comparison correction"
    return (f"{mode}; whole conversations resampled ({c.resamples} bootstrap resamples, "
            f"seed {c.seed}); {corr}")


def format_table(c: Comparison) -> str:
    pct = f"{c.confidence:.0%}"
    head = ["metric", "A", "B", "B - A", "CI", "n", "verdict"]
    rows = [[m.metric, f"{m.mean_a:.4g}", f"{m.mean_b:.4g}", f"{m.diff:+.4g}",
             f"[{m.ci_low:+.4g}, {m.ci_high:+.4g}]",
             str(m.n_a) if m.paired else f"{m.n_a}/{m.n_b}", m.verdict] for m in c.metrics]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [f"A = {c.run_a}", f"B = {c.run_b}", _method(c), ""]
    for r in [head, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    noise = [m.metric for m in c.metrics if m.within_noise]
    if noise:
        lines.append("")
        lines.append(f"Within noise (interval contains 0, {pct} family-wise"
                     f"{'' if c.correction == 'bonferroni' else ' per metric'}): "
                     f"{', '.join(noise)}.")
    return "\n".join(lines)


def format_html(c: Comparison) -> str:
    rows = "".join(
        f"<tr><td>{escape(m.metric)}</td><td>{m.mean_a:.4g}</td><td>{m.mean_b:.4g}</td>"
        f"<td>{m.diff:+.4g}</td><td>[{m.ci_low:+.4g}, {m.ci_high:+.4g}]</td>"
        f"<td>{m.n_a if m.paired else f'{m.n_a}/{m.n_b}'}</td><td>{escape(m.verdict)}</td></tr>"
        for m in c.metrics)
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>turnloom compare"
            f"</title><style>td,th{{padding:.2em .7em;border-bottom:1px solid #eee}}</style>"
            f"</head><body><h1>Compare</h1><p>A = {escape(c.run_a)}<br>B = {escape(c.run_b)}"
            f"<br>{escape(_method(c))}</p><table><tr><th>metric</th><th>A</th><th>B</th>"
            f"<th>B - A</th><th>CI</th><th>n</th><th>verdict</th></tr>{rows}</table></body></html>")
