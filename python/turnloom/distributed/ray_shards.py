"""Shards on a Ray cluster: one actor per shard (`ShardWorker`), watched by the
driver through Ray's object refs."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from turnloom.config import Scenario
from turnloom.distributed.plan import shard_path
from turnloom.distributed.runner import ShardRunner, ShardStatus, one_line
from turnloom.distributed.walcount import Counts

DEFAULT_ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 1, "scheduling_strategy": "SPREAD"}


@contextmanager
def ray_shards(address: str | None, actor_options: Mapping[str, Any] | None, run_dir: Path,
               scenario: Scenario, max_retries: int, poll_s: float) -> Iterator[ShardRunner]:
    """A runner of shards as Ray actors, connected to `address` for its length."""
    with _RayCluster(address) as ray:
        yield RayShards(ray, run_dir, scenario, actor_options, max_retries, poll_s)


class RayShards(ShardRunner):
    kind = "actor"

    def __init__(self, ray: Any, run_dir: Path, scenario: Scenario,
                 actor_options: Mapping[str, Any] | None, max_retries: int, poll_s: float) -> None:
        from turnloom.distributed.worker import ShardWorker

        super().__init__(run_dir, scenario, max_retries, poll_s)
        self.ray = ray
        # The driver's TURNLOOM_* settings (e.g. plugin autoload), which an actor on
        # another node would not otherwise see.
        self.env = {k: v for k, v in os.environ.items() if k.startswith("TURNLOOM_")}
        options = {**DEFAULT_ACTOR_OPTIONS, **(actor_options or {}), "max_restarts": 0}
        self.worker = ray.remote(ShardWorker).options(**options)

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
                self._died(st, "died", one_line(exc))
                continue
            self._finished(st, outcome["summary"], outcome["cpu_s"])

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
