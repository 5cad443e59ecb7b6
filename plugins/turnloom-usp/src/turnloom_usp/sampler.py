"""The `usp-profiles` sampler: diverse profiles from a bank, rare ones included.

Each profile is embedded (hashed n-gram TF-IDF of its rendered text, name left
out, reduced by SVD); its density is estimated from the distance to its k
nearest neighbours, and profiles are drawn with weight proportional to
(1 / density) ** alpha, so sparse regions of the bank are not drowned out by
crowded ones. A fraction of draws are "virtual" profiles: the facts of the drawn
profile with the traits of its nearest neighbour. Strategy "by-index" instead
plays the bank in order, each profile once per pass (a replay of a fixed set).
"""

from __future__ import annotations

import random
from typing import Any, Literal, Mapping

import msgspec
import numpy as np

from turnloom.items import item_index
from turnloom_usp.bank import load_bank
from turnloom_usp.embed import reduce_dimension, tfidf_embed
from turnloom_usp.profile import Profile, to_dict
from turnloom_usp.render import render_profile


class ProfileSamplerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    bank: str | None = None  # JSON file of profiles (default: the shipped bank)
    # "density" and "uniform" draw (seeded, with replacement); "by-index" plays bank
    # profile i mod len(bank) in conversation i, each once per pass, as they are
    # (no virtual profiles), through turnloom.items
    strategy: Literal["density", "uniform", "by-index"] = "density"
    neighbours: int = 10  # k of the kNN density estimate
    dims: int = 32  # SVD dimensions the density is measured in
    alpha: float = 2.0  # weight = (1 / density) ** alpha; 0 is uniform
    virtual: float = 0.2  # fraction of draws that mix facts and a neighbour's traits


def embedding_text(profile: Profile) -> str:
    """What a profile is embedded as: its rendered text without the name (names are
    unique per profile and would only add noise)."""
    return render_profile(msgspec.structs.replace(
        profile, facts=msgspec.structs.replace(profile.facts, name=None)))


def knn_distances(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the mean cosine distance to its k nearest other rows, and the index
    of its nearest other row."""
    distances = 1.0 - vectors @ vectors.T
    np.fill_diagonal(distances, np.inf)
    k = max(1, min(k, len(vectors) - 1))
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
    mean = np.take_along_axis(distances, nearest, axis=1).mean(axis=1)
    return np.clip(mean, 1e-9, None), nearest[:, 0]


class DiverseProfileSampler:
    """Draws one profile per conversation, seeded by the conversation's rng."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        try:
            s = msgspec.convert(dict(settings), ProfileSamplerSettings)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid usp-profiles settings: {exc}") from None
        for field, ok in (("neighbours", s.neighbours >= 1), ("dims", s.dims >= 1),
                          ("alpha", s.alpha >= 0), ("virtual", 0 <= s.virtual <= 1)):
            if not ok:
                raise ValueError(f"invalid usp-profiles settings: `{field}` out of range "
                                 f"(got {getattr(s, field)!r})")
        self.s = s
        self.bank = load_bank(s.bank)
        if len(self.bank) < 2:
            raise ValueError("invalid usp-profiles settings: the bank needs at least 2 profiles")
        vectors = tfidf_embed([embedding_text(p) for p in self.bank])
        self.vectors = reduce_dimension(vectors, s.dims)
        spread, self.nearest = knn_distances(self.vectors, s.neighbours)
        self.density = 1.0 / spread
        if s.strategy == "uniform":
            weights = np.ones(len(self.bank))
        else:
            weights = (1.0 / self.density) ** s.alpha
        self.weights: list[float] = (weights / weights.sum()).tolist()
        self._indices = range(len(self.bank))

    def draw(self, rng: random.Random) -> Profile:
        i = rng.choices(self._indices, weights=self.weights)[0]
        mix = rng.random() < self.s.virtual  # drawn every time: one stream per conversation
        if not mix:
            return self.bank[i]
        base, other = self.bank[i], self.bank[int(self.nearest[i])]
        return msgspec.structs.replace(
            base, traits=other.traits, virtual=True, traits_from=other.id,
            id=f"{base.id}+{other.id}" if base.id and other.id else None)

    def sample(self, rng: random.Random, index: int) -> dict[str, Any]:
        if self.s.strategy == "by-index":
            return to_dict(self.bank[item_index(len(self.bank), index, 0, "by-index")])
        return to_dict(self.draw(rng))
