"""Micro-benchmark of the native core against plain-Python equivalents.

Builds N message nodes (trees of `--turns`-node conversations, one token
segment of `--tokens` tokens per view), builds every leaf's lane for every
view, pops one job per conversation through the scheduler, and frees every
tree. Each variant runs in a fresh subprocess so that peak RSS (VmHWM, which
sees Rust allocations, unlike tracemalloc) belongs to it alone.

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
from typing import Sequence

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
        lanes = []
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


class PyScheduler:
    """Priority heap with budgets and in-flight bookkeeping."""

    def __init__(self) -> None:
        self.heap: list[tuple] = []
        self.in_flight: dict[int, int] = {}
        self.seq = 0

    def push_many(self, job_ids, trees, prompt_lens, priorities=None, cached_lens=None) -> None:
        priorities = priorities or [0] * len(job_ids)
        cached_lens = cached_lens or [0] * len(job_ids)
        for job, tree, length, priority, cached in zip(job_ids, trees, prompt_lens, priorities, cached_lens):
            self.seq += 1
            heapq.heappush(self.heap, (priority, -cached, tree, self.seq, job, length))

    def pop_batch(self, max_requests: int, max_tokens: int) -> list[int]:
        batch, tokens, skipped = [], 0, []
        while self.heap and len(batch) < max_requests:
            entry = heapq.heappop(self.heap)
            length = entry[5]
            if batch and tokens + length > max_tokens:
                skipped.append(entry)
                break
            batch.append(entry[4])
            self.in_flight[entry[4]] = length
            tokens += length
        for entry in skipped:
            heapq.heappush(self.heap, entry)
        return batch

    def complete_many(self, job_ids) -> None:
        for job in job_ids:
            del self.in_flight[job]

    def finish_tree(self, tree: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.heap)


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


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    from turnloom import _core

    if variant == "python":
        forest, make_scheduler = PyForest(), PyScheduler
    else:
        forest = _core.Forest()
        make_scheduler = getattr(_core, "Scheduler", None)
    baseline = rss_bytes("VmRSS")
    conversations = max(1, args.nodes // args.turns)
    views = list(range(args.views))
    timings: dict[str, float] = {}

    # Build: one add_root per conversation, then one turn at a time in batches.
    elapsed = 0.0
    roots = []
    for start in range(0, conversations, args.batch):
        count = min(args.batch, conversations - start)
        segments = segments_for(start, count, args.views, args.tokens)
        t = time.perf_counter()
        roots.extend(forest.add_root(0, "system", "You are a helpful assistant.", s) for s in segments)
        elapsed += time.perf_counter() - t
    leaves = list(roots)
    for turn in range(1, args.turns):
        role = ROLES[(turn - 1) % 2]
        for start in range(0, conversations, args.batch):
            count = min(args.batch, conversations - start)
            segments = segments_for(turn * conversations + start, count, args.views, args.tokens)
            parents = leaves[start:start + count]
            t = time.perf_counter()
            leaves[start:start + count] = forest.append_many(
                parents, [turn % 2] * count, [role] * count, ["turn text"] * count, segments
            )
            elapsed += time.perf_counter() - t
    timings["append"] = elapsed
    built_rss = rss_bytes("VmRSS") - baseline
    stats = forest.stats() if variant == "turnloom" else None

    # Lanes: every leaf, every view, in batches (each batch handed on and dropped).
    prompt_lens = [0] * conversations
    t = time.perf_counter()
    lane_batch = max(1, args.batch // 10)
    for start in range(0, conversations, lane_batch):
        chunk = leaves[start:start + lane_batch]
        for view in views:
            lanes = forest.lanes_for(chunk, [view] * len(chunk))
            if view == 0:
                prompt_lens[start:start + len(chunk)] = map(len, lanes)
    timings["lanes"] = time.perf_counter() - t

    # Scheduler: one job per conversation, popped and completed in batches.
    if make_scheduler is not None:
        scheduler = make_scheduler()
        t = time.perf_counter()
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
        timings["scheduler"] = time.perf_counter() - t
        assert popped == conversations

    t = time.perf_counter()
    freed = sum(forest.free_subtree(root) for root in roots)
    timings["free"] = time.perf_counter() - t
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
               "--views", str(args.views), "--tokens", str(args.tokens), "--batch", str(args.batch)]
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
    parser.add_argument("--batch", type=int, default=10_000, help="nodes per append_many call")
    parser.add_argument("--variant", choices=("python", "turnloom"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return

    py, rs = spawn("python", args), spawn("turnloom", args)
    n = rs["nodes"]
    print(f"{n:,} nodes: {n // args.turns:,} conversations x {args.turns} turns, "
          f"{args.views} views x {args.tokens} tokens per node")
    rows = [(op, py["timings"][op], rs["timings"][op]) for op in rs["timings"]]
    rows.append(("total", sum(py["timings"].values()), sum(rs["timings"].values())))
    print(f"{'operation':<22}{'python':>12}{'turnloom':>12}{'ratio':>9}")
    for op, p, r in rows:
        print(f"{op + ' (s)':<22}{p:>12.3f}{r:>12.3f}{p / r:>8.1f}x")
    mib = 1 << 20
    for label, key in (("rss after build (MiB)", "built_rss"), ("peak rss (MiB)", "peak_rss")):
        p, r = py[key] / mib, rs[key] / mib
        print(f"{label:<22}{p:>12.1f}{r:>12.1f}{p / r:>8.1f}x")
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
