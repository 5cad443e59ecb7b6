"""The example plugin package (plugins/turnloom-example), installed as a user would."""

from __future__ import annotations

import importlib.metadata
import random

import pytest

import turnloom
from turnloom.agents import Environment, Reply
from turnloom.plugins import Registry, first_result_safely, get_plugin_manager
from turnloom.records import ConversationState, TurnRecord
from turnloom.scoring import Scorer

SETUP = "uv pip install -p .venv/bin/python -e plugins/turnloom-example (scripts/setup.sh does it)"


@pytest.fixture(scope="module")
def example():
    try:
        importlib.metadata.distribution("turnloom-example")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"turnloom-example is not installed; run: {SETUP}")
    import turnloom_example

    return turnloom_example


@pytest.fixture
def registry(example, monkeypatch):
    monkeypatch.delenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("TURNLOOM_PLUGINS", "example")
    pm = get_plugin_manager(default_plugins=())
    assert pm.get_plugin("example") is example
    return Registry.from_plugin_manager(pm)


def build(*messages: tuple[str, str], meta: dict | None = None) -> ConversationState:
    """A conversation with these (participant, text) messages already spoken."""
    conv = ConversationState("c0", index=0, seed=0)
    conv.meta.update(meta or {})
    for i, (participant, text) in enumerate(messages):
        role = "user" if participant == "user" else "assistant"
        conv.messages.append((participant, role, text))
        conv.turns.append(TurnRecord(conversation_id="c0", branch=0, turn=i,
                                     participant=participant, role=role, text=text, node=i))
    return conv


def test_entry_point_is_discovered(example, monkeypatch):
    for var in ("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", "TURNLOOM_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    pm = get_plugin_manager(default_plugins=())
    assert pm.get_plugin("example") is example
    [ep] = [ep for ep in importlib.metadata.distribution("turnloom-example").entry_points
            if ep.group == "turnloom"]
    assert (ep.name, ep.value) == ("example", "turnloom_example")


def test_registers_its_components(registry):
    assert registry.owner("scorers", "question-rate") == "example"
    assert registry.owner("environments", "countdown") == "example"
    assert registry.errors == []


def test_question_rate_scorer(registry):
    scorer = registry.get("scorers", "question-rate")({"participant": "user"})
    assert isinstance(scorer, Scorer)
    conv = build(("user", "Where is it?"), ("bot", "Here."), ("user", "Thanks."),
                 ("bot", "Anything else?"), ("user", "What now?"))
    assert [scorer.score_turn(conv, t) for t in conv.turns] == [
        {"asks_question": 1}, None, {"asks_question": 0}, None, {"asks_question": 1}]
    assert scorer.score_conversation(conv) == {"question_rate": pytest.approx(2 / 3)}
    assert scorer.score_conversation(build(("bot", "hi?"))) is None

    everyone = registry.get("scorers", "question-rate")({})
    assert everyone.score_conversation(conv) == {"question_rate": pytest.approx(3 / 5)}
    with pytest.raises(TypeError, match="participnt"):
        registry.get("scorers", "question-rate")({"participnt": "user"})


def test_countdown_environment(registry):
    env = registry.get("environments", "countdown")({"turns": 3})
    assert isinstance(env, Environment)
    replies: list[tuple[str, str | None]] = []
    for _ in range(3):
        conv = build(*[("clock", text) for text, _ in replies])
        reply = env.respond(conv, "clock", random.Random(0))
        assert isinstance(reply, Reply)
        replies.append((reply.text, reply.stop))
    assert replies == [("2", None), ("1", None), ("0", "countdown finished")]
    with pytest.raises(ValueError, match="'turns' must be a positive integer"):
        registry.get("environments", "countdown")({"turns": 0})


@pytest.mark.parametrize("text, meta, stop", [
    ("Goodbye!", {}, "goodbye"),
    ("ok, goodbye then", {}, "goodbye"),
    ("goodbyes are hard", {}, None),
    ("see you", {}, None),
    ("See you later.", {"goodbye_phrase": "see you later"}, "goodbye"),
    ("Goodbye!", {"goodbye_phrase": "see you later"}, None),
    ("Goodbye!", {"goodbye_phrase": None}, None),
])
def test_goodbye_stops_the_conversation(example, text, meta, stop):
    pm = get_plugin_manager(default_plugins=(), autoload=False)
    pm.register(example, name="example")
    try:
        conv = build(("user", "hi"), ("bot", text), meta=meta)
        errors: list[str] = []
        result = first_result_safely(pm, "should_stop", errors, conversation=conv,
                                     turn=conv.last)
    finally:
        pm.unregister(name="example")
    assert (result, errors) == (stop, [])


def test_scenario_with_the_example_plugin_runs_end_to_end(example, tmp_path, monkeypatch):
    monkeypatch.delenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("TURNLOOM_PLUGINS", "example")  # no other third-party plugin
    scenario = turnloom.Scenario.from_dict({
        "run": {"name": "example", "conversations": 16, "max_turns": 20, "seed": 5},
        "backends": {"sim": {"type": "scripted",
                             "lines": ["What is left?", "Fine, carry on.", "Goodbye!"]}},
        "participants": [
            {"name": "clock", "agent": "countdown", "settings": {"turns": 3}},
            {"name": "bot", "agent": "assistant"},
        ],
        "scorers": [{"name": "question-rate", "settings": {"participant": "bot"}}],
    })
    records = turnloom.run(scenario, out=tmp_path / "run", progress=False).conversations()

    assert len(records) == 16
    reasons = set()
    for record in records:
        assert record["errors"] == []
        spoken = [(m["name"], m["content"]) for m in record["messages"] if m["role"] != "system"]
        reasons.add(record["stop_reason"])
        if record["stop_reason"] == "countdown finished":
            assert [text for name, text in spoken if name == "clock"] == ["2", "1", "0"]
            assert spoken[-1] == ("clock", "0")
        else:
            assert record["stop_reason"] == "goodbye"
            assert spoken[-1] == ("bot", "Goodbye!")
        bot = [text for name, text in spoken if name == "bot"]
        rate = record["scores"]["question-rate"]["question_rate"]
        assert rate == pytest.approx(sum("?" in text for text in bot) / len(bot))
        for (name, text), turn in zip(spoken, record["turns"]):
            expected = {"asks_question": int("?" in text)} if name == "bot" else None
            assert turn["scores"].get("question-rate") == expected
    assert reasons == {"countdown finished", "goodbye"}  # both ways of ending were taken
