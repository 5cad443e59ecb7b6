"""Seed derivation: run seed -> conversation seed -> turn seed.

Stable across processes and platforms (blake2b, not Python's `hash`), so a
resumed run draws exactly what an uninterrupted one would have.
"""

from __future__ import annotations

from hashlib import blake2b

_MASK63 = (1 << 63) - 1
# Sampling seeds stay below 2**31: some backends (numpy, int32 APIs) reject more.
_MASK31 = (1 << 31) - 1


def derive(seed: int, *parts: object) -> int:
    """A 63-bit seed from `seed` and a path of labels/integers."""
    h = blake2b(f"{seed}/{'/'.join(map(str, parts))}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & _MASK63


def conversation_seed(run_seed: int, index: int) -> int:
    return derive(run_seed, "conversation", index)


_M64 = (1 << 64) - 1


def turn_seed(conversation_seed: int, branch: int, turn: int) -> int:
    """The sampling seed of one turn; sibling branches at a fork get different ones.

    SplitMix64's finaliser over (conversation seed, branch, turn): stable like
    blake2b, but cheap enough to run once per turn."""
    x = (conversation_seed + 0x9E3779B97F4A7C15 * (1 + (branch << 32) + turn)) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return (x ^ (x >> 31)) & _MASK31


def profile_seed(conversation_seed: int, participant: str) -> int:
    return derive(conversation_seed, "profile", participant)


def drawn_fork_turn(conversation_seed: int, first: int, last: int, step: int) -> int:
    """The fork turn of one conversation, drawn from first, first+step, ... <= last."""
    turns = range(first, last + 1, step)
    return turns[derive(conversation_seed, "fork") % len(turns)]


def judge_seed(conversation_seed: int, branch: int, judge: str, key: str, attempt: int) -> int:
    """The sampling seed of one judge call; a retry after unparseable output differs."""
    return derive(conversation_seed, "judge", branch, judge, key, attempt) & _MASK31
