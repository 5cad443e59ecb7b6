"""Run a scenario in shards (on a Ray cluster, or in local processes): combined
progress, retries of shards whose worker died, and a merged run directory.

    OUT/manifest.json      the whole run's scenario, plus "sharding": the plan
    OUT/shards/NNNN/       each shard's own run directory (log, outputs, summary)
    OUT/conversations.jsonl, OUT/scores.jsonl, ...   merged in index order
    OUT/summary.json       combined; written last, so "complete" means merged

On Ray, OUT must be on storage every node sees (NFS, a shared volume): shard
directories are written by whichever node runs the shard, and read by the next
one when a shard is retried elsewhere.
"""

from __future__ import annotations

import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping, Sequence

from turnloom import rundir
from turnloom.api import RunResult
from turnloom.config import Scenario, load_scenario
from turnloom.distributed.merge import combine_summaries, merge_outputs
from turnloom.distributed.plan import Shard, plan_shards, shard_path
from turnloom.distributed.ray_shards import DEFAULT_ACTOR_OPTIONS, ray_shards
from turnloom.distributed.runner import (
    OnShardProgress, ShardFailed, ShardRunner, ShardStatus, counts_of)

__all__ = ["DEFAULT_ACTOR_OPTIONS", "EXECUTORS", "ShardFailed", "ShardStatus", "is_sharded",
           "resume_processes", "resume_ray", "resume_sharded", "run_processes", "run_ray"]

SHARDING = "sharding"  # the manifest key that marks a sharded run
EXECUTORS = ("ray", "processes")
# (run_dir, scenario, max_retries, poll_s) -> the runner of the run's shards, for its length
Launch = Callable[[Path, Scenario, int, float], ContextManager[ShardRunner]]


def is_sharded(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds a run started by `run_ray` or `run_processes`."""
    try:
        return SHARDING in rundir.read_manifest(Path(run_dir))
    except rundir.RunDirError:
        return False


def executor_of(run_dir: str | Path) -> str:
    """The executor a sharded run was started with ("ray" or "processes")."""
    return str(rundir.read_manifest(Path(run_dir))[SHARDING].get("executor", "ray"))


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
    launch = partial(_launch_ray, address, actor_options)
    return _run_sharded("ray", launch, scenario, out, shards, urls=urls, max_retries=max_retries,
                        resume=resume, overwrite=overwrite, progress=progress, poll_s=poll_s,
                        on_progress=on_progress, plugin_manager=plugin_manager,
                        scenario_file=scenario_file)


def run_processes(scenario: Scenario | str | Path, out: str | Path | None = None, *,
                  processes: int | None = None, urls: Mapping[str, Sequence[str]] | None = None,
                  max_retries: int = 3, resume: bool = False, overwrite: bool = False,
                  progress: bool = True, poll_s: float = 0.5,
                  on_progress: OnShardProgress | None = None, plugin_manager: Any = None,
                  scenario_file: str | None = None) -> RunResult:
    """Run a scenario as `processes` contiguous blocks of conversations (default:
    one per CPU), each in a child process of this machine with its own run
    directory under OUT/shards, then merge the outputs into OUT in index order:
    the same files, byte for byte, as `turnloom.api.run` writes. Arguments as
    for `run_ray`; a child that died is started again, resuming from its shard's
    log. Every shard has the scenario's backends to itself: a backend that holds
    a model in memory is loaded once per process, and shards sharing one
    server each admit work as if the server's cache were theirs alone."""
    shards = processes if processes is not None else os.cpu_count() or 1
    return _run_sharded("processes", _launch_processes, scenario, out, shards, urls=urls,
                        max_retries=max_retries, resume=resume, overwrite=overwrite,
                        progress=progress, poll_s=poll_s, on_progress=on_progress,
                        plugin_manager=plugin_manager, scenario_file=scenario_file)


def _run_sharded(executor: str, launch: Launch, scenario: Scenario | str | Path,
                 out: str | Path | None, shards: int, *,
                 urls: Mapping[str, Sequence[str]] | None, max_retries: int, resume: bool,
                 overwrite: bool, progress: bool, poll_s: float,
                 on_progress: OnShardProgress | None, plugin_manager: Any,
                 scenario_file: str | None) -> RunResult:
    from turnloom.api import _plugin_rows, _plugins

    _check_options(max_retries, poll_s)
    pm, registry = _plugins(plugin_manager)
    if not isinstance(scenario, Scenario):
        scenario_file = str(scenario)
        scenario = load_scenario(scenario)
    scenario = scenario.validate(registry)
    run_dir = Path(out or scenario.run.out or Path("runs") / scenario.run.name)
    if resume and is_sharded(run_dir):
        return _resume(run_dir, launch, max_retries=max_retries, progress=progress,
                       poll_s=poll_s, on_progress=on_progress)
    plan = plan_shards(scenario, shards, urls)
    rundir.prepare(run_dir, overwrite)
    manifest = rundir.write_manifest(run_dir, scenario.to_dict(), scenario_file=scenario_file,
                                     plugins=_plugin_rows(pm))
    manifest[SHARDING] = {"executor": executor, "shards": [s.to_dict() for s in plan]}
    rundir.write_json(run_dir / rundir.MANIFEST, manifest)
    return _execute(run_dir, scenario, plan, launch, max_retries=max_retries, progress=progress,
                    poll_s=poll_s, on_progress=on_progress)


def resume_ray(run_dir: str | Path, *, address: str | None = None, max_retries: int = 3,
               progress: bool = True, actor_options: Mapping[str, Any] | None = None,
               poll_s: float = 0.5, on_progress: OnShardProgress | None = None) -> RunResult:
    """Finish a sharded run on Ray: shards whose summary says complete are
    skipped, the others resume from their write-ahead logs (or start, if they
    never did), then the outputs are merged. A finished run is returned as it
    is. A run started in local processes may be finished here too: a shard is
    an ordinary run directory, whatever ran it."""
    return _resume(Path(run_dir), partial(_launch_ray, address, actor_options),
                   max_retries=max_retries, progress=progress, poll_s=poll_s,
                   on_progress=on_progress)


def resume_processes(run_dir: str | Path, *, max_retries: int = 3, progress: bool = True,
                     poll_s: float = 0.5,
                     on_progress: OnShardProgress | None = None) -> RunResult:
    """Finish a sharded run in local processes, one per unfinished shard; see
    `resume_ray`."""
    return _resume(Path(run_dir), _launch_processes, max_retries=max_retries,
                   progress=progress, poll_s=poll_s, on_progress=on_progress)


def resume_sharded(run_dir: str | Path, *, address: str | None = None, max_retries: int = 3,
                   progress: bool = True, poll_s: float = 0.5,
                   on_progress: OnShardProgress | None = None) -> RunResult:
    """Finish a sharded run with the executor it was started with; `address`
    (a Ray cluster) moves a run started in local processes onto Ray."""
    if address is not None or executor_of(run_dir) == "ray":
        return resume_ray(run_dir, address=address, max_retries=max_retries,
                          progress=progress, poll_s=poll_s, on_progress=on_progress)
    return resume_processes(run_dir, max_retries=max_retries, progress=progress,
                            poll_s=poll_s, on_progress=on_progress)


def _resume(run_dir: Path, launch: Launch, *, max_retries: int, progress: bool, poll_s: float,
            on_progress: OnShardProgress | None) -> RunResult:
    _check_options(max_retries, poll_s)
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
    return _execute(run_dir, scenario, plan, launch, max_retries=max_retries, progress=progress,
                    poll_s=poll_s, on_progress=on_progress)


def _launch_ray(address: str | None, actor_options: Mapping[str, Any] | None, run_dir: Path,
                scenario: Scenario, max_retries: int,
                poll_s: float) -> ContextManager[ShardRunner]:
    return ray_shards(address, actor_options, run_dir, scenario, max_retries, poll_s)


def _launch_processes(run_dir: Path, scenario: Scenario, max_retries: int,
                      poll_s: float) -> ContextManager[ShardRunner]:
    from contextlib import nullcontext

    from turnloom.distributed.process_shards import ProcessShards

    return nullcontext(ProcessShards(run_dir, scenario, max_retries, poll_s))


def _execute(run_dir: Path, scenario: Scenario, plan: Sequence[Shard], launch: Launch, *,
             max_retries: int, progress: bool, poll_s: float,
             on_progress: OnShardProgress | None) -> RunResult:
    started = time.monotonic()
    statuses = [ShardStatus(shard) for shard in plan]
    for st in statuses:
        summary = _read_summary(shard_path(run_dir, st.shard))
        if summary is not None and summary.get("status") == "complete":
            st.done, st.summary, st.counts = True, summary, counts_of(summary)
    pending = [st for st in statuses if not st.done]
    if pending:
        with launch(run_dir, scenario, max_retries, poll_s) as runner:
            runner.run(statuses, progress, on_progress)
    shard_dirs = [shard_path(run_dir, st.shard) for st in statuses]
    merge_started = time.monotonic()
    merged, left = merge_outputs(run_dir, shard_dirs)
    summaries = [st.summary for st in statuses if st.summary is not None]
    summary = combine_summaries(scenario.run.name, summaries, run_dir / rundir.SCORES,
                                time.monotonic() - started, scenario.run.score_failed)
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
