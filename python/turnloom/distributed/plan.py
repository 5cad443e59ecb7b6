"""How a run is cut into shards: contiguous blocks of conversation indices, each
with its own run directory and its own share of the backends' replicas.

The plan is saved in the top-level manifest under ``"sharding"``, so a resumed
run uses exactly the cut it started with, whatever options it is resumed with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from turnloom.config import Scenario

SHARDS_DIR = "shards"
# Backends whose `urls` setting lists interchangeable replicas of one model.
REPLICATED_SETTING = "urls"
# Replaced, inside a shard's actor, by the IP address of the node it runs on:
# "http://{node_ip}:30000" reaches the SGLang server started on every node.
NODE_IP = "{node_ip}"


@dataclass(frozen=True)
class Shard:
    """Conversations first_index .. first_index + conversations - 1, written to
    `dir` (relative to the run directory), speaking to `urls` per backend."""

    number: int
    first_index: int
    conversations: int
    dir: str
    urls: dict[str, list[str]] = field(default_factory=dict)

    def scenario(self, full: Scenario) -> Scenario:
        """The full run's scenario narrowed to this shard (before node placeholders
        are filled in)."""
        return with_urls(full.with_run(first_index=self.first_index,
                                       conversations=self.conversations, executor="local"),
                         self.urls)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Shard:
        return cls(number=int(data["number"]), first_index=int(data["first_index"]),
                   conversations=int(data["conversations"]), dir=str(data["dir"]),
                   urls={k: list(v) for k, v in dict(data.get("urls", {})).items()})


def plan_shards(scenario: Scenario, shards: int,
                urls: Mapping[str, Sequence[str]] | None = None) -> list[Shard]:
    """Cut the scenario's conversations into at most `shards` contiguous blocks of
    near-equal size. Each replicated backend's urls (from the scenario, or
    `urls[backend]` to override) are dealt out round-robin, so a conversation tree
    always meets the same replica (its prefix cache) and replicas are shared
    between shards only when there are fewer replicas than shards."""
    if shards < 1:
        raise ValueError(f"shards: must be at least 1, got {shards}")
    run = scenario.run
    count = min(shards, run.conversations)
    pools = replica_pools(scenario, urls)
    base, extra = divmod(run.conversations, count)
    plan = []
    lo = run.first_index
    for number in range(count):
        n = base + (number < extra)
        plan.append(Shard(number=number, first_index=lo, conversations=n,
                          dir=f"{SHARDS_DIR}/{number:04d}",
                          urls={name: deal(pool, number, count) for name, pool in pools.items()}))
        lo += n
    return plan


def replica_pools(scenario: Scenario,
                  overrides: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    """Backend name -> its replica urls, for backends that list several (or that
    `overrides` names). Urls naming `{node_ip}` are the replicas of whichever node
    a shard runs on, so they are not dealt out."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(scenario.backends))
    if unknown:
        raise ValueError(f"urls: no backend named {unknown[0]!r} in the scenario "
                         f"(backends: {', '.join(sorted(scenario.backends)) or 'none'})")
    pools: dict[str, list[str]] = {}
    for name, spec in scenario.backends.items():
        if name in overrides:
            pool = [str(u) for u in overrides[name]]
            if not pool:
                raise ValueError(f"urls[{name!r}]: at least one URL is needed")
        else:
            value = spec.settings.get(REPLICATED_SETTING)
            if not isinstance(value, (list, tuple)) or len(value) < 2:
                continue
            pool = [str(u) for u in value]
            if any(NODE_IP in u for u in pool):
                continue  # every node's own replicas: each shard keeps them all
        pools[name] = pool
    return pools


def deal(pool: Sequence[str], number: int, count: int) -> list[str]:
    """Shard `number` of `count`'s replicas: every count-th url from its own
    position when there are enough to go round, else one shared url."""
    if len(pool) >= count:
        return list(pool[number::count])
    return [pool[number % len(pool)]]


def with_urls(scenario: Scenario, urls: Mapping[str, Sequence[str]]) -> Scenario:
    """The scenario with the given backends' `urls` setting replaced."""
    if not urls:
        return scenario
    data = scenario.to_dict()
    for name, pool in urls.items():
        data["backends"][name].setdefault("settings", {})[REPLICATED_SETTING] = list(pool)
    return Scenario.from_dict(data)


def fill_node_ip(scenario_data: dict[str, Any], node_ip: str) -> dict[str, Any]:
    """Scenario data with `{node_ip}` in backend urls replaced by this node's address."""
    for spec in scenario_data.get("backends", {}).values():
        settings = spec.get("settings", {})
        value = settings.get(REPLICATED_SETTING)
        if isinstance(value, str):
            settings[REPLICATED_SETTING] = value.replace(NODE_IP, node_ip)
        elif isinstance(value, list):
            settings[REPLICATED_SETTING] = [str(u).replace(NODE_IP, node_ip) for u in value]
    return scenario_data


def shard_path(run_dir: Path, shard: Shard) -> Path:
    return Path(run_dir) / shard.dir
