"""Sharded runs on a local Ray instance: the same outputs as one process, a
killed shard actor resumed from its log, an interrupted driver resumed without
redoing finished shards, and the CLI's --ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Sequence

import pytest

import turnloom
from turnloom.config import Scenario
from turnloom.testing.crash import assert_same_outputs

ray = pytest.importorskip("ray")

from turnloom.distributed import (  # noqa: E402
    ShardFailed, ShardStatus, is_sharded, resume_ray, run_ray)
from sharded_runs import (  # noqa: E402
    CONVERSATIONS, TOML, assert_same_counts, logged_turns, scenario)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray instance whose workers load no third-party plugins."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", "1")
        mp.setenv("RAY_DEDUP_LOGS", "0")
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024,
                 log_to_driver=False)
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", "1")
        turnloom.run(scenario(), out=out, progress=False)
    return out


def test_killed_shard_actor_resumes_from_its_log(cluster: str, reference: Path,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "run"
    killed: list[int] = []

    def kill_shard_0_midway(statuses: Sequence[ShardStatus]) -> None:
        st = statuses[0]
        pid = st.where.get("pid")
        if not killed and not st.done and pid and st.counts.turns >= 100:
            os.kill(pid, signal.SIGKILL)
            killed.append(st.counts.turns)

    result = run_ray(scenario(), out=out, shards=2, progress=False, poll_s=0.05,
                     on_progress=kill_shard_0_midway)
    assert killed, "shard 0 finished before it could be killed"
    per_shard = result.summary["sharding"]["per_shard"]
    assert [s["attempts"] for s in per_shard] == [2, 1]
    assert [(s["first_index"], s["conversations"]) for s in per_shard] == [(0, 100), (100, 100)]
    assert_same_outputs(reference, out)
    assert_same_counts(reference, result.summary)
    shard0 = out / "shards" / "0000"
    # Resumed, not restarted: the turns logged before the kill were replayed.
    import json

    replayed = json.loads((shard0 / "summary.json").read_text())["timing"]["replayed_turns"]
    assert replayed >= killed[0]
    keys = logged_turns(shard0)
    assert len(keys) == len(set(keys))
    assert is_sharded(out)


def test_shard_dying_past_the_retry_limit_fails_the_run(cluster: str, tmp_path: Path) -> None:
    killed: set[int] = set()

    def kill_shard_1(statuses: Sequence[ShardStatus]) -> None:
        st = statuses[1]
        pid = st.where.get("pid")
        if not st.done and pid and pid not in killed and st.counts.turns > 0:
            killed.add(pid)  # progress is polled again before the driver sees the death
            os.kill(pid, signal.SIGKILL)

    # 100 conversations a shard: long enough that the kill lands before the shard ends.
    with pytest.raises(ShardFailed, match=r"shards/0001 \(conversations 100\.\.199\): its actor "
                                          r"died on attempt 1 of 1"):
        run_ray(scenario(conversations=200), out=tmp_path / "run", shards=2, max_retries=0,
                progress=False, poll_s=0.05, on_progress=kill_shard_1)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_resume_after_driver_interrupt_skips_finished_shards(cluster: str, reference: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "run"

    def interrupt_after_first_shard(statuses: Sequence[ShardStatus]) -> None:
        if any(st.done for st in statuses):
            raise KeyboardInterrupt

    # Three shards on two CPUs: the third waits for the first to end, so it is
    # unfinished when the driver stops.
    with pytest.raises(KeyboardInterrupt):
        run_ray(scenario(), out=out, shards=3, progress=False, poll_s=0.05,
                on_progress=interrupt_after_first_shard)
    shards = sorted((out / "shards").iterdir())
    finished = {d.name: (d / "summary.json").stat().st_mtime_ns for d in shards
                if (d / "summary.json").is_file()}
    assert 1 <= len(finished) < 3
    assert not (out / "summary.json").exists() and not (out / "conversations.jsonl").exists()
    shown = subprocess.run([sys.executable, "-m", "turnloom.cli", "show", str(out)],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"{len(finished)} of 3 shards complete" in shown.stdout
    with pytest.raises(turnloom.rundir.RunDirError, match="sharded run"):
        turnloom.resume(out, progress=False)  # would rerun every shard in this process

    result = resume_ray(out, progress=False, poll_s=0.05)
    per_shard = {Path(s["dir"]).name: s for s in result.summary["sharding"]["per_shard"]}
    for name, mtime in finished.items():
        assert per_shard[name]["skipped"] and per_shard[name]["attempts"] == 0
        assert (out / "shards" / name / "summary.json").stat().st_mtime_ns == mtime
    assert all(s["attempts"] == 1 for n, s in per_shard.items() if n not in finished)
    assert_same_outputs(reference, out)
    assert_same_counts(reference, result.summary)
    # A finished sharded run resumes to itself.
    assert run_ray(scenario(), out=out, resume=True, progress=False).summary == result.summary


def test_cli_run_and_resume_on_ray(cluster: str, reference: Path, tmp_path: Path) -> None:
    file = tmp_path / "s.toml"
    file.write_text(TOML)
    out = tmp_path / "run"
    env = {**os.environ, "TURNLOOM_DISABLE_PLUGIN_AUTOLOAD": "1", "TURNLOOM_PROGRESS_INTERVAL": "60"}
    cli = [sys.executable, "-m", "turnloom.cli"]
    done = subprocess.run([*cli, "run", str(file), "--out", str(out), "--ray", cluster,
                           "--shards", "2", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert f"{CONVERSATIONS} conversations" in done.stdout and "2 shards" in done.stdout
    assert_same_outputs(reference, out)
    again = subprocess.run([*cli, "resume", str(out), "--ray", cluster, "--no-progress"],
                           env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    assert f"{CONVERSATIONS} conversations" in again.stdout


def test_cli_rejects_shards_without_ray(tmp_path: Path) -> None:
    file = tmp_path / "s.toml"
    file.write_text(TOML)
    done = subprocess.run([sys.executable, "-m", "turnloom.cli", "run", str(file), "--shards", "2"],
                          env={**os.environ, "TURNLOOM_DISABLE_PLUGIN_AUTOLOAD": "1"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--shards needs --ray" in done.stderr




def test_scenario_executor_runs_on_ray(cluster: str, reference: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", "1")
    s = Scenario.from_dict({**scenario().to_dict(),
                            "run": {**scenario().to_dict()["run"], "executor": "ray"},
                            "executor": {"address": cluster, "shards": 3}})
    totals: list[dict[str, int]] = []
    result = turnloom.run(s, out=tmp_path / "run", progress=False, on_progress=totals.append)
    assert is_sharded(result.run_dir) and result.summary["sharding"]["shards"] == 3
    assert_same_outputs(reference, result.run_dir)
    # The shards' totals, summed: the same callback as a run in one process gets.
    assert totals[-1]["conversations"] == result.summary["conversations"]
    assert totals[-1]["turns"] == result.summary["turns"]
