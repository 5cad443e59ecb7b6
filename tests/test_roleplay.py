"""The role-play plugin package (plugins/turnloom-roleplay): character cards, the persona's
prompt, the seeded card sampler, the labelled questioner, and the three judges'
parsing and arithmetic, alone and run by the engine on the scripted backend."""

from __future__ import annotations

import importlib.metadata
import json
import random
from pathlib import Path
from typing import Any

import pytest

import turnloom
from turnloom import Scenario
from turnloom.judging import Unparseable
from turnloom.plugins import Registry, get_plugin_manager
from turnloom.records import ConversationState, TurnRecord

SETUP = "uv pip install -p .venv/bin/python -e plugins/turnloom-roleplay (scripts/setup.sh does it)"

try:
    importlib.metadata.distribution("turnloom-roleplay")
except importlib.metadata.PackageNotFoundError:
    pytest.fail(f"turnloom-roleplay is not installed; run: {SETUP}", pytrace=False)

from turnloom_roleplay.cards import CardError, load_cards, parse_card, to_dict  # noqa: E402
from turnloom_roleplay.judges import (  # noqa: E402
    IdentityJudge,
    KnowledgeJudge,
    QAPair,
    RejectionJudge,
    majority,
    parse_choice,
    parse_rating,
    parse_rejection,
    qa_pairs,
    rejection_score,
)
from turnloom_roleplay.persona import CardSampler, Persona  # noqa: E402
from turnloom_roleplay.questioner import IN_KNOWLEDGE, OUT_OF_KNOWLEDGE, Questioner  # noqa: E402

CARDS = load_cards()
BY_NAME = {c.name: c for c in CARDS}
HOLMES = to_dict(BY_NAME["Sherlock Holmes"])


def conversation(*turns: tuple[str, str, dict], card: dict | None = HOLMES,
                 seed: int = 9) -> ConversationState:
    """A conversation with these (participant, text, meta) turns already spoken."""
    state = ConversationState("c-0", 0, seed)
    if card is not None:
        state.profiles["persona"] = card
    for i, (who, text, meta) in enumerate(turns):
        role = "assistant" if who == "persona" else "user"
        state.messages.append((who, role, text))
        state.turns.append(TurnRecord(conversation_id="c-0", branch=0, turn=i, participant=who,
                                      role=role, text=text, node=i, meta=meta))
    return state


def asked(text: str, label: str) -> tuple[str, str, dict]:
    return ("questioner", text, {"label": label, "source": "x", "question": 0})


def said(text: str) -> tuple[str, str, dict]:
    return ("persona", text, {})


# -- cards ----------------------------------------------------------------------------


def test_shipped_cards_are_valid_and_distinct() -> None:
    assert len(CARDS) == 10
    assert len({c.name for c in CARDS}) == 10
    assert all(len(c.questions) >= 3 and len(c.knowledge) >= 3 for c in CARDS)
    assert len({c.era for c in CARDS}) == 10


@pytest.mark.parametrize("change, field", [
    ({"year": "1890"}, "year"),
    ({"knowledge": []}, "knowledge"),
    ({"knowledge": "violin"}, "knowledge"),
    ({"name": ""}, "name"),
    ({"catchphrase": "elementary"}, "catchphrase"),
])
def test_card_schema_errors_name_the_field(change: dict, field: str) -> None:
    with pytest.raises(CardError) as err:
        parse_card({**HOLMES, **change}, where="cards.json[0]")
    assert str(err.value).startswith("cards.json[0]: ") and field in str(err.value)
    with pytest.raises(CardError, match="missing required field `era`"):
        parse_card({k: v for k, v in HOLMES.items() if k != "era"})


def test_card_files_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "cards.json"
    path.write_text(json.dumps([HOLMES, HOLMES]))
    with pytest.raises(CardError, match="duplicate card name.*Sherlock Holmes"):
        load_cards(path)
    path.write_text("{}")
    with pytest.raises(CardError, match="non-empty JSON list"):
        load_cards(path)
    with pytest.raises(CardError, match="cannot read"):
        load_cards(tmp_path / "missing.json")


# -- persona --------------------------------------------------------------------------


def test_persona_prompt_is_rendered_from_the_card() -> None:
    prompt = Persona({}).system_prompt(conversation(), "persona")
    assert prompt.startswith("You are Sherlock Holmes. A consulting detective")
    assert "late Victorian London" in prompt and "- His great adversary is Professor" in prompt
    assert "never say that you are an AI" in prompt and "{" not in prompt
    assert Persona({}).role == "assistant"


def test_card_text_cannot_inject_placeholders() -> None:
    evil = {**HOLMES, "description": "{knowledge} {era} {0} {name.__class__}",
            "era": "{description}"}
    prompt = Persona({"system_prompt": "{name}|{description}|{era}"}).system_prompt(
        conversation(card=evil), "persona")
    assert prompt == "Sherlock Holmes|{knowledge} {era} {0} {name.__class__}|{description}"


def test_persona_settings_and_missing_card_fail_clearly() -> None:
    with pytest.raises(ValueError, match=r"unknown placeholder\(s\) \{profile\}"):
        Persona({"system_prompt": "You are {profile}."})
    with pytest.raises(ValueError, match="persona-cards"):
        Persona({}).system_prompt(conversation(card=None), "persona")


def test_card_sampler_is_seeded_and_covers_the_set() -> None:
    sampler = CardSampler({})
    first = [sampler.sample(random.Random(s), i)["name"] for i, s in enumerate(range(200))]
    again = [CardSampler({}).sample(random.Random(s), i)["name"] for i, s in enumerate(range(200))]
    assert first == again
    assert set(first) == set(BY_NAME)
    only = CardSampler({"names": ["Odysseus", "Mira Okonkwo"]})
    assert {only.sample(random.Random(s), 0)["name"] for s in range(50)} == {"Odysseus",
                                                                             "Mira Okonkwo"}
    with pytest.raises(ValueError, match="unknown character.*Hamlet"):
        CardSampler({"names": ["Hamlet"]})


# -- questioner -----------------------------------------------------------------------


def test_questioner_plan_is_labelled_deterministic_and_contrastive() -> None:
    q = Questioner({"questions": 6, "contrastive": 0.5})
    holmes = BY_NAME["Sherlock Holmes"]
    plan = q.plan(holmes, seed=42)
    assert plan == q.plan(holmes, seed=42)
    assert plan != q.plan(holmes, seed=43)
    inside = [x for x in plan if x.label == IN_KNOWLEDGE]
    outside = [x for x in plan if x.label == OUT_OF_KNOWLEDGE]
    assert len(inside) == 3 and len(outside) == 3
    assert all(x.text in holmes.questions and x.source == holmes.name for x in inside)
    for x in outside:
        other = BY_NAME[x.source]
        assert x.text in other.questions and abs(other.year - holmes.year) >= 40


def test_questioner_asks_in_order_then_stops() -> None:
    q = Questioner({"questions": 2, "contrastive": 0.5})
    plan = q.plan(BY_NAME["Sherlock Holmes"], seed=9)
    conv = conversation()
    first = q.respond(conv, "questioner", random.Random(0))
    assert first.text == plan[0].text and first.stop is None
    assert first.meta == {"label": plan[0].label, "source": plan[0].source, "question": 0}
    conv = conversation(("questioner", first.text, dict(first.meta)), said("Elementary."))
    second = q.respond(conv, "questioner", random.Random(1))
    assert second.text == plan[1].text and second.meta["question"] == 1
    conv = conversation(("questioner", first.text, dict(first.meta)), said("Elementary."),
                        ("questioner", second.text, dict(second.meta)), said("I know not."))
    done = q.respond(conv, "questioner", random.Random(2))
    assert done.text == "" and done.stop == "questions_done"
    with pytest.raises(ValueError, match="no card"):
        q.respond(conversation(card=None), "questioner", random.Random(0))
    with pytest.raises(ValueError, match="contrastive"):
        Questioner({"contrastive": 2})


# -- judges: parsing ------------------------------------------------------------------


@pytest.mark.parametrize("text, picked", [
    ("B", "Odysseus"), (" C.", "Ada Lovelace"), ("(A)", "Sherlock Holmes"),
    ("Answer: D", "Mira Okonkwo"), ("The answer is B", "Odysseus"),
    ("It is clearly Ada Lovelace speaking.", "Ada Lovelace"),
])
def test_identity_choice_parsing(text: str, picked: str) -> None:
    candidates = ["Sherlock Holmes", "Odysseus", "Ada Lovelace", "Mira Okonkwo"]
    assert parse_choice(text, candidates) == picked


@pytest.mark.parametrize("text", ["", "a character from a book", "E", "I cannot tell.",
                                  "Odysseus or Sherlock Holmes"])
def test_identity_choice_rejects_malformed_output(text: str) -> None:
    with pytest.raises(Unparseable):
        parse_choice(text, ["Sherlock Holmes", "Odysseus", "Ada Lovelace", "Mira Okonkwo"])


def test_rating_and_rejection_parsing() -> None:
    assert parse_rating("7") == 7 and parse_rating("Rating: 10/10") == 10
    assert parse_rating("I'd say 3.") == 3
    for bad in ("", "seven", "0", "11", "7.5", "-2"):
        with pytest.raises(Unparseable):
            parse_rating(bad)
    assert parse_rejection("DECLINED") == "declined"
    assert parse_rejection("The character answered.") == "answered"
    assert parse_rejection("He refused politely") == "declined"
    for bad in ("", "yes", "maybe, hard to say"):
        with pytest.raises(Unparseable):
            parse_rejection(bad)


# -- judges: calls and arithmetic -----------------------------------------------------

DIALOGUE = (
    asked("Who is Professor Moriarty?", IN_KNOWLEDGE), said("My great adversary, Watson."),
    asked("How is the Nautilus powered?", OUT_OF_KNOWLEDGE), said("I know nothing of it."),
    asked("What do the Irregulars do?", IN_KNOWLEDGE), said("They gather news for me."),
    asked("Whose idea was the wooden horse?", OUT_OF_KNOWLEDGE), said("Odysseus, of course."),
)


def test_question_answer_pairs_follow_the_labels() -> None:
    pairs = qa_pairs(conversation(*DIALOGUE, asked("Unanswered?", IN_KNOWLEDGE)),
                     "persona", "questioner")
    assert [p.label for p in pairs] == [IN_KNOWLEDGE, OUT_OF_KNOWLEDGE, IN_KNOWLEDGE,
                                        OUT_OF_KNOWLEDGE]
    assert pairs[1] == QAPair("How is the Nautilus powered?", "I know nothing of it.",
                              OUT_OF_KNOWLEDGE)


def test_identity_judge_shuffles_candidates_per_sample_and_scores_votes() -> None:
    judge = IdentityJudge({"samples": 5, "candidates": 4})
    conv = conversation(*DIALOGUE)
    calls = judge.calls(conv)
    assert [c.key for c in calls] == [f"identity-{k}" for k in range(5)]
    orders = [tuple(c.meta["candidates"]) for c in calls]
    assert all(len(o) == 4 == len(set(o)) and "Sherlock Holmes" in o for o in orders)
    assert len(set(orders)) > 1
    assert calls == judge.calls(conv)
    prompt = calls[0].messages[1][1]
    assert "My great adversary, Watson." in prompt and "A. " in prompt and "D. " in prompt
    right = calls[0].meta["candidates"].index("Sherlock Holmes")
    assert judge.parse(calls[0], "ABCD"[right]) == "Sherlock Holmes"
    verdicts = {"identity-0": "Sherlock Holmes", "identity-1": "Odysseus",
                "identity-2": "Sherlock Holmes", "identity-3": None, "identity-4": None}
    assert judge.score(conv, verdicts) == {"votes": 3, "accuracy": 2 / 3, "majority": 1}
    assert judge.score(conv, dict.fromkeys(verdicts)) == {"votes": 0}
    assert judge.calls(conversation()) == []
    with pytest.raises(ValueError, match="candidates"):
        IdentityJudge({"candidates": 11})


def test_knowledge_judge_rates_only_in_knowledge_answers() -> None:
    judge = KnowledgeJudge({})
    calls = judge.calls(conversation(*DIALOGUE))
    assert [c.key for c in calls] == ["knowledge-0", "knowledge-2"]
    assert "Professor James Moriarty" in calls[0].messages[1][1]  # the card's facts as evidence
    assert judge.score(conversation(*DIALOGUE),
                       {"knowledge-0": 8, "knowledge-2": 5}) == {"rated": 2, "knowledge": 6.5}
    assert judge.score(conversation(*DIALOGUE), {"knowledge-0": None, "knowledge-2": 4}) == \
        {"rated": 1, "knowledge": 4.0}
    assert judge.score(conversation(*DIALOGUE), {"knowledge-0": None}) == {"rated": 0}


def test_rejection_accuracy_against_the_labels() -> None:
    judge = RejectionJudge({"samples": 3})
    conv = conversation(*DIALOGUE)
    calls = judge.calls(conv)
    assert len(calls) == 12 and calls[3].key == "rejection-1-0" and calls[3].meta == {"pair": 1}
    votes = {
        # pair 0 (in): answered by majority -> right
        "rejection-0-0": "answered", "rejection-0-1": "answered", "rejection-0-2": "declined",
        # pair 1 (out): declined -> right
        "rejection-1-0": "declined", "rejection-1-1": None, "rejection-1-2": "declined",
        # pair 2 (in): declined -> wrong
        "rejection-2-0": "declined", "rejection-2-1": "declined", "rejection-2-2": "declined",
        # pair 3 (out): a tie -> undecided
        "rejection-3-0": "answered", "rejection-3-1": "declined", "rejection-3-2": None,
    }
    assert judge.score(conv, votes) == {"judged": 3, "undecided": 1, "accuracy": 2 / 3,
                                        "answer_accuracy": 0.5, "decline_accuracy": 1.0}
    assert judge.score(conv, dict.fromkeys(votes)) == {"judged": 0, "undecided": 4}
    assert majority(["a", "b"]) is None and majority([]) is None and majority(["a", "b", "a"]) == "a"
    assert rejection_score([], {}) == {"judged": 0, "undecided": 0}


# -- the plugin in a run --------------------------------------------------------------


def test_entry_point_registers_every_component(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("TURNLOOM_PLUGINS", "roleplay")
    registry = Registry.from_plugin_manager(get_plugin_manager(default_plugins=()))
    assert "persona" in registry.names("agents")
    assert "persona-questioner" in registry.names("environments")
    assert "persona-cards" in registry.names("samplers")
    assert {"persona-identity", "persona-knowledge", "persona-rejection"} <= \
        set(registry.names("judges"))


def scripted_study(knowledge: list[str], rejection: list[str], identity: list[str]) -> Scenario:
    return Scenario.from_dict({
        "run": {"name": "rp", "conversations": 3, "max_turns": 12, "seed": 4},
        "backends": {"sim": {"type": "scripted", "lines": ["Indeed, I recall it well."]},
                     "kj": {"type": "scripted", "lines": knowledge},
                     "rj": {"type": "scripted", "lines": rejection},
                     "ij": {"type": "scripted", "lines": identity}},
        "participants": [
            {"name": "questioner", "agent": "persona-questioner",
             "settings": {"questions": 4, "contrastive": 0.5}},
            {"name": "persona", "agent": "persona", "backend": "sim", "sampler": "persona-cards"}],
        "judges": [
            {"name": "knowledge", "judge": "persona-knowledge", "backend": "kj"},
            {"name": "rejection", "judge": "persona-rejection", "backend": "rj",
             "settings": {"samples": 3}},
            {"name": "identity", "judge": "persona-identity", "backend": "ij",
             "settings": {"samples": 3}}],
    })


def run(tmp_path: Path, scenario: Scenario, name: str) -> list[dict[str, Any]]:
    import turnloom_roleplay.plugin

    pm = get_plugin_manager(autoload=False)
    pm.register(turnloom_roleplay.plugin, name="roleplay")
    result = turnloom.run(scenario, out=tmp_path / name, progress=False, plugin_manager=pm)
    assert result.summary["failures"] == 0
    return result.conversations()


def test_a_study_runs_with_labels_and_judged_scores(tmp_path: Path) -> None:
    records = run(tmp_path, scripted_study(["7"], ["DECLINED"], ["The answer is nobody."]), "rp")
    assert len(records) == 3
    for r in records:
        assert r["stop_reason"] == "questions_done"
        card = r["participants"]["persona"]["profile"]
        assert r["participants"]["persona"]["system_prompt"].startswith(f"You are {card['name']}.")
        labels = [t["meta"]["label"] for t in r["turns"] if t["participant"] == "questioner"]
        assert sorted(labels) == [IN_KNOWLEDGE] * 2 + [OUT_OF_KNOWLEDGE] * 2
        assert [t["participant"] for t in r["turns"]] == ["questioner", "persona"] * 4
        assert r["scores"]["knowledge"] == {"rated": 2, "knowledge": 7.0, "unparseable": 0}
        assert r["scores"]["rejection"] == {"judged": 4, "undecided": 0, "accuracy": 0.5,
                                            "answer_accuracy": 0.0, "decline_accuracy": 1.0,
                                            "unparseable": 0}
        # Output that names no candidate is counted, never guessed.
        assert r["scores"]["identity"] == {"votes": 0, "unparseable": 3}
    assert len({r["participants"]["persona"]["profile"]["name"] for r in records}) > 1


def test_malformed_judge_output_is_recorded_not_raised(tmp_path: Path) -> None:
    records = run(tmp_path, scripted_study(["eleven out of ten"], ["hmm"], ["?"]), "bad")
    for r in records:
        assert r["scores"]["knowledge"] == {"rated": 0, "unparseable": 2}
        assert r["scores"]["rejection"] == {"judged": 0, "undecided": 4, "unparseable": 12}
        assert r["scores"]["identity"] == {"votes": 0, "unparseable": 3}
