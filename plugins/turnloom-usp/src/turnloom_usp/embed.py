"""Text embeddings without a neural model: hashed word n-gram TF-IDF vectors.

Good enough to tell profiles apart by their wording (occupation, goal, style),
deterministic across processes (crc32, not Python's salted `hash`), and cheap:
a few hundred profiles embed in milliseconds.
"""

from __future__ import annotations

import re
import zlib
from typing import Iterable, Iterator, Sequence

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")


def ngrams(text: str, n_max: int = 2) -> list[str]:
    words = _WORD.findall(text.lower())
    out = list(words)
    for n in range(2, n_max + 1):
        out += [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
    return out


def hashed_counts(texts: Sequence[str], dim: int = 4096, n_max: int = 2) -> np.ndarray:
    counts = np.zeros((len(texts), dim), dtype=np.float64)
    for row, text in enumerate(texts):
        for gram in ngrams(text, n_max):
            counts[row, zlib.crc32(gram.encode()) % dim] += 1.0
    return counts


def tfidf_embed(texts: Sequence[str], dim: int = 4096, n_max: int = 2) -> np.ndarray:
    """L2-normalised TF-IDF rows (IDF fitted on `texts` themselves)."""
    counts = hashed_counts(texts, dim, n_max)
    df = (counts > 0).sum(axis=0)
    idf = np.log((1 + len(texts)) / (1 + df)) + 1.0
    vectors = np.log1p(counts) * idf
    return normalize(vectors)


def tfidf_batches(texts: Sequence[str], dim: int = 4096, n_max: int = 2,
                  batch_size: int = 512) -> Iterator[np.ndarray]:
    """The rows of `tfidf_embed(texts)`, `batch_size` at a time: document
    frequencies come from one pass over sparse counts, so only one batch of
    dense rows exists at a time (memory O(batch_size x dim), not O(N x dim))."""
    sparse: list[dict[int, float]] = []
    df = np.zeros(dim, dtype=np.float64)
    for text in texts:
        counts: dict[int, float] = {}
        for gram in ngrams(text, n_max):
            slot = zlib.crc32(gram.encode()) % dim
            counts[slot] = counts.get(slot, 0.0) + 1.0
        sparse.append(counts)
        df[list(counts)] += 1.0
    idf = np.log((1 + len(texts)) / (1 + df)) + 1.0
    for start in range(0, len(sparse), batch_size):
        chunk = sparse[start:start + batch_size]
        rows = np.zeros((len(chunk), dim), dtype=np.float64)
        for row, counts in enumerate(chunk):
            if counts:
                slots = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
                rows[row, slots] = np.fromiter(counts.values(), dtype=np.float64,
                                               count=len(counts))
        yield normalize(np.log1p(rows) * idf)


def mean_pairwise_cosine(batches: Iterable[np.ndarray]) -> tuple[float, int] | None:
    """(mean cosine over all pairs i != j, N) of unit (or zero) row vectors given in
    batches, or None for fewer than two rows, in O(N x dim) time and O(dim) memory.

    With S the sum of the vectors, |S|^2 = sum_i |u_i|^2 + sum_{i != j} u_i . u_j,
    so the mean over the N(N-1) ordered pairs (the same as over the unordered
    ones) is (|S|^2 - sum_i |u_i|^2) / (N(N-1)), no N x N matrix needed."""
    total: np.ndarray | None = None
    squares, n = 0.0, 0
    for rows in batches:
        total = rows.sum(axis=0) if total is None else total + rows.sum(axis=0)
        squares += float((rows * rows).sum())
        n += len(rows)
    if n < 2 or total is None:
        return None
    return (float(total @ total) - squares) / (n * (n - 1)), n


def normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def reduce_dimension(vectors: np.ndarray, k: int) -> np.ndarray:
    """Project rows onto their top-`k` principal components, normalised.

    Computed from the rows' Gram matrix (n x n, n = a few hundred profiles) rather than
    an SVD of the wide hashed matrix: the same components, far less work. Each
    component's sign is fixed so the result does not depend on the LAPACK build."""
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    eigenvalues, eigenvectors = np.linalg.eigh(centred @ centred.T)
    k = min(k, len(eigenvalues))
    top = np.argsort(eigenvalues, kind="stable")[::-1][:k]
    comps = eigenvectors[:, top] * np.sqrt(np.clip(eigenvalues[top], 0.0, None))
    signs = np.sign(comps[np.abs(comps).argmax(axis=0), range(k)])
    return normalize(comps * np.where(signs == 0, 1.0, signs))
