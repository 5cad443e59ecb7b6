"""Diversity across many users without an N x N matrix: the streamed mean pairwise
cosine equals the matrix's, and its memory does not grow with N squared."""

from __future__ import annotations

import tracemalloc
from typing import Any, Sequence

import numpy as np
import pytest

from turnloom_scorers import diversity as scorer_diversity
from turnloom_usp.diversity import diversity
from turnloom_usp.embed import mean_pairwise_cosine, tfidf_batches, tfidf_embed


def naive_mean_pairwise(vectors: np.ndarray) -> float:
    unit = vectors / np.where((n := np.linalg.norm(vectors, axis=1, keepdims=True)) == 0, 1, n)
    sims = unit @ unit.T
    return float(sims[~np.eye(len(unit), dtype=bool)].mean())


def test_hand_made_case() -> None:
    # Three unit vectors: (1,0), (0,1), (1,1)/sqrt2. Pair cosines 0, 1/sqrt2, 1/sqrt2:
    # mean (0 + 2/sqrt2) / 3 = sqrt2 / 3.
    v = np.array([[1.0, 0.0], [0.0, 1.0], [1 / np.sqrt(2), 1 / np.sqrt(2)]])
    mean, n = mean_pairwise_cosine([v[:2], v[2:]])  # type: ignore[misc]
    assert n == 3 and mean == pytest.approx(np.sqrt(2) / 3, abs=1e-12)
    assert mean_pairwise_cosine([v[:1]]) is None


@pytest.mark.parametrize("n", [2, 3, 17, 64])
def test_streamed_equals_the_matrix(n: int) -> None:
    rng = np.random.default_rng(n)
    raw = rng.normal(size=(n, 8)) + 0.5
    raw[0] = 0.0  # an empty text embeds as the zero vector
    unit = raw / np.where((k := np.linalg.norm(raw, axis=1, keepdims=True)) == 0, 1, k)
    streamed = mean_pairwise_cosine(unit[i:i + 5] for i in range(0, n, 5))
    assert streamed is not None and streamed[0] == pytest.approx(naive_mean_pairwise(raw),
                                                                 abs=1e-12)
    embedded = scorer_diversity.embedding_self_similarity(
        [str(i) for i in range(n)], lambda texts: raw[[int(t) for t in texts]], batch_size=4)
    assert embedded == pytest.approx(naive_mean_pairwise(raw), abs=1e-12)


def test_usp_diversity_equals_the_tfidf_matrix() -> None:
    texts = ["plan my dinners for the week", "fix a leaking tap", "plan a trip to Rome",
             "", "fix my bike's chain", "dinner ideas with lentils"]
    records = [{"messages": [{"role": "user", "name": "user", "content": t}]} for t in texts]
    out = diversity(records)
    kept = [t for t in texts if t.strip()]
    assert out["self_similarity"] == pytest.approx(naive_mean_pairwise(tfidf_embed(kept)),
                                                   abs=1e-12)
    batched = np.vstack(list(tfidf_batches(kept, batch_size=2)))
    assert np.allclose(batched, tfidf_embed(kept))


def test_memory_stays_flat_for_many_vectors() -> None:
    # 200,000 vectors of 64 dimensions: the similarity matrix would take 320 GB in
    # float64; the stream keeps one batch and the running sum.
    n, dim, batch = 200_000, 64, 4096
    rng = np.random.default_rng(0)

    def embed(texts: Sequence[str]) -> Any:
        return rng.normal(size=(len(texts), dim))

    texts = [""] * n
    tracemalloc.start()
    try:
        value = scorer_diversity.embedding_self_similarity(texts, embed, batch_size=batch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert value is not None and abs(value) < 1e-3  # independent random directions
    assert peak < 20 * 1024 * 1024, peak  # a few batches, not N x N (or N x dim)


def test_usp_diversity_memory_for_many_users() -> None:
    n = 5_000  # the dense TF-IDF rows alone would take 164 MB, the users x users matrix 200 MB
    records = [{"messages": [{"role": "user", "name": "user",
                              "content": f"user {i} asks about topic {i % 97} and {i % 13}"}]}
               for i in range(n)]
    tracemalloc.start()
    try:
        out = diversity(records)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 0.0 < out["self_similarity"] < 1.0 and out["users"] == n
    assert peak < 100 * 1024 * 1024, peak
