"""Report figures: matplotlib (Agg, no display) rendered to PNG bytes."""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from turnloom.report.data import RunData


def pyplot(purpose: str = "reports") -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display), or an
    ImportError saying that `purpose` needs the report extra."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(f"{purpose} need matplotlib: pip install 'turnloom[report]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def score_curves(data: RunData, max_metrics: int = 12) -> bytes | None:
    """Mean per-turn score against turn index, one panel per metric, one line per
    participant (and the model it speaks through)."""
    metrics = sorted({m for m, _ in data.turn_curves})[:max_metrics]
    if not metrics:
        return None
    plt = pyplot()
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for (m, participant), by_turn in sorted(data.turn_curves.items()):
            if m != metric:
                continue
            turns = sorted(by_turn)
            ax.plot(turns, [by_turn[t].value for t in turns], marker="o",
                    label=data.participant_label(participant))
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("turn")
        _integer_ticks(ax)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    return _png(fig)


def _integer_ticks(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _histogram(ax: Any, counts: Mapping[int, int], label: str | None = None) -> None:
    values = sorted(counts)
    ax.bar(values, [counts[v] for v in values], alpha=0.6, label=label,
           width=max(1.0, (values[-1] - values[0]) / 60) if values else 1.0)


def length_distributions(data: RunData) -> bytes | None:
    """Turns per conversation, and tokens (or words) per turn by participant."""
    if not data.turns_per_conversation:
        return None
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    _histogram(a, data.turns_per_conversation)
    a.set_title("turns per conversation", fontsize=10)
    a.set_xlabel("turns")
    if len(data.turns_per_conversation) <= 12:
        a.set_xticks(sorted(data.turns_per_conversation))
    a.set_ylabel("conversations")
    per_turn = data.tokens_per_turn or data.words_per_turn
    unit = "tokens" if data.tokens_per_turn else "words"
    for participant, counts in sorted(per_turn.items()):
        _histogram(b, counts, data.participant_label(participant))
    b.set_title(f"{unit} per turn", fontsize=10)
    b.set_xlabel(unit)
    b.set_ylabel("turns")
    if per_turn:
        b.legend(fontsize=7)
    return _png(fig)


def bar_chart(counts: Mapping[str, float], title: str, xlabel: str) -> bytes | None:
    """Horizontal bars, largest first (stop reasons, failures by cause)."""
    if not counts:
        return None
    plt = pyplot()
    items = sorted(counts.items(), key=lambda kv: -kv[1])[:15]
    fig, ax = plt.subplots(figsize=(7, 1.6 + 0.35 * len(items)))
    ax.barh([k[:50] for k, _ in reversed(items)], [v for _, v in reversed(items)])
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    return _png(fig)


def tokens_and_cache(summary: Mapping[str, Any]) -> bytes | None:
    """Prompt, cached and completion tokens per participant."""
    parts = {n: u for n, u in summary.get("participants", {}).items()
             if u.get("prompt_tokens") or u.get("completion_tokens")}
    if not parts:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 1.8 + 0.5 * len(parts)))
    names = list(parts)
    y = range(len(names))
    prompt = [parts[n].get("prompt_tokens", 0) for n in names]
    cached = [parts[n].get("cached_tokens", 0) for n in names]
    completion = [parts[n].get("completion_tokens", 0) for n in names]
    ax.barh([i + 0.25 for i in y], prompt, height=0.25, label="prompt")
    ax.barh(list(y), cached, height=0.25, label="cached (of prompt)")
    ax.barh([i - 0.25 for i in y], completion, height=0.25, label="completion")
    ax.set_yticks(list(y), names)
    ax.set_xlabel("tokens")
    ax.set_title("tokens per participant", fontsize=10)
    ax.legend(fontsize=7)
    return _png(fig)
