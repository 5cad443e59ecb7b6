"""Process crashes and a full disk, through the real CLI in subprocesses.

One run is SIGKILLed at 20 random instants (`turnloom run`, then `turnloom
resume` again and again); the final output must equal an uninterrupted run's
byte for byte, with every turn logged exactly once. A run whose disk fills up
must stop with a clear error, keep its log readable, and resume to the same
output once there is room again.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from turnloom.wal import MAGIC, EndEvent, TurnEvent, read_events

SCENARIO = """\
[run]
name = "crash"
conversations = {conversations}
max_turns = 6
seed = 21
batch_size = 4
max_inflight = 1
max_active = 8
wal_sync_s = 0.0

[backends.sim]
type = "scripted"
latency_s = {latency}
fail_every = 23
lines = ["Sure.", "Tell me more.", "Thanks [END]", "Let me think about it.", "Hmm, ok."]

[[participants]]
name = "user"
agent = "user-simulator"
system_prompt = "You are {{profile.name}}."
sampler = "inline"
sampler_settings.profiles = [{{ name = "Ada" }}, {{ name = "Bo" }}, {{ name = "Cy" }}]
settings.stop_phrases = ["[END]"]

[[participants]]
name = "assistant"
agent = "assistant"

[[branches]]
at_turn = 2
n = 2

[[scorers]]
name = "length"

[[scorers]]
name = "stop-reason"
"""

OUTPUTS = ("conversations.jsonl", "scores.jsonl")
KILLS = 20


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "turnloom", *args]


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return {**os.environ, "TURNLOOM_DISABLE_PLUGIN_AUTOLOAD": "1",
            "TURNLOOM_PROGRESS_INTERVAL": "60"}


def write_scenario(path: Path, conversations: int, latency: float) -> Path:
    path.write_text(SCENARIO.format(conversations=conversations, latency=latency))
    return path


def uninterrupted_run(root: Path, env: dict[str, str], conversations: int, latency: float) -> Path:
    """`root`/s.toml run to completion into `root`/run; returns `root`."""
    scenario = write_scenario(root / "s.toml", conversations, latency)
    subprocess.run(cli("run", str(scenario), "--out", str(root / "run"), "--no-progress"),
                   env=env, check=True, capture_output=True, timeout=300)
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Path:
    return uninterrupted_run(tmp_path_factory.mktemp("reference"), env, 400, 0.02)


@pytest.fixture(scope="module")
def small_reference(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Path:
    """A quick run whose log (~170 KiB) does not fit the tiny disks below."""
    return uninterrupted_run(tmp_path_factory.mktemp("small"), env, 200, 0.0)


def record_boundaries(data: bytes) -> set[int]:
    pos, out = len(MAGIC), {len(MAGIC)}
    while pos + 8 <= len(data):
        pos += 8 + int.from_bytes(data[pos:pos + 4], "little")
        out.add(pos)
    return out


def check_log(wal: Path, expected_turns: int) -> None:
    events = list(read_events(wal, truncate=False))
    keys = [(e.index, e.branch, e.turn) for e in events if type(e) is TurnEvent]
    dup = [k for k, n in Counter(keys).items() if n > 1]
    assert not dup, f"turns logged twice: {dup[:5]}"
    assert len(keys) == expected_turns, "a turn is missing from the log"
    ends = [(e.index, e.branch) for e in events if type(e) is EndEvent]
    assert len(ends) == len(set(ends))


def kill_and_resume(scenario: Path, full: Path, run_dir: Path, env: dict[str, str],
                    kills_wanted: int, seed: int) -> tuple[int, int, int]:
    """SIGKILL `turnloom run`/`resume` at random instants `kills_wanted` times, then
    resume to the end; check the output and the log. Returns (kills, torn tails,
    processes started)."""
    wal = run_dir / "turns.wal"
    rng = random.Random(seed)
    kills = torn = attempts = 0
    cmd = cli("run", str(scenario), "--out", str(run_dir), "--no-progress")
    while kills < kills_wanted:
        attempts += 1
        assert attempts < 3 * kills_wanted, "the run kept finishing before it could be killed"
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # A random instant: anywhere from interpreter start-up to well into the work.
        try:
            proc.wait(timeout=rng.uniform(0.05, 1.2))
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
        else:
            assert proc.returncode == 0
            break  # finished before this kill: nothing left to interrupt
        if wal.exists():
            data = wal.read_bytes()
            if len(data) not in record_boundaries(data):
                torn += 1
            if kills == kills_wanted // 2:  # and one tail torn on purpose, mid-record
                with open(wal, "ab") as f:
                    f.write((4096).to_bytes(4, "little") + b"\x01\x02\x03\x04torn")
                torn += 1
        assert not (run_dir / "conversations.jsonl").exists()
        if (run_dir / "manifest.json").exists():
            cmd = cli("resume", str(run_dir), "--no-progress")
    done = subprocess.run(cli("resume", str(run_dir), "--no-progress"), env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    for name in OUTPUTS:
        assert (run_dir / name).read_bytes() == (full / name).read_bytes(), name
    expected_turns = sum(1 for e in read_events(full / "turns.wal", truncate=False)
                         if type(e) is TurnEvent)
    check_log(wal, expected_turns)
    return kills, torn, attempts


def test_twenty_random_sigkills_then_resume_equal_uninterrupted(
        reference: Path, env: dict[str, str], tmp_path: Path) -> None:
    kills, torn, attempts = kill_and_resume(reference / "s.toml", reference / "run",
                                            tmp_path / "run", env, KILLS, seed=2024)
    print(f"\n{kills} SIGKILLs, {torn} torn log tails, {attempts} processes")
    assert kills == KILLS and torn >= 1


@pytest.mark.soak
def test_hundred_random_sigkills_on_a_long_run(env: dict[str, str], tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path / "s.toml", 2500, 0.02)
    subprocess.run(cli("run", str(scenario), "--out", str(tmp_path / "full"), "--no-progress"),
                   env=env, check=True, capture_output=True, timeout=600)
    kills, torn, attempts = kill_and_resume(scenario, tmp_path / "full", tmp_path / "run", env,
                                            100, seed=7)
    print(f"\n{kills} SIGKILLs, {torn} torn log tails, {attempts} processes")
    assert kills == 100


# -- a full disk -----------------------------------------------------------------------


def _limit_file_size(limit: int) -> Any:
    def apply() -> None:
        # Without this the kernel kills the process with SIGXFSZ instead of
        # failing the write with EFBIG, which is what a full disk looks like.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def assert_clean_failure(proc: subprocess.CompletedProcess[str], run_dir: Path) -> None:
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("turnloom: run failed: OSError:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for name in OUTPUTS:  # no half-written dataset
        assert not (run_dir / name).exists()
    assert not [p for p in run_dir.iterdir() if p.name.endswith((".tmp", ".partial"))]


def test_file_size_limit_is_a_clear_error_and_resume_recovers(
        small_reference: Path, env: dict[str, str], tmp_path: Path) -> None:
    reference = small_reference
    full = reference / "run"
    run_dir = tmp_path / "run"
    limit = (full / "turns.wal").stat().st_size // 3
    proc = subprocess.run(cli("run", str(reference / "s.toml"), "--out", str(run_dir),
                              "--no-progress"), env=env, capture_output=True, text=True,
                          timeout=300, preexec_fn=_limit_file_size(limit))
    assert_clean_failure(proc, run_dir)
    assert f"File too large: '{run_dir / 'turns.wal'}'" in proc.stderr
    wal = run_dir / "turns.wal"
    logged = list(read_events(wal, truncate=False))
    assert logged, "the log keeps what was written before the disk filled"
    done = subprocess.run(cli("resume", str(run_dir), "--no-progress"), env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name in OUTPUTS:
        assert (run_dir / name).read_bytes() == (full / name).read_bytes(), name


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_tmpfs_is_a_clear_error_and_resume_recovers(
        small_reference: Path, env: dict[str, str], tiny_disk: Path, tmp_path: Path) -> None:
    reference = small_reference
    full = reference / "run"
    assert (full / "turns.wal").stat().st_size > 96 * 1024, "the run must not fit"
    run_dir = tiny_disk / "run"
    proc = subprocess.run(cli("run", str(reference / "s.toml"), "--out", str(run_dir),
                              "--no-progress"), env=env, capture_output=True, text=True,
                          timeout=300)
    assert_clean_failure(proc, run_dir)
    assert "No space left on device: '" + str(run_dir) in proc.stderr
    # Room again: move the run to a real disk and finish it there.
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    done = subprocess.run(cli("resume", str(moved), "--no-progress"), env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name in OUTPUTS:
        assert (moved / name).read_bytes() == (full / name).read_bytes(), name


def test_unwritable_run_folder_is_a_clear_error(small_reference: Path, env: dict[str, str],
                                                tiny_disk: Path) -> None:
    reference = small_reference
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    proc = subprocess.run(cli("run", str(reference / "s.toml"), "--out",
                              str(tiny_disk / "run"), "--no-progress"),
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "Read-only file system" in last and str(tiny_disk / "run") in last, proc.stderr
    assert "Traceback" not in proc.stderr
