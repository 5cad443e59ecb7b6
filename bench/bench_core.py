"""Micro-benchmark of the native core against plain-Python equivalents.

Builds N message nodes (trees of `--turns`-node conversations, one token
segment of `--tokens` tokens per view), builds every leaf's lane for every
view, pops one job per conversation through the scheduler, and frees every
tree. Three variants: plain Python (dict nodes, lists of ints, a heap-based
scheduler with the same ordering rules as turnloom's), turnloom through its
buffer API (append_packed / lanes_packed, tokens in uint32 buffers) and
turnloom through its list API (append_many / lanes_for). Inputs are built
outside the timed calls, each in its variant's own format. Each variant runs
in a fresh subprocess so that peak RSS (VmHWM, which sees Rust allocations,
unlike tracemalloc) belongs to it alone.

    .venv/bin/python bench/bench_core.py              # 1,000,000 nodes
    .venv/bin/python bench/bench_core.py --nodes 20000
"""

from __future__ import annotations

import argparse
import heapq
import json
import resource
import subprocess
import sys
import time
from array import array
from collections import deque
from typing import Any, Sequence

VARIANTS = ("python", "packed", "list")
VOCAB = 50_000
OFFSET = 1_000  # keep ids above CPython's small-int cache, like real token ids
ROLES = ("user", "assistant")


# --- plain-Python reference implementations ---------------------------------


class PyForest:
    """Dict-per-node forest: the same operations, stored the plain way (token
    lists are kept by reference, not copied: the cheapest Python can do)."""

    def __init__(self) -> None:
        self.nodes: dict[int, dict] = {}
        self.next_id = 1

    def add_root(self, participant, role, text, segments=None, finish="", meta="") -> int:
        return self._add(None, participant, role, text, segments, finish, meta)

    def append_many(self, parents, participants, roles, texts, segments=None, finishes=None, metas=None):
        n = len(parents)
        segments = segments or [None] * n
        finishes = finishes or [""] * n
        metas = metas or [""] * n
        return [self._add(*args) for args in zip(parents, participants, roles, texts, segments, finishes, metas)]

    def _add(self, parent, participant, role, text, segments, finish, meta) -> int:
        node_id = self.next_id
        self.next_id += 1
        depth = 0
        if parent is not None:
            up = self.nodes[parent]
            up["children"].append(node_id)
            depth = up["depth"] + 1
        self.nodes[node_id] = {
            "parent": parent, "children": [], "participant": participant, "role": role, "text": text,
            "finish": finish, "meta": meta, "segments": segments or {}, "depth": depth,
        }
        return node_id

    def lanes_for(self, nodes: Sequence[int], views: Sequence[int]) -> list[list[int]]:
        lanes: list[list[int]] = []
        for node_id, view in zip(nodes, views):
            path = []
            while node_id is not None:
                node = self.nodes[node_id]
                path.append(node)
                node_id = node["parent"]
            lane: list[int] = []
            for node in reversed(path):
                segment = node["segments"].get(view)
                if segment:
                    lane.extend(segment)
            lanes.append(lane)
        return lanes

    def free_subtree(self, node_id: int) -> int:
        node = self.nodes[node_id]
        if node["parent"] is not None:
            self.nodes[node["parent"]]["children"].remove(node_id)
        stack, freed = [node_id], 0
        while stack:
            stack.extend(self.nodes.pop(stack.pop())["children"])
            freed += 1
        return freed

    def __len__(self) -> int:
        return len(self.nodes)


class _Tree:
    __slots__ = ("admitted", "first_seq", "first_push_pop", "pending_jobs", "waiting", "in_flight", "max_prompt")

    def __init__(self, first_seq: int, first_push_pop: int) -> None:
        self.admitted: int | None = None
        self.first_seq = first_seq
        self.first_push_pop = first_push_pop
        self.pending_jobs: list[int] = []
        self.waiting = self.in_flight = self.max_prompt = 0


class _Job:
    __slots__ = ("tree", "prompt_len", "priority", "cached", "seq", "push_pop", "in_flight")

    def __init__(self, tree: _Tree, prompt_len: int, priority: int, cached: int, seq: int, push_pop: int) -> None:
        self.tree, self.prompt_len, self.priority, self.cached = tree, prompt_len, priority, cached
        self.seq, self.push_pop, self.in_flight = seq, push_pop, False


class PyScheduler:
    """turnloom's Scheduler rules in plain Python, so both sides do the same
    work: jobs that waited `starvation_limit` pops first (oldest first); then
    jobs of admitted trees by priority, cached length, admission order, push
    order; then the tree first pushed earliest is admitted if its footprint
    (largest prompt + `output_reserve` per job) fits the budget. Two heaps
    with lazy deletion stand in for the ordered sets."""

    def __init__(self, token_budget: int | None = None, starvation_limit: int = 64, output_reserve: int = 256) -> None:
        self.budget, self.limit, self.reserve = token_budget, starvation_limit, output_reserve
        self.jobs: dict[int, _Job] = {}
        self.trees: dict[int, _Tree] = {}
        self.pending: deque[_Tree] = deque()  # not admitted, by first push
        self.ready: list[tuple] = []  # (-priority, -cached, admitted, seq, job)
        self.by_seq: list[tuple[int, int]] = []  # (seq, job) of ready jobs
        self.seq = self.pops = self.next_admit = 0
        self.in_flight = self.admitted_trees = self.admitted_tokens = 0

    def _footprint(self, tree: _Tree) -> int:
        return tree.max_prompt + self.reserve * (tree.waiting + tree.in_flight)

    def push_many(self, job_ids, trees, prompt_lens, priorities=None, cached_lens=None) -> None:
        n = len(job_ids)
        priorities = priorities or [0] * n
        cached_lens = cached_lens or [0] * n
        if not len(trees) == len(prompt_lens) == len(priorities) == len(cached_lens) == n:
            raise ValueError("push_many: all sequences must have the same length")
        if len(set(job_ids)) != n or any(job in self.jobs for job in job_ids):
            raise KeyError("a job is already queued or in flight")
        if any(c > p for c, p in zip(cached_lens, prompt_lens)):
            raise ValueError("cached_len exceeds prompt_len")
        for job_id, tree_id, length, priority, cached in zip(job_ids, trees, prompt_lens, priorities, cached_lens):
            seq = self.seq
            self.seq += 1
            tree = self.trees.get(tree_id)
            if tree is None:
                tree = self.trees[tree_id] = _Tree(seq, self.pops)
                self.pending.append(tree)
            before = self._footprint(tree)
            tree.waiting += 1
            tree.max_prompt = max(tree.max_prompt, length)
            job = self.jobs[job_id] = _Job(tree, length, priority, cached, seq, self.pops)
            if tree.admitted is None:
                tree.pending_jobs.append(job_id)
            else:
                self.admitted_tokens += self._footprint(tree) - before
                self._make_ready(job_id, job)

    def _make_ready(self, job_id: int, job: _Job) -> None:
        heapq.heappush(self.ready, (-job.priority, -job.cached, job.tree.admitted, job.seq, job_id))
        heapq.heappush(self.by_seq, (job.seq, job_id))

    def _is_ready(self, job_id: int, seq: int) -> bool:
        job = self.jobs.get(job_id)
        return job is not None and job.seq == seq and not job.in_flight

    def _best(self) -> int | None:
        while self.ready and not self._is_ready(self.ready[0][4], self.ready[0][3]):
            heapq.heappop(self.ready)
        return self.ready[0][4] if self.ready else None

    def _oldest(self) -> tuple[int, int] | None:
        while self.by_seq and not self._is_ready(self.by_seq[0][1], self.by_seq[0][0]):
            heapq.heappop(self.by_seq)
        return self.by_seq[0] if self.by_seq else None

    def _try_admit(self, tree: _Tree) -> bool:
        footprint = self._footprint(tree)
        if self.budget is not None and self.admitted_tokens + footprint > self.budget and self.admitted_trees:
            return False
        tree.admitted = self.next_admit
        self.next_admit += 1
        self.pending.popleft()  # only the head tree is ever admitted
        self.admitted_trees += 1
        self.admitted_tokens += footprint
        for job_id in tree.pending_jobs:
            self._make_ready(job_id, self.jobs[job_id])
        tree.pending_jobs = []
        return True

    def _next_job(self, now: int, blocked: bool) -> tuple[int | None, bool]:
        while True:
            oldest = self._oldest()
            head = None if blocked or not self.pending else self.pending[0]
            if head is not None and (oldest is None or head.first_seq < oldest[0]) \
                    and now - head.first_push_pop >= self.limit:
                blocked = not self._try_admit(head)
                continue
            if oldest is not None and now - self.jobs[oldest[1]].push_pop >= self.limit:
                return oldest[1], blocked
            best = self._best()
            if best is not None:
                return best, blocked
            if blocked or not self.pending:
                return None, blocked
            if not self._try_admit(self.pending[0]):
                return None, True

    def pop_batch(self, max_requests: int, max_tokens: int) -> list[int]:
        batch: list[int] = []
        now, tokens, blocked = self.pops, 0, False
        while len(batch) < max_requests:
            job_id, blocked = self._next_job(now, blocked)
            if job_id is None:
                break
            job = self.jobs[job_id]
            if batch and tokens + job.prompt_len > max_tokens:
                break
            job.in_flight = True
            job.tree.waiting -= 1
            job.tree.in_flight += 1
            self.in_flight += 1
            tokens += job.prompt_len
            batch.append(job_id)
        self.pops += 1
        return batch

    def complete_many(self, job_ids) -> None:
        if len(set(job_ids)) != len(job_ids) or not all(j in self.jobs and self.jobs[j].in_flight for j in job_ids):
            raise KeyError("a job is not in flight")
        for job_id in job_ids:
            tree = self.jobs.pop(job_id).tree
            tree.in_flight -= 1
            if tree.admitted is not None:
                self.admitted_tokens -= self.reserve
            self.in_flight -= 1

    def finish_tree(self, tree_id: int) -> None:
        tree = self.trees.get(tree_id)
        if tree is None:
            return
        if tree.waiting:
            raise ValueError(f"finish_tree: tree {tree_id} still has {tree.waiting} waiting jobs")
        if tree.admitted is not None:
            self.admitted_tokens -= self._footprint(tree)
            self.admitted_trees -= 1
            tree.admitted = None
        del self.trees[tree_id]

    def __len__(self) -> int:
        return len(self.jobs) - self.in_flight


# --- measurement -------------------------------------------------------------


def rss_bytes(field: str) -> int:
    """VmRSS / VmHWM of this process (falls back to ru_maxrss)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def segments_for(first: int, count: int, views: int, tokens: int) -> list[dict[int, list[int]]]:
    """Fresh token lists (new int objects, as a tokenizer or backend returns)."""
    out = []
    for node in range(first, first + count):
        base = node * 7919
        out.append({v: [(base + v * 31 + k * 104_729) % VOCAB + OFFSET for k in range(tokens)] for v in range(views)})
    return out


def packed_for(first: int, count: int, views: int, tokens: int):
    """The tokens of segments_for in one uint32 buffer, node-major then view (as
    a tokenizer or backend that returns arrays hands them over), with the
    count * views + 1 segment offsets."""
    try:
        import numpy as np
    except ImportError:
        flat = array("I", (t for node in segments_for(first, count, views, tokens) for v in range(views) for t in node[v]))
        return flat, array("Q", range(0, count * views * tokens + 1, tokens))
    node = np.arange(first, first + count, dtype=np.int64)[:, None, None] * 7919
    ids = (node + np.arange(views)[None, :, None] * 31 + np.arange(tokens)[None, None, :] * 104_729) % VOCAB + OFFSET
    return ids.astype(np.uint32).ravel(), np.arange(count * views + 1, dtype=np.uint64) * tokens


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    from turnloom import _core

    # The Python stand-ins and the native classes share the calls timed here.
    forest: Any
    make_scheduler: Any
    if variant == "python":
        forest, make_scheduler = PyForest(), PyScheduler
    else:
        forest = _core.Forest()
        make_scheduler = getattr(_core, "Scheduler", None)
    packed = variant == "packed"
    # CPU time of this thread (user + system, page faults included) by
    # default: on a shared machine it leaves out time spent waiting for a core.
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    baseline = rss_bytes("VmRSS")
    conversations = max(1, args.nodes // args.turns)
    views = list(range(args.views))
    timings: dict[str, float] = {}

    # Build: the roots, then one turn at a time, in batches. Inputs are made
    # outside the timed calls, in each variant's own format.
    system = "You are a helpful assistant."
    elapsed = 0.0
    roots = []
    for start in range(0, conversations, args.batch):
        count = min(args.batch, conversations - start)
        if packed:
            tokens, offsets = packed_for(start, count, args.views, args.tokens)
            parents, participants, roles, texts = [None] * count, [0] * count, ["system"] * count, [system] * count
            t = clock()
            roots.extend(forest.append_packed(parents, participants, roles, texts, views, tokens, offsets))
        else:
            segments = segments_for(start, count, args.views, args.tokens)
            t = clock()
            roots.extend(forest.add_root(0, "system", system, s) for s in segments)
        elapsed += clock() - t
    leaves = list(roots)
    for turn in range(1, args.turns):
        role = ROLES[(turn - 1) % 2]
        for start in range(0, conversations, args.batch):
            count = min(args.batch, conversations - start)
            first = turn * conversations + start
            parents, participants, roles, texts = leaves[start:start + count], [turn % 2] * count, [role] * count, ["turn text"] * count
            if packed:
                tokens, offsets = packed_for(first, count, args.views, args.tokens)
                t = clock()
                ids = forest.append_packed(parents, participants, roles, texts, views, tokens, offsets)
            else:
                segments = segments_for(first, count, args.views, args.tokens)
                t = clock()
                ids = forest.append_many(parents, participants, roles, texts, segments)
            elapsed += clock() - t
            leaves[start:start + count] = ids
    timings["append"] = elapsed
    built_rss = rss_bytes("VmRSS") - baseline
    stats = forest.stats() if variant != "python" else None

    # Lanes: every leaf, every view, in batches (each batch handed on and dropped).
    prompt_lens = [0] * conversations
    t = clock()
    lane_batch = max(1, args.batch // 10)
    for start in range(0, conversations, lane_batch):
        chunk = leaves[start:start + lane_batch]
        for view in views:
            if packed:
                lanes, offsets = forest.lanes_packed(chunk, view)
                if view == 0:
                    ends = offsets.tolist()
                    prompt_lens[start:start + len(chunk)] = [b - a for a, b in zip(ends, ends[1:])]
            else:
                lanes = forest.lanes_for(chunk, [view] * len(chunk))
                if view == 0:
                    prompt_lens[start:start + len(chunk)] = map(len, lanes)
    timings["lanes"] = clock() - t

    # Scheduler: one job per conversation, popped and completed in batches.
    if make_scheduler is not None:
        scheduler = make_scheduler()
        t = clock()
        scheduler.push_many(list(range(conversations)), roots, prompt_lens)
        popped = 0
        while len(scheduler):
            batch = scheduler.pop_batch(256, 256 * 512)
            if not batch:
                raise RuntimeError("scheduler returned no job while jobs wait")
            scheduler.complete_many(batch)
            popped += len(batch)
        for root in roots:
            scheduler.finish_tree(root)
        timings["scheduler"] = clock() - t
        assert popped == conversations

    t = clock()
    freed = sum(forest.free_subtree(root) for root in roots)
    timings["free"] = clock() - t
    assert freed == conversations * args.turns and len(forest) == 0

    result = {
        "timings": timings,
        "built_rss": built_rss,
        "peak_rss": rss_bytes("VmHWM") - baseline,
        "nodes": conversations * args.turns,
        "scheduler": make_scheduler is not None,
    }
    if stats is not None:
        result["stats"] = stats
    return result


def spawn(variant: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--variant", variant, "--nodes", str(args.nodes), "--turns", str(args.turns),
               "--views", str(args.views), "--tokens", str(args.tokens), "--batch", str(args.batch),
               "--clock", args.clock]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{variant} run failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1_000_000)
    parser.add_argument("--turns", type=int, default=8, help="nodes per conversation (root included)")
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=50, help="tokens per segment")
    parser.add_argument("--batch", type=int, default=10_000, help="nodes per append call")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="time the calls by thread CPU time (default) or wall-clock time")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return

    runs = {variant: spawn(variant, args) for variant in VARIANTS}
    py, rs = runs["python"], runs["packed"]
    n = rs["nodes"]
    print(f"{n:,} nodes: {n // args.turns:,} conversations x {args.turns} turns, "
          f"{args.views} views x {args.tokens} tokens per node; {args.clock} seconds")
    print("turnloom packed: append_packed / lanes_packed (token buffers); "
          "list API: add_root + append_many / lanes_for (lists of ints)")
    ops = list(rs["timings"])
    rows = [(op, *(runs[v]["timings"][op] for v in VARIANTS)) for op in ops]
    rows.append(("total", *(sum(runs[v]["timings"].values()) for v in VARIANTS)))
    print(f"{'operation':<22}{'python':>10}{'packed':>10}{'ratio':>8}{'list API':>10}{'ratio':>8}")
    for op, p, packed, listed in rows:
        print(f"{op + ' (s)':<22}{p:>10.3f}{packed:>10.3f}{p / packed:>7.1f}x{listed:>10.3f}{p / listed:>7.1f}x")
    mib = 1 << 20
    for label, key in (("rss after build (MiB)", "built_rss"), ("peak rss (MiB)", "peak_rss")):
        p, packed, listed = (runs[v][key] / mib for v in VARIANTS)
        print(f"{label:<22}{p:>10.1f}{packed:>10.1f}{p / packed:>7.1f}x{listed:>10.1f}{p / listed:>7.1f}x")
    if not rs["scheduler"]:
        print("scheduler: skipped (turnloom._core.Scheduler is not available in this build)")
    stats = rs["stats"]
    print(f"core bytes per node: {stats['core_bytes'] / stats['live_nodes']:.1f} "
          f"(node records + segment table, capacity included; tokens and text excluded)")
    print(f"forest bytes_estimate: {stats['bytes_estimate'] / mib:.1f} MiB "
          f"({stats['bytes_estimate'] / stats['live_nodes']:.0f} bytes per node, "
          f"{4 * args.views * args.tokens} of them token data)")


if __name__ == "__main__":
    main()
