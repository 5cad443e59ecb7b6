"""Run a scenario across a Ray cluster: one actor per shard, combined progress,
retries of shards whose actor died, and a merged run directory.

    OUT/manifest.json      the whole run's scenario, plus "sharding": the plan
    OUT/shards/NNNN/       each shard's own run directory (log, outputs, summary)
    OUT/conversations.jsonl, OUT/scores.jsonl, ...   merged in index order
    OUT/summary.json       combined; written last, so "complete" means merged

OUT must be on storage every node sees (NFS, a shared volume): shard
directories are written by whichever node runs the shard, and read by the next
one when a shard is retried elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from turnloom import rundir
from turnloom.api import RunResult
from turnloom.config import Scenario, load_scenario
from turnloom.distributed.merge import combine_summaries, merge_outputs
from turnloom.distributed.plan import Shard, plan_shards, shard_path
from turnloom.distributed.walcount import Counts
from turnloom.progress import Progress

log = logging.getLogger(__name__)

SHARDING = "sharding"  # the manifest key that marks a sharded run
DEFAULT_ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 1, "scheduling_strategy": "SPREAD"}


class ShardFailed(RuntimeError):
    """A shard's actor died more often than the retry limit allows."""


@dataclass
class ShardStatus:
    """What the driver knows of one shard; passed to `on_progress`."""

    shard: Shard
    attempts: int = 0  # actors started for it in this session
    done: bool = False
    counts: Counts = field(default_factory=Counts)
    where: dict[str, Any] = field(default_factory=dict)  # pid, host, node_ip of its actor
    actor: Any = None
    summary: dict[str, Any] | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)  # of its last actor, when it finished
    _run: Any = None
    _where: Any = None


def is_sharded(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds a run started by `run_ray`."""
    try:
        return SHARDING in rundir.read_manifest(Path(run_dir))
    except rundir.RunDirError:
        return False


def run_ray(scenario: Scenario | str | Path, out: str | Path | None = None, *,
            address: str | None = None, shards: int = 2,
            urls: Mapping[str, Sequence[str]] | None = None, max_retries: int = 3,
            resume: bool = False, overwrite: bool = False, progress: bool = True,
            actor_options: Mapping[str, Any] | None = None, poll_s: float = 0.5,
            on_progress: Callable[[Sequence[ShardStatus]], None] | None = None,
            plugin_manager: Any = None, scenario_file: str | None = None) -> RunResult:
    """Run a scenario as `shards` contiguous blocks of conversations, each in a
    Ray actor with its own run directory under OUT/shards, then merge the
    outputs into OUT in index order: the same files, byte for byte, as
    `turnloom.api.run` writes for the same scenario.

    address: a Ray cluster ("auto", "ray://head:10001", "HEAD_IP:6379"); None
      joins the cluster this process is connected to, else RAY_ADDRESS, else
      starts a local one.
    urls: backend name -> replica urls, overriding the scenario's; a backend's
      replicas are dealt out between shards (see `plan_shards`). "{node_ip}"
      in a url becomes the address of the node a shard runs on.
    max_retries: how many times a shard whose actor died is started again (on
      a fresh actor, resuming from the shard's write-ahead log).
    resume: OUT may already hold this sharded run: finish it (see `resume_ray`).
    actor_options: Ray options for the shard actors (default one CPU each,
      spread over the nodes), e.g. {"num_gpus": 1} or {"resources": {...}}.
    on_progress: called with every shard's status at each poll."""
    from turnloom.api import _plugins

    _check_options(max_retries, poll_s)
    pm, registry = _plugins(plugin_manager)
    if not isinstance(scenario, Scenario):
        scenario_file = str(scenario)
        scenario = load_scenario(scenario)
    scenario = scenario.validate(registry)
    run_dir = Path(out or scenario.run.out or Path("runs") / scenario.run.name)
    if resume and is_sharded(run_dir):
        return resume_ray(run_dir, address=address, max_retries=max_retries, progress=progress,
                          actor_options=actor_options, poll_s=poll_s, on_progress=on_progress)
    plan = plan_shards(scenario, shards, urls)
    rundir.prepare(run_dir, overwrite)
    from turnloom.api import _plugin_rows

    manifest = rundir.write_manifest(run_dir, scenario.to_dict(), scenario_file=scenario_file,
                                     plugins=_plugin_rows(pm))
    manifest[SHARDING] = {"executor": "ray", "shards": [s.to_dict() for s in plan]}
    rundir.write_json(run_dir / rundir.MANIFEST, manifest)
    return _execute(run_dir, scenario, plan, address=address, max_retries=max_retries,
                    progress=progress, actor_options=actor_options, poll_s=poll_s,
                    on_progress=on_progress)


def resume_ray(run_dir: str | Path, *, address: str | None = None, max_retries: int = 3,
               progress: bool = True, actor_options: Mapping[str, Any] | None = None,
               poll_s: float = 0.5,
               on_progress: Callable[[Sequence[ShardStatus]], None] | None = None) -> RunResult:
    """Finish a sharded run: shards whose summary says complete are skipped, the
    others resume from their write-ahead logs (or start, if they never did),
    then the outputs are merged. A finished run is returned as it is."""
    _check_options(max_retries, poll_s)
    run_dir = Path(run_dir)
    manifest = rundir.read_manifest(run_dir)
    if SHARDING not in manifest:
        raise rundir.RunDirError(f"{run_dir} is not a sharded run; resume it with "
                                 f"`turnloom resume {run_dir}`")
    summary = _read_summary(run_dir)
    if summary is not None and summary.get("status") == "complete":
        return RunResult(run_dir, summary)
    try:
        scenario = Scenario.from_dict(manifest["scenario"])
        plan = [Shard.from_dict(s) for s in manifest[SHARDING]["shards"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise rundir.RunDirError(f"{run_dir / rundir.MANIFEST}: bad sharded run: {exc}") from None
    return _execute(run_dir, scenario, plan, address=address, max_retries=max_retries,
                    progress=progress, actor_options=actor_options, poll_s=poll_s,
                    on_progress=on_progress)


def _execute(run_dir: Path, scenario: Scenario, plan: Sequence[Shard], *,
             address: str | None, max_retries: int, progress: bool,
             actor_options: Mapping[str, Any] | None, poll_s: float,
             on_progress: Callable[[Sequence[ShardStatus]], None] | None) -> RunResult:
    started = time.monotonic()
    statuses = [ShardStatus(shard) for shard in plan]
    for st in statuses:
        summary = _read_summary(shard_path(run_dir, st.shard))
        if summary is not None and summary.get("status") == "complete":
            st.done, st.summary, st.counts = True, summary, _counts_of(summary)
    pending = [st for st in statuses if not st.done]
    if pending:
        with _RayCluster(address) as ray:
            _Shards(ray, run_dir, scenario, actor_options, max_retries, poll_s).run(
                statuses, progress, on_progress)
    shard_dirs = [shard_path(run_dir, st.shard) for st in statuses]
    merge_started = time.monotonic()
    merged, left = merge_outputs(run_dir, shard_dirs)
    summaries = [st.summary for st in statuses if st.summary is not None]
    summary = combine_summaries(scenario.run.name, summaries, run_dir / rundir.SCORES,
                                time.monotonic() - started)
    summary[SHARDING] = {
        "shards": len(plan), "merged": merged, "left_in_shards": left,
        "merge_s": round(time.monotonic() - merge_started, 3),
        "per_shard": [{"dir": st.shard.dir, "first_index": st.shard.first_index,
                       "conversations": st.shard.conversations, "attempts": st.attempts,
                       "skipped": st.attempts == 0, "host": st.where.get("host"),
                       "wall_s": (st.summary or {}).get("timing", {}).get("wall_s"),
                       "cpu_s": st.cpu_s or None}
                      for st in statuses],
    }
    rundir.write_json(run_dir / rundir.SUMMARY, summary)
    return RunResult(run_dir, summary)


class _Shards:
    """The driver loop: start an actor per unfinished shard, poll, retry the dead."""

    def __init__(self, ray: Any, run_dir: Path, scenario: Scenario,
                 actor_options: Mapping[str, Any] | None, max_retries: int, poll_s: float) -> None:
        from turnloom.distributed.worker import ShardWorker

        self.ray = ray
        self.run_dir = run_dir
        self.scenario = scenario
        self.max_retries = max_retries
        self.poll_s = poll_s
        options = {**DEFAULT_ACTOR_OPTIONS, **(actor_options or {}), "max_restarts": 0}
        self.env = {k: v for k, v in os.environ.items() if k.startswith("TURNLOOM_")}
        self.worker = ray.remote(ShardWorker).options(**options)

    def run(self, statuses: list[ShardStatus], progress: bool,
            on_progress: Callable[[Sequence[ShardStatus]], None] | None) -> None:
        interval = float(os.environ.get("TURNLOOM_PROGRESS_INTERVAL", "5"))
        bar = Progress(self.scenario.run.conversations, enabled=progress, interval_s=interval)
        try:
            for st in statuses:
                if not st.done:
                    self._start(st)
            while not all(st.done for st in statuses):
                self._collect([st for st in statuses if not st.done])
                self._poll(statuses)
                total = Counts()
                for st in statuses:
                    total.add(st.counts)
                bar.update(total.conversations, total.turns, total.tokens, total.failures)
                if on_progress is not None:
                    on_progress(statuses)
        finally:
            for st in statuses:
                self._stop(st)
            total = Counts()
            for st in statuses:
                total.add(st.counts)
            bar.close(total.conversations, total.turns, total.tokens, total.failures)

    def _start(self, st: ShardStatus) -> None:
        st.attempts += 1
        st.actor = self.worker.remote(self.env)
        st._where = st.actor.where.remote()
        data = st.shard.scenario(self.scenario).to_dict()
        st._run = st.actor.run.remote(str(shard_path(self.run_dir, st.shard)), data)

    def _stop(self, st: ShardStatus) -> None:
        if st.actor is not None:
            try:
                self.ray.kill(st.actor, no_restart=True)
            except Exception:  # already gone
                pass
            st.actor = None

    def _collect(self, running: list[ShardStatus]) -> None:
        """Wait up to poll_s for shards to end; take their summaries or retry them."""
        from ray.exceptions import RayActorError

        by_ref = {st._run: st for st in running}
        ready, _ = self.ray.wait(list(by_ref), num_returns=len(by_ref), timeout=self.poll_s)
        for ref in ready:
            st = by_ref[ref]
            try:
                outcome = self.ray.get(ref)
            except RayActorError as exc:
                self._stop(st)
                if st.attempts > self.max_retries:
                    raise ShardFailed(
                        f"shard {st.shard.dir} (conversations {st.shard.first_index}.."
                        f"{st.shard.first_index + st.shard.conversations - 1}): its actor died "
                        f"on attempt {st.attempts} of {self.max_retries + 1}: "
                        f"{_one_line(exc)}") from exc
                log.warning("shard %s: actor %s died (%s); resuming it on a new actor "
                            "(attempt %d of %d)", st.shard.dir, st.where or "?",
                            _one_line(exc), st.attempts + 1, self.max_retries + 1)
                self._start(st)
                continue
            st.done = True
            st.summary, st.cpu_s = outcome["summary"], outcome["cpu_s"]
            st.counts = _counts_of(st.summary)
            self._stop(st)

    def _poll(self, statuses: list[ShardStatus]) -> None:
        """Refresh the running shards' counts and whereabouts; a dead actor is
        skipped here and handled by `_collect`."""
        from ray.exceptions import RayError

        running = [st for st in statuses if not st.done and st.actor is not None]
        if not running:
            return
        asks = {st.actor.progress.remote(): st for st in running}
        ready, _ = self.ray.wait(list(asks), num_returns=len(asks), timeout=self.poll_s)
        for ref in ready:
            try:
                counts = self.ray.get(ref)
            except RayError:
                continue
            if counts:
                asks[ref].counts = Counts(**counts)
        for st in running:
            if st._where is not None:
                done, _ = self.ray.wait([st._where], timeout=0)
                if done:
                    try:
                        st.where = self.ray.get(done[0])
                    except RayError:
                        pass
                    st._where = None


class _RayCluster:
    """Connect to Ray for the length of a run; disconnect only if we connected."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.owned = False

    def __enter__(self) -> Any:
        try:
            import ray
        except ImportError:
            raise RuntimeError("running on Ray needs the ray package: "
                               "pip install 'turnloom[ray]'") from None
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=True)
            self.owned = True
        return ray

    def __exit__(self, *exc: Any) -> None:
        if self.owned:
            import ray

            ray.shutdown()


def _check_options(max_retries: int, poll_s: float) -> None:
    if max_retries < 0:
        raise ValueError(f"max_retries: must not be negative, got {max_retries}")
    if not poll_s > 0:
        raise ValueError(f"poll_s: must be positive, got {poll_s}")


def _read_summary(path: Path) -> dict[str, Any] | None:
    file = path / rundir.SUMMARY
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _counts_of(summary: dict[str, Any]) -> Counts:
    tokens = sum(p.get("completion_tokens", 0) for p in summary.get("participants", {}).values())
    return Counts(conversations=summary.get("conversations", 0), turns=summary.get("turns", 0),
                  tokens=tokens, failures=summary.get("failures", 0))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
