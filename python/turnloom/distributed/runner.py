"""What every shard executor shares: the status of each shard, the driver loop
(start the unfinished shards, poll, report progress, retry the dead) and the
failure that ends a run. Executors (Ray actors, local processes) say how a shard
is started, stopped and watched."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from turnloom.config import Scenario
from turnloom.distributed.plan import Shard
from turnloom.distributed.walcount import Counts
from turnloom.progress import Progress

log = logging.getLogger(__name__)


class ShardFailed(RuntimeError):
    """A shard's actor or process died more often than the retry limit allows."""


@dataclass
class ShardStatus:
    """What the driver knows of one shard; passed to `on_progress`."""

    shard: Shard
    attempts: int = 0  # actors or processes started for it in this session
    done: bool = False
    counts: Counts = field(default_factory=Counts)
    where: dict[str, Any] = field(default_factory=dict)  # pid, host, node_ip of its worker
    actor: Any = None  # the running worker: a Ray actor handle or a local process
    summary: dict[str, Any] | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)  # of its last worker, when it finished
    _run: Any = None
    _where: Any = None


OnShardProgress = Callable[[Sequence[ShardStatus]], None]


class ShardRunner:
    """The driver loop over one executor's workers. Subclasses start a worker
    for a shard (`_start`), stop it (`_stop`), wait up to `poll_s` for workers
    to end (`_collect`, which calls `_finished` or `_died`) and refresh the
    running shards' counts (`_poll`)."""

    kind = "worker"  # how failure messages name a shard's worker

    def __init__(self, run_dir: Path, scenario: Scenario, max_retries: int,
                 poll_s: float) -> None:
        self.run_dir = run_dir
        self.scenario = scenario
        self.max_retries = max_retries
        self.poll_s = poll_s

    def run(self, statuses: list[ShardStatus], progress: bool,
            on_progress: OnShardProgress | None) -> None:
        interval = float(os.environ.get("TURNLOOM_PROGRESS_INTERVAL", "5"))
        bar = Progress(self.scenario.run.conversations, enabled=progress, interval_s=interval)
        try:
            for st in statuses:
                if not st.done:
                    self._start(st)
            while not all(st.done for st in statuses):
                self._collect([st for st in statuses if not st.done])
                self._poll(statuses)
                total = _total(statuses)
                bar.update(total.conversations, total.turns, total.tokens, total.failures)
                if on_progress is not None:
                    on_progress(statuses)
        finally:
            for st in statuses:
                self._stop(st)
            total = _total(statuses)
            bar.close(total.conversations, total.turns, total.tokens, total.failures)

    def _finished(self, st: ShardStatus, summary: dict[str, Any], cpu_s: dict[str, float]) -> None:
        st.done = True
        st.summary, st.cpu_s = summary, cpu_s
        st.counts = counts_of(summary)
        self._stop(st)

    def _died(self, st: ShardStatus, how: str, detail: str) -> None:
        """Start the shard again (it resumes from its log), or fail the run when
        it has used up its retries. `how`: "died", "exited with code 1", ...;
        `detail`: why, in a line."""
        self._stop(st)
        shard = st.shard
        if st.attempts > self.max_retries:
            raise ShardFailed(
                f"shard {shard.dir} (conversations {shard.first_index}.."
                f"{shard.first_index + shard.conversations - 1}): its {self.kind} {how} "
                f"on attempt {st.attempts} of {self.max_retries + 1}: {detail}")
        log.warning("shard %s: %s %s %s (%s); resuming it on a new %s (attempt %d of %d)",
                    shard.dir, self.kind, st.where or "?", how, detail, self.kind,
                    st.attempts + 1, self.max_retries + 1)
        self._start(st)

    def _start(self, st: ShardStatus) -> None:
        raise NotImplementedError

    def _stop(self, st: ShardStatus) -> None:
        raise NotImplementedError

    def _collect(self, running: list[ShardStatus]) -> None:
        raise NotImplementedError

    def _poll(self, statuses: list[ShardStatus]) -> None:
        raise NotImplementedError


def counts_of(summary: dict[str, Any]) -> Counts:
    """A finished shard's totals, from its summary."""
    tokens = sum(p.get("completion_tokens", 0) for p in summary.get("participants", {}).values())
    return Counts(conversations=summary.get("conversations", 0), turns=summary.get("turns", 0),
                  tokens=tokens, failures=summary.get("failures", 0))


def one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _total(statuses: Sequence[ShardStatus]) -> Counts:
    total = Counts()
    for st in statuses:
        total.add(st.counts)
    return total
