"""Whole runs against loopback SGLang servers that misbehave: the fault-mix
figure (how many conversations complete) and a replica lost mid-run.

Both drive the real engine (`turnloom.run`) with the ``sglang`` backend over
HTTP; only the servers are simulated.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import turnloom
from turnloom.plugins import get_plugin_manager
from turnloom.testing.faults import FaultSchedule
from turnloom.testing.sglang_server import SGLangTestServer

# The mix the README reports: per /generate request.
DEFAULT_MIX: Mapping[str, float] = {"status": 0.10, "reset": 0.05, "malformed": 0.05,
                                    "hang": 0.02}


@dataclass
class ChaosReport:
    conversations: int
    completed: int
    failed: int
    failure_causes: list[str]
    injected: dict[str, int]
    requests: int
    served: list[int]
    wall_s: float
    killed: bool = False
    records: list[dict[str, Any]] = field(repr=False, default_factory=list)

    @property
    def completion_rate(self) -> float:
        return self.completed / self.conversations if self.conversations else 1.0


def scenario_for(urls: list[str], *, conversations: int, max_turns: int = 4, seed: int = 3,
                 backend: Mapping[str, Any] | None = None,
                 run: Mapping[str, Any] | None = None) -> turnloom.Scenario:
    """A two-party scenario whose assistant is served by the SGLang replicas at `urls`."""
    settings = {"urls": urls, "timeout": 1.0, "connect_timeout": 0.5, "retries": 3,
                "backoff": 0.02, "backoff_max": 0.2, "fail_threshold": 3,
                "health_interval": 0.2, **(backend or {})}
    return turnloom.Scenario.from_dict({
        "run": {"name": "chaos", "conversations": conversations, "max_turns": max_turns,
                "seed": seed, "batch_size": 4, "max_inflight": 4, "max_retries": 2,
                "retry_backoff_s": 0.05, "wal_sync_s": 0.5, **(run or {})},
        "backends": {"sg": {"type": "sglang", **settings}},
        "participants": [
            {"name": "user", "agent": "scripted-user",
             "settings": {"lines": ["hello", "tell me more", "why?", "thanks"]}},
            {"name": "assistant", "agent": "assistant", "backend": "sg",
             "sampling": {"max_new_tokens": 12}},
        ],
        "scorers": ["stop-reason"],
    })


def _report(result: turnloom.RunResult, servers: list[SGLangTestServer],
            started: float) -> ChaosReport:
    records = result.conversations()
    failed = [r for r in records if r["stop_reason"] == "error"]
    injected: dict[str, int] = {}
    for s in servers:
        for kind, n in s.faults.tally().items():
            injected[kind] = injected.get(kind, 0) + n
    return ChaosReport(
        conversations=len(records), completed=len(records) - len(failed), failed=len(failed),
        failure_causes=["; ".join(r.get("errors") or ["(no cause recorded)"]) for r in failed],
        injected=injected, requests=sum(s.faults.count("/generate") for s in servers),
        served=[s.faults.count("/generate") for s in servers], wall_s=time.monotonic() - started, records=records)


def fault_mix_run(out: Path, *, conversations: int = 200, replicas: int = 2,
                  mix: Mapping[str, float] = DEFAULT_MIX, seed: int = 0,
                  max_turns: int = 6, slow_delay: float = 0.3) -> ChaosReport:
    """Run `conversations` against `replicas` servers that each inject `mix`
    ("slow" faults answer after `slow_delay` seconds; the client timeout is 1 s)."""
    servers = [SGLangTestServer(faults=FaultSchedule(mix=mix, seed=seed + k, delay=slow_delay))
               for k in range(replicas)]
    try:
        for s in servers:
            s.start()
        started = time.monotonic()
        result = turnloom.run(scenario_for([s.url for s in servers], conversations=conversations,
                                           max_turns=max_turns),
                              out=out, progress=False,
                              plugin_manager=get_plugin_manager(autoload=False))
        return _report(result, servers, started)
    finally:
        for s in servers:
            s.stop()


def reference_run(out: Path, *, conversations: int, replicas: int = 1,
                  max_turns: int = 6) -> ChaosReport:
    """The same scenario on servers that never fail."""
    return fault_mix_run(out, conversations=conversations, replicas=replicas, mix={},
                         max_turns=max_turns)


def replica_loss_run(out: Path, *, conversations: int = 120, replicas: int = 3,
                     kill_after_requests: int = 10, victim: int = 0,
                     max_turns: int = 6) -> ChaosReport:
    """Stop replica `victim` for good once it has served `kill_after_requests`
    /generate requests; the run goes on on the others."""
    servers = [SGLangTestServer(latency=0.01) for _ in range(replicas)]
    stop = threading.Event()
    killed = threading.Event()

    def killer() -> None:
        while not stop.is_set():
            if servers[victim].faults.count("/generate") >= kill_after_requests:
                servers[victim].stop()
                killed.set()
                return
            time.sleep(0.002)

    watcher = threading.Thread(target=killer, daemon=True)
    try:
        for s in servers:
            s.start()
        watcher.start()
        started = time.monotonic()
        result = turnloom.run(scenario_for([s.url for s in servers], conversations=conversations,
                                           max_turns=max_turns),
                              out=out, progress=False,
                              plugin_manager=get_plugin_manager(autoload=False))
        report = _report(result, servers, started)
        report.killed = killed.is_set()
        return report
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join()
        for s in servers:
            s.stop()
