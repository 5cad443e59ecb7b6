"""The Socratic plugin in whole runs: scripted students, resume, judge, the SmolLM2 example."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

import turnloom
from turnloom.judging import JudgeCall, Unparseable
from turnloom.plugins import Registry, get_plugin_manager
from turnloom.records import ConversationState, TurnRecord
from turnloom.testing.crash import assert_same_outputs, kill_when
from turnloom.wal import TurnEvent, read_events
from turnloom_socratic.judge import QuestionRelevance

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "socratic.toml"
SETUP = "uv pip install -p .venv/bin/python -e plugins/turnloom-socratic (scripts/setup.sh does it)"


@pytest.fixture(autouse=True)
def only_this_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        importlib.metadata.distribution("turnloom-socratic")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"turnloom-socratic is not installed; run: {SETUP}")
    monkeypatch.delenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("TURNLOOM_PLUGINS", "socratic")


def scripted(script: list[dict], *, conversations: int = 4, problems: list[str] | None = None,
             bugs: list[int] | None = None, machine: dict | None = None,
             max_turns: int = 40, order: str = "by-index") -> turnloom.Scenario:
    sampler: dict = {"bugs": bugs or [1, 2, 3], "order": order}
    if problems:
        sampler["problems"] = problems
    return turnloom.Scenario.from_dict({
        "run": {"name": "socratic", "conversations": conversations, "max_turns": max_turns,
                "seed": 3},
        "backends": {"sim": {"type": "scripted",
                             "lines": ["What does your loop do?", "Which line changes it?"]}},
        "participants": [
            {"name": "student", "agent": "socratic-scripted-student",
             "sampler": "socratic-problems", "sampler_settings": sampler,
             "settings": {"script": script}},
            {"name": "verifier", "agent": "socratic-keyword-verifier",
             "settings": {"machine": machine or {"fix_after": 2, "max_tutor_turns": 8}}},
            {"name": "tutor", "agent": "socratic-tutor"},
        ],
        "scorers": ["socratic-bugs-fixed", "socratic-tutor-turns", "socratic-leakage"],
    })


def actions(record: dict) -> list[str]:
    return [t["meta"]["action"] for t in record["turns"] if t["participant"] == "verifier"]


def test_plugin_registers_its_components() -> None:
    pm = get_plugin_manager(default_plugins=())
    registry = Registry.from_plugin_manager(pm)
    assert registry.errors == []
    for kind, name in [("agents", "socratic-tutor"), ("agents", "socratic-student"),
                       ("agents", "socratic-verifier"),
                       ("environments", "socratic-keyword-verifier"),
                       ("environments", "socratic-scripted-student"),
                       ("samplers", "socratic-problems"), ("scorers", "socratic-bugs-fixed"),
                       ("scorers", "socratic-tutor-turns"), ("scorers", "socratic-leakage"),
                       ("judges", "socratic-relevance")]:
        assert registry.owner(kind, name) == "socratic", (kind, name)


def test_scripted_student_fixes_every_bug(tmp_path: Path) -> None:
    script = [{"answer": "wrong"}, {"answer": "correct"}, {"answer": "correct"},
              {"fix": "target"}, {"answer": "correct"}, {"fix": "all"}]
    records = turnloom.run(scripted(script, problems=["sum_evens"], bugs=[2]),
                           out=tmp_path / "run", progress=False).conversations()
    for r in records:
        assert r["errors"] == [] and r["stop_reason"] == "bugs_fixed"
        assert actions(r) == ["question", "sibling", "child", "request_fix", "question",
                              "child", "stop"]
        speakers = [m["name"] for m in r["messages"] if "name" in m]
        assert speakers[:6] == ["student", "verifier", "tutor"] * 2
        s = r["scores"]
        assert s["socratic-bugs-fixed"]["bugs_fixed"] == 2
        assert s["socratic-bugs-fixed"]["fraction_fixed"] == 1.0
        assert s["socratic-tutor-turns"]["tutor_turns"] == 6
        assert s["socratic-leakage"]["leaked"] == 0
        assert r["meta"]["socratic"]["stopped"] == "bugs_fixed"


def test_explanation_and_turn_budget_in_a_run(tmp_path: Path) -> None:
    script = [{"answer": "wrong"}] * 5
    records = turnloom.run(scripted(script, machine={"max_tutor_turns": 5}),
                           out=tmp_path / "run", progress=False).conversations()
    for r in records:
        assert actions(r) == ["question", "sibling", "sibling", "explain", "sibling", "stop"]
        assert r["stop_reason"] == "turn_budget"
        assert r["scores"]["socratic-bugs-fixed"]["fraction_fixed"] == 0.0
        assert r["scores"]["socratic-tutor-turns"]["tutor_turns"] == 5


def played(tmp_path: Path, name: str, conversations: int, order: str,
           problems: list[str] | None = None) -> list[tuple[int, str]]:
    recs = turnloom.run(scripted([], conversations=conversations, problems=problems,
                                 machine={"max_tutor_turns": 1}, max_turns=3, order=order),
                        out=tmp_path / name, progress=False).conversations()
    return [(r["participants"]["student"]["profile"]["n_bugs"],
             r["participants"]["student"]["profile"]["socratic_problem"]) for r in recs]


def test_random_problem_draws_are_seeded(tmp_path: Path) -> None:
    first = played(tmp_path, "a", 12, "random")
    assert first == played(tmp_path, "b", 12, "random")
    assert len(set(first)) > 6 and {n for n, _ in first} == {1, 2, 3}


def test_by_index_plays_each_problem_and_bug_count_once(tmp_path: Path) -> None:
    # 3 problems x 3 bug counts = 9 items; 9 conversations play each exactly once,
    # bug count first, problems in the order given. Random draws with replacement
    # leave some out (the seed here repeats items).
    problems = ["sum_evens", "gcd", "count_vowels"]
    by_index = played(tmp_path, "i", 9, "by-index", problems)
    assert by_index == [(n, p) for n in (1, 2, 3) for p in problems]
    drawn = played(tmp_path, "r", 9, "random", problems)
    assert len(set(drawn)) < 9


def test_bad_settings_name_the_component() -> None:
    registry = Registry.from_plugin_manager(get_plugin_manager(default_plugins=()))
    with pytest.raises(ValueError, match="socratic-problems.*unknown problems"):
        registry.get("samplers", "socratic-problems")({"problems": ["nope"]})
    with pytest.raises(ValueError, match="socratic-problems.*order.*'shuffled'"):
        registry.get("samplers", "socratic-problems")({"order": "shuffled"})
    with pytest.raises(ValueError, match="socratic-keyword-verifier"):
        registry.get("environments", "socratic-keyword-verifier")({"machin": {}})
    with pytest.raises(ValueError, match="socratic-verifier"):
        registry.get("agents", "socratic-verifier")({"machin": {}})
    with pytest.raises(ValueError, match="socratic-scripted-student"):
        registry.get("environments", "socratic-scripted-student")({"script": [{"fix": "some"}]})


# -- resume ---------------------------------------------------------------------------------

RESUME_SCENARIO = """\
[run]
name = "socratic-resume"
conversations = 6
max_turns = 40
seed = 9
batch_size = 2
max_inflight = 1
max_active = 3
wal_sync_s = 0.0

[backends.sim]
type = "scripted"
latency_s = 0.02
lines = ["What does your loop do?", "Which line changes it?", "What is the first value?"]

[[participants]]
name = "student"
agent = "socratic-scripted-student"
sampler = "socratic-problems"
sampler_settings.bugs = [2, 3]
settings.script = [
  { answer = "wrong" }, { answer = "wrong" }, { answer = "wrong" }, { answer = "correct" },
  { answer = "correct" }, { fix = "target" }, { answer = "wrong" }, { answer = "correct" },
  { fix = "target" },
]

[[participants]]
name = "verifier"
agent = "socratic-keyword-verifier"
settings.machine = { max_tutor_turns = 10, fix_after = 2 }

[[participants]]
name = "tutor"
agent = "socratic-tutor"

[[scorers]]
name = "socratic-bugs-fixed"

[[scorers]]
name = "socratic-leakage"
"""


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "turnloom.cli", *args]


def test_interrupted_run_resumes_the_same_tree(tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(RESUME_SCENARIO)
    full = tmp_path / "full"
    subprocess.run(cli("run", str(scenario), "--out", str(full), "--no-progress"), check=True,
                   capture_output=True, timeout=300)
    reference = [msgspec.json.decode(x) for x in (full / "conversations.jsonl").read_bytes().splitlines()]
    # The reference walks the tree: wrong answers, an explanation, correct ones, fixes.
    assert {"sibling", "explain", "child", "request_fix", "question"} <= {
        a for r in reference for a in actions(r)}
    run_dir = tmp_path / "run"
    wal = run_dir / "turns.wal"
    assert kill_when(cli("run", str(scenario), "--out", str(run_dir)), wal,
                     (full / "turns.wal").stat().st_size // 2, timeout_s=120)
    logged = [e for e in read_events(wal) if type(e) is TurnEvent]
    # killed mid-conversation: some conversation has logged verifier turns but no end yet
    assert logged and not (run_dir / "conversations.jsonl").exists()
    done = subprocess.run(cli("resume", str(run_dir)), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert_same_outputs(full, run_dir)
    keys = [(e.index, e.branch, e.turn) for e in read_events(wal) if type(e) is TurnEvent]
    assert len(keys) == len(set(keys))


# -- judge ------------------------------------------------------------------------------------


def test_relevance_judge_calls_parse_and_score(tmp_path: Path) -> None:
    script = [{"answer": "wrong"}, {"answer": "correct"}]
    scenario = scripted(script, conversations=1, problems=["gcd"], bugs=[1],
                        machine={"max_tutor_turns": 2})
    [record] = turnloom.run(scenario, out=tmp_path / "run", progress=False).conversations()
    # the finished conversation, as the engine hands it to a judge
    conv = ConversationState(record["conversation_id"], 0, record["seed"])
    conv.profiles["student"] = record["participants"]["student"]["profile"]
    spoken = [m for m in record["messages"] if "name" in m]
    for i, (m, t) in enumerate(zip(spoken, record["turns"])):
        conv.turns.append(TurnRecord(conversation_id="c", branch=0, turn=i, participant=m["name"],
                                     role=m["role"], text=m["content"], node=0, meta=t["meta"]))
    judge = QuestionRelevance({})
    calls = judge.calls(conv)
    assert [c.key for c in calls] == ["turn-2", "turn-5"]
    assert all(isinstance(c, JudgeCall) and c.messages[0][0] == "system" for c in calls)
    assert "Euclid" in calls[0].messages[1][1] and "remainder" in calls[0].messages[1][1]
    assert judge.parse(calls[0], "RELEVANT: yes\nREVEALS_FIX: no") == {
        "relevant": True, "reveals_fix": False}
    assert judge.parse(calls[0], " relevant: No \n reveals_fix: YES\n") == {
        "relevant": False, "reveals_fix": True}
    for bad in ("yes", "RELEVANT: maybe\nREVEALS_FIX: no", "RELEVANT: yes",
                "RELEVANT: yes\nREVEALS_FIX: no\nbecause"):
        with pytest.raises(Unparseable):
            judge.parse(calls[0], bad)
    verdicts = {"turn-2": {"relevant": True, "reveals_fix": False}, "turn-5": None}
    assert judge.score(conv, verdicts) == {"judged": 1, "relevance": 1.0, "reveals_fix": 0.0}
    assert judge.score(conv, {}) is None


# -- the example on the embedded model ----------------------------------------------------------


@pytest.mark.model
@pytest.mark.timeout(1200)  # a few minutes on a shared 2-core CPU
def test_example_runs_on_the_embedded_model(tmp_path: Path, embedded_model: None) -> None:
    data = turnloom.Scenario.from_toml(EXAMPLE).to_dict()
    data["run"].update(conversations=2, max_turns=6, batch_size=2)
    for p in data["participants"]:
        if "sampling" in p and p["agent"] != "socratic-verifier":
            p["sampling"]["max_new_tokens"] = 12
    result = turnloom.run(turnloom.Scenario.from_dict(data), out=tmp_path / "run", progress=False)
    records = result.conversations()
    assert len(records) == 2 and result.summary["failures"] == 0
    for r in records:
        assert r["errors"] == []
        assert r["stop_reason"] in ("max_turns", "bugs_fixed", "turn_budget")
        names = [m["name"] for m in r["messages"] if "name" in m]
        assert names == ["student", "verifier", "tutor", "student", "verifier", "tutor"][:len(names)]
        assert actions(r)[0] in ("question", "stop")
        scores = r["scores"]
        assert 0.0 <= scores["socratic-bugs-fixed"]["fraction_fixed"] <= 1.0
        assert scores["socratic-tutor-turns"]["tutor_turns"] == names.count("tutor")
        assert 0.0 <= scores["socratic-leakage"]["max_similarity"] <= 1.0
        # the judge ran on the model: each call parsed or was counted as unparseable
        judged = scores["relevance"]
        assert judged["unparseable"] + judged.get("judged", 0) == names.count("tutor")
        tutor_prompt = r["participants"]["tutor"]["system_prompt"]
        assert "def " in tutor_prompt  # the buggy code reached the tutor
    assert result.summary["participants"]["tutor"]["completion_tokens"] > 0
