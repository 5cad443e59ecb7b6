"""The Python API: run a scenario, resume an interrupted run.

    result = turnloom.run("study.toml", out="runs/study")
    result = await turnloom.arun(scenario)          # inside a pipeline's event loop
    result = turnloom.resume("runs/study")
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from turnloom import errorlog, rundir
from turnloom.config import Scenario, ScenarioError, load_scenario
from turnloom.engine import Engine
from turnloom.plugins import hook_scope
from turnloom.progress import Progress

__all__ = ["RunResult", "arun", "aresume", "resume", "run"]

OnProgress = Callable[[dict[str, int]], None]  # receives `Engine.counts()`


@dataclass(frozen=True)
class RunResult:
    """Where a run wrote its outputs, and its summary."""

    run_dir: Path
    summary: dict[str, Any]

    @property
    def conversations_path(self) -> Path:
        return self.run_dir / rundir.CONVERSATIONS

    @property
    def scores_path(self) -> Path:
        return self.run_dir / rundir.SCORES

    def conversations(self) -> list[dict[str, Any]]:
        """The exported conversation records (reads the whole file)."""
        with open(self.conversations_path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]


def run(scenario: Scenario | str | Path, out: str | Path | None = None, overwrite: bool = False,
        progress: bool = True, *, plugin_manager: Any = None,
        scenario_file: str | None = None, on_progress: OnProgress | None = None) -> RunResult:
    """Run a scenario (or a scenario file) to completion; see `arun`. A scenario
    with ``run.executor = "ray"`` or ``"processes"`` runs in shards, on Ray or in
    this machine's processes (`turnloom.distributed`)."""
    if not isinstance(scenario, Scenario):
        scenario_file = str(scenario)
        scenario = load_scenario(scenario)
    if scenario.run.executor != "local":
        return run_sharded(scenario, out, overwrite, progress, plugin_manager=plugin_manager,
                           scenario_file=scenario_file, on_progress=_summed(on_progress))
    return asyncio.run(arun(scenario, out, overwrite, progress, plugin_manager=plugin_manager,
                            scenario_file=scenario_file, on_progress=on_progress))


def run_sharded(scenario: Scenario, out: str | Path | None = None, overwrite: bool = False,
                progress: bool = True, *, executor: str | None = None, plugin_manager: Any = None,
                scenario_file: str | None = None, **overrides: Any) -> RunResult:
    """Run in shards with the scenario's ``[executor]`` settings, on Ray or in
    local processes (`executor`, default the scenario's ``run.executor``);
    keyword `overrides` (shards, max_retries, and on Ray address, actor_options)
    win over them."""
    from turnloom.distributed import run_processes, run_ray

    executor = executor or scenario.run.executor
    ex = scenario.executor
    options: dict[str, Any] = {"shards": ex.shards, "max_retries": ex.max_retries,
                               "urls": dict(ex.urls) or None, "poll_s": ex.poll_s}
    if executor == "ray":
        options.update(address=ex.address, actor_options=dict(ex.actor_options) or None)
    options.update(overrides)
    options = {k: v for k, v in options.items() if v is not None}
    common = {"out": out, "overwrite": overwrite, "progress": progress,
              "plugin_manager": plugin_manager, "scenario_file": scenario_file}
    if executor == "ray":
        return run_ray(scenario, **common, **options)
    if executor == "processes":
        processes = options.pop("shards", None)
        return run_processes(scenario, processes=processes, **common, **options)
    raise ValueError(f"executor: expected 'ray' or 'processes', got {executor!r}")


async def arun(scenario: Scenario | str | Path, out: str | Path | None = None,
               overwrite: bool = False, progress: bool = True, *,
               plugin_manager: Any = None, scenario_file: str | None = None,
               on_progress: OnProgress | None = None) -> RunResult:
    """Run a scenario in the current event loop. `out` defaults to the scenario's
    run.out, else ``runs/NAME``; an existing run directory is replaced only with
    `overwrite`. Raises ScenarioError for a bad scenario, RunDirError for an
    unusable output directory. `plugin_manager` defaults to the built-in and
    installed plugins; `scenario_file` is recorded in the manifest. `on_progress`
    is called after every engine step, and once more after the outputs are
    written, with the totals so far: conversations, turns, tokens and failures
    (`Engine.counts`). If it raises, the run stops as if interrupted (`resume`
    finishes it); raising on the final call loses no output."""
    pm, registry = _plugins(plugin_manager)
    source = scenario_file
    if not isinstance(scenario, Scenario):
        source = str(scenario)
        scenario = load_scenario(scenario)
    scenario = scenario.validate(registry)
    if scenario.run.executor != "local":
        return await asyncio.to_thread(run_sharded, scenario, out, overwrite, progress,
                                       plugin_manager=plugin_manager, scenario_file=source,
                                       on_progress=_summed(on_progress))
    run_dir = Path(out or scenario.run.out or Path("runs") / scenario.run.name)
    scope = hook_scope(pm, registry, scenario)
    engine = Engine(scenario, run_dir, scope, registry)
    rundir.prepare(run_dir, overwrite)
    rundir.write_manifest(run_dir, scenario.to_dict(), scenario_file=source,
                          plugins=_plugin_rows(pm), hooks=scope.describe())
    return await _drive(engine, progress, events=None, on_progress=on_progress)


def resume(run_dir: str | Path, progress: bool = True, *, plugin_manager: Any = None,
           on_progress: OnProgress | None = None) -> RunResult:
    """Finish an interrupted run; see `aresume`."""
    return asyncio.run(aresume(run_dir, progress, plugin_manager=plugin_manager,
                               on_progress=on_progress))


async def aresume(run_dir: str | Path, progress: bool = True, *,
                  plugin_manager: Any = None,
                  on_progress: OnProgress | None = None) -> RunResult:
    """Continue a run from its write-ahead log, with the scenario saved in its
    manifest. Turns already logged are not generated again; the outputs equal
    those of an uninterrupted run. A finished run is returned as it is.
    `on_progress` as for `arun`; its totals include the replayed work."""
    from turnloom.wal import read_events

    run_dir = Path(run_dir)
    manifest = rundir.read_manifest(run_dir)
    summary_file = run_dir / rundir.SUMMARY
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        if summary.get("status") == "complete":
            return RunResult(run_dir, summary)
    if "sharding" in manifest:
        raise rundir.RunDirError(f"{run_dir} is a sharded run: finish it with `turnloom resume "
                                 f"{run_dir}` or turnloom.distributed.resume_sharded")
    pm, registry = _plugins(plugin_manager)
    try:
        saved = rundir.restore_secrets(manifest["scenario"], run_dir / rundir.MANIFEST)
        scenario = Scenario.from_dict(saved)
    except (KeyError, ScenarioError) as exc:
        raise rundir.RunDirError(f"{run_dir / rundir.MANIFEST}: bad scenario: {exc}") from None
    scenario = scenario.validate(registry)
    engine = Engine(scenario, run_dir, hook_scope(pm, registry, scenario), registry)
    wal = run_dir / rundir.WAL
    events = list(read_events(wal)) if wal.is_file() else []
    return await _drive(engine, progress, events=events, on_progress=on_progress)


async def _drive(engine: Engine, progress: bool, events: list[Any] | None,
                 on_progress: OnProgress | None = None) -> RunResult:
    with errorlog.active(errorlog.ErrorLog(engine.run_dir)) as log:
        result = await _drive_logged(engine, progress, events, on_progress, log)
    if on_progress is not None:  # the final totals, once the outputs are safe
        on_progress(engine.counts())
    return result


async def _drive_logged(engine: Engine, progress: bool, events: list[Any] | None,
                        on_progress: OnProgress | None, log: errorlog.ErrorLog) -> RunResult:
    interval = float(os.environ.get("TURNLOOM_PROGRESS_INTERVAL", "5"))
    bar = Progress(engine.scenario.run.conversations, enabled=progress, interval_s=interval)
    try:
        await engine.start_backends()
        engine.open_outputs()
        assert engine.collector is not None and engine.wal is not None
        engine.collector.include_failed = engine.scenario.run.score_failed
        try:
            if events is not None:
                from turnloom.replay import restore

                restore(engine, events)
                del events[:]
            engine.progress = bar
            engine.on_progress = on_progress
            await engine.run()
            engine.wal.flush(sync=True)
            engine.collector.close()
            summary = _with_trust(engine.summary(), engine, log)
            rundir.write_json(engine.run_dir / rundir.SUMMARY, summary)
        except BaseException:
            engine.collector.abort()
            raise
        finally:
            engine.wal.close()
            c = engine.collector
            bar.close(c.trees, engine.turns_done, engine.tokens_done, c.failures)
    finally:
        await engine.close_backends()
    return RunResult(engine.run_dir, summary)


def _with_trust(summary: dict[str, Any], engine: Engine, log: errorlog.ErrorLog) -> dict[str, Any]:
    """The summary with what a reader needs to trust its numbers: the failed
    conversations apart (and whether the means include them), the lifecycle hooks
    that applied, and the error log."""
    c = engine.collector
    assert c is not None
    summary["failed"] = {"conversations": c.failures, "ids": list(c.failed_ids),
                         "in_score_means": engine.scenario.run.score_failed,
                         "scores": c.failed_mean_scores()}
    describe = getattr(engine.pm, "describe", None)
    if callable(describe):
        summary["hooks"] = describe()
    summary["error_log"] = {"file": errorlog.ERRORS_LOG, "entries": log.count}
    return summary


def _summed(on_progress: OnProgress | None) -> Callable[[Any], None] | None:
    """`on_progress` for a run in shards: called with the shards' summed totals."""
    if on_progress is None:
        return None
    from turnloom.distributed.walcount import Counts

    def call(statuses: Any) -> None:
        total = Counts()
        for st in statuses:
            total.add(st.counts)
        on_progress(vars(total))
    return call


def _plugins(pm: Any) -> tuple[Any, Any]:
    from turnloom.plugins import Registry, get_plugin_manager

    pm = pm or get_plugin_manager()
    return pm, Registry.from_plugin_manager(pm)


def _plugin_rows(pm: Any) -> list[dict[str, Any]]:
    from turnloom.plugins import describe_plugins

    return [{k: row[k] for k in ("name", "distribution", "version", "hooks", "error")}
            for row in describe_plugins(pm)]
