"""The command line: exit codes, one-line errors, show, validate, plugins, progress."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import turnloom.plugins
from turnloom import hookimpl
from turnloom.backends.scripted import ScriptedBackend
from turnloom.cli import main

SCENARIO = """\
[run]
name = "cli"
conversations = 4
max_turns = 4

[backends.sim]
type = "scripted"

[[participants]]
name = "user"
agent = "scripted-user"
settings.lines = ["hi", "more"]

[[participants]]
name = "assistant"
agent = "assistant"

[[scorers]]
name = "length"
"""


@pytest.fixture(autouse=True)
def no_autoload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", "1")


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO)
    return path


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_validate_ok(scenario: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(scenario)]) == 0
    assert "ok" in capsys.readouterr().out


def test_validate_typo_is_one_line_with_place(scenario: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    scenario.write_text(SCENARIO.replace("max_turns = 4", "max_turn = 4"))
    assert main(["validate", str(scenario)]) == 2
    line = one_line_error(capsys)
    assert line.startswith(f"turnloom: error: {scenario}:4: run.max_turn:")
    assert "did you mean 'max_turns'" in line


def test_validate_unknown_plugin(scenario: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario.write_text(SCENARIO.replace('agent = "assistant"', 'agent = "assistent"'))
    assert main(["validate", str(scenario)]) == 2
    line = one_line_error(capsys)
    assert "participants[1].agent" in line and "did you mean 'assistant'" in line


def test_missing_scenario_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read scenario" in one_line_error(capsys)


def test_run_show_and_existing_dir(scenario: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["run", str(scenario), "--out", str(out), "--no-progress"]) == 0
    assert "4 conversations" in capsys.readouterr().out
    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    for needle in ("4 conversations", "user", "assistant", "stop reasons: max_turns: 4",
                   "cache hit rate", "length.words"):
        assert needle in shown
    assert main(["show", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["conversations"] == 4
    assert main(["run", str(scenario), "--out", str(out)]) == 2
    assert "--overwrite" in one_line_error(capsys)
    assert main(["run", str(scenario), "--out", str(out), "--overwrite", "--no-progress",
                 "--conversations", "2", "--seed", "9"]) == 0
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["conversations"] == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["scenario"]["run"]["seed"] == 9
    assert manifest["scenario_file"] == str(scenario)


def test_run_killed_before_its_manifest_can_run_again(scenario: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / ".manifest.json.tmp").write_text('{"format": ')  # the killed run's leftover
    assert main(["run", str(scenario), "--out", str(out), "--no-progress"]) == 0
    assert "4 conversations" in capsys.readouterr().out
    assert not (out / ".manifest.json.tmp").exists()


def test_show_and_resume_need_a_run_dir(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", str(tmp_path)]) == 2
    assert "not a turnloom run directory" in one_line_error(capsys)
    assert main(["resume", str(tmp_path / "nope")]) == 2
    assert "not a directory" in one_line_error(capsys)


def test_bad_arguments_exit_2(scenario: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", str(scenario), "--conversations", "0"])
    assert info.value.code == 2


def test_plugins_lists_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "turnloom.builtin.agents" in out and "register_agents" in out
    assert "backends: openai, scripted, sglang, sglang-engine, transformers" in out
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= {"turnloom.builtin.scorers"}


class Broken(ScriptedBackend):
    async def start(self) -> None:
        raise RuntimeError("the GPU caught fire")


class BrokenPlugin:
    @hookimpl
    def register_backends(self, register: Any) -> None:
        register("broken", lambda settings: Broken())


def test_run_failure_exits_1(scenario: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    real = turnloom.plugins.get_plugin_manager

    def with_broken(*args: Any, **kwargs: Any) -> Any:
        pm = real(*args, **kwargs)
        pm.register(BrokenPlugin())
        return pm

    monkeypatch.setattr(turnloom.plugins, "get_plugin_manager", with_broken)
    scenario.write_text(SCENARIO.replace('type = "scripted"', 'type = "broken"'))
    assert main(["run", str(scenario), "--out", str(tmp_path / "run"), "--no-progress"]) == 1
    line = one_line_error(capsys)
    assert line == "turnloom: run failed: RuntimeError: the GPU caught fire"


def test_progress_lines_when_not_a_tty(scenario: Path, tmp_path: Path) -> None:
    env = {**os.environ, "TURNLOOM_DISABLE_PLUGIN_AUTOLOAD": "1",
           "TURNLOOM_PROGRESS_INTERVAL": "0"}
    done = subprocess.run([sys.executable, "-m", "turnloom.cli", "run", str(scenario), "--out",
                           str(tmp_path / "run")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [x for x in done.stderr.splitlines() if x.startswith("turnloom: ")]
    assert lines, done.stderr
    assert "\r" not in done.stderr  # no bar redraws
    assert lines[-1].startswith("turnloom: 4/4 conversations,")
    assert "turns/s" in lines[-1] and "tok/s" in lines[-1] and "0 failed" in lines[-1]
