"""Lexical diversity: distinct-n, repetition within a conversation, and across a corpus.

A scorer sees one conversation at a time, so the ``diversity`` scorer measures
what one conversation shows (distinct-n over a participant's turns, how much
its turns repeat each other, turn length statistics), and `corpus_diversity`
measures a whole run from its exported records (self-similarity of each
conversation against the others). `embedding_self_similarity` adds a semantic
measure, the mean pairwise cosine of the conversations' embeddings, streamed
without an N x N matrix, from an embedding function (your own, or
`turnloom_scorers.embedding.mean_pool_embedder()`: mean-pooled hidden states of
the embedded SmolLM2 model, not a trained sentence encoder).
"""

from __future__ import annotations

import random
import statistics
from typing import Any, Callable, Iterable, Mapping, Sequence

from turnloom.records import ConversationState, TurnRecord
from turnloom.references import check_participant_names

from turnloom_scorers import textutil
from turnloom_scorers.settings import Settings, decode

ORDERS = (1, 2, 3, 4)


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct n-grams / all n-grams over the texts (0.0 when there are none)."""
    grams = [g for text in texts for g in textutil.ngrams(textutil.tokens(text), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def jaccard(a: set[Any], b: set[Any]) -> float:
    if not a and not b:
        return 0.0
    return len(a & b) / len(a | b)


def _gram_set(text: str, n: int) -> set[tuple[str, ...]]:
    return set(textutil.ngrams(textutil.tokens(text), n))


def self_similarity(texts: Sequence[str], n: int = 2, max_others: int | None = None,
                    seed: int = 0) -> float:
    """Mean over texts of the highest n-gram Jaccard similarity to any other text
    (1.0: every text has a near copy; 0.0: no shared n-gram). With `max_others`,
    each text is compared with that many others drawn with `seed` (for large corpora)."""
    sets = [_gram_set(t, n) for t in texts]
    if len(sets) < 2:
        return 0.0
    rng = random.Random(seed)
    total = 0.0
    for i, grams in enumerate(sets):
        others = [j for j in range(len(sets)) if j != i]
        if max_others is not None and len(others) > max_others:
            others = rng.sample(others, max_others)
        total += max(jaccard(grams, sets[j]) for j in others)
    return total / len(sets)


def length_stats(texts: Sequence[str]) -> dict[str, float]:
    lengths = [textutil.count_words(t) for t in texts]
    if not lengths:
        return {}
    return {"words_mean": statistics.fmean(lengths),
            "words_sd": statistics.pstdev(lengths) if len(lengths) > 1 else 0.0,
            "words_min": min(lengths), "words_max": max(lengths)}


class DiversitySettings(Settings, frozen=True):
    participant: str | None = None  # default: every turn
    n: int = 2  # n-gram order of the repetition measure


class DiversityScorer:
    """Per turn: words, and n-gram overlap with the participant's earlier turns.
    Per conversation: distinct-1..4, repetition (self-similarity among its own
    turns) and turn length statistics."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        s = decode(DiversitySettings, settings, "diversity")
        if s.n < 1:
            raise ValueError("invalid diversity settings: `n` must be at least 1")
        self.participant, self.n = s.participant, s.n

    def check_participants(self, names: Sequence[str]) -> None:
        check_participant_names(names, participant=self.participant)

    def _texts(self, conversation: ConversationState, upto: int | None = None) -> list[str]:
        turns = conversation.turns[:upto]
        return [t.text for t in turns if self.participant in (None, t.participant)]

    def score_turn(self, conversation: ConversationState, turn: TurnRecord) -> dict[str, Any] | None:
        if self.participant not in (None, turn.participant):
            return None
        earlier = self._texts(conversation, turn.turn)
        grams = _gram_set(turn.text, self.n)
        overlap = max((jaccard(grams, _gram_set(t, self.n)) for t in earlier), default=0.0)
        return {"words": textutil.count_words(turn.text), "max_overlap": overlap}

    def score_conversation(self, conversation: ConversationState) -> dict[str, Any] | None:
        texts = self._texts(conversation)
        if not texts:
            return None
        out: dict[str, Any] = {f"distinct_{n}": distinct_n(texts, n) for n in ORDERS}
        out["repetition"] = self_similarity(texts, self.n)
        out.update(length_stats(texts))
        return out


def corpus_diversity(records: Iterable[Mapping[str, Any]], participant: str | None = None,
                     n: int = 2, max_others: int | None = 200, seed: int = 0,
                     embed: Callable[[Sequence[str]], Any] | None = None) -> dict[str, float]:
    """Diversity across a run's exported records (conversations.jsonl rows): each
    conversation's text is the participant's messages joined; distinct-1..4 over
    all of them and self-similarity of each conversation against the others
    (lexical; and with `embed`, e.g. `embedding.mean_pool_embedder()`, the mean
    pairwise cosine of their embeddings as `embedding_self_similarity`)."""
    docs = []
    for record in records:
        parts = [m["content"] for m in record.get("messages", [])
                 if m.get("role") != "system" and participant in (None, m.get("name"))]
        if parts:
            docs.append("\n".join(parts))
    if not docs:
        return {}
    out = {f"distinct_{k}": distinct_n(docs, k) for k in ORDERS}
    out["self_similarity"] = self_similarity(docs, n, max_others, seed)
    if embed is not None:
        semantic = embedding_self_similarity(docs, embed)
        if semantic is not None:
            out["embedding_self_similarity"] = semantic
    out["conversations"] = len(docs)
    return out


def mean_pairwise_cosine(batches: Iterable[Any]) -> tuple[float, int] | None:
    """(mean cosine over all ordered pairs i != j, number of vectors) of the rows of
    `batches` (arrays or tensors [rows, dim], normalised here), or None for fewer
    than two rows.

    Streamed in O(N * dim) time and O(dim) memory, without the N x N matrix: for
    unit vectors u_i with sum S, |S|^2 = sum_i |u_i|^2 + sum_{i != j} u_i . u_j, so
    the mean over the N(N-1) pairs is (|S|^2 - sum_i |u_i|^2) / (N(N-1)) (a zero
    vector, normalised to zero, adds nothing to either sum)."""
    import numpy as np

    total: Any = None
    squares, n = 0.0, 0
    for batch in batches:
        rows = np.asarray(batch.detach().cpu() if hasattr(batch, "detach") else batch,
                          dtype=np.float64)
        if rows.ndim != 2:
            raise ValueError(f"embeddings must be [rows, dim], got shape {rows.shape}")
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        unit = rows / np.where(norms == 0, 1.0, norms)
        total = unit.sum(axis=0) if total is None else total + unit.sum(axis=0)
        squares += float((unit * unit).sum())
        n += len(unit)
    if n < 2:
        return None
    return (float(total @ total) - squares) / (n * (n - 1)), n


def embedding_self_similarity(texts: Sequence[str], embed: Callable[[Sequence[str]], Any],
                              batch_size: int = 256) -> float | None:
    """Mean pairwise cosine similarity of the texts' embeddings (over all pairs of
    different texts; 1.0: all point the same way). `embed(texts) -> [len(texts),
    dim]` (array or tensor) is called on `batch_size` texts at a time and only the
    running sum of unit vectors is kept (`mean_pairwise_cosine`), so memory does
    not grow with the square of the corpus. None when numpy is not importable or
    there are fewer than two texts."""
    try:
        import numpy  # noqa: F401
    except ImportError:
        return None
    if batch_size < 1:
        raise ValueError("embedding_self_similarity: batch_size must be at least 1")
    batches = (embed(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size))
    result = mean_pairwise_cosine(batches)
    return None if result is None else result[0]
