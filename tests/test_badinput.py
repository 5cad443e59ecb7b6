"""A catalogue of bad inputs, each a real scenario file on disk.

Scenario mistakes must fail before anything is written, with one message that
names the place (``FILE:LINE: field.path: ...``); the CLI exits 2 with that
line and leaves no run directory. Misbehaving plugins and hostile content must
not stop a run: the conversation that hit them ends with an error naming the
plugin and hook, every conversation is still exported, and no half-written
file is left behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

import turnloom
from turnloom import hookimpl
from turnloom.agents import Reply
from turnloom.config import ScenarioError, load_scenario
from turnloom.plugins import Registry, get_plugin_manager

BASE = """\
[run]
name = "bad"
conversations = 3
max_turns = 4
seed = 1

[backends.sim]
type = "scripted"
lines = ["Sure.", "Tell me more."]

[[participants]]
name = "user"
agent = "user-simulator"
system_prompt = "You are {profile.name}."
sampler = "inline"
sampler_settings.profiles = [{ name = "Ada" }]

[[participants]]
name = "assistant"
agent = "assistant"

[participants.sampling]
max_new_tokens = 32
temperature = 0.7
top_p = 0.9

[[scorers]]
name = "length"
"""


@dataclass(frozen=True)
class Bad:
    """`old` in BASE becomes `new`; the error must point at the line holding
    `at` (None: no line, e.g. a missing table) and contain `says`."""

    id: str
    old: str
    new: str
    at: str | None
    says: str


SCENARIO_CASES = [
    Bad("typo-run-key", "conversations = 3", "conversatons = 3", "conversatons",
        "run.conversatons: unknown field 'conversatons'; did you mean 'conversations'?"),
    Bad("typo-participant-key", 'system_prompt = "You', 'sytem_prompt = "You', "sytem_prompt",
        "did you mean 'system_prompt'?"),
    Bad("typo-sampling-key", "temperature = 0.7", "temprature = 0.7", "temprature",
        "participants[1].sampling.temprature: unknown field"),
    Bad("unknown-top-level-table", '[[scorers]]', '[runn]\nseed = 2\n\n[[scorers]]', "[runn]",
        "runn"),
    Bad("conversations-not-int", "conversations = 3", 'conversations = "three"',
        "conversations =", "run.conversations: expected int, got str"),
    Bad("max-turns-float", "max_turns = 4", "max_turns = 2.5", "max_turns",
        "run.max_turns: expected int, got float"),
    Bad("zero-conversations", "conversations = 3", "conversations = 0", "conversations",
        "run.conversations: expected int >= 1"),
    Bad("negative-max-active", "seed = 1", "seed = 1\nmax_active = -5", "max_active",
        "run.max_active: expected int >= 1"),
    Bad("negative-temperature", "temperature = 0.7", "temperature = -1.0", "temperature",
        "participants[1].sampling.temperature: expected float >= 0.0"),
    Bad("top-p-above-one", "top_p = 0.9", "top_p = 1.5", "top_p",
        "participants[1].sampling.top_p: expected float <= 1.0"),
    Bad("top-p-zero", "top_p = 0.9", "top_p = 0.0", "top_p",
        "participants[1].sampling.top_p: expected float > 0.0"),
    Bad("zero-max-new-tokens", "max_new_tokens = 32", "max_new_tokens = 0", "max_new_tokens",
        "participants[1].sampling.max_new_tokens: expected int >= 1"),
    Bad("negative-repetition-penalty", "top_p = 0.9", "top_p = 0.9\nrepetition_penalty = -1.0",
        "repetition_penalty", "sampling.repetition_penalty: expected float > 0.0"),
    Bad("sampling-seed-set", "top_p = 0.9", "top_p = 0.9\nseed = 5", "seed = 5", "seed"),
    Bad("unknown-agent", 'agent = "assistant"', 'agent = "assistent"', "assistent",
        "unknown agent 'assistent'; did you mean 'assistant'?"),
    Bad("unknown-backend-type", 'type = "scripted"', 'type = "scriptd"', "scriptd",
        "backends.sim.type: unknown backend type 'scriptd'; did you mean 'scripted'?"),
    Bad("unknown-scorer", 'name = "length"', 'name = "lenght"', "lenght",
        "scorers[0].name: unknown scorer 'lenght'; did you mean 'length'?"),
    Bad("unknown-sampler", 'sampler = "inline"', 'sampler = "inlin"', "inlin",
        "participants[0].sampler: unknown sampler 'inlin'"),
    Bad("unknown-exporter", "[[scorers]]", '[[exporters]]\nname = "parquet-nope"\n\n[[scorers]]',
        "parquet-nope", "exporters[0].name: unknown exporter 'parquet-nope'"),
    Bad("unknown-backend-reference", 'agent = "assistant"\n',
        'agent = "assistant"\nbackend = "gpu"\n', '"gpu"',
        "participants[1].backend: unknown backend 'gpu' (available: sim)"),
    Bad("missing-participant-name", '[[participants]]\nname = "assistant"\n',
        "[[participants]]  # the assistant\n", "# the assistant",
        "participants[1].name: required field is missing"),
    Bad("missing-participants", "[[participants]]", "[[persons]]", "[[persons]]", "persons"),
    Bad("duplicate-participant", 'name = "assistant"', 'name = "user"  # again', "# again",
        "duplicate participant name 'user'"),
    Bad("toml-syntax", "max_turns = 4", "max_turns = = 4", "max_turns", "invalid TOML"),
    Bad("empty-backend-lines", 'lines = ["Sure.", "Tell me more."]', "lines = []", "[backends.sim]",
        "backend 'scripted' rejected its settings: BackendError: scripted backend: "
        "`lines` must not be empty"),
    Bad("empty-profiles", 'sampler_settings.profiles = [{ name = "Ada" }]',
        "sampler_settings.profiles = []", "sampler_settings",
        "sampler 'inline' rejected its settings"),
    Bad("profile-weights-mismatch", 'sampler_settings.profiles = [{ name = "Ada" }]',
        'sampler_settings.profiles = [{ name = "Ada" }]\nsampler_settings.weights = [1, 2]',
        "sampler_settings.profiles", "one weight per profile is needed"),
    Bad("empty-user-lines", 'agent = "user-simulator"\nsystem_prompt = "You are {profile.name}."\n'
        'sampler = "inline"\nsampler_settings.profiles = [{ name = "Ada" }]',
        'agent = "scripted-user"\nsettings.lines = []', "settings.lines",
        "`lines` must not be empty"),
    Bad("stop-phrases-not-a-list", "[[scorers]]", '[stop]\nphrases = "bye"\n\n[[scorers]]',
        "phrases", "stop.phrases: expected array, got str"),
    Bad("opener-unknown", "[[scorers]]", '[turns]\nopener = "nobody"\n\n[[scorers]]', "opener",
        "turns.opener: unknown participant 'nobody'"),
    Bad("branch-beyond-max-turns", "[[scorers]]", "[[branches]]\nat_turn = 9\nn = 2\n\n[[scorers]]",
        "at_turn", "at_turn"),
    Bad("scorer-bad-settings", 'name = "length"', 'name = "length"\nsettings.bogus = 1', "bogus",
        "scorer 'length' rejected its settings"),
    Bad("backend-bad-setting", 'type = "scripted"\nlines = ["Sure.", "Tell me more."]',
        'type = "sglang"\nurls = ["http://127.0.0.1:9"]\ntimout = 3', "[backends.sim]",
        "unknown field `timout`"),
    Bad("backend-bad-url", 'type = "scripted"\nlines = ["Sure.", "Tell me more."]',
        'type = "sglang"\nurls = ["ftp://x"]', "[backends.sim]", "not an http(s) URL"),
]

# Scenario cases also run through the CLI as subprocesses (a representative subset).
CLI_CASES = {"typo-run-key", "negative-temperature", "unknown-agent", "toml-syntax",
             "empty-backend-lines", "duplicate-participant"}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_plugin_manager(get_plugin_manager(autoload=False))


def write_case(case: Bad, directory: Path) -> tuple[Path, int | None]:
    assert case.old in BASE, case.id
    text = BASE.replace(case.old, case.new, 1)
    path = directory / f"{case.id}.toml"
    path.write_text(text, encoding="utf-8")
    line = None
    if case.at is not None:
        line = next(i for i, row in enumerate(text.splitlines(), 1) if case.at in row)
    return path, line


def env() -> dict[str, str]:
    return {**os.environ, "TURNLOOM_DISABLE_PLUGIN_AUTOLOAD": "1"}


@pytest.mark.parametrize("case", SCENARIO_CASES, ids=lambda c: c.id)
def test_bad_scenario_names_file_line_and_field(case: Bad, tmp_path: Path) -> None:
    path, line = write_case(case, tmp_path)
    out = tmp_path / "run"
    # Some mistakes are found by the loader, others when the run builds its
    # plugins from the settings: both before anything is written.
    with pytest.raises(ScenarioError) as info:
        turnloom.run(path, out=out, progress=False,
                     plugin_manager=get_plugin_manager(autoload=False))
    assert not out.exists(), "nothing is written for a scenario that does not load"
    message = str(info.value)
    assert "\n" not in message
    place = f"{path}:{line}:" if line is not None else f"{path}:"
    assert message.startswith(place), message
    assert case.says in message, message
    if case.id in CLI_CASES:
        done = subprocess.run([sys.executable, "-m", "turnloom", "run", str(path), "--out",
                               str(out), "--no-progress"], env=env(), capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2
        assert done.stderr == f"turnloom: error: {message}\n"
        assert not out.exists(), "nothing is written for a scenario that does not load"


def test_catalogue_is_large_enough() -> None:
    assert len(SCENARIO_CASES) + len(RUNTIME_CASES) + len(FILE_CASES) >= 30


# -- bytes that are not a scenario ------------------------------------------------------


@dataclass(frozen=True)
class BadFile:
    id: str
    data: bytes
    says: str


FILE_CASES = [
    BadFile("missing-file", b"", "No such file"),
    BadFile("binary-garbage", b"\x00\x01\x02\x03[run", "invalid TOML"),
    BadFile("empty-file", b"\n", "participants: required field is missing"),
]


@pytest.mark.parametrize("case", FILE_CASES, ids=lambda c: c.id)
def test_bad_file_is_a_scenario_error_naming_it(case: BadFile, tmp_path: Path,
                                                registry: Registry) -> None:
    path = tmp_path / f"{case.id}.toml"
    if case.id != "missing-file":
        path.write_bytes(case.data)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, registry)
    assert str(info.value).startswith(str(path)) and case.says in str(info.value)
    done = subprocess.run([sys.executable, "-m", "turnloom", "validate", str(path)], env=env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith(f"turnloom: error: {path}")


def test_non_utf8_scenario_names_file_and_line(tmp_path: Path, registry: Registry) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(BASE.replace('name = "bad"', 'name = "caf\xe9"').encode("latin-1"))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, registry)
    assert str(info.value).startswith(f"{path}:2:") and "UTF-8" in str(info.value)


def test_missing_model_fails_before_the_run_directory_exists(tmp_path: Path) -> None:
    case = Bad("missing-model", 'type = "scripted"\nlines = ["Sure.", "Tell me more."]',
               'type = "transformers"\nmodel = "no-such-model"', "no-such-model",
               "no-such-model")
    path, line = write_case(case, tmp_path)
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "turnloom", "run", str(path), "--out", str(out),
                           "--no-progress"], env=env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2
    assert done.stderr.startswith(f"turnloom: error: {path}:{line}:")
    assert not out.exists()


# -- misbehaving plugins and hostile content: the run completes -------------------------


class HookRaiser:
    """Raises in one lifecycle hook, for conversation 1 only."""

    def __init__(self, hook: str) -> None:
        self.hook = hook

    def _maybe(self, hook: str, conversation: Any) -> None:
        if hook == self.hook and conversation.index == 1:
            raise RuntimeError(f"broken {hook}")

    @hookimpl
    def on_conversation_start(self, conversation):  # type: ignore[no-untyped-def]
        self._maybe("on_conversation_start", conversation)

    @hookimpl
    def on_turn_end(self, conversation, turn):  # type: ignore[no-untyped-def]
        self._maybe("on_turn_end", conversation)

    @hookimpl
    def should_stop(self, conversation, turn):  # type: ignore[no-untyped-def]
        self._maybe("should_stop", conversation)
        return None

    @hookimpl
    def on_conversation_end(self, conversation):  # type: ignore[no-untyped-def]
        self._maybe("on_conversation_end", conversation)


class WrongStop:
    @hookimpl
    def should_stop(self, conversation, turn):  # type: ignore[no-untyped-def]
        return 42 if conversation.index == 1 else None


class Kinds:
    """Registers one misbehaving component of a kind under the name 'bad'."""

    def __init__(self, kind: str, factory: Any) -> None:
        self.kind, self.factory = kind, factory

    @hookimpl
    def register_scorers(self, register):  # type: ignore[no-untyped-def]
        if self.kind == "scorers":
            register("bad", self.factory)

    @hookimpl
    def register_samplers(self, register):  # type: ignore[no-untyped-def]
        if self.kind == "samplers":
            register("bad", self.factory)

    @hookimpl
    def register_agents(self, register):  # type: ignore[no-untyped-def]
        if self.kind == "agents":
            register("bad", self.factory)

    @hookimpl
    def register_exporters(self, register):  # type: ignore[no-untyped-def]
        if self.kind == "exporters":
            register("bad", self.factory)


class ListScorer:
    def __init__(self, settings: Any) -> None:
        pass

    def score_turn(self, conversation, turn):  # type: ignore[no-untyped-def]
        return [1, 2] if conversation.index == 1 else {"ok": 1}


class RaisingConversationScorer:
    def __init__(self, settings: Any) -> None:
        pass

    def score_conversation(self, conversation):  # type: ignore[no-untyped-def]
        if conversation.index == 1:
            raise ZeroDivisionError("no turns to average")
        return {"ok": 1}


class ListSampler:
    def __init__(self, settings: Any) -> None:
        pass

    def sample(self, rng, index):  # type: ignore[no-untyped-def]
        return ["not", "a", "dict"] if index == 1 else {"name": "Ada"}


class RaisingSampler:
    def __init__(self, settings: Any) -> None:
        pass

    def sample(self, rng, index):  # type: ignore[no-untyped-def]
        if index == 1:
            raise KeyError("profile store is empty")
        return {"name": "Ada"}


class NumberAgent:
    role = "assistant"

    def __init__(self, settings: Any) -> None:
        pass

    def system_prompt(self, conversation, me):  # type: ignore[no-untyped-def]
        return None

    def role_in_view(self, speaker, me):  # type: ignore[no-untyped-def]
        return "assistant" if speaker == me else "user"

    def on_output(self, conversation, me, text, finish_reason):  # type: ignore[no-untyped-def]
        return 42 if conversation.index == 1 else Reply(text)


class MidwayExporter:
    """Fails on its second record, leaving its temporary file to clean up."""

    def __init__(self, settings: Any) -> None:
        self.n = 0
        self.tmp: Path | None = None

    def open(self, run_dir: Path) -> None:
        self.tmp = run_dir / ".bad.jsonl.tmp"
        self.tmp.write_text("")

    def write(self, record: Any) -> None:
        self.n += 1
        if self.n == 2:
            raise ValueError("cannot serialise this record")

    def close(self) -> None:
        raise AssertionError("a disabled exporter is not closed")

    def abort(self) -> None:
        assert self.tmp is not None
        self.tmp.unlink()


class OpenFailExporter(MidwayExporter):
    def open(self, run_dir: Path) -> None:
        raise PermissionError(13, "Permission denied", str(run_dir / "bad.parquet"))


@dataclass(frozen=True)
class Runtime:
    id: str
    plugin: Any
    says: str
    edit: dict[str, Any] | None = None  # applied to the scenario dict
    conversation_fails: bool = True  # conversation 1 ends with stop_reason "error"


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    for key in path:
        d = d[int(key)] if isinstance(d, list) else d[key]  # type: ignore[assignment]
    if isinstance(d, list):
        d[int(last)] = value
    else:
        d[last] = value


RUNTIME_CASES = [
    *[Runtime(f"hook-raises-{hook}", HookRaiser(hook),
              f"plugin 'bad' raised in {hook}: RuntimeError: broken {hook}",
              conversation_fails=hook != "on_conversation_end")
      for hook in ("on_conversation_start", "on_turn_end", "should_stop", "on_conversation_end")],
    Runtime("should-stop-wrong-type", WrongStop(),
            "plugin 'bad' returned int from should_stop"),
    Runtime("scorer-returns-list", Kinds("scorers", ListScorer),
            "scorer 'bad' failed on turn 0: ScoreError: scorer 'bad' returned list, expected a "
            "dict of metric -> number, or None",
            {"scorers": ["bad"]}, conversation_fails=False),
    Runtime("scorer-raises", Kinds("scorers", RaisingConversationScorer),
            "scorer 'bad' failed on the conversation: ZeroDivisionError",
            {"scorers": ["bad"]}, conversation_fails=False),
    Runtime("sampler-returns-list", Kinds("samplers", ListSampler),
            "sampler 'bad' of 'user' failed: TypeError: returned list, expected dict",
            {"participants.0.sampler": "bad"}),
    Runtime("sampler-raises", Kinds("samplers", RaisingSampler),
            "sampler 'bad' of 'user' failed: KeyError", {"participants.0.sampler": "bad"}),
    Runtime("agent-returns-int", Kinds("agents", NumberAgent),
            "agent 'bad' of 'assistant' failed in on_output",
            {"participants.1.agent": "bad"}),
    Runtime("exporter-fails-midway", Kinds("exporters", MidwayExporter),
            "exporter 'bad' raised in write: ValueError", {"exporters": ["openai-jsonl", "bad"]},
            conversation_fails=False),
    Runtime("exporter-fails-to-open", Kinds("exporters", OpenFailExporter),
            "exporter 'bad' raised in open: PermissionError",
            {"exporters": ["openai-jsonl", "bad"]}, conversation_fails=False),
]


@pytest.mark.parametrize("case", RUNTIME_CASES, ids=lambda c: c.id)
def test_misbehaving_plugin_is_named_and_the_run_completes(case: Runtime,
                                                           tmp_path: Path) -> None:
    pm = get_plugin_manager(autoload=False)
    pm.register(case.plugin, name="bad")
    registry = Registry.from_plugin_manager(pm)
    data = base_dict(tmp_path)
    for key, value in (case.edit or {}).items():
        _set(data, key, value)
    scenario = turnloom.Scenario.from_dict(data).validate(registry)
    result = turnloom.run(scenario, out=tmp_path / "run", progress=False, plugin_manager=pm)
    recs = result.conversations()
    assert [r["index"] for r in recs] == [0, 1, 2], "every conversation is exported"
    errors = [e for r in recs for e in r["errors"]] + result.summary.get("plugin_errors", [])
    assert any(case.says in e for e in errors), errors
    assert (recs[1]["stop_reason"] == "error") == case.conversation_fails
    assert recs[0]["stop_reason"] != "error" and not recs[0]["errors"]
    leftovers = [p.name for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
    assert not leftovers


def base_dict(tmp_path: Path) -> dict[str, Any]:
    """BASE loaded from a file, as plain builtins (lists, not tuples) to edit."""
    path = tmp_path / "base.toml"
    path.write_text(BASE)
    data = load_scenario(path).to_dict()
    return msgspec.json.decode(msgspec.json.encode(data))


def run_with_agent(tmp_path: Path, agent: type) -> turnloom.RunResult:
    pm = get_plugin_manager(autoload=False)
    pm.register(Kinds("agents", agent), name="bad")
    data = base_dict(tmp_path)
    data["participants"][1]["agent"] = "bad"
    data["participants"][1]["system_prompt"] = None
    return turnloom.run(turnloom.Scenario.from_dict(data), out=tmp_path / "run", progress=False,
                        plugin_manager=pm)


class HugeAgent(NumberAgent):
    def on_output(self, conversation, me, text, finish_reason):  # type: ignore[no-untyped-def]
        return Reply("x" * 1_000_000 if conversation.index == 2 else text)


def test_huge_message_is_carried_and_exported(tmp_path: Path) -> None:
    result = run_with_agent(tmp_path, HugeAgent)
    recs = result.conversations()
    assert [r["stop_reason"] for r in recs] == ["max_turns"] * 3
    assert recs[2]["messages"][1]["content"] == "x" * 1_000_000
    # The user saw it in its view too: its next prompt held a million more tokens.
    assert recs[2]["turns"][2]["prompt_tokens"] > 1_000_000


class SurrogateAgent(NumberAgent):
    """Text that is not valid Unicode: a lone surrogate, as bytes decoded with
    errors="surrogateescape" give."""

    def on_output(self, conversation, me, text, finish_reason):  # type: ignore[no-untyped-def]
        return Reply("caf\udce9 au lait" if conversation.index == 1 else text)


def test_invalid_unicode_from_an_agent_fails_only_its_conversation(tmp_path: Path) -> None:
    result = run_with_agent(tmp_path, SurrogateAgent)
    recs = result.conversations()
    assert [r["stop_reason"] for r in recs] == ["max_turns", "error", "max_turns"]
    assert any("agent 'bad' of 'assistant'" in e and "surrogate" in e for e in recs[1]["errors"])
    result.conversations_path.read_bytes().decode("utf-8")


class DiskFullExporter(MidwayExporter):
    def write(self, record: Any) -> None:
        self.n += 1
        if self.n == 2:
            raise OSError(28, "No space left on device")


def test_a_full_disk_under_an_exporter_stops_the_run_and_resume_finishes(tmp_path: Path) -> None:
    pm = get_plugin_manager(autoload=False)
    pm.register(Kinds("exporters", DiskFullExporter), name="bad")
    data = base_dict(tmp_path)
    _set(data, "exporters", ["openai-jsonl", "bad"])
    scenario = turnloom.Scenario.from_dict(data)
    with pytest.raises(OSError, match="exporter 'bad' could not write"):
        turnloom.run(scenario, out=tmp_path / "run", progress=False, plugin_manager=pm)
    run_dir = tmp_path / "run"
    assert not (run_dir / "conversations.jsonl").exists()  # no dataset missing a record
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    plain = get_plugin_manager(autoload=False)
    plain.register(Kinds("exporters", MidwayExporter), name="bad")  # room on the disk again
    result = turnloom.resume(run_dir, progress=False, plugin_manager=plain)
    assert [r["index"] for r in result.conversations()] == [0, 1, 2]


@pytest.mark.parametrize(("backend", "warned"), [
    ({"type": "sglang", "settings": {"urls": ["http://127.0.0.1:9"]}}, True),
    ({"type": "sglang", "tokenizer": "bytes", "settings": {"urls": ["http://127.0.0.1:9"]}}, False),
    ({"type": "openai", "settings": {"base_url": "http://127.0.0.1:9/v1", "model": "m",
                                     "endpoint": "chat"}}, False),
    ({"type": "openai", "settings": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}}, True),
    ({"type": "scripted"}, False),
])
def test_byte_ids_to_a_model_server_are_flagged(backend, warned, caplog):
    """A model server reads prompt ids with its own vocabulary: a backend that sends ids
    as they are, with no `tokenizer`, gets a warning instead of silent garbage."""
    from turnloom.config import BackendSpec, ParticipantSpec, RunSettings, Scenario
    from turnloom.plugins import Registry, get_plugin_manager
    from turnloom.runtime import build_backends

    scenario = Scenario(
        run=RunSettings(name="ids", conversations=1, max_turns=2),
        backends={"served": BackendSpec(**backend)},
        participants=(ParticipantSpec(name="assistant", agent="assistant"),
                      ParticipantSpec(name="user", agent="echo")),
    )
    with caplog.at_level("WARNING", logger="turnloom.runtime"):
        build_backends(scenario, Registry.from_plugin_manager(get_plugin_manager()))
    flagged = [r for r in caplog.records if "names no `tokenizer`" in r.getMessage()]
    assert bool(flagged) is warned
    if warned:
        assert "'served'" in flagged[0].getMessage()
