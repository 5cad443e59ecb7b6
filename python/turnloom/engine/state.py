"""The engine's bookkeeping objects: conversation trees, growing branches, turn jobs."""

from __future__ import annotations

import msgspec

from turnloom.records import (
    ConversationRecord,
    ConversationState,
)
from turnloom.runtime import (
    BackendRT,
    ParticipantRT,
)


class Tree:
    """One conversation: a root and every branch grown from it."""

    __slots__ = ("index", "cid", "seed", "root", "live", "records", "backends", "forks")

    def __init__(self, index: int, cid: str, seed: int,
                 forks: dict[int, tuple[int, int]]) -> None:
        self.index = index
        self.cid = cid
        self.seed = seed
        self.root = -1
        self.live = 0
        self.records: list[ConversationRecord] = []
        self.backends: set[BackendRT] = set()
        self.forks = forks  # turn -> (siblings, branch-id multiplier)


class Branch:
    """A root-to-leaf path being grown: one conversation as hooks see it."""

    __slots__ = ("tree", "state", "branch", "node", "node_owner", "turn", "lens")

    def __init__(self, tree: Tree, state: ConversationState, branch: int, node: int,
                 node_owner: int, turn: int, lens: list[int]) -> None:
        self.tree = tree
        self.state = state
        self.branch = branch
        self.node = node
        self.node_owner = node_owner  # branch that created `node` (-1: the root)
        self.turn = turn  # index of the next message
        self.lens = lens  # lane length per view


class Job(msgspec.Struct):
    """One turn to generate (a struct: made once per turn, built in C)."""

    br: Branch
    p: ParticipantRT
    seed: int
    attempt: int = 0
    cached: int = -1




class RunStalled(RuntimeError):
    """Conversations are active but nothing can make progress (an engine bug)."""


class IndexStack:
    """The conversation indices still to start, popped lowest first, without a
    list of them all (a resumed run uses a plain list of the ones left)."""

    __slots__ = ("_next", "_stop")

    def __init__(self, indices: range) -> None:
        self._next = indices.start
        self._stop = indices.stop

    def __len__(self) -> int:
        return max(0, self._stop - self._next)

    def pop(self) -> int:
        if self._next >= self._stop:
            raise IndexError("pop from an empty IndexStack")
        self._next += 1
        return self._next - 1
