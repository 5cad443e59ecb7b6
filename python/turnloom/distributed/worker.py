"""What runs one shard: the ordinary engine in its own process (a Ray actor's, or
a local child process's), writing the shard's run directory, so a shard started
again after a crash resumes from its write-ahead log like any interrupted run."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

from turnloom import rundir
from turnloom.distributed.plan import fill_node_ip


class ShardWorker:
    """Runs one shard at a time. `run` and `progress` may be called concurrently
    (Ray runs an async actor's methods on one event loop)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        # The driver's TURNLOOM_* settings (e.g. plugin autoload), which a worker
        # on another node would not otherwise see; this process runs only this actor.
        os.environ.update(env or {})
        self._counts: dict[str, int] = {}

    async def where(self) -> dict[str, Any]:
        """This actor's process and node, for progress lines and failure reports."""
        return {"pid": os.getpid(), "host": socket.gethostname(), "node_ip": _node_ip()}

    async def run(self, shard_dir: str, scenario_data: dict[str, Any]) -> dict[str, Any]:
        """Run the shard, or resume it when its directory already holds a run;
        see `run_shard`."""
        self._counts = {}
        return await run_shard(Path(shard_dir), scenario_data, _node_ip(), self._record_counts)

    def _record_counts(self, counts: dict[str, int]) -> None:
        self._counts = counts

    async def progress(self) -> dict[str, int]:
        """The running shard's totals (empty before its engine's first step). They
        come from the engine itself: decoding the growing log instead, polled every
        0.1 s, cost the engine a sixth of its speed."""
        return dict(self._counts)


async def run_shard(path: Path, scenario_data: dict[str, Any], node_ip: str,
                    on_progress: Callable[[dict[str, int]], None]) -> dict[str, Any]:
    """Run a shard in this process, or resume it when `path` already holds a run.
    Returns its summary and CPU seconds: "engine" for the run, "process" for the
    whole process since it started (worker start-up and imports included)."""
    from turnloom.api import aresume, arun
    from turnloom.config import Scenario

    started = time.process_time()
    scenario_data = fill_node_ip(scenario_data, node_ip)
    if (path / rundir.MANIFEST).is_file():
        _point_at(path, scenario_data)
        result = await aresume(path, progress=False, on_progress=on_progress)
    else:
        result = await arun(Scenario.from_dict(scenario_data), out=path, overwrite=True,
                            progress=False, on_progress=on_progress)
    cpu = {"engine": round(time.process_time() - started, 3),
           "process": round(time.process_time(), 3)}
    return {"summary": result.summary, "cpu_s": cpu}


def _point_at(path: Path, scenario_data: dict[str, Any]) -> None:
    """Give a shard being resumed this node's backend urls (the node it started
    on may be gone); nothing else of its saved scenario may differ."""
    manifest = rundir.read_manifest(path)
    saved = manifest.get("scenario", {})
    scenario_data = json.loads(json.dumps(scenario_data))  # as saved: tuples become lists
    if _without_urls(saved) != _without_urls(scenario_data):
        raise rundir.RunDirError(f"{path}: the shard's saved scenario differs from the run's; "
                                 f"it belongs to another run")
    if saved.get("backends") != scenario_data.get("backends"):
        manifest["scenario"] = scenario_data
        rundir.write_json(path / rundir.MANIFEST, manifest)


def _without_urls(data: dict[str, Any]) -> dict[str, Any]:
    backends = {name: {**spec, "settings": {k: v for k, v in spec.get("settings", {}).items()
                                            if k != "urls"}}
                for name, spec in data.get("backends", {}).items()}
    return {**data, "backends": backends}


def _node_ip() -> str:
    try:
        import ray.util

        return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]
    except Exception:
        return "127.0.0.1"
