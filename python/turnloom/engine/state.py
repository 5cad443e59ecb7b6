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

    __slots__ = ("tree", "state", "branch", "node", "node_owner", "turn", "lens", "full",
                 "rr", "route", "tool_steps", "tool_calls")

    def __init__(self, tree: Tree, state: ConversationState, branch: int, node: int,
                 node_owner: int, turn: int, lens: list[int], full: int = 0) -> None:
        self.tree = tree
        self.state = state
        self.branch = branch
        self.node = node
        self.node_owner = node_owner  # branch that created `node` (-1: the root)
        self.turn = turn  # index of the next message
        self.lens = lens  # lane length per view
        # Bit v set: view v's prompts are rendered whole from its messages, not
        # grown from its lane (the template is not append-only for what it holds).
        self.full = full
        self.rr = turn  # messages that ended a participant's turn (the turn order's clock)
        self.route = -1  # participant that must speak next (tool routing), -1: the order's
        self.tool_steps = 0  # tool-calling messages since the caller last replied in text
        self.tool_calls = 0  # tool calls made in this branch

    def sibling(self, state: ConversationState, branch: int) -> Branch:
        """A fork's extra branch: the same position, its own state."""
        other = Branch(self.tree, state, branch, self.node, self.node_owner, self.turn,
                       list(self.lens), self.full)
        other.rr = self.rr
        other.route = self.route
        other.tool_steps = self.tool_steps
        other.tool_calls = self.tool_calls
        return other


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
