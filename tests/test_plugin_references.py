"""First-party components check the participant names in their settings when they are
built (`turnloom validate` as a run): a name that is not one of the scenario's
participants fails at the setting's line, instead of scoring nothing or failing late."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from turnloom.config import ScenarioError, load_scenario
from turnloom.plugins import Registry, get_plugin_manager
from turnloom.runtime import build_all

FIRST_PARTY = "example,roleplay,scorers,socratic,tau,usp"

HEAD = """\
[run]
name = "refs"
conversations = 1
max_turns = 4
seed = 1

[backends.sim]
type = "scripted"
lines = ["Hello?", "Hi."]
"""


def participant(name: str, agent: str, extra: str = "") -> str:
    return f'\n[[participants]]\nname = "{name}"\nagent = "{agent}"\n{extra}'


def component(table: str, kind: str, settings: str) -> str:
    key = "judge" if table == "judges" else "name"
    name = '\nname = "j"' if table == "judges" else ""
    return f'\n[[{table}]]{name}\n{key} = "{kind}"\n{settings}\n'


USER = participant("user", "scripted-user", 'settings.lines = ["Hello?"]\n')
ASSISTANT = participant("assistant", "assistant")
CHAT = USER + ASSISTANT  # participants: user, assistant
ROLEPLAY = participant("questioner", "persona-questioner") + participant("persona", "assistant")
SOCRATIC = (participant("student", "socratic-student") + participant("verifier",
            "socratic-keyword-verifier") + participant("tutor", "socratic-tutor"))
TAU = (participant("customer", "tau-customer") + participant("agent", "tau-agent")
       + participant("shop", "tau-shop") + '\n[turns]\norder = ["customer", "agent"]\n')
IFEVAL = 'settings.instructions = [{ type = "punctuation:no_comma" }]\n'


@dataclass(frozen=True)
class Case:
    id: str
    where: str  # the component's table, e.g. "scorers[0]"
    component: str  # the registered name the error names
    setting: str
    good: str
    bad: str
    body: str  # participants and components; "{name}" is the setting's value
    names: str  # the scenario's participants, as the error lists them

    def text(self, value: str) -> str:
        return HEAD + self.body.replace("{name}", value)


def scorer(kind: str, setting: str = "participant", extra: str = "") -> str:
    return component("scorers", kind, f'{extra}settings.{setting} = "{{name}}"')


def judge(kind: str, setting: str = "participant", extra: str = "") -> str:
    return component("judges", kind, f'{extra}settings.{setting} = "{{name}}"')


CASES = [
    # turnloom-example
    Case("example-question-rate", "scorers[0]", "question-rate", "participant", "assistant",
         "asistant", CHAT + scorer("question-rate"), "user, assistant"),
    # turnloom-roleplay
    Case("roleplay-questioner", "participants[0]", "persona-questioner", "persona", "persona",
         "persnoa", participant("questioner", "persona-questioner",
                                'settings = { persona = "{name}", questions = 2 }\n')
         + participant("persona", "assistant"), "questioner, persona"),
    Case("roleplay-identity-judge", "judges[0]", "persona-identity", "persona", "persona",
         "persnoa", ROLEPLAY + judge("persona-identity", "persona"), "questioner, persona"),
    Case("roleplay-knowledge-judge", "judges[0]", "persona-knowledge", "questioner",
         "questioner", "quizzer", ROLEPLAY + judge("persona-knowledge", "questioner"),
         "questioner, persona"),
    Case("roleplay-rejection-judge", "judges[0]", "persona-rejection", "persona", "persona",
         "Persona", ROLEPLAY + judge("persona-rejection", "persona"), "questioner, persona"),
    # turnloom-scorers
    Case("scorers-ifeval", "scorers[0]", "ifeval", "participant", "assistant", "asistant",
         CHAT + scorer("ifeval", extra=IFEVAL), "user, assistant"),
    Case("scorers-multi-if", "scorers[0]", "multi-if", "participant", "assistant", "asistant",
         CHAT + scorer("multi-if"), "user, assistant"),
    Case("scorers-sysbench", "scorers[0]", "sysbench", "participant", "assistant", "asistant",
         CHAT + scorer("sysbench"), "user, assistant"),
    Case("scorers-diversity", "scorers[0]", "diversity", "participant", "user", "usr",
         CHAT + scorer("diversity"), "user, assistant"),
    Case("scorers-sysbench-judge", "judges[0]", "sysbench", "participant", "assistant",
         "asistant", CHAT + judge("sysbench"), "user, assistant"),
    Case("scorers-single-score", "judges[0]", "single-score", "participant", "assistant",
         "asistant", CHAT + judge("single-score"), "user, assistant"),
    Case("scorers-pairwise", "judges[0]", "pairwise", "b", "assistant", "asistant",
         CHAT + judge("pairwise", "b", extra='settings.a = "user"\n'), "user, assistant"),
    # turnloom-socratic
    Case("socratic-keyword-verifier", "participants[1]", "socratic-keyword-verifier", "student",
         "student", "stduent", participant("student", "socratic-student")
         + participant("verifier", "socratic-keyword-verifier", 'settings.student = "{name}"\n')
         + participant("tutor", "socratic-tutor"), "student, verifier, tutor"),
    Case("socratic-verifier", "participants[1]", "socratic-verifier", "tutor", "tutor", "tuttor",
         participant("student", "socratic-student")
         + participant("verifier", "socratic-verifier", 'settings.tutor = "{name}"\n')
         + participant("tutor", "socratic-tutor"), "student, verifier, tutor"),
    Case("socratic-tutor", "participants[2]", "socratic-tutor", "verifier", "verifier",
         "verfier", participant("student", "socratic-student")
         + participant("verifier", "socratic-keyword-verifier")
         + participant("tutor", "socratic-tutor", 'settings.verifier = "{name}"\n'),
         "student, verifier, tutor"),
    Case("socratic-student", "participants[0]", "socratic-student", "verifier", "verifier",
         "verfier", participant("student", "socratic-student", 'settings.verifier = "{name}"\n')
         + participant("verifier", "socratic-keyword-verifier")
         + participant("tutor", "socratic-tutor"), "student, verifier, tutor"),
    Case("socratic-tutor-turns", "scorers[0]", "socratic-tutor-turns", "tutor", "tutor",
         "tuttor", SOCRATIC + scorer("socratic-tutor-turns", "tutor"), "student, verifier, tutor"),
    Case("socratic-leakage", "scorers[0]", "socratic-leakage", "tutor", "tutor", "tuttor",
         SOCRATIC + scorer("socratic-leakage", "tutor"), "student, verifier, tutor"),
    Case("socratic-relevance", "judges[0]", "socratic-relevance", "verifier", "verifier",
         "verfier", SOCRATIC + judge("socratic-relevance", "verifier"),
         "student, verifier, tutor"),
    # turnloom-tau
    Case("tau-customer", "participants[0]", "tau-customer", "environment", "shop", "shopp",
         participant("customer", "tau-customer", 'settings = { environment = "{name}" }\n')
         + participant("agent", "tau-agent") + participant("shop", "tau-shop"),
         "customer, agent, shop"),
    Case("tau-reward", "scorers[0]", "tau-reward", "agent", "agent", "agnet",
         TAU + scorer("tau-reward", "agent"), "customer, agent, shop"),
    # turnloom-usp
    Case("usp-extract", "judges[0]", "usp-extract", "participant", "user", "usr",
         CHAT + judge("usp-extract"), "user, assistant"),
    Case("usp-consistency", "judges[0]", "usp-consistency", "participant", "user", "usr",
         CHAT + judge("usp-consistency", extra='settings.embedder = "tfidf"\n'),
         "user, assistant"),
    Case("usp-consistency-lexical", "judges[0]", "usp-consistency-lexical", "participant",
         "user", "usr", CHAT + judge("usp-consistency-lexical"), "user, assistant"),
    Case("usp-loops", "scorers[0]", "usp-loops", "participant", "user", "usr",
         CHAT + scorer("usp-loops"), "user, assistant"),
    Case("usp-faults", "scorers[0]", "usp-faults", "participant", "user", "usr",
         CHAT + scorer("usp-faults"), "user, assistant"),
]


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", raising=False)
        mp.setenv("TURNLOOM_PLUGINS", FIRST_PARTY)
        yield Registry.from_plugin_manager(get_plugin_manager())


def write(tmp_path: Path, text: str, name: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, needle: str) -> int:
    [line] = [i for i, row in enumerate(text.splitlines(), 1) if needle in row]
    return line


def validate(path: Path, registry: Registry) -> None:
    build_all(load_scenario(path, registry), registry)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_name_not_in_the_scenario_fails_validate_at_its_line(
        case: Case, tmp_path: Path, registry: Registry) -> None:
    text = case.text(case.bad)
    path = write(tmp_path, text, "bad.toml")
    with pytest.raises(ScenarioError) as info:
        validate(path, registry)
    line = line_of(text, f'"{case.bad}"')
    assert str(info.value) == (
        f"{path}:{line}: {case.where}.settings.{case.setting}: '{case.component}': "
        f"ValueError: {case.setting} '{case.bad}' is not a participant of this scenario "
        f"({case.names})")
    validate(write(tmp_path, case.text(case.good), "good.toml"), registry)


def test_every_first_party_component_that_names_participants_is_covered(
        registry: Registry) -> None:
    covered = {(c.where.split("[")[0], c.component) for c in CASES}
    for table, kind in (("participants", "agents"), ("participants", "environments"),
                        ("scorers", "scorers"), ("judges", "judges")):
        for name in registry.names(kind):
            if registry.owner(kind, name) not in FIRST_PARTY.split(","):
                continue
            factory = registry.get(kind, name)
            if hasattr(factory, "check_participants"):
                assert (table, name) in covered, (kind, name)


def test_a_default_name_missing_from_the_scenario_fails(tmp_path: Path,
                                                        registry: Registry) -> None:
    # ifeval scores `participant` (default "assistant"): no such participant, nothing scored.
    text = HEAD + USER + participant("bot", "assistant") + component("scorers", "ifeval", IFEVAL)
    with pytest.raises(ScenarioError, match=r"scorers\[0\]\.settings\.participant: 'ifeval': "
                       r"ValueError: participant 'assistant' is not a participant of this "
                       r"scenario \(user, bot\)"):
        validate(write(tmp_path, text, "s.toml"), registry)


@pytest.mark.parametrize("body", [
    # no participant: everyone's turns (question-rate, diversity) or the whole conversation
    CHAT + component("scorers", "question-rate", "")
    + component("scorers", "diversity", "") + component("judges", "single-score", ""),
    # no verifier in the scenario and none named: the tutor and the student still work
    participant("student", "socratic-student") + participant("tutor", "socratic-tutor"),
    # a tau customer with no tool environment named
    participant("customer", "tau-customer") + participant("agent", "assistant"),
], ids=["everyone", "no-verifier", "no-environment"])
def test_an_absent_optional_name_is_accepted(body: str, tmp_path: Path,
                                             registry: Registry) -> None:
    validate(write(tmp_path, HEAD + body, "s.toml"), registry)


def test_the_cli_validate_names_the_setting_and_its_line(tmp_path: Path) -> None:
    [case] = [c for c in CASES if c.id == "example-question-rate"]
    path = write(tmp_path, case.text(case.bad), "bad.toml")
    env = {k: v for k, v in os.environ.items() if k != "TURNLOOM_DISABLE_PLUGIN_AUTOLOAD"}
    env["TURNLOOM_PLUGINS"] = "example"
    done = subprocess.run([sys.executable, "-m", "turnloom", "validate", str(path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    line = line_of(case.text(case.bad), '"asistant"')
    assert done.stderr.strip() == (
        f"turnloom: error: {path}:{line}: scorers[0].settings.participant: 'question-rate': "
        "ValueError: participant 'asistant' is not a participant of this scenario "
        "(user, assistant)")
    good = write(tmp_path, case.text(case.good), "good.toml")
    done = subprocess.run([sys.executable, "-m", "turnloom", "validate", str(good)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{good}: ok" in done.stdout
