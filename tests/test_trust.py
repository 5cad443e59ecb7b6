"""Runs a user can trust: lifecycle hooks scoped to the scenario, loud mistakes (prompt
placeholders, component settings, scores, failed conversations, BOM files), the run's
error log, and `turnloom show` drawing a conversation."""

from __future__ import annotations

import io
import json
import math
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import turnloom
from turnloom import errorlog
from turnloom.agents import Reply
from turnloom.cli import EXIT_FAILURES, main
from turnloom.config import FailureBudget, Scenario, ScenarioError, load_scenario
from turnloom.plugins import Registry, get_plugin_manager
from turnloom.runtime import build_all
from turnloom.scoring import ScoreError, checked_score

SCENARIO = """\
[run]
name = "trust"
conversations = 4
max_turns = 6
seed = 3

[backends.sim]
type = "scripted"
lines = ["Hello there, how are you?", "Well, goodbye then.", "Tell me more about it."]

[[participants]]
name = "user"
agent = "user-simulator"
system_prompt = "You are {profile.name}."
sampler = "inline"
sampler_settings.profiles = [{ name = "Ada" }, { name = "Bo" }]

[[participants]]
name = "assistant"
agent = "assistant"
system_prompt = "Be brief."

[[scorers]]
name = "length"
"""


def write(tmp_path: Path, text: str = SCENARIO, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def run_cli(*argv: str) -> int:
    return main([*argv])


def records(run_dir: Path) -> list[dict[str, Any]]:
    with open(run_dir / "conversations.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def example_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load the installed first-party example plugin, and no other third-party one."""
    monkeypatch.setenv("TURNLOOM_PLUGINS", "example")
    monkeypatch.delenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", raising=False)


# -- lifecycle hooks apply only where the scenario asks for them --------------------------


def test_installed_goodbye_rule_does_not_touch_a_scenario_that_does_not_ask(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    example_only(monkeypatch)
    out = tmp_path / "run"
    assert run_cli("validate", str(write(tmp_path))) == 0
    assert "not applied: example (should_stop)" in capsys.readouterr().out
    assert run_cli("run", str(write(tmp_path)), "--out", str(out), "--no-progress") == 0
    recs = records(out)
    texts = [m["content"] for r in recs for m in r["messages"]]
    assert any("goodbye" in t for t in texts), "the scripted lines say goodbye"
    assert {r["stop_reason"] for r in recs} == {"max_turns"}
    assert all(len(r["turns"]) == 6 for r in recs)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hooks"] == {"applied": {}, "not_applied": {"example": ["should_stop"]}}
    capsys.readouterr()
    assert run_cli("show", str(out)) == 0
    shown = capsys.readouterr().out
    assert "lifecycle hooks: none applied" in shown
    assert "not applied: example (should_stop)" in shown


@pytest.mark.parametrize("asks", ['plugins = ["example"]\n', "[[scorers]]\nname = \"question-rate\"\n"])
def test_goodbye_rule_applies_where_the_scenario_asks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, asks: str) -> None:
    example_only(monkeypatch)
    # A top-level key must come before the first table.
    text = asks + SCENARIO if asks.startswith("plugins") else SCENARIO + asks
    out = tmp_path / "run"
    assert run_cli("run", str(write(tmp_path, text)), "--out", str(out), "--no-progress") == 0
    recs = records(out)
    assert "goodbye" in {r["stop_reason"] for r in recs}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hooks"]["applied"] == {"should_stop": ["example"]}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["hooks"]["applied"] == {"should_stop": ["example"]}


def test_unknown_plugin_in_plugins_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    example_only(monkeypatch)
    path = write(tmp_path, 'plugins = ["exmaple"]\n' + SCENARIO)
    assert run_cli("validate", str(path)) == 2
    err = capsys.readouterr().err
    assert f"{path}:1: plugins[0]: no plugin named 'exmaple'" in err
    assert "did you mean 'example'" in err


# -- placeholders -----------------------------------------------------------------------


def test_placeholder_typo_is_refused_at_validate_and_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, SCENARIO.replace('system_prompt = "You are {profile.name}."',
                                            'system_prompt = """You are a user.\n'
                                            'About you:\n{profle}"""'))
    for argv in (["validate", str(path)], ["run", str(path), "--out", str(tmp_path / "r")]):
        assert run_cli(*argv) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"turnloom: error: {path}:16: participants[0].system_prompt: unknown "
                       "placeholder {profle}; did you mean {profile}? (placeholders: {profile}, "
                       "{profile.FIELD})")
    assert not (tmp_path / "r").exists()


def test_placeholders_that_are_text_or_valid_pass(tmp_path: Path) -> None:
    text = SCENARIO.replace('"You are {profile.name}."',
                            '\'You are {profile.name}. Answer as JSON: {"ok": true}. {profile}\'')
    pm = get_plugin_manager(autoload=False)
    registry = Registry.from_plugin_manager(pm)
    assert build_all(load_scenario(write(tmp_path, text), registry), registry)["participants"] == 2


# -- validate builds every component -------------------------------------------------------


def test_validate_reports_a_factory_that_rejects_its_settings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, SCENARIO.replace('system_prompt = "Be brief."',
                                            'system_prompt = "Be brief."\nsettings.stripp = true'))
    assert run_cli("validate", str(path)) == 2
    err = capsys.readouterr().err
    assert f"{path}:22: participants[1].settings: 'assistant' rejected its settings" in err
    assert "stripp" in err


class Reference:
    """A scorer whose `participant` setting names a participant, checked against the
    scenario's names as the runtime offers them."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.participant = settings.get("participant", "user")

    def check_participants(self, names: tuple[str, ...]) -> None:
        if self.participant not in names:
            exc = ValueError(f"participant {self.participant!r} is not in the scenario "
                             f"(participants: {', '.join(names)})")
            exc.setting = "participant"  # type: ignore[attr-defined]
            raise exc

    def score_conversation(self, conversation: Any) -> dict[str, Any]:
        return {"turns": len(conversation.turns_of(self.participant))}


class ReferencePlugin:
    @turnloom.hookimpl
    def register_scorers(self, register: Any) -> None:
        register("reference", Reference)


def test_a_reference_to_a_missing_participant_fails_validate_and_run(tmp_path: Path) -> None:
    text = SCENARIO + '\n[[scorers]]\nname = "reference"\nsettings.participant = "usr"\n'
    path = write(tmp_path, text)
    pm = get_plugin_manager(autoload=False)
    pm.register(ReferencePlugin())
    registry = Registry.from_plugin_manager(pm)
    scenario = load_scenario(path, registry)
    with pytest.raises(ScenarioError) as info:
        build_all(scenario, registry)
    assert str(info.value).startswith(f"{path}:28: scorers[1].settings.participant: 'reference': "
                                      "ValueError: participant 'usr' is not in the scenario")
    with pytest.raises(ScenarioError, match="participant 'usr' is not in the scenario"):
        turnloom.run(scenario, out=tmp_path / "r", progress=False, plugin_manager=pm)
    good = load_scenario(write(tmp_path, text.replace('"usr"', '"user"'), "g.toml"), registry)
    result = turnloom.run(good, out=tmp_path / "g", progress=False, plugin_manager=pm)
    assert result.summary["scores"]["reference.turns"] == 3


# -- scores ---------------------------------------------------------------------------------


def test_checked_score_values() -> None:
    assert checked_score("s", {"a": np.float32(0.5), "b": np.int64(3), "c": np.bool_(True),
                               "d": None, "e": {"f": 1}}) == {
        "a": 0.5, "b": 3, "c": True, "d": None, "e": {"f": 1}}
    assert type(checked_score("s", {"a": np.float64(2.0)})["a"]) is float  # type: ignore[index]
    for bad, what in ((float("nan"), "is nan"), (math.inf, "is inf"), (-math.inf, "is -inf"),
                      (np.float64("nan"), "is nan"), ("yes", "is a str"), ({1, 2}, "is a set"),
                      ([1, 2], "is a list")):
        with pytest.raises(ScoreError, match=f"scorer 'judge-x': metric 'm' {what}"):
            checked_score("judge-x", {"m": bad})
    with pytest.raises(ScoreError, match="metric 'e.f' is nan"):
        checked_score("s", {"e": {"f": float("nan")}})
    with pytest.raises(ScoreError, match="returned list"):
        checked_score("s", [1])


class NaNScorer:
    def __init__(self, settings: dict[str, Any]) -> None:
        pass

    def score_turn(self, conversation: Any, turn: Any) -> dict[str, Any]:
        return {"ratio": float("nan") if turn.turn == 1 else np.float64(0.25)}

    def score_conversation(self, conversation: Any) -> dict[str, Any]:
        return {"label": "good", "n": np.int64(len(conversation.turns))}


class NaNPlugin:
    @turnloom.hookimpl
    def register_scorers(self, register: Any) -> None:
        register("nan-scorer", NaNScorer)


def test_nan_and_strings_are_refused_with_the_scorer_name(tmp_path: Path) -> None:
    pm = get_plugin_manager(autoload=False)
    pm.register(NaNPlugin())
    scenario = Scenario.from_toml(write(tmp_path, SCENARIO + '\n[[scorers]]\nname = "nan-scorer"\n'))
    result = turnloom.run(scenario, out=tmp_path / "r", progress=False, plugin_manager=pm)

    def no_constants(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    summary = json.loads((tmp_path / "r" / "summary.json").read_text(), parse_constant=no_constants)
    for line in (tmp_path / "r" / "scores.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=no_constants)
    rec = result.conversations()[0]
    assert rec["turns"][0]["scores"]["nan-scorer"] == {"ratio": 0.25}  # numpy accepted
    assert "nan-scorer" not in rec["turns"][1]["scores"]
    assert any("scorer 'nan-scorer' failed on turn 1" in e and "metric 'ratio' is nan" in e
               for e in rec["errors"])
    assert any("metric 'label' is a str" in e for e in rec["errors"])
    assert summary["scores"]["turn:nan-scorer.ratio"] == 0.25


# -- failed conversations -----------------------------------------------------------------


class Crashes:
    """An environment that crashes in odd-numbered conversations."""

    def __init__(self, settings: dict[str, Any]) -> None:
        pass

    def respond(self, conversation: Any, me: str, rng: Any) -> Any:
        if conversation.index % 2:
            raise RuntimeError("the environment fell over")
        return Reply("ok " * (1 + len(conversation.turns)))


class CrashPlugin:
    @turnloom.hookimpl
    def register_environments(self, register: Any) -> None:
        register("crashes", Crashes)


ENV_SCENARIO = SCENARIO.replace('agent = "assistant"\nsystem_prompt = "Be brief."',
                                'agent = "crashes"')


def test_failed_conversations_are_left_out_of_the_means(tmp_path: Path) -> None:
    pm = get_plugin_manager(autoload=False)
    pm.register(CrashPlugin())
    scenario = Scenario.from_toml(write(tmp_path, ENV_SCENARIO))
    result = turnloom.run(scenario, out=tmp_path / "r", progress=False, plugin_manager=pm)
    recs = result.conversations()
    ok = [r for r in recs if r["stop_reason"] != "error"]
    failed = [r for r in recs if r["stop_reason"] == "error"]
    assert len(ok) == 2 and len(failed) == 2
    s = result.summary
    assert s["failures"] == 2
    assert s["scores"]["length.turns"] == 6  # the finished ones only
    assert s["failed"]["conversations"] == 2 and s["failed"]["in_score_means"] is False
    assert s["failed"]["ids"] == [f"{r['conversation_id']}#0" for r in failed]
    assert s["failed"]["scores"]["length.turns"] == 1
    both = scenario.with_run(score_failed=True)
    s2 = turnloom.run(both, out=tmp_path / "r2", progress=False, plugin_manager=pm).summary
    assert s2["scores"]["length.turns"] == 3.5 and s2["failed"]["in_score_means"] is True


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


REFUSED = """\
[run]
name = "refused"
conversations = 8
max_turns = 4
max_retries = 0

[backends.api]
type = "openai"
model = "m"
base_url = "http://127.0.0.1:{port}/v1"
retries = 0
connect_timeout = 2.0

[[participants]]
name = "user"
agent = "user-simulator"

[[participants]]
name = "assistant"
agent = "assistant"

[[scorers]]
name = "length"
"""


def test_a_run_whose_conversations_all_fail_exits_non_zero(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    path = write(tmp_path, REFUSED.format(port=_closed_port()))
    out = tmp_path / "r"
    assert run_cli("run", str(path), "--out", str(out), "--no-progress") == EXIT_FAILURES
    captured = capsys.readouterr()
    assert "8 conversations, 0 turns, 8 failed" in captured.out
    assert "8 of 8 conversations failed, over the failure budget of 0" in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scores"] == {} and summary["failed"]["conversations"] == 8
    assert summary["failed"]["scores"]["length.turns"] == 0
    assert run_cli("run", str(path), "--out", str(out), "--overwrite", "--no-progress",
                   "--max-failures", "2%") == EXIT_FAILURES
    assert run_cli("run", str(path), "--out", str(out), "--overwrite", "--no-progress",
                   "--max-failures", "8") == 0
    assert run_cli("run", str(path), "--out", str(out), "--overwrite", "--no-progress",
                   "--max-failures", "100%") == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_cli("run", str(path), "--max-failures", "lots")
    assert info.value.code == 2
    assert "expected a count or a percentage" in capsys.readouterr().err


def test_failure_budget() -> None:
    assert FailureBudget.parse("2%").allowed(100) == 2
    assert FailureBudget.parse("2%").allowed(49) == 0
    assert FailureBudget.parse("12.5%").allowed(8) == 1
    assert FailureBudget.parse(3).allowed(1000) == 3
    assert FailureBudget.parse("3").exceeded(4, 10)
    for bad in ("-1", "101%", "x", True, -2):
        with pytest.raises(ValueError):
            FailureBudget.parse(bad)  # type: ignore[arg-type]


def test_max_failures_in_the_scenario(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r":6: run.max_failures: expected a count"):
        Scenario.from_toml(write(tmp_path, SCENARIO.replace("seed = 3", 'seed = 3\nmax_failures = "some"')))
    s = Scenario.from_toml(write(tmp_path, SCENARIO.replace("seed = 3", 'seed = 3\nmax_failures = "5%"')))
    assert str(FailureBudget.parse(s.run.max_failures)) == "5%"


# -- TOML with a byte-order mark --------------------------------------------------------------


def test_a_toml_file_with_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + SCENARIO.encode())
    assert Scenario.from_toml(path).run.name == "trust"
    path.write_bytes(b"\xef\xbb\xbf" + SCENARIO.replace("seed = 3", "sed = 3").encode())
    with pytest.raises(ScenarioError, match=r"bom.toml:5: run.sed: unknown field"):
        Scenario.from_toml(path)


# -- the error log -----------------------------------------------------------------------------


class BrokenHook:
    @turnloom.hookimpl
    def on_turn_end(self, conversation: Any, turn: Any) -> None:
        if turn.turn == 2:
            self.explode(turn)

    def explode(self, turn: Any) -> None:
        raise KeyError(f"no field for turn {turn.turn}")


def test_plugin_errors_go_to_the_error_log_with_tracebacks(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pm = get_plugin_manager(autoload=False)
    name = pm.register(BrokenHook())
    scenario = Scenario.from_toml(write(tmp_path, SCENARIO))
    out = tmp_path / "r"
    result = turnloom.run(scenario, out=out, progress=False, plugin_manager=pm)
    assert result.summary["failures"] == 4
    assert result.summary["error_log"] == {"file": "errors.log", "entries": 4}
    log = (out / "errors.log").read_text()
    assert log.count("Traceback (most recent call last):") == 4
    assert f"plugin {name!r} raised in on_turn_end: KeyError" in log
    assert f'File "{__file__}"' in log and "in explode" in log
    assert "raise KeyError(f\"no field for turn {turn.turn}\")" in log
    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert f"errors: 4, with tracebacks in {out / 'errors.log'}" in shown
    assert f"at {__file__}:" in shown and "in explode" in shown
    assert f"... and 1 more in {out / 'errors.log'}" in shown


def test_debug_raises_a_plugin_fault_at_once(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(errorlog.ENV_DEBUG, "1")
    pm = get_plugin_manager(autoload=False)
    pm.register(BrokenHook())
    scenario = Scenario.from_toml(write(tmp_path, SCENARIO))
    with pytest.raises(errorlog.PluginFault, match="raised in on_turn_end") as info:
        turnloom.run(scenario, out=tmp_path / "r", progress=False, plugin_manager=pm)
    assert isinstance(info.value.__cause__, KeyError)


# -- turnloom show --------------------------------------------------------------------------------


TOOL_RECORD = {
    "conversation_id": "trust-000009", "index": 9, "branch": 1, "seed": 1,
    "messages": [
        {"role": "system", "content": "You can look up the weather."},
        {"role": "user", "name": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "name": "assistant", "content": None, "tool_calls": [
            {"id": "call_ab12", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "name": "weather", "tool_call_id": "call_ab12",
         "content": "{\"temp_c\": 21}"},
        {"role": "assistant", "name": "assistant", "content": "It is 21 °C in Paris."},
    ],
    "participants": {"user": {"agent": "user-simulator", "role": "user",
                              "profile": {"name": "Ada"}}},
    "turns": [{"participant": "user", "role": "user", "seed": 1, "prompt_tokens": 1,
               "completion_tokens": 1, "finish_reason": "stop", "scores": {"length": {"words": 3}}},
              {"participant": "assistant", "role": "assistant", "seed": 2, "prompt_tokens": 1,
               "completion_tokens": 1, "finish_reason": "tool_calls", "scores": {}},
              {"participant": "weather", "role": "tool", "seed": None, "prompt_tokens": 0,
               "completion_tokens": 0, "finish_reason": "stop", "scores": {}},
              {"participant": "assistant", "role": "assistant", "seed": 3, "prompt_tokens": 1,
               "completion_tokens": 1, "finish_reason": "stop",
               "scores": {"length": {"words": 6}}}],
    "tokens": {}, "stop_reason": "max_turns", "scores": {"length": {"turns": 4}},
    "errors": [], "meta": {},
}


@pytest.fixture
def shown_run(tmp_path: Path) -> Path:
    out = tmp_path / "r"
    assert run_cli("run", str(write(tmp_path)), "--out", str(out), "--no-progress") == 0
    with open(out / "conversations.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(TOOL_RECORD) + "\n")
    return out


def test_show_prints_a_sample_conversation(shown_run: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["show", str(shown_run)]) == 0
    shown = capsys.readouterr().out
    first = records(shown_run)[0]
    assert f"conversation {first['conversation_id']} (index 0, branch 0)" in shown
    assert f"user's profile: name={first['participants']['user']['profile']['name']}" in shown
    assert "  user [user]:\n    " + first["messages"][1]["content"] in shown
    assert "    scores: length.words=" in shown
    assert "conversation scores: length.turns=6" in shown


def test_show_one_conversation_with_tool_calls(shown_run: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["show", str(shown_run), "--conversation", "9", "--branch", "1"]) == 0
    shown = capsys.readouterr().out
    assert ("  assistant [assistant]:\n"
            '    tool call get_weather({"city": "Paris"})  [call_ab12]\n\n'
            "  weather [tool] -> call_ab12:\n"
            '    {"temp_c": 21}\n\n'
            "  assistant [assistant]:\n"
            "    It is 21 °C in Paris.\n"
            "    scores: length.words=6") in shown
    assert main(["show", str(shown_run), "--conversation", "7"]) == 2
    assert "no conversation 7 branch 0" in capsys.readouterr().err


def test_show_in_a_terminal_uses_rich(shown_run: Path) -> None:
    from turnloom.show import show

    summary = json.loads((shown_run / "summary.json").read_text())
    buf = io.StringIO()
    show(shown_run, summary, 9, 1, file=buf, rich=True)
    text = buf.getvalue()
    assert "╭" in text  # panels
    assert "assistant · assistant" in text and "weather · tool → call_ab12" in text
    assert 'tool call get_weather({"city": "Paris"})' in text


def test_judges_may_label_but_not_give_nan() -> None:
    assert checked_score("pref", {"a": "concise", "keys": ["q1"], "wins": np.int64(1)},
                         labels=True) == {"a": "concise", "keys": ["q1"], "wins": 1}
    with pytest.raises(ScoreError, match="metric 'rating' is nan"):
        checked_score("pref", {"rating": float("nan")}, labels=True)
    with pytest.raises(ScoreError, match="metric 'keys' is a list"):
        checked_score("pref", {"keys": [1.0, "x"]}, labels=True)
