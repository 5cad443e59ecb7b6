"""The simulation engine: one asyncio loop over the Rust forest and schedulers.

Per turn: the scheduler pops ready jobs; their prompts are the speaker's lanes
(`Forest.lanes_for`) plus the generation prefix; on completion the speaker's
agent turns the output into a Reply and the engine appends one node holding a
token segment per view (the speaker's own view gets its exact generated ids,
the others the reply rendered in their chat format, tokenized in one batch).
Environments answer inline. Every completed turn and finished conversation is
logged to the write-ahead log; finished trees are exported in index order and
freed from the forest, so memory tracks the active frontier.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import msgspec

from turnloom import _core
from turnloom.admission import estimator_for, floor_trees, scenario_branches
from turnloom.agents import Reply
from turnloom.backends.base import GenRequest, GenResult
from turnloom.collect import Collector
from turnloom.config import Scenario
from turnloom.judging import JudgeCall
from turnloom.plugins import call_hook_safely, first_result_safely
from turnloom.records import ConversationRecord, ConversationState, Message, TurnInfo, TurnRecord
from turnloom.rundir import WAL
from turnloom.runtime import (
    BackendRT,
    JudgeRT,
    ParticipantRT,
    build_backends,
    build_judges,
    build_participants,
    build_plugins,
)
from turnloom.seeds import (
    conversation_seed,
    drawn_fork_turn,
    judge_seed,
    profile_seed,
    turn_seed,
)
from turnloom.wal import EndEvent, TurnEvent, WalWriter

log = logging.getLogger(__name__)

_replace = msgspec.structs.replace
_START_CHUNK = 1024
_SYSTEM_SEGMENT_CACHE = 4096  # distinct (view, prompt) segments kept
_MEMO_SIZE = 4096
_GC_GEN0 = 200000


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


class JudgeJob:
    """One judge call about one finished branch (a request outside the forest)."""

    __slots__ = ("verdicts", "judge", "call", "prompt", "seed", "attempt", "parse_attempt",
                 "cached")

    def __init__(self, verdicts: Verdicts, judge: JudgeRT, call: JudgeCall, prompt: list[int],
                 parse_attempt: int = 0) -> None:
        self.verdicts = verdicts
        self.judge = judge
        self.call = call
        self.prompt = prompt
        br = verdicts.br
        self.seed = judge_seed(br.tree.seed, br.branch, judge.name, call.key, parse_attempt)
        self.attempt = 0  # backend faults
        self.parse_attempt = parse_attempt
        self.cached = -1


class Verdicts:
    """A finished branch waiting for its judges' answers."""

    __slots__ = ("br", "calls", "values", "unparseable", "remaining")

    def __init__(self, br: Branch) -> None:
        self.br = br
        self.calls: dict[int, list[JudgeCall]] = {}  # judge index -> its calls
        self.values: dict[int, dict[str, Any]] = {}  # judge index -> key -> verdict
        self.unparseable: dict[int, int] = {}
        self.remaining = 0


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


class Engine:
    def __init__(self, scenario: Scenario, run_dir: Path, pm: Any, registry: Any, *,
                 progress: Any = None,
                 on_progress: Callable[[dict[str, int]], None] | None = None) -> None:
        self.scenario = scenario
        self.run_dir = Path(run_dir)
        self.pm = pm
        self.registry = registry
        self.progress = progress
        self.on_progress = on_progress
        run = scenario.run
        self.max_turns = run.max_turns
        self.max_retries = run.max_retries
        self.backoff = run.retry_backoff_s
        self.backends = build_backends(scenario, registry)
        self.participants = build_participants(scenario, registry, self.backends)
        self.views = [p for p in self.participants if p.is_agent]
        self._prefixes = [p.prefix for p in self.participants]  # by view id
        self.order = [self.participants[i] for i in scenario.turn_order()]
        # roles[v][s]: the role a message by participant s has in view v
        # (None: that view never sees the speaker's messages)
        self.roles = {v.index: [_view_role(v, s) for s in self.participants] for v in self.views}
        # targets[s]: (view, format, role) of every other view a message by s is rendered into
        self.targets = [[(v.index, v.fmt, self.roles[v.index][s.index])
                         for v in self.views
                         if v is not s and self.roles[v.index][s.index] is not None]
                        for s in self.participants]
        # The same with each format's bounded memo of segments by (role, text):
        # environments and scripted speakers repeat their lines.
        self._memo: dict[int, dict[tuple[str, str], list[int]]] = {}
        self._memo_targets = [[(vi, fmt, role, self._memo.setdefault(id(fmt), {}))
                               for vi, fmt, role in targets] for targets in self.targets]
        self.judges = build_judges(scenario, registry, self.backends)
        self.judge_jobs = 0  # judge jobs queued or in flight
        scorers = build_plugins(scenario, registry, "scorers", scenario.scorers)
        self.turn_scorers = [(n, s) for n, s in scorers if callable(getattr(s, "score_turn", None))]
        self.conv_scorers = [(n, s) for n, s in scorers
                             if callable(getattr(s, "score_conversation", None))]
        self.exporters = build_plugins(scenario, registry, "exporters", scenario.exporters)
        # Each participant's entry of a record before its profile and system prompt.
        self._participant_info = [
            (p.name, {"agent": p.spec.agent, "role": p.role,
                      **({"backend": p.backend.name} if p.backend is not None else {})})
            for p in self.participants]
        # Branch ids are mixed-radix numbers of the choices made at each fork,
        # so they do not depend on completion order.
        self.forks: dict[int, tuple[int, int]] = {}
        mult = 1
        for b in sorted(scenario.branches, key=lambda b: b.at_turn):
            self.forks[b.at_turn] = (b.n, mult)
            mult *= b.n
        self.phrases = scenario.stop.phrases
        self.case_sensitive = scenario.stop.case_sensitive
        if not self.case_sensitive:
            self.phrases = tuple(p.lower() for p in self.phrases)
        self.max_tokens = scenario.stop.max_tokens
        # Hooks nobody implements are not called at all (they are per turn).
        self.hook_start = bool(_impls(pm, "on_conversation_start"))
        self.hook_turn_end = bool(_impls(pm, "on_turn_end"))
        self.hook_should_stop = bool(_impls(pm, "should_stop"))
        self.hook_end = bool(_impls(pm, "on_conversation_end"))
        self.forest: Any = _core.Forest()
        # Job or JudgeJob by id; the per-turn paths tell them apart by `type(job) is`.
        self.jobs: dict[int, Any] = {}
        self._next_job = 0
        self.trees: dict[int, Tree] = {}
        self.indices = range(run.first_index, run.first_index + run.conversations)
        self.to_start: IndexStack | list[int] = IndexStack(self.indices)
        self._system_segments: dict[tuple[int, str], list[int]] = {}
        self.tasks: dict[asyncio.Future[Any], tuple[Any, ...]] = {}
        self.wal: WalWriter | None = None
        self.collector: Collector | None = None
        self.turns_done = 0
        self.tokens_done = 0
        self.replayed_turns = 0
        self.replayed_tokens = 0
        self.peak_live_nodes = 0
        self.peak_active = 0
        self.t0 = 0.0
        self.wall_s = 0.0

    # -- lifecycle ------------------------------------------------------------------

    async def start_backends(self) -> None:
        run = self.scenario.run
        for be in self.backends.values():
            await be.backend.start()
            be.info = info = be.backend.info()
            spec = be.spec
            limit = info.max_batch or 1 << 30
            be.batch_size = max(1, min(spec.batch_size or run.batch_size or limit, limit))
            be.max_inflight = spec.max_inflight or run.max_inflight
            cap = info.cache_capacity_tokens
            be.max_batch_tokens = spec.max_batch_tokens or cap or (1 << 40)
            if cap:
                be.cache = _core.RadixCache(cap)
                # Reserve each tree's expected final size at admission (a tree is admitted
                # small and grows), but never let the budget leave the backend's lanes idle:
                # the floor admits past it, up to the trees whose branches fill the lanes.
                views = [v for v in self.views if v.backend is be]
                be.tree_size = estimator_for(self.scenario, views)
                lanes = be.batch_size * be.max_inflight
                be.sched = _core.Scheduler(
                    token_budget=cap,
                    tree_reserve=be.tree_size.estimate if be.tree_size is not None else 0,
                    min_runnable=lanes,
                    floor_trees=floor_trees(lanes, scenario_branches(self.scenario, views)))
            else:
                be.sched = _core.Scheduler()

    async def close_backends(self) -> None:
        for be in self.backends.values():
            try:
                await be.backend.close()
            except Exception as exc:  # closing must not mask the run's outcome
                log.warning("backend %r raised on close: %s", be.name, exc)

    def open_outputs(self) -> None:
        self.wal = WalWriter(self.run_dir / WAL, sync_s=self.scenario.run.wal_sync_s)
        self.collector = Collector(self.run_dir, self.exporters)
        self.collector.skip_to(self.indices.start)

    @property
    def max_active(self) -> int:
        if self.scenario.run.max_active:
            return self.scenario.run.max_active
        lanes = sum(be.batch_size * be.max_inflight for be in self.backends.values())
        return max(64, 4 * lanes)

    async def run(self) -> None:
        """Drive every conversation to its end (outputs must be open)."""
        self.t0 = time.perf_counter()
        # A run allocates millions of short-lived containers that reference counting
        # frees; collecting cycles every 700 allocations would cost a quarter of it.
        threshold = gc.get_threshold()
        gc.set_threshold(max(threshold[0], _GC_GEN0), max(threshold[1], 20),
                         max(threshold[2], 100))
        try:
            await self._loop()
        finally:
            gc.set_threshold(*threshold)
            self.wall_s = time.perf_counter() - self.t0
            for task in self.tasks:
                task.cancel()

    async def _loop(self) -> None:
        assert self.wal is not None and self.collector is not None
        backends = list(self.backends.values())
        while True:
            self._top_up()
            for be in backends:
                self._dispatch(be)
            self.wal.flush()
            n_live = len(self.forest)
            if n_live > self.peak_live_nodes:
                self.peak_live_nodes = n_live
            if self.progress is not None:
                c = self.collector
                self.progress.update(c.trees, self.turns_done, self.tokens_done, c.failures)
            if self.on_progress is not None:
                self.on_progress(self.counts())
            if not self.tasks:
                if not self.trees and not self.to_start:
                    return
                raise RunStalled(f"{len(self.trees)} conversations active, nothing in flight "
                                 f"({sum(len(b.sched) for b in backends)} jobs waiting)")
            done, _ = await asyncio.wait(list(self.tasks), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                what = self.tasks.pop(task)
                if what[0] == "retry":
                    self._push(what[1])
                else:
                    self._on_batch(task, *what)

    def counts(self) -> dict[str, int]:
        """Totals so far, turns and tokens replayed from the log included."""
        c = self.collector
        assert c is not None
        return {"conversations": c.trees, "turns": self.turns_done + self.replayed_turns,
                "tokens": self.tokens_done + self.replayed_tokens, "failures": c.failures}

    # -- starting conversations -----------------------------------------------------------

    def _top_up(self) -> None:
        room = self.max_active - len(self.trees)
        if room <= 0 or not self.to_start:
            return
        k = min(room, _START_CHUNK, len(self.to_start))
        pop = self.to_start.pop
        indices = [pop() for _ in range(k)]
        self._advance_branches(self._start(indices))
        if len(self.trees) > self.peak_active:
            self.peak_active = len(self.trees)

    def _new_tree(self, index: int) -> tuple[Tree, ConversationState]:
        seed = conversation_seed(self.scenario.run.seed, index)
        tree = Tree(index, f"{self.scenario.run.name}-{index:06d}", seed, self._forks_of(seed))
        state = ConversationState(tree.cid, index, seed, 0)
        for p in self.participants:
            if p.sampler is None:
                continue
            try:
                profile = p.sampler.sample(random.Random(profile_seed(seed, p.name)), index)
                if not isinstance(profile, dict):
                    raise TypeError(f"returned {type(profile).__name__}, expected dict")
                _require_json(profile, "the profile")
                state.profiles[p.name] = profile
            except Exception as exc:
                state.errors.append(f"sampler {p.spec.sampler!r} of {p.name!r} failed: "
                                    f"{type(exc).__name__}: {exc}")
        if not state.errors:
            for v in self.views:
                try:
                    sp = v.obj.system_prompt(state, v.name)
                    if sp is not None and not isinstance(sp, str):
                        raise TypeError(f"returned {type(sp).__name__}, expected str or None")
                except Exception as exc:
                    state.errors.append(f"agent {v.spec.agent!r} of {v.name!r} failed in "
                                        f"system_prompt: {type(exc).__name__}: {exc}")
                    continue
                if sp is not None:
                    state.system_prompts[v.name] = sp
        return tree, state

    def _forks_of(self, seed: int) -> dict[int, tuple[int, int]]:
        """The forks of one conversation: the scenario's, or one drawn turn."""
        branches = self.scenario.branches
        b = branches[0] if branches else None
        if b is None or b.to_turn is None:
            return self.forks
        return {drawn_fork_turn(seed, b.at_turn, b.to_turn, len(self.order)): (b.n, 1)}

    def _start(self, indices: Sequence[int]) -> list[Branch]:
        """Create conversations (roots with each view's system prompt) and return
        the branches ready for their first turn."""
        made = [self._new_tree(i) for i in indices]
        segs = self._root_segments([state for _, state in made])
        out = []
        for (tree, state), seg in zip(made, segs):
            tree.root = self.forest.add_root(0, "system", "", seg)
            self.trees[tree.index] = tree
            tree.live = 1
            br = Branch(tree, state, 0, tree.root, -1, 0, self._lens(seg))
            if state.errors:
                self._finish(br, "error")
            elif self._branch_started(br):
                out.append(br)
        return out

    def _root_segments(self, states: Sequence[ConversationState]) -> list[dict[int, list[int]]]:
        # Most runs share a handful of system prompts: tokenize each distinct one once.
        segs: list[dict[int, list[int]]] = [{} for _ in states]
        cache = self._system_segments
        for v in self.views:
            if len(cache) > _SYSTEM_SEGMENT_CACHE:
                cache.clear()
            missing: dict[str, None] = {}
            for st in states:
                text = st.system_prompts.get(v.name)
                if text is not None and (v.index, text) not in cache:
                    missing[text] = None
            if missing:
                texts = list(missing)
                for text, ids in zip(texts, v.fmt.segments(["system"] * len(texts), texts)):
                    cache[(v.index, text)] = ids
            for k, st in enumerate(states):
                text = st.system_prompts.get(v.name)
                if text is not None:
                    segs[k][v.index] = cache[(v.index, text)]
        return segs

    def _lens(self, seg: dict[int, list[int]]) -> list[int]:
        lens = [0] * len(self.participants)
        for v, ids in seg.items():
            lens[v] = len(ids)
        return lens

    # -- scheduling -----------------------------------------------------------------------

    def _advance_branches(self, branches: list[Branch], forked: bool = False) -> None:
        """Schedule branches' next turns; environments answer inline, repeatedly.
        `forked`: the branches are already the children of a fork at their next turn."""
        while branches:
            env_work = self._schedule(branches, forked)
            forked = False
            if not env_work:
                return
            branches = self._apply(self._respond(env_work))

    def _schedule(self, branches: Sequence[Branch],
                  forked: bool = False) -> list[tuple[Branch, ParticipantRT, int]]:
        order = self.order
        n_order = len(order)
        speakers = []
        if forked:
            speakers = [order[br.turn % n_order] for br in branches]
        else:
            planned = []
            for br in branches:
                t = br.turn
                speaker = order[t % n_order]
                planned.append(br)
                speakers.append(speaker)
                fork = br.tree.forks.get(t)
                if fork is not None:
                    siblings = self._fork(br, *fork)
                    planned += siblings
                    speakers += [speaker] * len(siblings)
            branches = planned
        seeds = _turn_seeds(branches)
        env_work = []
        pushes: dict[BackendRT, list[Job]] = {}
        for br, speaker, seed in zip(branches, speakers, seeds):
            be = speaker.backend
            if be is None:
                env_work.append((br, speaker, seed))
            else:
                jobs = pushes.get(be)
                if jobs is None:
                    jobs = pushes[be] = []
                jobs.append(Job(br, speaker, seed))
        for jobs in pushes.values():
            self._push(jobs)
        return env_work

    def _fork(self, br: Branch, n: int, mult: int) -> list[Branch]:
        """The extra siblings of a fork at `br`'s next turn (`br` itself is the first)."""
        out = []
        for c in range(1, n):
            bid = br.branch + c * mult
            child = Branch(br.tree, br.state.fork(bid, br.turn), bid, br.node, br.node_owner,
                           br.turn, list(br.lens))
            br.tree.live += 1
            if self._branch_started(child):
                out.append(child)
        return out

    def _branch_started(self, br: Branch) -> bool:
        """Run on_conversation_start for a new conversation or branch; False (and the
        branch finished as an error) if a plugin failed."""
        if not self.hook_start:
            return True
        state = br.state
        n = len(state.errors)
        call_hook_safely(self.pm, "on_conversation_start", state.errors, conversation=state)
        _check_meta(state)
        if len(state.errors) > n:
            self._finish(br, "error")
            return False
        return True

    def _push(self, jobs: Sequence[Any]) -> None:
        if type(jobs[0]) is JudgeJob:
            self._push_judge_jobs(jobs)
            return
        be = jobs[0].p.backend
        assert be is not None
        first = self._next_job
        self._next_job = first + len(jobs)
        ids = list(range(first, self._next_job))
        self.jobs.update(zip(ids, jobs))
        trees = []
        lens = []
        for job in jobs:
            br = job.br
            tree = br.tree
            trees.append(tree.root)
            tree.backends.add(be)
            p = job.p
            lens.append(br.lens[p.index] + len(p.prefix))
        if be.cache is not None and not be.reports_cached:
            prompts = self._prompts(jobs)
            cached = be.cache.match_many(prompts)
            for job, c in zip(jobs, cached):
                job.cached = c
            be.sched.push_many(ids, trees, lens, None, cached)
        else:
            be.sched.push_many(ids, trees, lens)

    def _prompts(self, jobs: Sequence[Job]) -> list[list[int]]:
        """Each job's prompt: its speaker's lane plus the generation prefix."""
        return self.forest.lanes_for([j.br.node for j in jobs], [j.p.index for j in jobs],
                                     self._prefixes)

    def _dispatch(self, be: BackendRT) -> None:
        sched = be.sched
        while be.inflight < be.max_inflight and len(sched):
            jids = sched.pop_batch(be.batch_size, be.max_batch_tokens)
            if not jids:
                return
            jobs = [self.jobs[j] for j in jids]
            if self.judge_jobs:
                reqs = self._requests_with_judges(jids, jobs)
            else:
                prompts = self._prompts(jobs)
                reqs = [GenRequest(rid=str(jid), input_ids=prompt,
                                   params=_replace(job.p.params, seed=job.seed),
                                   affinity=job.br.tree.root)
                        for jid, job, prompt in zip(jids, jobs, prompts)]
            task = asyncio.ensure_future(be.backend.generate(reqs))
            self.tasks[task] = (be, jids, reqs, time.perf_counter())
            be.inflight += 1

    # -- completions --------------------------------------------------------------------

    def _on_batch(self, task: asyncio.Future[Any], be: BackendRT, jids: list[int],
                  reqs: list[GenRequest], t0: float) -> None:
        be.inflight -= 1
        be.sched.complete_many(jids)
        elapsed = time.perf_counter() - t0
        results = _checked_results(task, reqs)
        model_cache = be.cache is not None and not be.reports_cached
        jobs = self.jobs
        items = []
        retry: list[Job] = []
        # Per-batch sums, added to the usage counters once at the end.
        lat_sum = 0.0
        prompt_sum = out_sum = cached_sum = errors = 0
        judged: list[tuple[JudgeJob, GenRequest, GenResult]] = []
        for jid, req, res in zip(jids, reqs, results):
            job = jobs.pop(jid)
            if type(job) is JudgeJob:
                judged.append((job, req, res))
                continue
            p = job.p
            pu = p.usage
            latency = res.latency_s or elapsed
            lat_sum += latency
            pu.requests += 1
            pu.latency_s += latency
            if res.finish_reason == "error":
                errors += 1
                pu.errors += 1
                if job.attempt < self.max_retries:
                    job.attempt += 1
                    pu.retries += 1
                    retry.append(job)
                else:
                    job.br.state.errors.append(
                        f"backend {be.name!r} failed {job.attempt + 1} times: {res.error}")
                    self._finish(job.br, "error")
                continue
            cached = res.cached_tokens
            if cached:
                be.reports_cached = True
            elif model_cache:
                cached = max(job.cached, 0)
                be.cache.insert(req.input_ids + res.output_ids)
            n_out = len(res.output_ids)
            prompt_sum += res.prompt_tokens
            out_sum += n_out
            cached_sum += cached
            pu.prompt_tokens += res.prompt_tokens
            pu.completion_tokens += n_out
            pu.cached_tokens += cached
            state = job.br.state
            try:
                reply = p.obj.on_output(state, p.name, res.text, res.finish_reason)
                if type(reply) is not Reply or reply.meta or not reply.text.isascii():
                    reply = _checked_reply(reply)  # the plain case needs no checks
            except Exception as exc:
                state.errors.append(f"agent {p.spec.agent!r} of {p.name!r} failed in on_output: "
                                    f"{type(exc).__name__}: {exc}")
                self._finish(job.br, "error")
                continue
            items.append((job.br, p, reply, res, job.seed, latency, cached))
        if judged:
            self._on_judged(be, judged, elapsed)
        usage = be.usage
        usage.requests += len(reqs) - len(judged)
        usage.latency_s += lat_sum
        usage.errors += errors
        usage.retries += len(retry)
        usage.prompt_tokens += prompt_sum
        usage.completion_tokens += out_sum
        usage.cached_tokens += cached_sum
        self.tokens_done += out_sum
        if retry:
            self._retry(retry)
        self._advance_branches(self._apply(items))

    def _retry(self, jobs: Sequence[Job | JudgeJob]) -> None:
        by_backend: dict[Any, list[Job | JudgeJob]] = {}
        for job in jobs:
            be = job.judge.backend if isinstance(job, JudgeJob) else job.p.backend
            by_backend.setdefault(be, []).append(job)
        for group in by_backend.values():
            delay = self.backoff * (2 ** (min(j.attempt for j in group) - 1))
            if delay <= 0:
                self._push(group)
            else:
                task = asyncio.ensure_future(asyncio.sleep(delay))
                self.tasks[task] = ("retry", group)

    def _respond(self, work: Sequence[tuple[Branch, ParticipantRT, int]]) -> list[tuple[Any, ...]]:
        items = []
        for br, p, seed in work:
            state = br.state
            try:
                reply = _checked_reply(p.obj.respond(state, p.name, random.Random(seed)))
            except Exception as exc:
                state.errors.append(f"environment {p.spec.agent!r} of {p.name!r} failed in "
                                    f"respond: {type(exc).__name__}: {exc}")
                self._finish(br, "error")
                continue
            items.append((br, p, reply, None, seed, 0.0, 0))
        return items

    def _apply(self, items: Sequence[tuple[Any, ...]]) -> list[Branch]:
        """Append the replies as nodes, log them, run scorers and hooks, and return
        the branches that go on."""
        if not items:
            return []
        parents = []
        speakers = []
        roles = []
        texts = []
        segs: list[dict[int, list[int]]] = []
        finishes = []
        kept: list[tuple[Any, ...]] = []
        # Segments of the other views: looked up in each format's memo, the misses
        # tokenized afterwards in one batch per format.
        misses: dict[int, tuple[Any, dict[tuple[str, str], list[int]], list[Any]]] = {}
        targets = self._memo_targets
        for item in items:
            br, p, reply, res = item[0], item[1], item[2], item[3]
            text = reply.text
            if not text and reply.stop:
                self._finish(br, reply.stop)
                continue
            kept.append(item)
            if res is not None:
                seg = {p.index: p.prefix + p.fmt.close_generated(res.output_ids,
                                                                 res.finish_reason)}
                finishes.append(res.finish_reason)
            else:
                seg = {}
                finishes.append("")
            for vi, fmt, role, memo in targets[p.index]:
                ids = memo.get((role, text))
                if ids is None:
                    miss = misses.get(id(fmt))
                    if miss is None:
                        miss = misses[id(fmt)] = (fmt, memo, [])
                    miss[2].append((seg, vi, role, text))
                    seg[vi] = None  # filled below; keeps the views' order
                else:
                    seg[vi] = ids
            segs.append(seg)
            parents.append(br.node)
            speakers.append(p.index)
            roles.append(p.role)
            texts.append(text)
        if not kept:
            return []
        for fmt, memo, wanted in misses.values():
            fresh = fmt.segments([w[2] for w in wanted], [w[3] for w in wanted])
            if len(memo) > _MEMO_SIZE:
                memo.clear()
            for (seg, vi, role, text), ids in zip(wanted, fresh):
                seg[vi] = memo[(role, text)] = ids
        nodes = self.forest.append_many(parents, speakers, roles, texts, segs, finishes)
        return self._record_turns(kept, nodes, segs)

    def _record_turns(self, kept: Sequence[tuple[Any, ...]], nodes: Sequence[int],
                      segs: Sequence[dict[int, list[int]]]) -> list[Branch]:
        """Advance each branch past its new node, record and log the turn, run turn
        scorers and hooks; finish the branches that stop, return the others."""
        go_on = []
        wal_append = self.wal.append  # type: ignore[union-attr]
        turn_scorers = self.turn_scorers
        hook_turn_end = self.hook_turn_end
        hook_should_stop = self.hook_should_stop
        stop_phrases = bool(self.phrases)
        max_tokens = self.max_tokens
        max_turns = self.max_turns
        for (br, p, reply, res, seed, latency, cached), node, seg in zip(kept, nodes, segs):
            t = br.turn
            parent_owner = br.node_owner
            branch = br.branch
            br.node = node
            br.node_owner = branch
            br.turn = t + 1
            lens = br.lens
            for v, ids in seg.items():
                lens[v] += len(ids)
            state = br.state
            text = reply.text
            meta = reply.meta
            if res is not None:
                prompt_tokens = res.prompt_tokens
                output_ids = res.output_ids
                completion = len(output_ids)
                finish = res.finish_reason
            else:
                prompt_tokens = completion = 0
                finish = "stop"
                output_ids = None
            rec = TurnRecord(state.conversation_id, branch, t, p.name, p.role, text, node,
                             t - 1 if t else None, prompt_tokens, completion, cached, latency,
                             finish, seed, meta)
            state.messages.append((p.name, p.role, text))
            state.turns.append(rec)
            errors = state.errors
            n_err = len(errors)
            scores: dict[str, Any] = {}
            if turn_scorers:
                self._score_turn(state, rec, t, scores)
            state.turn_scores.append(scores)
            stop = reply.stop
            n_hook = len(errors)
            if hook_turn_end:
                call_hook_safely(self.pm, "on_turn_end", errors, conversation=state, turn=rec)
            if stop is None and hook_should_stop:
                result = first_result_safely(self.pm, "should_stop", errors,
                                             conversation=state, turn=rec)
                if result is not None:
                    stop = str(result)
            if state.meta:
                _check_meta(state)
            if len(errors) > n_hook:
                stop = "error"
            if stop is None:
                if stop_phrases or max_tokens is not None:
                    stop = self._stop_condition(br, text, t)
                elif t + 1 >= max_turns:
                    stop = "max_turns"
            # Positional, in TurnEvent's field order (this is the hottest line of a run).
            wal_append(TurnEvent(
                state.index, branch, parent_owner, t, p.index, p.role, text, output_ids,
                finish, seed, prompt_tokens, completion, cached, latency, meta or None,
                scores or None, state.meta or None,
                errors[n_err:] if len(errors) > n_err else None, stop))
            if stop is None:
                go_on.append(br)
            else:
                self._finish(br, stop)
        self.turns_done += len(kept)
        for p, n in Counter(item[1] for item in kept).items():
            p.usage.turns += n
            if p.backend is not None:
                p.backend.usage.turns += n
        return go_on

    def _score_turn(self, state: ConversationState, rec: TurnRecord, t: int,
                    scores: dict[str, Any]) -> None:
        for name, scorer in self.turn_scorers:
            try:
                score = scorer.score_turn(state, rec)
                if score is not None:
                    if not isinstance(score, dict):
                        raise TypeError(f"returned {type(score).__name__}, expected dict or None")
                    _require_json(score, "the score")
                    scores[name] = score
            except Exception as exc:
                state.errors.append(f"scorer {name!r} failed on turn {t}: "
                                    f"{type(exc).__name__}: {exc}")

    def _stop_condition(self, br: Branch, text: str, t: int) -> str | None:
        if self.phrases:
            hay = text if self.case_sensitive else text.lower()
            for phrase in self.phrases:
                if phrase in hay:
                    return "stop_phrase"
        if self.max_tokens is not None:
            nxt = self.order[(t + 1) % len(self.order)]
            if nxt.is_agent and br.lens[nxt.index] + len(nxt.prefix) > self.max_tokens:
                return "max_tokens"
        if t + 1 >= self.max_turns:
            return "max_turns"
        return None

    # -- finishing -------------------------------------------------------------------

    def _finish(self, br: Branch, reason: str) -> None:
        """End a branch: conversation scores, then its judges (if any), then `_complete`."""
        state = br.state
        state.stop_reason = reason
        for name, scorer in self.conv_scorers:
            try:
                score = scorer.score_conversation(state)
                if score is not None:
                    if not isinstance(score, dict):
                        raise TypeError(f"returned {type(score).__name__}, expected dict or None")
                    _require_json(score, "the score")
                    state.scores[name] = score
            except Exception as exc:
                state.errors.append(f"scorer {name!r} failed on the conversation: "
                                    f"{type(exc).__name__}: {exc}")
        if self.judges and reason != "error" and self._ask_judges(br):
            return  # completed when the last verdict is in
        self._complete(br)

    def _complete(self, br: Branch) -> None:
        """Log the branch's end and record it; close the tree when it was the last."""
        state = br.state
        if self.hook_end:
            call_hook_safely(self.pm, "on_conversation_end", state.errors, conversation=state)
            _check_meta(state)
        record = self._record(state)
        tree = br.tree
        tree.live -= 1
        done = tree.live == 0
        self.wal.append(EndEvent(tree.index, br.branch, done, record.stop_reason,  # type: ignore[union-attr]
                                 record.scores, record.errors, record.meta))
        tree.records.append(record)
        if done:
            self._close_tree(tree)

    def _close_tree(self, tree: Tree) -> None:
        if tree.root >= 0 and self.forest.is_live(tree.root):
            for be in tree.backends:
                if be.tree_size is not None:
                    # Its real size in the backend's views sizes the trees admitted next.
                    size = self.forest.subtree_tokens(tree.root, be.tree_size.views)
                    be.sched.set_tree_reserve(be.tree_size.observe(size))
            self.forest.free_subtree(tree.root)
        for be in tree.backends:
            be.sched.finish_tree(tree.root)
        del self.trees[tree.index]
        self.collector.add_tree(tree.index, tree.records)  # type: ignore[union-attr]

    def _record(self, state: ConversationState) -> ConversationRecord:
        lead = self._lead_prompt(state)
        messages = [] if lead is None else [Message("system", lead)]
        recs = state.turns
        if len(state.turn_scores) < len(recs):
            recs = recs[:len(state.turn_scores)]
        messages += [Message(rec.role, rec.text, rec.participant) for rec in recs]
        turns = [TurnInfo(rec.participant, rec.role, rec.seed, rec.prompt_tokens,
                          rec.completion_tokens, rec.finish_reason, scores, rec.meta)
                 for rec, scores in zip(recs, state.turn_scores)]
        tokens: dict[str, dict[str, int]] = {p.name: {"prompt": 0, "completion": 0}
                                             for p in self.participants}
        for rec in recs:
            tk = tokens[rec.participant]
            tk["prompt"] += rec.prompt_tokens
            tk["completion"] += rec.completion_tokens
        participants = {}
        profiles = state.profiles
        prompts = state.system_prompts
        for name, base in self._participant_info:
            info = dict(base)
            if name in profiles:
                info["profile"] = profiles[name]
            if name in prompts:
                info["system_prompt"] = prompts[name]
            participants[name] = info
        return ConversationRecord(
            conversation_id=state.conversation_id, index=state.index, branch=state.branch,
            seed=state.seed, messages=messages, participants=participants, turns=turns,
            tokens=tokens, stop_reason=state.stop_reason or "", scores=state.scores,
            errors=state.errors, meta=state.meta)

    def _lead_prompt(self, state: ConversationState) -> str | None:
        for p in self.views:
            if p.role == "assistant" and p.name in state.system_prompts:
                return state.system_prompts[p.name]
        return None

    # -- judges -------------------------------------------------------------------------

    def _ask_judges(self, br: Branch) -> bool:
        """Queue every judge's calls about a finished branch; False if there are none."""
        state = br.state
        verdicts = Verdicts(br)
        jobs: list[JudgeJob] = []
        for jr in self.judges:
            try:
                calls = list(jr.obj.calls(state) or ())
                keys = set()
                for call in calls:
                    if not isinstance(call, JudgeCall):
                        raise TypeError(f"returned {type(call).__name__}, expected JudgeCall")
                    if call.key in keys:
                        raise ValueError(f"two calls share the key {call.key!r}")
                    keys.add(call.key)
                    if call.meta:
                        _require_json(call.meta, "JudgeCall.meta")
            except Exception as exc:
                state.errors.append(f"judge {jr.spec.judge!r} ({jr.name!r}) failed in calls: "
                                    f"{type(exc).__name__}: {exc}")
                continue
            if not calls:
                continue
            verdicts.calls[jr.index] = calls
            verdicts.values[jr.index] = {}
            verdicts.unparseable[jr.index] = 0
            for call, prompt in zip(calls, self._judge_prompts(jr, calls)):
                jobs.append(JudgeJob(verdicts, jr, call, prompt))
        if not jobs:
            return False
        verdicts.remaining = len(jobs)
        self._push_judge_jobs(jobs)
        return True

    def _judge_prompts(self, jr: JudgeRT, calls: Sequence[JudgeCall]) -> list[list[int]]:
        roles = [role for call in calls for role, _ in call.messages]
        texts = [text for call in calls for _, text in call.messages]
        segs = jr.backend.fmt.segments(roles, texts) if roles else []
        prompts = []
        k = 0
        for call in calls:
            prompt: list[int] = []
            for seg in segs[k:k + len(call.messages)]:
                prompt += seg
            k += len(call.messages)
            prompts.append(prompt + jr.prefix)
        return prompts

    def _push_judge_jobs(self, jobs: Sequence[JudgeJob]) -> None:
        by_backend: dict[BackendRT, list[JudgeJob]] = {}
        for job in jobs:
            by_backend.setdefault(job.judge.backend, []).append(job)
        for be, group in by_backend.items():
            ids = list(range(self._next_job, self._next_job + len(group)))
            self._next_job += len(group)
            for jid, job in zip(ids, group):
                self.jobs[jid] = job
                job.verdicts.br.tree.backends.add(be)
            self.judge_jobs += len(group)
            trees = [job.verdicts.br.tree.root for job in group]
            lens = [len(job.prompt) for job in group]
            if be.cache is not None and not be.reports_cached:
                cached = be.cache.match_many([job.prompt for job in group])
                for job, c in zip(group, cached):
                    job.cached = c
                be.sched.push_many(ids, trees, lens, None, cached)
            else:
                be.sched.push_many(ids, trees, lens)

    def _requests_with_judges(self, jids: Sequence[int], jobs: Sequence[Any]) -> list[GenRequest]:
        turn_jobs = [job for job in jobs if type(job) is not JudgeJob]
        lanes = iter(self._prompts(turn_jobs) if turn_jobs else ())
        reqs = []
        for jid, job in zip(jids, jobs):
            if type(job) is JudgeJob:
                reqs.append(GenRequest(rid=str(jid), input_ids=job.prompt,
                                       params=_replace(job.judge.params, seed=job.seed),
                                       affinity=job.verdicts.br.tree.root))
            else:
                reqs.append(GenRequest(rid=str(jid), input_ids=next(lanes),
                                       params=_replace(job.p.params, seed=job.seed),
                                       affinity=job.br.tree.root))
        return reqs

    def _on_judged(self, be: BackendRT, judged: Sequence[tuple[JudgeJob, GenRequest, GenResult]],
                   elapsed: float) -> None:
        again: list[JudgeJob] = []  # backend faults: retried with backoff
        reparse: list[JudgeJob] = []  # unparseable output: asked once more, with a new seed
        done: list[Verdicts] = []
        for job, req, res in judged:
            jr = job.judge
            verdicts = job.verdicts
            state = verdicts.br.state
            self.judge_jobs -= 1
            for u in (jr.usage, be.usage):
                u.requests += 1
                u.latency_s += res.latency_s or elapsed
            if res.finish_reason == "error":
                jr.usage.errors += 1
                be.usage.errors += 1
                if job.attempt < self.max_retries:
                    job.attempt += 1
                    jr.usage.retries += 1
                    be.usage.retries += 1
                    again.append(job)
                    continue
                state.errors.append(f"judge {jr.name!r} call {job.call.key!r}: backend "
                                    f"{be.name!r} failed {job.attempt + 1} times: {res.error}")
                verdict = None
            else:
                cached = res.cached_tokens
                if cached:
                    be.reports_cached = True
                elif be.cache is not None and not be.reports_cached:
                    cached = max(job.cached, 0)
                    be.cache.insert(req.input_ids + res.output_ids)
                n_out = len(res.output_ids)
                for u in (jr.usage, be.usage):
                    u.prompt_tokens += res.prompt_tokens
                    u.completion_tokens += n_out
                    u.cached_tokens += cached
                self.tokens_done += n_out
                try:
                    verdict = jr.obj.parse(job.call, res.text)
                    _require_json(verdict, "the verdict")
                except ValueError as exc:
                    if job.parse_attempt == 0:
                        reparse.append(JudgeJob(verdicts, jr, job.call, job.prompt, 1))
                        continue
                    verdicts.unparseable[jr.index] += 1
                    verdict = None
                    log.debug("judge %r: unparseable output for %r: %s", jr.name, job.call.key, exc)
                except Exception as exc:
                    state.errors.append(f"judge {jr.spec.judge!r} ({jr.name!r}) failed in parse: "
                                        f"{type(exc).__name__}: {exc}")
                    verdict = None
            verdicts.values[jr.index][job.call.key] = verdict
            verdicts.remaining -= 1
            if verdicts.remaining == 0:
                done.append(verdicts)
        if again:
            self._retry(again)
        if reparse:
            self._push_judge_jobs(reparse)
        for verdicts in done:
            self._score_verdicts(verdicts)
            self._complete(verdicts.br)

    def _score_verdicts(self, verdicts: Verdicts) -> None:
        state = verdicts.br.state
        for jr in self.judges:
            if jr.index not in verdicts.calls:
                continue
            values = verdicts.values[jr.index]
            ordered = {call.key: values.get(call.key) for call in verdicts.calls[jr.index]}
            try:
                score = jr.obj.score(state, ordered)
                if score is None:
                    continue
                if not isinstance(score, dict):
                    raise TypeError(f"returned {type(score).__name__}, expected dict or None")
                score = {**score, "unparseable": verdicts.unparseable[jr.index]}
                _require_json(score, "the score")
                state.scores[jr.name] = score
            except Exception as exc:
                state.errors.append(f"judge {jr.spec.judge!r} ({jr.name!r}) failed in score: "
                                    f"{type(exc).__name__}: {exc}")

    # -- summary ------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        c = self.collector
        assert c is not None
        backends = {}
        prompt = cached = 0
        for be in self.backends.values():
            d = be.usage.as_dict()
            d["type"] = be.spec.type
            d["plugin"] = be.plugin
            if be.info is not None:
                d["info"] = msgspec.to_builtins(be.info)
            d["cached_tokens_source"] = "backend" if be.reports_cached else (
                "model" if be.cache is not None else "none")
            # What the engine ran at: the scenario's settings capped by the backend's.
            d["batch_size"] = be.batch_size
            d["max_inflight"] = be.max_inflight
            backends[be.name] = d
            prompt += be.usage.prompt_tokens
            cached += be.usage.cached_tokens
        wall = self.wall_s or 1e-9
        new_turns = self.turns_done
        return {
            "name": self.scenario.run.name,
            "status": "complete",
            "conversations": c.trees,
            "records": c.records,
            "turns": sum(p.usage.turns for p in self.participants),  # each shared turn once
            "record_turns": c.turns,  # summed over branch records
            "failures": c.failures,
            "stop_reasons": dict(sorted(c.stop_reasons.items())),
            "errors": c.error_samples,
            "plugin_errors": list(getattr(self.registry, "errors", [])) + c.plugin_errors,
            "participants": {p.name: p.usage.as_dict() for p in self.participants},
            "judges": {j.name: j.usage.as_dict() for j in self.judges},
            "backends": backends,
            "cache": {"prompt_tokens": prompt, "cached_tokens": cached,
                      "hit_rate": round(cached / prompt, 6) if prompt else 0.0},
            "scores": c.mean_scores(),
            "timing": {"wall_s": round(wall, 3),
                       "turns_this_session": new_turns,
                       "replayed_turns": self.replayed_turns,
                       "turns_per_s": round(new_turns / wall, 1),
                       "tokens_per_s": round(self.tokens_done / wall, 1)},
            "memory": {"peak_live_nodes": self.peak_live_nodes,
                       "peak_active_conversations": self.peak_active,
                       "final_forest": self.forest.stats()},
        }


_json = msgspec.json.Encoder()


def _require_json(value: Any, what: str) -> None:
    """Plugin output goes to the log and to JSON files: check it encodes now, where
    the fault can still be pinned on the plugin."""
    try:
        _json.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"{what} is not JSON-serialisable: {exc}") from None


def _turn_seeds(branches: Sequence[Branch]) -> list[int]:
    """The sampling seed of each branch's next turn (`turn_seed`, computed in bulk)."""
    seeds = [br.tree.seed for br in branches]
    ids = [br.branch for br in branches]
    turns = [br.turn for br in branches]
    try:
        return _core.turn_seeds(seeds, ids, turns)
    except OverflowError:  # an id outside 0..2**64: the exact definition copes
        return [turn_seed(*args) for args in zip(seeds, ids, turns)]


def _checked_reply(reply: Any) -> Reply:
    """A participant's reply, or an exception saying what is wrong with it."""
    if type(reply) is not Reply and not isinstance(reply, Reply):
        raise TypeError(f"returned {type(reply).__name__}, expected Reply")
    if not reply.text.isascii():
        reply.text.encode()  # a lone surrogate fails here, not in a tokenizer
    if reply.meta:
        _require_json(reply.meta, "Reply.meta")
    return reply


def _check_meta(state: ConversationState) -> None:
    if not state.meta:
        return
    try:
        _require_json(state.meta, "conversation.meta")
    except TypeError as exc:
        state.errors.append(f"a plugin left bad data in conversation.meta: {exc}")
        state.meta = {}


def _view_role(view: ParticipantRT, speaker: ParticipantRT) -> str | None:
    role = view.obj.role_in_view(speaker.name, view.name)
    if role is not None and not isinstance(role, str):
        raise TypeError(f"agent {view.spec.agent!r} of {view.name!r}: role_in_view returned "
                        f"{type(role).__name__}, expected str or None")
    if role is None and speaker is view:
        raise ValueError(f"agent {view.spec.agent!r} of {view.name!r}: role_in_view hides the "
                         "participant's own messages from itself")
    return role


def _impls(pm: Any, name: str) -> list[Any]:
    caller = getattr(pm.hook, name, None)
    return caller.get_hookimpls() if caller is not None else []


def _checked_results(task: asyncio.Future[Any], reqs: list[GenRequest]) -> list[GenResult]:
    """The batch's results, or one error result per request if the backend raised
    or broke the contract (so that the faults are retried like any other)."""
    problem = None
    try:
        results = task.result()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        problem = f"generate raised {type(exc).__name__}: {exc}"
    else:
        if not isinstance(results, list) or len(results) != len(reqs):
            problem = (f"generate returned {type(results).__name__} of "
                       f"{len(results) if hasattr(results, '__len__') else '?'} results "
                       f"for {len(reqs)} requests")
        elif not all(isinstance(r, GenResult) for r in results):
            problem = "generate returned something other than GenResult"
        else:
            return results
    return [GenResult(rid=r.rid, output_ids=[], text="", finish_reason="error",
                      prompt_tokens=len(r.input_ids), error=problem) for r in reqs]
