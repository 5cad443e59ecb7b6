"""Diversity across simulated users, computed over exported conversation records.

    python -m turnloom_usp.diversity RUN_DIR/conversations.jsonl [--participant user]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from turnloom_usp.embed import mean_pairwise_cosine, tfidf_batches
from turnloom_usp.metrics import tokens


def user_texts(record: Mapping[str, Any], participant: str) -> list[str]:
    return [m["content"] for m in record.get("messages", []) if m.get("name") == participant]


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct n-grams over all n-grams of all texts (0 when there are none)."""
    grams = [tuple(w[i:i + n]) for t in texts for w in [tokens(t)] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def diversity(records: Iterable[Mapping[str, Any]], participant: str = "user") -> dict[str, Any]:
    """How different the simulated users of a run are from each other:
    distinct-1/2 over all their messages, the mean pairwise cosine similarity of
    their conversations (TF-IDF of each user's messages together; lower is more
    diverse; streamed in O(users x dim) memory-light passes, see
    `embed.mean_pairwise_cosine`), and how many distinct profiles were played."""
    records = list(records)
    per_user = [" ".join(user_texts(r, participant)) for r in records]
    per_user = [t for t in per_user if t.strip()]
    profiles = {json.dumps(r.get("participants", {}).get(participant, {}).get("profile"),
                           sort_keys=True) for r in records}
    out: dict[str, Any] = {
        "users": len(per_user),
        "distinct_profiles": len(profiles - {"null"}),
        "distinct_1": distinct_n(per_user, 1),
        "distinct_2": distinct_n(per_user, 2),
    }
    streamed = mean_pairwise_cosine(tfidf_batches(per_user))
    if streamed is not None:
        # Streamed from the sum of the unit vectors: no users x users matrix.
        out["self_similarity"] = streamed[0]
        out["diversity"] = 1.0 - out["self_similarity"]
    return out


def read_records(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m turnloom_usp.diversity",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("conversations", help="a run's conversations.jsonl (or its run directory)")
    parser.add_argument("--participant", default="user")
    args = parser.parse_args(argv)
    path = Path(args.conversations)
    if path.is_dir():
        path = path / "conversations.jsonl"
    try:
        records = read_records(path)
    except (OSError, json.JSONDecodeError) as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(diversity(records, args.participant), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
