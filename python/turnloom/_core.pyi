"""Typed stub of turnloom's native module (built from rust/py with PyO3).

Node ids are opaque integers that carry a generation: once a node is freed its
id raises StaleNodeError forever, even after the slot is reused.
"""

from typing import Sequence, final

from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

__all__ = ["CapacityError", "FINISH_REASONS", "Forest", "InvalidArgumentError", "JobError", "ROLES", "RadixCache", "Scheduler", "StaleNodeError", "TurnloomError", "UnknownNodeError", "__version__", "turn_seeds"]

__version__: str

ROLES: tuple[str, ...]
"""Canonical message roles a node can hold, in code order."""

FINISH_REASONS: tuple[str, ...]
"""Finish reasons a node can hold, in code order ("" means none)."""

class TurnloomError(Exception):
    """Base class of every error raised by the native core."""

class UnknownNodeError(TurnloomError, KeyError):
    """The id never named a node of this forest."""

class StaleNodeError(TurnloomError, KeyError):
    """The id named a node that has been freed."""

class CapacityError(TurnloomError):
    """A size or budget limit would be exceeded."""

class JobError(TurnloomError, KeyError):
    """A job id is unknown, or pushed twice."""

class InvalidArgumentError(TurnloomError, ValueError):
    """An argument is out of range or inconsistent with the others."""

@final
class Forest:
    """Arena of conversation trees; every conversation is a root-to-leaf path."""

    def __init__(self) -> None: ...
    def __len__(self) -> int:
        """Number of live nodes."""
    def add_root(
        self,
        participant: int,
        role: str,
        text: str,
        segments: dict[int, Sequence[int]] | None = None,
        finish: str = "",
        meta: str = "",
    ) -> int: ...
    def append(
        self,
        parent: int,
        participant: int,
        role: str,
        text: str,
        segments: dict[int, Sequence[int]] | None = None,
        finish: str = "",
        meta: str = "",
    ) -> int:
        """Add a child under `parent` (several children make a branch)."""
    def append_many(
        self,
        parents: Sequence[int],
        participants: Sequence[int],
        roles: Sequence[str],
        texts: Sequence[str],
        segments: Sequence[dict[int, Sequence[int]] | None] | None = None,
        finishes: Sequence[str] | None = None,
        metas: Sequence[str] | None = None,
    ) -> list[int]:
        """Append one node per entry in a single call; all-or-nothing on error."""
    def append_packed(
        self,
        parents: Sequence[int | None],
        participants: Sequence[int],
        roles: Sequence[str | int],
        texts: Sequence[str],
        views: Sequence[int],
        tokens: Buffer,
        offsets: Sequence[int] | Buffer,
        finishes: Sequence[str | int] | None = None,
        metas: Sequence[str] | None = None,
    ) -> list[int]:
        """Append a batch whose token segments lie back to back in one buffer; returns the ids.

        Node i goes under `parents[i]` (None starts a new tree) and gets one segment for each
        entry of `views` (the same views for every node of the batch; a view absent from a node
        needs another call or `set_segment`). Segment k belongs to node k // len(views) and
        view views[k % len(views)] and is tokens[offsets[k]:offsets[k + 1]]; `offsets` holds
        len(parents) * len(views) + 1 non-decreasing entries, the last at most the token count.

        `tokens` is read in place, without one Python int per token, from any C-contiguous
        buffer of uint32 items (array('I'), numpy uint32 of any shape, memoryview) or of raw
        bytes holding little-endian uint32. `offsets` may be ints or a buffer of 4- or 8-byte
        integers (numpy int64 included). Roles and finishes are names or codes (indexes into
        ROLES and FINISH_REASONS).

        All-or-nothing, like append_many. TypeError for a buffer of another item type,
        InvalidArgumentError for offsets that are short, long, decreasing, negative or past
        the tokens, and for bad views, roles, finishes, participants or lengths."""
    def set_segment(self, node: int, view: int, tokens: Sequence[int]) -> None:
        """Set (or replace) the token segment `node` contributes to `view`'s lane."""
    def set_meta(self, node: int, meta: str) -> None: ...
    def set_finish(self, node: int, finish: str) -> None: ...
    def is_live(self, node: int) -> bool: ...
    def parent(self, node: int) -> int | None: ...
    def children(self, node: int) -> list[int]: ...
    def depth(self, node: int) -> int:
        """0 for a root."""
    def root(self, node: int) -> int: ...
    def path(self, node: int) -> list[int]:
        """Node ids from the root down to `node`, inclusive."""
    def node(self, node: int) -> dict[str, object]:
        """participant, role, text, finish, meta, depth, parent, children."""
    def messages(self, node: int) -> list[tuple[int, str, str]]:
        """(participant, role, text) of every node on the path, root first."""
    def segment(self, node: int, view: int) -> list[int] | None: ...
    def lane(self, node: int, view: int) -> list[int]:
        """Concatenation of the path's segments for `view`; nodes without one add nothing."""
    def lane_len(self, node: int, view: int) -> int: ...
    def lanes_for(
        self,
        nodes: Sequence[int],
        views: Sequence[int],
        suffixes: Sequence[Sequence[int] | None] | None = None,
    ) -> list[list[int]]:
        """Lanes of (nodes[i], views[i]); `suffixes[v]` (when given) ends every lane of view v."""
    def lanes_packed(
        self, nodes: Sequence[int] | Buffer, views: int | Sequence[int] | Buffer
    ) -> tuple[memoryview, memoryview]:
        """Lanes of (nodes[i], views[i]) back to back: (tokens, offsets).

        `tokens` is a memoryview of uint32 items (format 'I') over one new bytes object,
        written in place with no per-token Python objects; `offsets` is a memoryview of
        uint64 items (format 'Q') with len(nodes) + 1 entries from 0, lane i being
        tokens[offsets[i]:offsets[i + 1]]. Both support the buffer protocol
        (numpy.asarray, array('I', ...)) and .tolist(). `views` may be one int for every
        node; `nodes` and `views` may be integer buffers."""
    def shared_prefix_len(self, a: int, b: int) -> int:
        """Number of nodes the two root paths share (0 when in different trees)."""
    def subtree_tokens(self, node: int, views: Sequence[int] | None = None) -> int:
        """Tokens in every segment of `node`'s subtree, for every view or only for `views`
        (what a prefix cache holds for a whole conversation tree)."""
    def free_subtree(self, node: int) -> int:
        """Free `node` and all its descendants; returns how many nodes were freed."""
    def stats(self) -> dict[str, int]:
        """live_nodes, freed_nodes, roots, tokens, token_capacity, text_bytes, bytes_estimate;
        also text_capacity, slots, core_bytes (node records and segment table, without
        token or text data) and compactions."""

@final
class RadixCache:
    """Model of a backend's radix prefix cache: token radix tree, capacity, LRU leaf eviction.

    Like SGLang, a match or insert that ends inside an edge splits it; whole unpinned
    leaves are evicted, least recently used first; time is a logical clock (one tick
    per call), so results are deterministic. Token ids are ints in 0..2**32.
    """

    def __new__(cls, capacity: int) -> RadixCache:
        """InvalidArgumentError unless `capacity` >= 1."""
    @property
    def capacity(self) -> int: ...
    @property
    def size(self) -> int:
        """Tokens cached now (never above capacity)."""
    @property
    def pinned(self) -> int:
        """Tokens on pinned paths (not evictable)."""
    def match_len(self, tokens: Sequence[int]) -> int:
        """Length of the longest cached prefix of `tokens`; refreshes its LRU time."""
    def match_many(self, prompts: Sequence[Sequence[int]]) -> list[int]: ...
    def insert(self, tokens: Sequence[int]) -> int:
        """Cache `tokens` (prompt + output of a finished request), evicting LRU leaves
        as needed; returns how many new tokens were cached (a prefix that does not
        fit because the rest is pinned is left out)."""
    def insert_many(self, sequences: Sequence[Sequence[int]]) -> list[int]: ...
    def pin(self, tokens: Sequence[int]) -> int:
        """Pin the cached prefix of `tokens` (a request in flight); returns its length."""
    def unpin(self, tokens: Sequence[int]) -> int:
        """Undo the most recent pin of the same sequence; returns the length it pinned.
        InvalidArgumentError if that sequence is not pinned."""
    def evict(self, tokens: int) -> int:
        """Evict at least `tokens` unpinned tokens, LRU leaves first; returns how many."""
    def clear(self) -> None:
        """Drop every unpinned token (SGLang's /flush_cache)."""
    def stats(self) -> dict[str, int]:
        """size, capacity, pinned, nodes, queries, query_tokens, hit_tokens, inserted, evicted."""

@final
class Scheduler:
    """Ready generation jobs, popped in batches in an order that maximises cache reuse."""

    def __new__(
        cls,
        token_budget: int | None = None,
        starvation_limit: int = 64,
        output_reserve: int = 256,
        tree_reserve: int = 0,
        min_runnable: int = 0,
        floor_trees: int | None = None,
    ) -> Scheduler:
        """`token_budget` caps the tokens of admitted (active) conversation trees;
        None means unlimited. `tree_reserve` (tokens) is the least footprint of a tree
        admitted from now on, `min_runnable` (jobs) the floor on work of admitted trees;
        0 turns either off. `floor_trees` caps the trees the floor admits (None: no
        cap). InvalidArgumentError for a negative argument.

        Order: jobs that have waited `starvation_limit` pops first (oldest first);
        then jobs of admitted trees by priority, cached_len, earlier admitted tree,
        push order; then the tree first pushed earliest is admitted if it fits.
        Starvation: every pop serves jobs that have waited `starvation_limit` pops
        before all others, oldest first (skipping trees admission holds back), so
        the oldest waiting job never waits more than `starvation_limit` pops and a job
        with A older jobs still waiting when it reaches the limit waits at most
        `starvation_limit` + A pops.
        Footprint of a tree: its largest prompt_len pushed so far + `output_reserve`
        per job of it waiting or in flight, but at least the `tree_reserve` in force
        when it was admitted. A tree is admitted if admitted_tokens + footprint <=
        token_budget, or if no tree is admitted, or if fewer than `min_runnable` jobs
        of admitted trees wait or run and fewer than `floor_trees` trees are admitted
        (the floor); jobs of admitted trees are never
        held back (new turns and admissions under the floor may take admitted_tokens
        over the budget; then no new tree is admitted, except under the floor, until
        it is back under)."""
    def set_tree_reserve(self, tokens: int) -> None:
        """The reserve (expected size, in tokens) of trees admitted from now on; admitted
        trees keep theirs. InvalidArgumentError if negative."""
    def set_floor_trees(self, trees: int | None) -> None:
        """The most trees the floor admits past the budget (None: no cap).
        InvalidArgumentError if negative."""
    def __len__(self) -> int:
        """Jobs waiting."""
    def push_many(
        self,
        job_ids: Sequence[int],
        trees: Sequence[int],
        prompt_lens: Sequence[int],
        priorities: Sequence[int] | None = None,
        cached_lens: Sequence[int] | None = None,
    ) -> None:
        """Queue jobs; a job's tree is its conversation root (the affinity and admission unit).
        JobError if an id is waiting or in flight; cached_len <= prompt_len; all-or-nothing."""
    def update_cached(self, job_ids: Sequence[int], cached_lens: Sequence[int]) -> None:
        """Re-rank waiting jobs by a new cached prefix length; JobError if one is not waiting."""
    def pop_batch(self, max_requests: int, max_tokens: int) -> list[int]:
        """Job ids to run now, at most `max_requests` and `max_tokens` prompt tokens
        (a single job larger than `max_tokens` is still returned alone; jobs are never
        skipped to fill a batch). [] only when nothing waits or the budget is full."""
    def complete_many(self, job_ids: Sequence[int]) -> None:
        """Mark popped jobs finished (releases their reserve); JobError if one is not in flight."""
    def finish_tree(self, tree: int) -> None:
        """The conversation tree is done: release its admission budget. Unknown trees are
        ignored; InvalidArgumentError while jobs of it still wait."""
    def stats(self) -> dict[str, int]:
        """waiting, in_flight, admitted_trees, admitted_tokens, runnable (jobs of admitted trees
        waiting or in flight), pops, max_wait (longest wait, in pops), max_wait_admitted
        (the same counted from the tree's admission when that came later: the wait the
        starvation bound applies to)."""

def turn_seeds(seeds: Sequence[int], branches: Sequence[int], turns: Sequence[int]) -> list[int]:
    """`turnloom.seeds.turn_seed` of every (seeds[i], branches[i], turns[i]); all
    three are ints in 0..2**64 (OverflowError otherwise)."""
