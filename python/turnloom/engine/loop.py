"""The simulation engine: one asyncio loop over the Rust forest and schedulers.

Per turn: the scheduler pops ready jobs; their prompts are the speaker's lanes
(`Forest.lanes_for`) plus the generation prefix; on completion the speaker's
agent turns the output into a Reply and the engine appends one node holding a
token segment per view (the speaker's own view gets its exact generated ids,
the others the reply rendered in their chat format, tokenized in one batch).
Environments answer inline. Every completed turn and finished conversation is
logged to the write-ahead log; finished trees are exported in index order and
freed from the forest, so memory tracks the active frontier."""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import random
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import msgspec

from turnloom import _core
from turnloom.admission import estimator_for, floor_trees, scenario_branches
from turnloom.agents import Reply
from turnloom.backends.base import GenRequest, GenResult
from turnloom.collect import Collector
from turnloom.config import Scenario
from turnloom.engine.accounting import AccountingMixin
from turnloom.engine.checks import (
    _check_meta,
    _checked_reply,
    _checked_results,
    _fault,
    _impls,
    _json_encode,
    _require_json,
    _structured,
    _turn_seeds,
    _view_role,
)
from turnloom.engine.judges import JudgeJob, JudgesMixin
from turnloom.engine.prompts import PromptsMixin
from turnloom.engine.state import Branch, IndexStack, Job, RunStalled, Tree
from turnloom.engine.turns import TurnsMixin
from turnloom.messages import call_from_openai
from turnloom.plugins import call_hook_safely, first_result_safely
from turnloom.prefill import PREFILLED_META, prefill_messages
from turnloom.records import (
    ConversationState,
)
from turnloom.rundir import WAL
from turnloom.runtime import (
    BackendRT,
    ParticipantRT,
    build_backends,
    build_judges,
    build_participants,
    build_plugins,
)
from turnloom.seeds import (
    conversation_seed,
    drawn_fork_turn,
    profile_seed,
)
from turnloom.wal import WalWriter

log = logging.getLogger(__name__)
_replace = msgspec.structs.replace
_START_CHUNK = 1024
_SYSTEM_SEGMENT_CACHE = 4096  # distinct (view, prompt) segments kept
_GC_GEN0 = 200000
_UNSET = msgspec.UNSET


def _with_structure(reply: Reply, res: GenResult) -> Reply:
    """A chat API's structured reply: its tool calls (unless the agent made its own)
    and its separated reasoning join the agent's reply."""
    changes: dict[str, Any] = {}
    if res.tool_calls and not reply.tool_calls:
        changes["tool_calls"] = tuple(call_from_openai(c) for c in res.tool_calls)
    if res.reasoning is not None and reply.reasoning is None:
        changes["reasoning"] = res.reasoning
    return _checked_reply(_replace(reply, **changes)) if changes else reply


class Engine(TurnsMixin, PromptsMixin, JudgesMixin, AccountingMixin):
    """The turn loop: starts conversations, schedules turns onto backends, dispatches
    batches and hands completions on to the turn steps."""

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
        # An agent's view: the role each speaker's messages have in it (None: hidden),
        # so exporters rebuild exactly what the model saw.
        self._participant_info = [
            (p.name, {"agent": p.spec.agent, "role": p.role,
                      **({"backend": p.backend.name} if p.backend is not None else {}),
                      **({"view": {s.name: self.roles[p.index][s.index]
                                   for s in self.participants}} if p.is_agent else {})})
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
        self.hook_next_speaker = bool(_impls(pm, "next_speaker"))
        self.by_name = {p.name: p for p in self.participants}
        self._init_prompts()
        self.has_prefill = any(callable(getattr(p.obj, "prefill", None)) for p in self.participants)
        self.has_tools = any(callable(getattr(p.obj, name, None)) for p in self.participants
                             for name in ("tools", "initial_state"))
        self.forest: Any = _core.Forest()
        # Job or JudgeJob by id; the per-turn paths tell them apart by `type(job) is`.
        self.jobs: dict[int, Any] = {}
        self._next_job = 0
        self.trees: dict[int, Tree] = {}
        self.indices = range(run.first_index, run.first_index + run.conversations)
        self.to_start: IndexStack | list[int] = IndexStack(self.indices)
        self._system_segments: dict[tuple[int, str], list[int]] = {}
        self.tasks: dict[asyncio.Future[Any], tuple[Any, ...]] = {}
        # Finished tasks in completion order: waiting on this queue costs the same
        # with one call in flight or a thousand, where asyncio.wait re-arms them all.
        self._finished: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._wake: asyncio.Event | None = None
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
            be.max_inflight = spec.max_inflight or run.max_inflight or info.max_inflight or 2
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

    def _track(self, task: asyncio.Future[Any], what: tuple[Any, ...]) -> None:
        self.tasks[task] = what
        task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Future[Any]) -> None:
        self._finished.append(task)
        if self._wake is not None:
            self._wake.set()

    async def _loop(self) -> None:
        assert self.wal is not None and self.collector is not None
        self._wake = asyncio.Event()
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
            finished = self._finished
            if not finished:
                wake = self._wake
                assert wake is not None
                wake.clear()
                await wake.wait()
            while finished:
                task = finished.popleft()
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
                _fault(state, f"sampler {p.spec.sampler!r} of {p.name!r} failed", exc)
        if not state.errors:
            for v in self.views:
                try:
                    sp = v.obj.system_prompt(state, v.name)
                    if sp is not None and not isinstance(sp, str):
                        raise TypeError(f"returned {type(sp).__name__}, expected str or None")
                except Exception as exc:
                    _fault(state, f"agent {v.spec.agent!r} of {v.name!r} failed in system_prompt",
                           exc)
                    continue
                if sp is not None:
                    state.system_prompts[v.name] = sp
        if not state.errors and self.has_tools:
            self._start_tools(state)
        return tree, state

    def _start_tools(self, state: ConversationState) -> None:
        """Each participant's tools and the environment's initial state. An agent
        that declares no tools of its own gets, in the assistant role, every tool
        environment's tools."""
        env_tools: list[dict[str, Any]] = []
        for p in self.participants:
            tools_of = getattr(p.obj, "tools", None)
            try:
                tools = tools_of(state, p.name) if callable(tools_of) else None
                if tools is not None:
                    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
                        raise TypeError(f"returned {type(tools).__name__}, expected a list of "
                                        "tool schemas (dicts)")
                    _require_json(tools, "the tools")
                    state.tools[p.name] = tools
                    if not p.is_agent:
                        env_tools += tools
                init = getattr(p.obj, "initial_state", None)
                if not p.is_agent and callable(init) and state.state_json == b"null":
                    state.state_json = _json_encode(init(state))
            except Exception as exc:
                _fault(state, f"{'agent' if p.is_agent else 'environment'} {p.spec.agent!r} "
                              f"of {p.name!r} failed in tools/initial_state", exc)
        if env_tools:
            for v in self.views:
                if v.name not in state.tools and v.role == "assistant":
                    state.tools[v.name] = env_tools

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
            br = Branch(tree, state, 0, tree.root, -1, 0, self._lens(seg),
                        self._full_at_start(state))
            if state.errors:
                self._finish(br, "error")
            elif self._branch_started(br):
                out.append(br)
        if self.has_prefill:
            out = self._prefill(out)
        return out

    def _prefill(self, branches: list[Branch]) -> list[Branch]:
        """Gold history (turnloom.prefill): each branch's prefilled messages become
        real turns, one message of every branch at a time, before any generation."""
        names = [(p.name, p.obj) for p in self.participants]
        order = [p.name for p in self.order]
        pending: list[tuple[Branch, list[Any]]] = []
        ready = []
        for br in branches:
            try:
                history = prefill_messages(br.state, names, order)
            except Exception as exc:
                _fault(br.state, "gold history could not be prefilled", exc)
                self._finish(br, "error")
                continue
            (pending.append((br, history)) if history else ready.append(br))
        k = 0
        while pending:
            seeds = _turn_seeds([br for br, _ in pending])
            items = [(br, self.by_name[history[k].participant],
                      Reply(history[k].text, meta=dict(PREFILLED_META)), None, seed, 0.0, 0,
                      False)
                     for (br, history), seed in zip(pending, seeds)]
            going = {id(br) for br in self._apply(items)}
            k += 1
            still = []
            for br, history in pending:
                if id(br) not in going:
                    continue
                (still.append((br, history)) if k < len(history) else ready.append(br))
            pending = still
        return ready

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
                for text, ids in zip(texts, v.fmt.segments(["system"] * len(texts), texts,
                                                           first=True)):
                    cache[(v.index, text)] = ids
            for k, st in enumerate(states):
                text = st.system_prompts.get(v.name)
                if text is not None:
                    segs[k][v.index] = cache[(v.index, text)]
        return segs

    def _full_at_start(self, state: ConversationState) -> int:
        full = self.full_from_start
        if state.tools:  # tool schemas: rendered by the template, whole
            for v in self.views:
                if v.name in state.tools:
                    full |= 1 << v.index
            if full:
                self.full_used = True
        return full

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
        participants = self.participants
        routed = self.hook_next_speaker
        speakers = []
        if forked:
            speakers = [self._routed_speaker(br) if routed else
                        order[br.rr % n_order] if br.route < 0 else participants[br.route]
                        for br in branches]
        else:
            planned = []
            for br in branches:
                t = br.turn
                speaker = (self._routed_speaker(br) if routed else
                           order[br.rr % n_order] if br.route < 0 else participants[br.route])
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

    def _routed_speaker(self, br: Branch) -> ParticipantRT:
        """The next speaker when a plugin routes turns: tool routing first, then the
        `next_speaker` hook (first result wins), then the turn order."""
        if br.route >= 0:
            return self.participants[br.route]
        default = self.order[br.rr % len(self.order)]
        state = br.state
        name = first_result_safely(self.pm, "next_speaker", state.errors, conversation=state,
                                   default=default.name)
        if name is None:
            return default
        chosen = self.by_name.get(str(name))
        if chosen is None:
            state.errors.append(f"next_speaker named {name!r}, who is not a participant "
                                f"(participants: {', '.join(self.by_name)})")
            return default
        return chosen

    def _fork(self, br: Branch, n: int, mult: int) -> list[Branch]:
        """The extra siblings of a fork at `br`'s next turn (`br` itself is the first)."""
        out = []
        for c in range(1, n):
            bid = br.branch + c * mult
            child = br.sibling(br.state.fork(bid, br.turn), bid)
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

    def _dispatch(self, be: BackendRT) -> None:
        sched = be.sched
        while be.inflight < be.max_inflight and len(sched):
            jids = sched.pop_batch(be.batch_size, be.max_batch_tokens)
            if not jids:
                return
            jobs = [self.jobs[j] for j in jids]
            if self.judge_jobs:
                reqs = self._requests_with_judges(be, jids, jobs)
            else:
                reqs = self._turn_requests(be, jids, jobs)
            task = asyncio.ensure_future(be.backend.generate(reqs))
            self._track(task, (be, jids, reqs, time.perf_counter()))
            be.inflight += 1

    # -- completions --------------------------------------------------------------------

    def _on_batch(self, task: asyncio.Future[Any], be: BackendRT, jids: list[int],
                  reqs: list[GenRequest], t0: float) -> None:
        be.inflight -= 1
        be.sched.complete_many(jids)
        elapsed = time.perf_counter() - t0
        results = _checked_results(task, reqs)
        model_cache = be.cache is not None and not be.reports_cached
        check = be.prompt_check
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
            if check is not None and req.input_ids and res.prompt_tokens:  # a chat API
                if check.observe(len(req.input_ids), res.prompt_tokens) and check.mismatched == 1:
                    log.warning("backend %r counted %d prompt tokens where the model's chat "
                                "template gives %d: the server renders conversations differently "
                                "(summary.json: backends.%s.prompt_tokens_check)", be.name,
                                res.prompt_tokens, len(req.input_ids), be.name)
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
            structured = False
            try:
                reply = p.obj.on_output(state, p.name, res.text, res.finish_reason)
                if (type(reply) is not Reply or reply.meta or reply.tool_calls
                        or reply.tool_call_id is not None or reply.reasoning is not None
                        or reply.state is not _UNSET or not reply.text.isascii()):
                    reply = _checked_reply(reply)  # the plain case needs no checks
                    structured = _structured(reply)
                if check is not None and (res.tool_calls or res.reasoning is not None):
                    reply = _with_structure(reply, res)  # a chat API's structured reply
                    structured = True
            except Exception as exc:
                _fault(state, f"agent {p.spec.agent!r} of {p.name!r} failed in on_output", exc)
                self._finish(job.br, "error")
                continue
            items.append((job.br, p, reply, res, job.seed, latency, cached, structured))
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
                self._track(task, ("retry", group))
