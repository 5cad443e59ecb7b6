"""Sharded runs in local processes: the same outputs as one process, a killed
child resumed from its shard's log, a child that cannot run named with its
reason, an interrupted driver resumed without redoing finished shards, and the
CLI's --processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest

import turnloom
from turnloom.config import Scenario
from turnloom.distributed import (
    ShardFailed, ShardStatus, is_sharded, resume_processes, resume_sharded, run_processes)
from turnloom import hookimpl
from turnloom.plugins import get_plugin_manager
from turnloom.testing.crash import assert_same_outputs
from sharded_runs import CONVERSATIONS, TOML, assert_same_counts, logged_turns, scenario

CLI = [sys.executable, "-m", "turnloom.cli"]


@pytest.fixture(autouse=True)
def no_plugin_autoload(monkeypatch: pytest.MonkeyPatch) -> None:
    """Children inherit the driver's environment: none loads third-party plugins."""
    monkeypatch.setenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", "1")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("reference") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", "1")
        turnloom.run(scenario(), out=out, progress=False)
    yield out


def test_processes_write_what_one_process_writes(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_processes(scenario(), out=out, processes=2, progress=False, poll_s=0.05)
    assert_same_outputs(reference, out)
    assert_same_counts(reference, result.summary)
    assert is_sharded(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sharding"]["executor"] == "processes"
    per_shard = result.summary["sharding"]["per_shard"]
    assert [(s["first_index"], s["conversations"], s["attempts"]) for s in per_shard] == [
        (0, 100, 1), (100, 100, 1)]
    assert all(s["cpu_s"]["engine"] > 0 for s in per_shard)


def test_killed_shard_process_resumes_from_its_log(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    killed: list[int] = []

    def kill_shard_0_midway(statuses: Sequence[ShardStatus]) -> None:
        st = statuses[0]
        if not killed and not st.done and st.counts.turns >= 100:
            os.kill(st.where["pid"], signal.SIGKILL)
            killed.append(st.counts.turns)

    result = run_processes(scenario(), out=out, processes=2, progress=False, poll_s=0.05,
                           on_progress=kill_shard_0_midway)
    assert killed, "shard 0 finished before it could be killed"
    assert [s["attempts"] for s in result.summary["sharding"]["per_shard"]] == [2, 1]
    assert_same_outputs(reference, out)
    assert_same_counts(reference, result.summary)
    shard0 = out / "shards" / "0000"
    # Resumed, not restarted: the turns logged before the kill were replayed.
    replayed = json.loads((shard0 / "summary.json").read_text())["timing"]["replayed_turns"]
    assert replayed >= killed[0] - 8  # its last report may precede its last logged step
    keys = logged_turns(shard0)
    assert len(keys) == len(set(keys))


def test_shard_process_dying_past_the_retry_limit_fails_the_run(tmp_path: Path) -> None:
    def kill_shard_1(statuses: Sequence[ShardStatus]) -> None:
        st = statuses[1]
        if st.actor is not None and st.counts.turns > 0:
            os.kill(st.where["pid"], signal.SIGKILL)

    with pytest.raises(ShardFailed, match=r"shards/0001 \(conversations 20\.\.39\): its process "
                                          r"was killed by SIGKILL on attempt 1 of 1"):
        run_processes(scenario(conversations=40), out=tmp_path / "run", processes=2,
                      max_retries=0, progress=False, poll_s=0.05, on_progress=kill_shard_1)
    assert not (tmp_path / "run" / "summary.json").exists()


class _DriverOnlyAgent:
    """An agent the driver's plugin manager knows and a child's does not."""

    @hookimpl
    def register_agents(self, register: Any) -> None:
        from turnloom.builtin.agents import Assistant

        register("driver-only", Assistant)


def test_child_that_cannot_run_is_named_with_its_reason(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pm = get_plugin_manager()
    pm.register(_DriverOnlyAgent())
    data = scenario(conversations=10).to_dict()
    data["participants"][1]["agent"] = "driver-only"
    with pytest.raises(ShardFailed) as failed:
        run_processes(Scenario.from_dict(data), out=tmp_path / "run", processes=2,
                      max_retries=1, progress=False, poll_s=0.05, plugin_manager=pm)
    message = str(failed.value)
    # Both shards fail the same way; the run names whichever used up its retries first.
    assert re.search(r"shards/(0000 \(conversations 0\.\.4\)|0001 \(conversations 5\.\.9\)): "
                     r"its process exited with code 1 on attempt 2 of 2", message), message
    assert "driver-only" in message  # the child's last line: the unknown agent
    # The children's output reaches the driver's stderr, each line led by its shard.
    err = capsys.readouterr().err
    assert "shards/0000: " in err and "driver-only" in err


def test_resume_after_driver_interrupt_skips_finished_shards(reference: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "run"
    paused: list[int] = []

    def interrupt_after_first_shard(statuses: Sequence[ShardStatus]) -> None:
        # Shards 1 and 2 wait while shard 0 finishes, so they are unfinished when
        # the driver stops.
        if not paused and all(st.where for st in statuses):
            paused.extend(st.where["pid"] for st in statuses[1:])
            for pid in paused:
                os.kill(pid, signal.SIGSTOP)
        if statuses[0].done:
            for pid in paused:
                os.kill(pid, signal.SIGCONT)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_processes(scenario(), out=out, processes=3, progress=False, poll_s=0.05,
                      on_progress=interrupt_after_first_shard)
    finished = {d.name: (d / "summary.json").stat().st_mtime_ns
                for d in sorted((out / "shards").iterdir()) if (d / "summary.json").is_file()}
    assert list(finished) == ["0000"]
    assert not (out / "summary.json").exists() and not (out / "conversations.jsonl").exists()
    shown = subprocess.run([*CLI, "show", str(out)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "1 of 3 shards complete" in shown.stdout
    assert f"continue it with: turnloom resume {out}\n" in shown.stdout + "\n"  # no --ray

    result = resume_sharded(out, progress=False, poll_s=0.05)
    per_shard = {Path(s["dir"]).name: s for s in result.summary["sharding"]["per_shard"]}
    assert per_shard["0000"]["skipped"] and per_shard["0000"]["attempts"] == 0
    assert (out / "shards" / "0000" / "summary.json").stat().st_mtime_ns == finished["0000"]
    assert per_shard["0001"]["attempts"] == per_shard["0002"]["attempts"] == 1
    assert_same_outputs(reference, out)
    assert_same_counts(reference, result.summary)
    # A finished sharded run resumes to itself.
    assert resume_processes(out, progress=False).summary == result.summary


def test_cli_run_and_resume_in_processes(reference: Path, tmp_path: Path) -> None:
    file = tmp_path / "s.toml"
    file.write_text(TOML)
    out = tmp_path / "run"
    env = {**os.environ, "TURNLOOM_PROGRESS_INTERVAL": "60"}
    done = subprocess.run([*CLI, "run", str(file), "--out", str(out), "--processes", "2",
                           "--shard-retries", "1", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert f"{CONVERSATIONS} conversations" in done.stdout and "2 shards" in done.stdout
    assert_same_outputs(reference, out)
    again = subprocess.run([*CLI, "resume", str(out), "--no-progress"],
                           env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    assert f"{CONVERSATIONS} conversations" in again.stdout


def test_ctrl_c_stops_every_process_quietly_and_loses_nothing(reference: Path,
                                                               tmp_path: Path) -> None:
    """SIGINT to the terminal's process group (Ctrl-C) reaches the driver and its
    children: all stop, none prints a traceback, and `resume` finishes the run."""
    import time

    file = tmp_path / "s.toml"
    file.write_text(TOML)
    out = tmp_path / "run"
    run = subprocess.Popen([*CLI, "run", str(file), "--out", str(out), "--processes", "2",
                            "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    logs = [out / "shards" / d / "turns.wal" for d in ("0000", "0001")]
    deadline = time.monotonic() + 60
    while not all(log.is_file() and log.stat().st_size > 1000 for log in logs):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert "turnloom: interrupted" in err and "Traceback" not in err
    assert not (out / "summary.json").exists()
    again = subprocess.run([*CLI, "resume", str(out), "--no-progress"], capture_output=True,
                           text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    assert_same_outputs(reference, out)


@pytest.mark.parametrize("flags, error", [
    (["--processes", "2", "--ray", "local"], "--ray and --processes: choose one executor"),
    (["--processes", "2", "--shards", "3"], "--shards: with --processes N, N is the number"),
    (["--processes", "2", "--shard-options", "{}"], "--shard-options: options of Ray actors"),
    (["--shard-retries", "1"], "--shard-retries needs --ray ADDRESS or --processes N"),
    (["--processes", "0"], "--processes: must be at least 1"),
])
def test_cli_rejects_conflicting_executor_flags(tmp_path: Path, flags: list[str],
                                                error: str) -> None:
    file = tmp_path / "s.toml"
    file.write_text(TOML)
    done = subprocess.run([*CLI, "run", str(file), *flags], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert error in done.stderr


def test_scenario_executor_runs_in_processes(reference: Path, tmp_path: Path) -> None:
    base = scenario().to_dict()
    s = Scenario.from_dict({**base, "run": {**base["run"], "executor": "processes"},
                            "executor": {"shards": 3}})
    totals: list[dict[str, int]] = []
    result = turnloom.run(s, out=tmp_path / "run", progress=False, on_progress=totals.append)
    assert result.summary["sharding"]["shards"] == 3
    assert_same_outputs(reference, result.run_dir)
    # The shards' totals, summed: the same callback as a run in one process gets.
    assert totals[-1]["conversations"] == result.summary["conversations"]
    assert totals[-1]["turns"] == result.summary["turns"]
