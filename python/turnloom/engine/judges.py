"""Judges: questions about finished branches, put to backends in the run's own batches,
re-asked once when unparseable, then scored."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import msgspec

from turnloom.backends.base import GenRequest, GenResult
from turnloom.engine.base import EngineBase
from turnloom.engine.checks import _require_json
from turnloom.engine.state import Branch
from turnloom.judging import JudgeCall
from turnloom.runtime import (
    BackendRT,
    JudgeRT,
)
from turnloom.seeds import (
    judge_seed,
)

log = logging.getLogger(__name__)
_replace = msgspec.structs.replace


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




class JudgesMixin(EngineBase):
    """The engine's judge steps (mixed into Engine)."""

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
        # The judge backend's chat template renders each question whole (its default
        # system prompt included); the conversation quoted in it is data.
        fmt = jr.backend.fmt
        return [fmt.prompt_ids(_as_messages(call)) for call in calls]

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

    def _requests_with_judges(self, be: BackendRT, jids: Sequence[int],
                              jobs: Sequence[Any]) -> list[GenRequest]:
        turn = [(jid, job) for jid, job in zip(jids, jobs) if type(job) is not JudgeJob]
        turn_reqs = iter(self._turn_requests(be, [j for j, _ in turn], [job for _, job in turn])
                         if turn else ())
        messages = getattr(be.backend, "takes", "tokens") == "messages"
        reqs = []
        for jid, job in zip(jids, jobs):
            if type(job) is JudgeJob:
                reqs.append(GenRequest(rid=str(jid), input_ids=job.prompt,
                                       params=_replace(job.judge.params, seed=job.seed),
                                       affinity=job.verdicts.br.tree.root,
                                       messages=_as_messages(job.call) if messages else None))
            else:
                reqs.append(next(turn_reqs))
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


def _as_messages(call: JudgeCall) -> list[dict[str, Any]]:
    return [{"role": role, "content": text} for role, text in call.messages]
