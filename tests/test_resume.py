"""Kill a run at any point, resume it, and get exactly the uninterrupted run's output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

import turnloom
from turnloom.plugins import get_plugin_manager
from turnloom.testing.crash import OUTPUTS, assert_same_outputs, kill_when
from turnloom.wal import MAGIC, EndEvent, TurnEvent, WalWriter, read_events

SCENARIO = """\
[run]
name = "resume"
conversations = 30
max_turns = 6
seed = 5
batch_size = 4
max_inflight = 1
max_active = 6
wal_sync_s = 0.0

[backends.sim]
type = "scripted"
latency_s = 0.01
fail_every = 17

[[participants]]
name = "user"
agent = "user-simulator"
system_prompt = "You are {profile.name}."
sampler = "inline"
sampler_settings.profiles = [{ name = "Ada" }, { name = "Bo" }, { name = "Cy" }]
settings.stop_phrases = ["[END]"]

[[participants]]
name = "assistant"
agent = "assistant"

[[participants]]
name = "env"
agent = "scripted-user"
settings.lines = ["ok", "go on", "and then?"]

[backends.sim.settings]
lines = ["Sure.", "Tell me more.", "Thanks [END]", "Let me think about it.", "Hmm."]

[[branches]]
at_turn = 2
n = 2

[[scorers]]
name = "length"

[[scorers]]
name = "stop-reason"
"""

def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "turnloom.cli", *args]


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return {**os.environ, "TURNLOOM_DISABLE_PLUGIN_AUTOLOAD": "1", "TURNLOOM_PROGRESS_INTERVAL": "60"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Path:
    root = tmp_path_factory.mktemp("reference")
    scenario = root / "s.toml"
    scenario.write_text(SCENARIO)
    subprocess.run(cli("run", str(scenario), "--out", str(root / "run"), "--no-progress"),
                   env=env, check=True, capture_output=True, timeout=120)
    return root


def test_reference_run_is_interesting(reference: Path) -> None:
    lines = (reference / "run" / "conversations.jsonl").read_text().splitlines()
    recs = [msgspec.json.decode(x) for x in lines]
    assert {r["branch"] for r in recs} == {0, 1}
    assert {r["stop_reason"] for r in recs} >= {"max_turns", "user_stop"}


@pytest.mark.parametrize("fraction", [0.05, 0.4, 0.8])
def test_kill_and_resume_equals_uninterrupted(fraction: float, reference: Path,
                                              env: dict[str, str], tmp_path: Path) -> None:
    full = reference / "run"
    run_dir = tmp_path / "run"
    wal = run_dir / "turns.wal"
    size = int((full / "turns.wal").stat().st_size * fraction)
    killed = kill_when(cli("run", str(reference / "s.toml"), "--out", str(run_dir)),
                       wal, size, env=env)
    if killed:
        assert not (run_dir / "conversations.jsonl").exists()
        shown = subprocess.run(cli("show", str(run_dir)), env=env, capture_output=True,
                               text=True, timeout=60)
        assert shown.returncode == 0 and "incomplete run" in shown.stdout
    done = subprocess.run(cli("resume", str(run_dir)), env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert_same_outputs(full, run_dir)
    # No turn is logged twice: each (index, branch, turn) appears once in the log.
    keys = [(e.index, e.branch, e.turn) for e in read_events(wal) if type(e) is TurnEvent]
    assert len(keys) == len(set(keys))


def test_kill_during_resume(reference: Path, env: dict[str, str], tmp_path: Path) -> None:
    full = reference / "run"
    run_dir = tmp_path / "run"
    wal = run_dir / "turns.wal"
    total = (full / "turns.wal").stat().st_size
    kill_when(cli("run", str(reference / "s.toml"), "--out", str(run_dir)), wal,
              int(total * 0.3), env=env)
    kill_when(cli("resume", str(run_dir)), wal, int(total * 0.6), env=env)
    subprocess.run(cli("resume", str(run_dir)), env=env, check=True, capture_output=True,
                   timeout=120)
    assert_same_outputs(full, run_dir)


def test_torn_last_record_is_dropped(reference: Path, env: dict[str, str],
                                     tmp_path: Path) -> None:
    full = reference / "run"
    run_dir = tmp_path / "run"
    wal = run_dir / "turns.wal"
    kill_when(cli("run", str(reference / "s.toml"), "--out", str(run_dir)), wal,
              int((full / "turns.wal").stat().st_size * 0.5), env=env)
    good = wal.stat().st_size
    with open(wal, "ab") as f:  # a record header promising more than is there
        f.write((1000).to_bytes(4, "little") + b"\x00\x00\x00\x00partial")
    subprocess.run(cli("resume", str(run_dir)), env=env, check=True, capture_output=True,
                   timeout=120)
    assert_same_outputs(full, run_dir)
    assert b"partial" not in wal.read_bytes()[good - 16:]


def test_resume_of_a_finished_run_changes_nothing(reference: Path, env: dict[str, str],
                                                  tmp_path: Path) -> None:
    full = reference / "run"
    before = {name: (full / name).read_bytes() for name in (*OUTPUTS, "turns.wal")}
    done = subprocess.run(cli("resume", str(full)), env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert before == {name: (full / name).read_bytes() for name in before}


def _end(index: int) -> EndEvent:
    return EndEvent(index=index, branch=0, tree_done=True, stop_reason="max_turns",
                    scores={"length": {"words": 3}}, errors=[], meta={"k": 1})


def _turn(index: int, turn: int) -> TurnEvent:
    return TurnEvent(index, 0, 0, turn, 0, "user", "hi", [1, 2, 3], "stop", 7, 3, 3, 0, 0.0,
                     None, None, None, None, None)


def test_wal_round_trip_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "turns.wal"
    w = WalWriter(path, sync_s=0)
    w.append(_turn(0, 0))
    w.append(_turn(0, 1))
    w.flush()
    w.append(_end(0))
    w.flush()
    boundary = path.stat().st_size
    w.append(_turn(1, 0))
    w.close()
    assert [type(e).__name__ for e in read_events(path)] == [
        "TurnEvent", "TurnEvent", "EndEvent", "TurnEvent"]
    # Cut the last record in the middle: it is dropped and the file truncated there.
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 3)
    events = list(read_events(path))
    assert len(events) == 3 and events[2] == _end(0)
    assert path.stat().st_size == boundary
    # A flipped byte fails the checksum: that record and everything after it go.
    data = bytearray(path.read_bytes())
    data[len(MAGIC) + 12] ^= 0xFF
    path.write_bytes(bytes(data))
    assert list(read_events(path)) == []
    assert path.read_bytes() == MAGIC


def test_empty_or_missing_magic(tmp_path: Path) -> None:
    path = tmp_path / "turns.wal"
    path.write_bytes(MAGIC[:3])  # torn while writing the header
    assert list(read_events(path)) == []
    assert path.read_bytes() == MAGIC
    path.write_bytes(b"not a log at all")
    with pytest.raises(ValueError, match="not a turnloom write-ahead log"):
        list(read_events(path))


# -- every crash point, in process ---------------------------------------------------


class MetaCounter:
    """Plugin state kept in conversation.meta must survive a resume."""

    @turnloom.hookimpl
    def on_conversation_start(self, conversation):  # type: ignore[no-untyped-def]
        conversation.meta["started"] = conversation.branch

    @turnloom.hookimpl
    def on_turn_end(self, conversation, turn):  # type: ignore[no-untyped-def]
        conversation.meta["seen"] = conversation.meta.get("seen", 0) + 1

    @turnloom.hookimpl
    def should_stop(self, conversation, turn):  # type: ignore[no-untyped-def]
        return "seven" if conversation.index == 7 and turn.turn == 3 else None


def _boundaries(wal: Path) -> list[int]:
    data = wal.read_bytes()
    pos, out = len(MAGIC), [len(MAGIC)]
    while pos < len(data):
        pos += 8 + int.from_bytes(data[pos:pos + 4], "little")
        out.append(pos)
    return out


def test_resume_from_every_step(tmp_path: Path) -> None:
    text = SCENARIO.replace("latency_s = 0.01", "latency_s = 0.0").replace(
        "conversations = 30", "conversations = 12")
    scenario = turnloom.Scenario.from_dict(__import__("tomllib").loads(text))

    def pm() -> object:
        manager = get_plugin_manager(autoload=False)
        manager.register(MetaCounter())
        return manager

    full = turnloom.run(scenario, out=tmp_path / "full", progress=False, plugin_manager=pm())
    wal = full.run_dir / "turns.wal"
    cuts = _boundaries(wal)
    assert len(cuts) > 10
    recs = full.conversations()
    assert all("seen" in r["meta"] for r in recs if r["turns"])
    assert {r["stop_reason"] for r in recs} >= {"seven", "max_turns", "user_stop"}
    data = wal.read_bytes()
    for k, cut in enumerate(cuts[:-1]):
        run_dir = tmp_path / f"cut{k}"
        run_dir.mkdir()
        shutil.copy(full.run_dir / "manifest.json", run_dir / "manifest.json")
        (run_dir / "turns.wal").write_bytes(data[:cut] + data[cut:cut + 5])  # and a torn tail
        turnloom.resume(run_dir, progress=False, plugin_manager=pm())
        assert_same_outputs(full.run_dir, run_dir)


def test_progress_totals_include_replayed_work(tmp_path: Path) -> None:
    """`on_progress` gets running totals; a resumed run's start from what was replayed."""
    text = SCENARIO.replace("latency_s = 0.01", "latency_s = 0.0")
    scenario = turnloom.Scenario.from_dict(__import__("tomllib").loads(text))
    seen: list[dict[str, int]] = []
    full = turnloom.run(scenario, out=tmp_path / "full", progress=False,
                        plugin_manager=get_plugin_manager(autoload=False), on_progress=seen.append)
    summary = full.summary
    final = {"conversations": summary["conversations"], "turns": summary["turns"],
             "tokens": sum(p["completion_tokens"] for p in summary["participants"].values()),
             "failures": summary["failures"]}
    assert final["tokens"] > 0
    assert seen[-1] == final
    assert len(seen) > 10
    for key in final:  # running totals never go down
        assert all(a[key] <= b[key] for a, b in zip(seen, seen[1:]))

    run_dir = tmp_path / "cut"
    run_dir.mkdir()
    shutil.copy(full.run_dir / "manifest.json", run_dir / "manifest.json")
    cuts = _boundaries(full.run_dir / "turns.wal")
    (run_dir / "turns.wal").write_bytes((full.run_dir / "turns.wal").read_bytes()[:cuts[len(cuts) // 2]])
    resumed: list[dict[str, int]] = []
    result = turnloom.resume(run_dir, progress=False,
                             plugin_manager=get_plugin_manager(autoload=False),
                             on_progress=resumed.append)
    replayed = result.summary["timing"]["replayed_turns"]
    assert 0 < replayed < final["turns"]
    assert resumed[0]["turns"] >= replayed
    assert resumed[-1] == final


def test_a_raising_progress_callback_stops_the_run_resumably(tmp_path: Path) -> None:
    """A callback that raises mid-run stops it like an interrupt: the log keeps the
    turns, `resume` finishes the run; raising at the end loses no output."""
    text = SCENARIO.replace("latency_s = 0.01", "latency_s = 0.0")
    scenario = turnloom.Scenario.from_dict(__import__("tomllib").loads(text))
    full = turnloom.run(scenario, out=tmp_path / "full", progress=False,
                        plugin_manager=get_plugin_manager(autoload=False))

    def stop_midway(counts: dict[str, int]) -> None:
        if counts["turns"] >= 40:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        turnloom.run(scenario, out=tmp_path / "cut", progress=False,
                     plugin_manager=get_plugin_manager(autoload=False), on_progress=stop_midway)
    assert not (tmp_path / "cut" / "conversations.jsonl").exists()
    turnloom.resume(tmp_path / "cut", progress=False, plugin_manager=get_plugin_manager(autoload=False))
    assert_same_outputs(full.run_dir, tmp_path / "cut")

    finished: list[dict[str, int]] = []

    def fail_at_the_end(counts: dict[str, int]) -> None:
        if counts["conversations"] == 30:
            finished.append(counts)
            if len(finished) == 2:  # the engine's last step, then the final totals
                raise RuntimeError("callback bug")

    with pytest.raises(RuntimeError, match="callback bug"):
        turnloom.run(scenario, out=tmp_path / "end", progress=False,
                     plugin_manager=get_plugin_manager(autoload=False), on_progress=fail_at_the_end)
    assert_same_outputs(full.run_dir, tmp_path / "end")
