"""B2: prefix reuse under a fixed-capacity radix cache, by submission policy.

A discrete-event model of one GPU inference server: continuous batching of at
most `--max-batch` running requests, an LRU radix prefix cache of fixed token
capacity (the real `turnloom._core.RadixCache`), and a cost model:

  --cost linear (default; flags --prefill-ms, --decode-base-ms, --decode-seq-ms)
    prefill      0.02 ms per uncached prompt token
    decode step  8 ms + 0.05 ms x running requests
                 (one output token per running request per step)
  --cost roofline (--model on --gpu, from public specs; --mfu, --bandwidth-efficiency)
    each forward pass takes the longer of its FLOPs at 50% of the GPU's peak and
    its bytes at 80% of its bandwidth: every weight once per pass, the KV cache
    of the tokens it attends to. A step's admitted requests are prefilled in a
    pass of their own (SGLang's default), or with --mixed-prefill in the decode
    step's pass (SGLang's --enable-mixed-chunk).

Modelled GPU time is the sum of both; the client answers instantly, so the
server is never idle while a request is ready.

Every server step first admits waiting requests into free batch slots
(prefill: cached = match_len(prompt), insert(prompt), pin(prompt)), then runs one
decode step; a request that has produced its last token is unpinned and
`prompt + output` is inserted, as SGLang does. Tokens being decoded are not
counted against the cache (at most max_batch x reply length, about 1%).

Workload: conversations of `--turns` turns under a few shared system prompts;
each turn is a user message and an assistant reply (one request). At turn
`--branch-turn` the reply is sampled `--branches` times (best-of-n) and each
branch continues to the last turn with its own messages. A conversation's next
request is ready only when its previous one finished (a client loop).

Policies, all against the same server and cache capacity:
  naive     every ready request goes straight to the server; server FCFS.
  lpm       the same, but the server orders its queue by longest cached prefix,
            falling back to FCFS while more than 128 requests wait (SGLang `lpm`).
  turnloom  ready requests go to `turnloom._core.Scheduler` on the client side;
            only popped jobs are sent, keeping at most max_batch outstanding.
            Admission is the engine's: token_budget = the cache capacity,
            tree_reserve from `turnloom.admission` (a prior from the workload's
            shape, then the running mean of finished trees' sizes),
            min_runnable = max_batch, and floor_trees = max_batch / a tree's
            mean branches (the floor admits no more trees than that).

    .venv/bin/python bench/bench_prefix_reuse.py --plot docs/bench_prefix_reuse.png
    .venv/bin/python bench/bench_prefix_reuse.py --cost roofline --sweep-batch 32,64,128,256,512
    .venv/bin/python bench/bench_prefix_reuse.py --conversations 200 --capacity-fraction 0.1
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

from turnloom._core import RadixCache, Scheduler
from turnloom.admission import (
    TreeSizeEstimator,
    expected_message_tokens,
    floor_trees,
    mean_branches,
    prior_tree_tokens,
)

LPM_FCFS_ABOVE = 128  # SGLang's lpm turns into FCFS when more requests wait
VOCAB_IDS = list(range(1_000, 33_000))  # shared int objects keep token lists small
UNBOUNDED = 1 << 60
TRACE_EVERY = 100  # server steps between the points of a policy's curve (--plot)


# --- workload ---------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    turns: int = 8
    branch_turn: int = 3
    branches: int = 4
    system_prompts: int = 4
    system_len: tuple[int, int] = (280, 320)
    user_len: tuple[int, int] = (30, 50)
    reply_len: tuple[int, int] = (45, 75)


@dataclass
class Conversation:
    """Token ids of one conversation tree, stored as its distinct parts.

    `trunk` holds the messages up to the branch turn's user message and
    `tails[b]` branch b's messages after it; `trunk_ends`/`tail_ends` are the
    end offsets of every message in those lists (user, reply, user, reply …).
    """

    system: list[int]
    trunk: list[int]
    trunk_ends: list[int]
    tails: list[list[int]]
    tail_ends: list[list[int]]
    branches_left: int = 0

    def tokens(self) -> int:
        """Tokens of the whole tree (its one view): what the engine's forest
        reports for a finished tree (`Forest.subtree_tokens`)."""
        return len(self.system) + len(self.trunk) + sum(map(len, self.tails))


@dataclass(frozen=True)
class Request:
    job: int
    conv: int
    branch: int  # -1 before the branch turn
    turn: int  # 1-based
    prompt: list[int]
    output: list[int]


def draw(rng: random.Random, bounds: tuple[int, int]) -> list[int]:
    return rng.choices(VOCAB_IDS, k=rng.randint(*bounds))


def append_message(tokens: list[int], ends: list[int], message: list[int]) -> None:
    tokens.extend(message)
    ends.append(len(tokens))


def build_workload(conversations: int, shape: Shape, seed: int) -> list[Conversation]:
    systems_rng = random.Random(f"{seed}:systems")
    systems = [draw(systems_rng, shape.system_len) for _ in range(shape.system_prompts)]
    out = []
    for conv in range(conversations):
        rng = random.Random(f"{seed}:{conv}")
        trunk: list[int] = []
        trunk_ends: list[int] = []
        for turn in range(1, shape.branch_turn + 1):
            append_message(trunk, trunk_ends, draw(rng, shape.user_len))
            if turn < shape.branch_turn:
                append_message(trunk, trunk_ends, draw(rng, shape.reply_len))
        tails, tail_ends = [], []
        for _ in range(shape.branches):
            tail: list[int] = []
            ends: list[int] = []
            append_message(tail, ends, draw(rng, shape.reply_len))
            for _turn in range(shape.branch_turn + 1, shape.turns + 1):
                append_message(tail, ends, draw(rng, shape.user_len))
                append_message(tail, ends, draw(rng, shape.reply_len))
            tails.append(tail)
            tail_ends.append(ends)
        out.append(Conversation(systems[conv % len(systems)], trunk, trunk_ends, tails, tail_ends))
    return out


def make_request(convs: list[Conversation], shape: Shape, job: int, conv: int, branch: int, turn: int) -> Request:
    """Prompt = history up to turn's user message; output = that turn's reply."""
    c = convs[conv]
    if turn < shape.branch_turn:
        start, end = c.trunk_ends[2 * turn - 2], c.trunk_ends[2 * turn - 1]
        return Request(job, conv, branch, turn, c.system + c.trunk[:start], c.trunk[start:end])
    ends = c.tail_ends[branch]
    k = turn - shape.branch_turn  # 0 for the branch turn itself
    start = ends[2 * k - 1] if k else 0
    tail = c.tails[branch]
    return Request(job, conv, branch, turn, c.system + c.trunk + tail[:start], tail[start:ends[2 * k]])


class Client:
    """A conversation's next request exists only once its previous one finished."""

    def __init__(self, convs: list[Conversation], shape: Shape) -> None:
        self.convs, self.shape = convs, shape
        self.next_job = 0
        self.requests = 0

    def new(self, conv: int, branch: int, turn: int) -> Request:
        self.next_job += 1
        self.requests += 1
        return make_request(self.convs, self.shape, self.next_job, conv, branch, turn)

    def first_requests(self) -> list[Request]:
        return [self.new(conv, -1, 1) for conv in range(len(self.convs))]

    def follow_ups(self, done: Request) -> tuple[list[Request], bool]:
        """Requests made ready by `done`, and whether its conversation is over."""
        shape, conv = self.shape, self.convs[done.conv]
        if done.turn + 1 == shape.branch_turn:
            conv.branches_left = shape.branches
            return [self.new(done.conv, b, done.turn + 1) for b in range(shape.branches)], False
        if done.turn < shape.turns:
            return [self.new(done.conv, done.branch, done.turn + 1)], False
        conv.branches_left -= 1  # the last turn is always on a branch (branch_turn <= turns)
        return [], conv.branches_left == 0


def exact_unique_and_floor(convs: list[Conversation], shape: Shape) -> tuple[int, int, int]:
    """Unique tokens = distinct prefixes of all prompt+output sequences (trie nodes),
    the prefill floor (an unbounded cache, any causal order), and total prompt tokens."""
    cache = RadixCache(UNBOUNDED)
    client = Client(convs, shape)
    floor = prompt_tokens = 0
    for conv in range(len(convs)):
        pending = deque([client.new(conv, -1, 1)])
        while pending:
            req = pending.popleft()
            floor += len(req.prompt) - cache.match_len(req.prompt)
            prompt_tokens += len(req.prompt)
            cache.insert(req.prompt + req.output)
            pending.extend(client.follow_ups(req)[0])
    for c in convs:
        c.branches_left = 0
    return cache.size, floor, prompt_tokens


# --- server -----------------------------------------------------------------


Prefill = tuple[int, int]  # (uncached prompt tokens, cached prompt tokens) of one request


@dataclass(frozen=True)
class Cost:
    """Linear costs: prefill per uncached prompt token, a decode step's base cost
    plus a cost per running request."""

    prefill_ms: float = 0.02  # per uncached prompt token
    decode_base_ms: float = 8.0  # per decode step
    decode_seq_ms: float = 0.05  # per running request per decode step

    def describe(self) -> str:
        return (f"prefill {self.prefill_ms} ms/token, decode step {self.decode_base_ms} ms + "
                f"{self.decode_seq_ms} ms x batch")

    def decode_step_ms(self, batch: int) -> float:
        return self.decode_base_ms + self.decode_seq_ms * batch

    def step_ms(self, prefills: list[Prefill], batch: int, context: int) -> tuple[float, float]:
        """(prefill, decode) ms of one server step: the requests admitted, then one
        decode step of `batch` requests holding `context` tokens in all."""
        return self.prefill_ms * sum(fresh for fresh, _ in prefills), self.decode_step_ms(batch)

    def limit_ms(self, floor: int, outputs: int, max_batch: int, context_reads: int) -> tuple[float, float]:
        """(prefill, decode) ms no policy beats: the prefill floor, every step at max_batch."""
        return floor * self.prefill_ms, outputs / max_batch * self.decode_step_ms(max_batch)


@dataclass(frozen=True)
class Gpu:
    name: str
    tflops: float  # dense BF16 peak, 10^12 FLOP/s
    tbps: float  # memory bandwidth, 10^12 bytes/s


@dataclass(frozen=True)
class Model:
    name: str
    params: float
    layers: int
    hidden: int  # query heads x head dim
    kv_dim: int  # key-value heads x head dim
    bytes_per_value: int = 2  # BF16 weights and KV cache

    @property
    def weight_bytes(self) -> float:
        return self.params * self.bytes_per_value

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_dim * self.bytes_per_value  # keys and values

    @property
    def attention_flops_per_key(self) -> int:
        return 4 * self.layers * self.hidden  # q.k and the weighted sum of v, per query token


# Vendor datasheet peaks (dense, no sparsity) and the model's published configuration.
GPUS = {"h100": Gpu("H100 SXM", 989.4, 3.35), "a100": Gpu("A100 SXM 80GB", 312.0, 2.039)}
MODELS = {"llama3-8b": Model("Llama-3.1-8B", 8.03e9, 32, 4096, 1024)}


@dataclass(frozen=True)
class Roofline:
    """Each forward pass takes the longer of its FLOPs at `mfu` of the GPU's peak
    and its bytes (every weight once, plus the KV cache it reads and writes) at
    `bandwidth_efficiency` of its bandwidth. A decode step of a small batch is
    bound by reading the weights; a large prefill by compute.

    Without `mixed`, a step's admitted requests are prefilled in their own
    forward pass before the decode step (SGLang's default); with it, in the decode
    step's (SGLang's --enable-mixed-chunk), which then reads the weights once."""

    gpu: Gpu
    model: Model
    mfu: float = 0.5
    bandwidth_efficiency: float = 0.8
    mixed: bool = False

    def describe(self) -> str:
        how = "in the decode step's pass" if self.mixed else "in a pass of their own"
        return (f"roofline of {self.model.name} on {self.gpu.name} ({self.gpu.tflops:g} TFLOP/s at "
                f"{self.mfu:.0%}, {self.gpu.tbps:g} TB/s at {self.bandwidth_efficiency:.0%}); "
                f"admitted requests prefilled {how}")

    def _ms(self, flops: float, nbytes: float) -> float:
        compute = flops / (self.gpu.tflops * 1e12 * self.mfu)
        memory = nbytes / (self.gpu.tbps * 1e12 * self.bandwidth_efficiency)
        return 1000 * max(compute, memory)

    def _prefill(self, prefills: list[Prefill]) -> tuple[float, float]:
        m = self.model
        fresh = sum(f for f, _ in prefills)
        # Query j of a request's f new tokens attends to its c cached ones and j + 1 new ones.
        keys = sum(f * (c + (f + 1) / 2) for f, c in prefills)
        flops = 2 * m.params * fresh + m.attention_flops_per_key * keys
        return flops, m.kv_bytes_per_token * sum(f + c for f, c in prefills)

    def _decode(self, batch: int, context: int) -> tuple[float, float]:
        m = self.model
        return 2 * m.params * batch + m.attention_flops_per_key * context, m.kv_bytes_per_token * context

    def step_ms(self, prefills: list[Prefill], batch: int, context: int) -> tuple[float, float]:
        weights = self.model.weight_bytes
        d_flops, d_bytes = self._decode(batch, context)
        decode = self._ms(d_flops, weights + d_bytes)
        if not prefills:
            return 0.0, decode
        p_flops, p_bytes = self._prefill(prefills)
        if self.mixed:
            return self._ms(p_flops + d_flops, weights + p_bytes + d_bytes) - decode, decode
        return self._ms(p_flops, weights + p_bytes), decode

    def limit_ms(self, floor: int, outputs: int, max_batch: int, context_reads: int) -> tuple[float, float]:
        """A lower bound: the prefill floor's weight FLOPs at full compute (no attention,
        no weight reads), and decode at the larger of all its FLOPs and the bytes of
        full batches (the KV reads are the same for every order)."""
        m = self.model
        prefill_flops = 2 * m.params * floor
        d_flops, d_bytes = self._decode(outputs, context_reads)
        decode = max(self._ms(d_flops, 0), self._ms(0, -(-outputs // max_batch) * m.weight_bytes + d_bytes))
        if self.mixed:  # prefill FLOPs can hide under the decode steps' memory time
            return max(self._ms(prefill_flops + d_flops, 0), decode) - decode, decode
        return self._ms(prefill_flops, 0), decode


@dataclass
class Server:
    capacity: int
    max_batch: int
    cost: Cost | Roofline
    lpm: bool = False
    cache: RadixCache = field(init=False)
    queue: deque[Request] = field(default_factory=deque)
    running: list[list] = field(default_factory=list)  # [remaining steps, request]
    prefilled: int = 0
    prompt_tokens: int = 0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    steps: int = 0
    decoded: int = 0
    context: int = 0  # tokens of the running requests (prompt + decoded so far)
    context_reads: int = 0  # sum of `context` over decode steps (KV tokens read)
    # (modelled GPU s so far, prefilled tokens so far) every TRACE_EVERY steps and at the end
    trace: list[tuple[float, int]] = field(default_factory=lambda: [(0.0, 0)])

    def __post_init__(self) -> None:
        self.cache = RadixCache(self.capacity)

    def mark(self) -> None:
        self.trace.append(((self.prefill_ms + self.decode_ms) / 1000, self.prefilled))

    def submit(self, requests: Iterable[Request]) -> None:
        self.queue.extend(requests)

    def _order_queue(self) -> None:
        if self.lpm and 1 < len(self.queue) <= LPM_FCFS_ABOVE:
            # Stable sort: equal matches keep arrival order, as in SGLang.
            matched = self.cache.match_many([r.prompt for r in self.queue])
            order = sorted(range(len(matched)), key=lambda i: -matched[i])
            self.queue = deque(self.queue[i] for i in order)

    def _prefill(self, req: Request) -> Prefill:
        cached = self.cache.match_len(req.prompt)
        fresh = len(req.prompt) - cached
        self.prefilled += fresh
        self.prompt_tokens += len(req.prompt)
        self.context += len(req.prompt)
        self.cache.insert(req.prompt)
        self.cache.pin(req.prompt)
        self.running.append([len(req.output), req])
        return fresh, cached

    def step(self) -> list[Request]:
        """Admit into free slots, run one decode step; returns finished requests."""
        self._order_queue()
        prefills = []
        while self.queue and len(self.running) < self.max_batch:
            prefills.append(self._prefill(self.queue.popleft()))
        if not self.running:
            return []
        batch = len(self.running)
        self.steps += 1
        self.decoded += batch
        prefill_ms, decode_ms = self.cost.step_ms(prefills, batch, self.context)
        self.prefill_ms += prefill_ms
        self.decode_ms += decode_ms
        self.context_reads += self.context
        self.context += batch
        if self.steps % TRACE_EVERY == 0:
            self.mark()
        finished, still = [], []
        for entry in self.running:
            entry[0] -= 1
            if entry[0] > 0:
                still.append(entry)
            else:
                finished.append(entry[1])
        self.running = still
        for req in finished:
            self.context -= len(req.prompt) + len(req.output)
            self.cache.unpin(req.prompt)
            self.cache.insert(req.prompt + req.output)
        return finished

    @property
    def busy(self) -> bool:
        return bool(self.queue or self.running)


# --- policies ---------------------------------------------------------------


def run_direct(server: Server, client: Client) -> None:
    """naive / lpm: the client sends every request the moment it is ready."""
    server.submit(client.first_requests())
    while server.busy:
        for done in server.step():
            server.submit(client.follow_ups(done)[0])


@dataclass(frozen=True)
class SchedulerSettings:
    """The engine's admission policy unless overridden (for sensitivity runs)."""

    prior: int  # the tree-size estimator's prior
    output_reserve: int
    starvation_limit: int
    budget_fraction: float = 1.0  # token_budget = fraction x capacity
    tree_reserve: int | None = None  # None: the estimator's, updated as trees finish
    min_runnable: int | None = None  # None: max_batch
    floor_trees: int | None = None  # None: the engine's cap; 0: no cap
    calls: tuple[int, int] | None = None  # (requests per call, calls outstanding); None: by slot


def workload_branches(shape: Shape) -> float:
    """Mean branches of a tree at the server's turns (the replies, message
    indices 1, 3, ...), as the engine works it out from a scenario."""
    return mean_branches({2 * shape.branch_turn - 1: shape.branches}, range(1, 2 * shape.turns, 2))


def workload_floor_trees(shape: Shape, min_runnable: int, override: int | None) -> int | None:
    """The Scheduler's floor_trees: the engine's unless overridden (0: none)."""
    if override is not None:
        return override or None
    return floor_trees(min_runnable, workload_branches(shape))


def client_min_runnable(max_batch: int, calls: tuple[int, int] | None, override: int | None) -> int:
    """The Scheduler's min_runnable: the client's lanes (max_batch outstanding, or
    calls x their size, as the engine's batch_size x max_inflight) unless overridden."""
    if override is not None:
        return override
    return max_batch if calls is None else calls[0] * calls[1]


def workload_prior(shape: Shape) -> int:
    """The estimator's prior as the engine works it out from a scenario: the
    longest system prompt, every message at its speaker's longest length
    (what max_new_tokens would say), the fork multiplying the rest."""
    messages = [expected_message_tokens(shape.user_len[1]), expected_message_tokens(shape.reply_len[1])]
    fork = 2 * shape.branch_turn - 1  # message index of the branch turn's reply
    return prior_tree_tokens(shape.system_len[1], messages * shape.turns, {fork: shape.branches})


def run_turnloom(server: Server, client: Client, settings: SchedulerSettings,
                 shape: Shape) -> dict[str, int]:
    """Ready jobs wait in the client-side Scheduler; its cache model is a separate
    RadixCache updated from completions (the client cannot see the server's).

    Jobs go out as server slots free up, at most max_batch outstanding; or, with
    `settings.calls` = (size, most), as the engine dispatches them: calls of up
    to `size` requests, `most` calls outstanding, each call's results back
    together once its last request is done."""
    model = RadixCache(server.capacity)
    # As the engine does: the reserve follows the sizes of finished trees.
    tree_size = TreeSizeEstimator(settings.prior) if settings.tree_reserve is None else None
    reserve = tree_size.estimate if tree_size is not None else settings.tree_reserve or 0
    calls = settings.calls
    min_runnable = client_min_runnable(server.max_batch, calls, settings.min_runnable)
    sched = Scheduler(
        token_budget=max(1, int(server.capacity * settings.budget_fraction)),
        starvation_limit=settings.starvation_limit,
        output_reserve=settings.output_reserve,
        tree_reserve=reserve,
        min_runnable=min_runnable,
        floor_trees=workload_floor_trees(shape, min_runnable, settings.floor_trees),
    )
    waiting: dict[int, Request] = {}
    open_calls: dict[int, list] = {}  # call -> [requests not done yet, requests done]
    call_of: dict[int, int] = {}
    counts = {"in_flight": 0, "calls": 0, "peak_admitted": 0}

    def push(reqs: list[Request]) -> None:
        if not reqs:
            return
        cached = model.match_many([r.prompt for r in reqs])
        sched.push_many([r.job for r in reqs], [r.conv for r in reqs], [len(r.prompt) for r in reqs],
                        cached_lens=cached)
        waiting.update((r.job, r) for r in reqs)

    def send(jobs: list[int]) -> None:
        server.submit(waiting.pop(job) for job in jobs)
        counts["in_flight"] += len(jobs)
        counts["peak_admitted"] = max(counts["peak_admitted"], sched.stats()["admitted_tokens"])

    def dispatch() -> None:
        if calls is None:
            free = server.max_batch - counts["in_flight"]
            if free > 0 and waiting:
                send(sched.pop_batch(free, UNBOUNDED))
            return
        size, most = calls
        while len(open_calls) < most and waiting:
            jobs = sched.pop_batch(size, UNBOUNDED)
            if not jobs:
                return
            call = counts["calls"] = counts["calls"] + 1
            open_calls[call] = [len(jobs), []]
            call_of.update((job, call) for job in jobs)
            send(jobs)

    def returned(finished: list[Request]) -> list[Request]:
        """The finished requests whose results the client has now."""
        if calls is None:
            return finished
        back = []
        for req in finished:
            call = call_of.pop(req.job)
            entry = open_calls[call]
            entry[0] -= 1
            entry[1].append(req)
            if entry[0] == 0:
                back += open_calls.pop(call)[1]
        return back

    push(client.first_requests())
    while waiting or counts["in_flight"]:
        dispatch()
        if not server.busy:
            raise RuntimeError(f"scheduler holds {len(waiting)} jobs with nothing in flight")
        finished = returned(server.step())
        if not finished:
            continue
        counts["in_flight"] -= len(finished)
        sched.complete_many([r.job for r in finished])
        model.insert_many([r.prompt + r.output for r in finished])
        for done in finished:
            ready, over = client.follow_ups(done)
            push(ready)
            if over:
                if tree_size is not None:
                    reserve = tree_size.observe(client.convs[done.conv].tokens())
                    sched.set_tree_reserve(reserve)
                sched.finish_tree(done.conv)
    stats = sched.stats()
    extra = {"max_wait": stats["max_wait"], "max_wait_admitted": stats["max_wait_admitted"],
             "peak_admitted_tokens": counts["peak_admitted"], "final_tree_reserve": reserve}
    if calls is not None:
        extra["calls"] = counts["calls"]
    return extra


# --- report -----------------------------------------------------------------


@dataclass
class Result:
    policy: str
    server: Server
    seconds: float
    extra: dict[str, int]


def simulate(policy: str, convs: list[Conversation], shape: Shape, args: argparse.Namespace,
             capacity: int, cost: Cost | Roofline) -> Result:
    for conv in convs:
        conv.branches_left = 0
    server = Server(capacity, args.max_batch, cost, lpm=policy == "lpm")
    client = Client(convs, shape)
    t = time.perf_counter()
    extra: dict[str, int] = {}
    if policy == "turnloom":
        settings = SchedulerSettings(workload_prior(shape), args.output_reserve, args.starvation_limit,
                                     args.budget_fraction, args.tree_reserve, args.min_runnable,
                                     args.floor_trees, engine_calls(args))
        extra = run_turnloom(server, client, settings, shape)
    else:
        run_direct(server, client)
    server.mark()
    extra["requests"] = client.requests
    return Result(policy, server, time.perf_counter() - t, extra)


@dataclass(frozen=True)
class Row:
    policy: str
    prefilled: int
    prompt_tokens: int
    prefill_s: float
    decode_s: float
    avg_batch: float

    @property
    def gpu_s(self) -> float:
        return self.prefill_s + self.decode_s


def row_of(r: Result) -> Row:
    s = r.server
    return Row(r.policy, s.prefilled, s.prompt_tokens, s.prefill_ms / 1000, s.decode_ms / 1000,
               s.decoded / max(1, s.steps))


def limit_row(floor: int, prompt_tokens: int, server: Server, cost: Cost | Roofline) -> Row:
    """No policy beats this: the prefill floor and every decode step at max_batch
    (`server`: any policy's, for the totals every order shares)."""
    prefill_ms, decode_ms = cost.limit_ms(floor, server.decoded, server.max_batch, server.context_reads)
    return Row("limit", floor, prompt_tokens, prefill_ms / 1000, decode_ms / 1000, server.max_batch)


def table_header(batch: bool = False) -> str:
    return (("   batch " if batch else "") + f"{'policy':<10}{'prefilled':>13}{'/unique':>9}{'hit rate':>10}"
            f"{'prefill s':>11}{'decode s':>10}{'GPU s':>10}{'speedup':>9}{'avg batch':>11}")


def table_row(r: Row, unique: int, base_gpu_s: float, batch: int | None = None) -> str:
    hit = 1 - r.prefilled / r.prompt_tokens
    return ((f"{batch:>8} " if batch is not None else "") +
            f"{r.policy:<10}{r.prefilled:>13,}{r.prefilled / unique:>9.3f}{hit:>10.1%}"
            f"{r.prefill_s:>11.1f}{r.decode_s:>10.1f}{r.gpu_s:>10.1f}"
            f"{base_gpu_s / r.gpu_s:>8.2f}x{r.avg_batch:>11.1f}")


def print_table(rows: list[Row], unique: int, capacity: int, out: Callable[[str], None] = print) -> None:
    out(table_header())
    for r in rows:
        out(table_row(r, unique, rows[0].gpu_s))
    out(f"unique tokens (trie nodes over all prompt+output sequences): {unique:,}; "
        f"cache capacity {capacity:,}; speedup = {rows[0].policy} GPU s / GPU s")


def plot(results: list[Result], limit: Row, path: str) -> None:
    """Prefilled tokens against modelled GPU time, one curve per policy, with the
    limit's prefill floor; and each policy's GPU time split into prefill and decode."""
    from turnloom.report.plots import pyplot

    try:
        plt = pyplot("figures (--plot)")
    except ImportError as exc:
        raise SystemExit(str(exc)) from None

    fig, (curves, bars) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    for r in results:
        seconds, prefilled = zip(*r.server.trace)
        curves.plot(seconds, [p / 1e6 for p in prefilled], label=r.policy,
                    linestyle="--" if r.policy == "lpm" else "-")
    curves.axhline(limit.prefilled / 1e6, color="grey", linestyle=":", label="limit (unbounded cache)")
    curves.set_xlabel("modelled GPU time (s)")
    curves.set_ylabel("prefilled tokens (millions)")
    curves.set_title("prefill work as the run goes")
    curves.legend(fontsize=8)
    rows = [row_of(r) for r in results] + [limit]
    names = [r.policy for r in rows]
    prefill = [r.prefill_s for r in rows]
    bars.bar(names, prefill, label="prefill")
    bars.bar(names, [r.decode_s for r in rows], bottom=prefill, label="decode")
    for i, row in enumerate(rows):
        bars.text(i, row.gpu_s, f"{rows[0].gpu_s / row.gpu_s:.2f}x", ha="center", va="bottom",
                  fontsize=8)
    bars.set_ylabel("modelled GPU time (s)")
    bars.set_title(f"time split (speed-up against {rows[0].policy})")
    bars.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # keep progress (stderr) and table in order
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=2_000)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--branch-turn", type=int, default=3)
    parser.add_argument("--branches", type=int, default=4)
    parser.add_argument("--capacity-fraction", type=float, default=0.10, help="of the unique tokens")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--sweep-batch", metavar="B,B,...",
                        help="instead of one table, the policies at each of these max_batch sizes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-fraction", type=float, default=1.0,
                        help="Scheduler token_budget as a fraction of the cache capacity "
                             "(default 1.0, the engine's)")
    parser.add_argument("--tree-reserve", type=int, default=None,
                        help="fixed Scheduler tree_reserve, 0 for none (default: the engine's "
                             "estimate, updated as trees finish)")
    parser.add_argument("--min-runnable", type=int, default=None,
                        help="Scheduler min_runnable, 0 for none (default: --max-batch, the engine's)")
    parser.add_argument("--floor-trees", type=int, default=None,
                        help="Scheduler floor_trees, 0 for no cap (default: the engine's, "
                             "min_runnable / a tree's mean branches)")
    parser.add_argument("--output-reserve", type=int, default=256)
    parser.add_argument("--calls", type=int, nargs="?", const=0, metavar="B",
                        help="turnloom dispatches as the engine does: calls of B requests (default "
                             "--max-batch), --max-inflight of them outstanding, each call's results "
                             "back together (default: a job per free server slot)")
    parser.add_argument("--max-inflight", type=int, default=2, help="with --calls (the engine's default)")
    parser.add_argument("--starvation-limit", type=int, default=64)
    parser.add_argument("--cost", choices=["linear", "roofline"], default="linear",
                        help="linear: the --prefill-ms / --decode-*-ms model (default); roofline: "
                             "--model on --gpu from FLOPs and bytes")
    parser.add_argument("--gpu", choices=sorted(GPUS), default="h100")
    parser.add_argument("--model", choices=sorted(MODELS), default="llama3-8b")
    parser.add_argument("--mfu", type=float, default=0.5, help="roofline: share of peak FLOP/s reached")
    parser.add_argument("--bandwidth-efficiency", type=float, default=0.8,
                        help="roofline: share of peak memory bandwidth reached")
    parser.add_argument("--mixed-prefill", action="store_true",
                        help="roofline: prefill in the decode step's pass (SGLang --enable-mixed-chunk)")
    parser.add_argument("--prefill-ms", type=float, default=0.02, help="per uncached prompt token")
    parser.add_argument("--decode-base-ms", type=float, default=8.0, help="per decode step")
    parser.add_argument("--decode-seq-ms", type=float, default=0.05, help="per running request per step")
    parser.add_argument("--policies", default="naive,lpm,turnloom")
    parser.add_argument("--plot", metavar="PNG", help="also draw the run as a figure (needs matplotlib)")
    args = parser.parse_args(argv)
    if not 2 <= args.branch_turn <= args.turns or args.branches < 1:
        parser.error("need 2 <= --branch-turn <= --turns and --branches >= 1")
    cost: Cost | Roofline = (
        Cost(args.prefill_ms, args.decode_base_ms, args.decode_seq_ms) if args.cost == "linear"
        else Roofline(GPUS[args.gpu], MODELS[args.model], args.mfu, args.bandwidth_efficiency,
                      args.mixed_prefill))

    shape = Shape(turns=args.turns, branch_turn=args.branch_turn, branches=args.branches)
    convs = build_workload(args.conversations, shape, args.seed)
    unique, floor, prompt_tokens = exact_unique_and_floor(convs, shape)
    capacity = max(1, int(unique * args.capacity_fraction))
    print(f"{args.conversations:,} conversations x {args.turns} turns, best-of-{args.branches} at turn "
          f"{args.branch_turn}, {shape.system_prompts} system prompts; seed {args.seed}")
    if args.sweep_batch:
        print(f"server: continuous batching; {cost.describe()}")
        sweep([int(b) for b in args.sweep_batch.split(",")], convs, shape, args, capacity, cost,
              (unique, floor, prompt_tokens))
        return
    print(f"server: continuous batching, max_batch {args.max_batch}; {cost.describe()}")
    print(f"turnloom: {describe_settings(args, shape)}", flush=True)
    results = run_policies(convs, shape, args, capacity, cost)
    limit = limit_row(floor, prompt_tokens, results[-1].server, cost)
    print_table([row_of(r) for r in results] + [limit], unique, capacity)
    if args.plot:
        plot(results, limit, args.plot)
        print(f"figure: {args.plot}")


def engine_calls(args: argparse.Namespace) -> tuple[int, int] | None:
    return None if args.calls is None else (args.calls or args.max_batch, args.max_inflight)


def describe_settings(args: argparse.Namespace, shape: Shape) -> str:
    reserve = (f"estimated (prior {workload_prior(shape):,}, then the mean of finished trees)"
               if args.tree_reserve is None else f"{args.tree_reserve:,}")
    calls = engine_calls(args)
    dispatch = ("a job per free server slot" if calls is None else
                f"calls of {calls[0]} requests, {calls[1]} outstanding")
    min_runnable = client_min_runnable(args.max_batch, calls, args.min_runnable)
    cap = workload_floor_trees(shape, min_runnable, args.floor_trees)
    cap_text = "none" if cap is None else (
        f"{cap}" + (f" ({min_runnable} / {workload_branches(shape):.2f} mean branches)"
                    if args.floor_trees is None else ""))
    return (f"{dispatch}; token_budget = {args.budget_fraction:.3f} x capacity, tree_reserve {reserve}, "
            f"min_runnable {min_runnable}, floor_trees {cap_text}, output_reserve {args.output_reserve}, "
            f"starvation_limit {args.starvation_limit}")


def run_policies(convs: list[Conversation], shape: Shape, args: argparse.Namespace, capacity: int,
                 cost: Cost | Roofline) -> list[Result]:
    results = []
    for policy in args.policies.split(","):
        result = simulate(policy, convs, shape, args, capacity, cost)
        print(f"  {policy} (max_batch {args.max_batch}): simulated in {result.seconds:.1f} s "
              f"{result.extra}", file=sys.stderr)
        results.append(result)
    return results


def sweep(batches: list[int], convs: list[Conversation], shape: Shape, args: argparse.Namespace,
          capacity: int, cost: Cost | Roofline, totals: tuple[int, int, int]) -> None:
    """One table: every policy and the limit at each max_batch, speed-ups against
    the first policy at the same max_batch."""
    unique, floor, prompt_tokens = totals
    print(table_header(batch=True))
    for batch in batches:
        at_batch = argparse.Namespace(**{**vars(args), "max_batch": batch})  # the caller's args stay
        results = run_policies(convs, shape, at_batch, capacity, cost)
        rows = [row_of(r) for r in results] + [limit_row(floor, prompt_tokens, results[-1].server, cost)]
        for r in rows:
            print(table_row(r, unique, rows[0].gpu_s, batch))
    print(f"unique tokens: {unique:,}; cache capacity {capacity:,}; speedup = the first policy's "
          f"GPU s / GPU s, at the same batch")


if __name__ == "__main__":
    main()
