"""Scenario files: decoding, defaults, and errors that name the file, line, field and fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import msgspec
import pytest

from turnloom import Scenario, ScenarioError, load_scenario
from turnloom.backends.base import SamplingParams
from turnloom.config import BranchSpec, ParticipantSpec, PluginSpec, RunSettings
from turnloom.plugins import Registry, get_plugin_manager

EXAMPLES = Path(__file__).parent.parent / "examples"

GOOD = """\
[run]
name = "t"
conversations = 3
max_turns = 4

[backends.sim]
type = "scripted"
latency_s = 0.0

[[participants]]
name = "user"
agent = "scripted-user"
settings = { lines = ["hi"] }

[[participants]]
name = "assistant"
agent = "assistant"
system_prompt = "Be brief."

[participants.sampling]
max_new_tokens = 16
temperature = 0.5

[[scorers]]
name = "length"
"""


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_plugin_manager(get_plugin_manager(autoload=False))


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str, registry: Registry | None = None) -> ScenarioError:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, registry)
    err = info.value
    assert "\n" not in str(err)
    assert err.file == str(path)
    return err


def line_of(text: str, needle: str, nth: int = 1) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return hits[nth - 1]


def test_good_scenario_decodes(tmp_path: Path, registry: Registry) -> None:
    s = load_scenario(write(tmp_path, GOOD), registry)
    assert s.run.conversations == 3 and s.run.max_turns == 4
    assert s.backends["sim"].type == "scripted"
    # Keys that are not engine settings go to the backend factory.
    assert s.backends["sim"].settings == {"latency_s": 0.0}
    assert s.participants[1].sampling == SamplingParams(max_new_tokens=16, temperature=0.5)
    assert s.participants[0].settings == {"lines": ["hi"]}
    assert s.scorers == (PluginSpec(name="length"),)
    assert s.exporters == (PluginSpec(name="openai-jsonl"),)
    assert s.turn_order() == [0, 1]
    assert s.backend_of(s.participants[1]) == "sim"


def test_round_trip_through_dict(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, GOOD))
    again = Scenario.from_dict(s.to_dict())
    assert again == s


def test_typo_names_field_line_and_suggestion(tmp_path: Path) -> None:
    text = GOOD.replace("temperature = 0.5", "temprature = 0.5")
    err = error_of(tmp_path, text)
    assert err.path == "participants[1].sampling.temprature"
    assert err.line == line_of(text, "temprature")
    assert "did you mean 'temperature'" in str(err)
    assert "max_new_tokens" in str(err)  # the allowed fields are listed
    assert str(err).startswith(f"{err.file}:{err.line}: participants[1].sampling.temprature:")


def test_typo_in_participant_table(tmp_path: Path) -> None:
    text = GOOD.replace('system_prompt = "Be brief."', 'sytem_prompt = "Be brief."')
    err = error_of(tmp_path, text)
    assert err.path == "participants[1].sytem_prompt"
    assert err.line == line_of(text, "sytem_prompt")
    assert "did you mean 'system_prompt'" in str(err)


def test_typo_in_run_table(tmp_path: Path) -> None:
    text = GOOD.replace("max_turns = 4", "max_turn = 4")
    err = error_of(tmp_path, text)
    assert (err.path, err.line) == ("run.max_turn", line_of(text, "max_turn"))
    assert "did you mean 'max_turns'" in str(err)


def test_unknown_top_level_table(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "\n[scorer]\nname = 'x'\n")
    assert err.path == "scorer"
    assert "did you mean 'scorers'" in str(err)


def test_wrong_type_names_field_and_line(tmp_path: Path) -> None:
    text = GOOD.replace("conversations = 3", 'conversations = "many"')
    err = error_of(tmp_path, text)
    assert err.path == "run.conversations"
    assert err.line == line_of(text, "conversations")
    assert "expected int" in str(err)


def test_out_of_range_value(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("max_turns = 4", "max_turns = 0"))
    assert err.path == "run.max_turns" and ">= 1" in str(err)


def test_wrong_type_in_backend_table_keeps_backend_name(tmp_path: Path) -> None:
    text = GOOD.replace('type = "scripted"', "type = 3")
    err = error_of(tmp_path, text)
    assert err.path == "backends.sim.type"
    assert err.line == line_of(text, "type = 3")


def test_missing_required_field(tmp_path: Path) -> None:
    text = GOOD.replace('agent = "assistant"\n', "")
    err = error_of(tmp_path, text)
    assert err.path == "participants[1].agent"
    assert "required" in str(err)
    assert err.line == line_of(text, "[[participants]]", 2)


def test_toml_syntax_error_has_line(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("max_turns = 4", "max_turns = = 4"))
    assert err.line == line_of(GOOD, "max_turns")
    assert "invalid TOML" in str(err)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read scenario"):
        load_scenario(tmp_path / "nope.toml")


def test_unknown_backend_reference(tmp_path: Path) -> None:
    text = GOOD.replace('agent = "assistant"', 'agent = "assistant"\nbackend = "smi"')
    err = error_of(tmp_path, text)
    assert err.path == "participants[1].backend"
    assert err.line == line_of(text, 'backend = "smi"')
    assert "did you mean 'sim'" in str(err) and "available: sim" in str(err)


def test_duplicate_participant_names(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace('name = "assistant"', 'name = "user"'))
    assert err.path == "participants[1].name" and "duplicate" in str(err)


def test_turn_order_names_must_exist(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + '\n[turns]\norder = ["user", "asistant"]\n')
    assert err.path == "turns.order[1]"
    assert "did you mean 'assistant'" in str(err)


def test_branch_beyond_max_turns(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "\n[[branches]]\nat_turn = 9\nn = 2\n")
    assert err.path == "branches[0].at_turn" and "never reached" in str(err)


def test_sampling_seed_is_rejected(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("temperature = 0.5", "seed = 5"))
    assert err.path == "participants[1].sampling.seed" and "run.seed" in str(err)


def test_unknown_agent_lists_available(tmp_path: Path, registry: Registry) -> None:
    text = GOOD.replace('agent = "assistant"', 'agent = "asistant"')
    err = error_of(tmp_path, text, registry)
    assert err.path == "participants[1].agent"
    assert err.line == line_of(text, "asistant")
    assert "did you mean 'assistant'" in str(err)
    assert "user-simulator" in str(err) and "scripted-user" in str(err)


def test_unknown_backend_type(tmp_path: Path, registry: Registry) -> None:
    err = error_of(tmp_path, GOOD.replace('type = "scripted"', 'type = "scriptd"'), registry)
    assert err.path == "backends.sim.type"
    assert "did you mean 'scripted'" in str(err) and "transformers" in str(err)


def test_unknown_scorer_and_sampler(tmp_path: Path, registry: Registry) -> None:
    err = error_of(tmp_path, GOOD.replace('name = "length"', 'name = "lenght"'), registry)
    assert err.path == "scorers[0].name" and "did you mean 'length'" in str(err)
    text = GOOD.replace('agent = "scripted-user"', 'agent = "scripted-user"\nsampler = "inlin"')
    err = error_of(tmp_path, text, registry)
    assert err.path == "participants[0].sampler" and "did you mean 'inline'" in str(err)


def test_environment_with_backend_is_an_error(tmp_path: Path, registry: Registry) -> None:
    text = GOOD.replace('agent = "scripted-user"', 'agent = "scripted-user"\nbackend = "sim"')
    err = error_of(tmp_path, text, registry)
    assert err.path == "participants[0].backend" and "environment" in str(err)


def test_agent_needs_a_backend(registry: Registry) -> None:
    s = Scenario(participants=(ParticipantSpec(name="a", agent="assistant"),))
    with pytest.raises(ScenarioError, match="needs a backend"):
        s.validate(registry)


def test_scorers_may_be_plain_names() -> None:
    s = Scenario.from_dict({"participants": [{"name": "e", "agent": "echo"}],
                            "scorers": ["length", "stop-reason"]})
    assert [x.name for x in s.scorers] == ["length", "stop-reason"]


def test_built_in_python_and_validated(registry: Registry) -> None:
    s = Scenario(run=RunSettings(conversations=2, max_turns=3),
                 participants=(ParticipantSpec(name="e", agent="echo"),
                               ParticipantSpec(name="u", agent="scripted-user",
                                               settings={"lines": ["x"]})),
                 branches=(BranchSpec(at_turn=1, n=2),))
    assert s.validate(registry) is s
    bad = msgspec.structs.replace(s, run=RunSettings(conversations="2"))  # type: ignore[arg-type]
    with pytest.raises(ScenarioError) as info:
        bad.validate()
    assert info.value.path == "run.conversations" and info.value.file is None


def test_with_run_overrides(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, GOOD))
    t = s.with_run(conversations=7, seed=None)
    assert t.run.conversations == 7 and t.run.seed == s.run.seed
    with pytest.raises(ScenarioError):
        s.with_run(conversations=0)


@pytest.fixture(scope="module")
def installed_registry() -> Registry:
    """Built-ins and the first-party plugin packages the set-up installs."""
    return Registry.from_plugin_manager(get_plugin_manager(strict=True))


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_examples_validate(path: Path, installed_registry: Registry) -> None:
    load_scenario(path, installed_registry)


def test_executor_settings() -> None:
    s = Scenario.from_dict({"run": {"executor": "ray"}, "executor": {"shards": 4},
                            "participants": [{"name": "u", "agent": "echo"}]})
    assert s.run.executor == "ray" and s.executor.shards == 4 and s.executor.max_retries == 3
    local = Scenario.from_dict({"run": {"executor": "processes"},
                                "participants": [{"name": "u", "agent": "echo"}]})
    # Unset, the shard count is the executor's own default (2 on Ray, one per CPU here).
    assert local.run.executor == "processes" and local.executor.shards is None
    with pytest.raises(ScenarioError, match="executor"):
        Scenario.from_dict({"run": {"executor": "slurm"},
                            "participants": [{"name": "u", "agent": "echo"}]})
