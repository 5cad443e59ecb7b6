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
    ditto_majority,
    identity_score,
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


def test_card_sampler_plays_each_card_once_by_index_or_draws_by_seed() -> None:
    sampler = CardSampler({})
    # Ten conversations over the ten cards: each card once, in the set's order.
    played = [sampler.sample(random.Random(s), i)["name"] for i, s in enumerate(range(10))]
    assert played == [c.name for c in CARDS]
    assert sampler.sample(random.Random(0), 10)["name"] == CARDS[0].name
    drawn = CardSampler({"order": "random"})
    first = [drawn.sample(random.Random(s), 0)["name"] for s in range(200)]
    again = [CardSampler({"order": "random"}).sample(random.Random(s), 0)["name"]
             for s in range(200)]
    assert first == again
    assert set(first) == set(BY_NAME)
    only = CardSampler({"names": ["Odysseus", "Mira Okonkwo"], "order": "random"})
    assert {only.sample(random.Random(s), 0)["name"] for s in range(50)} == {"Odysseus",
                                                                             "Mira Okonkwo"}
    with pytest.raises(ValueError, match="invalid persona-cards settings: order"):
        CardSampler({"order": "shuffle"})
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


CANDIDATES = ["Sherlock Holmes", "Odysseus", "Ada Lovelace", "Mira Okonkwo"]


@pytest.mark.parametrize("text, picked", [
    ("The most suitable role is [Odysseus]", "Odysseus"),
    ("Step 1: he speaks of the sea.\nThe most suitable role is [ada lovelace].", "Ada Lovelace"),
    # A name that is no candidate is a vote for nobody: Ditto counts it as wrong.
    ("The most suitable role is [Hamlet]", ""),
])
def test_identity_choice_parsing(text: str, picked: str) -> None:
    assert parse_choice(text, CANDIDATES) == picked


@pytest.mark.parametrize("text", [
    "", "A character from a book.", "A", "B", "(A)", "Answer: D", "I cannot tell.",
    "It is clearly Ada Lovelace speaking.", "The most suitable role is Odysseus",
])
def test_identity_choice_rejects_malformed_output(text: str) -> None:
    # A leading article "A" is not choice A: only Ditto's concluding sentence counts.
    with pytest.raises(Unparseable):
        parse_choice(text, CANDIDATES)


def test_rating_parsing_reads_the_last_line_strictly() -> None:
    assert parse_rating("7") == 7 and parse_rating("Accurate and in character.\n9") == 9
    # The prompt's own label echoed back: the score is 7, not the 1 of "(1-10)".
    assert parse_rating("Rating (1-10): 7") == 7
    assert parse_rating("Mostly right.\nScore: 6") == 6
    for bad in ("", "seven", "0", "11", "7.5", "-2", "I'd say 3.", "Rating: 10/10",
                "Score: 8\nbut it could be better", "Rating (1-10):"):
        with pytest.raises(Unparseable):
            parse_rating(bad)


def test_rejection_parsing_takes_only_the_one_word_answer() -> None:
    assert parse_rejection("DECLINED") == "declined"
    assert parse_rejection(" answered.") == "answered"
    assert parse_rejection("**Declined**") == "declined"
    assert parse_rejection("1") == "declined" and parse_rejection("0") == "answered"
    for bad in ("", "yes", "maybe, hard to say", "not declined; answered",
                "The character answered.", "He refused politely", "ANSWERED or DECLINED"):
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


def test_identity_is_judged_per_turn_and_scored_as_ditto() -> None:
    judge = IdentityJudge({"samples": 3, "candidates": 4})
    conv = conversation(*DIALOGUE)
    calls = judge.calls(conv)
    # One call per (turn, sample): each call shows a single question and its reply.
    assert [c.key for c in calls] == [f"identity-{i}-{k}" for i in range(4) for k in range(3)]
    assert "My great adversary, Watson." in calls[0].messages[1][1]
    assert "They gather news for me." not in calls[0].messages[1][1]
    assert "They gather news for me." in calls[6].messages[1][1]
    sets = {frozenset(c.meta["candidates"]) for c in calls}
    assert len(sets) == 1 and "Sherlock Holmes" in next(iter(sets))  # one candidate set
    assert len({tuple(c.meta["candidates"]) for c in calls}) > 1  # shown in varied orders
    assert calls == judge.calls(conv)
    assert judge.parse(calls[0], "The most suitable role is [Sherlock Holmes]") == \
        "Sherlock Holmes"
    verdicts = {
        "identity-0-0": "Sherlock Holmes", "identity-0-1": "Sherlock Holmes",
        "identity-0-2": "Sherlock Holmes",                        # turn 0: 1
        "identity-1-0": "Odysseus", "identity-1-1": "Sherlock Holmes",
        "identity-1-2": None,                                     # turn 1: 1/2 of parsed votes
        "identity-2-0": None, "identity-2-1": None, "identity-2-2": None,  # turn 2: none -> 0
        "identity-3-0": "", "identity-3-1": "Odysseus", "identity-3-2": "Odysseus",  # turn 3: 0
    }
    # Ditto: np.mean over parsed votes per turn, nan (no vote) read as 0, then the mean.
    assert judge.score(conv, verdicts) == {"turns": 4, "unvoted_turns": 1,
                                           "consistency": (1 + 0.5 + 0 + 0) / 4,
                                           "consistency_voted": (1 + 0.5 + 0) / 3}
    assert judge.score(conv, dict.fromkeys(verdicts)) == {"turns": 4, "unvoted_turns": 4,
                                                          "consistency": 0.0}
    assert identity_score("Odysseus", 1, {0: ["Odysseus", ""]}) == {
        "turns": 1, "unvoted_turns": 0, "consistency": 0.5, "consistency_voted": 0.5}
    assert judge.calls(conversation()) == []
    with pytest.raises(ValueError, match="candidates"):
        IdentityJudge({"candidates": 11})


def test_knowledge_is_rated_on_every_turn() -> None:
    judge = KnowledgeJudge({})
    calls = judge.calls(conversation(*DIALOGUE))
    assert [c.key for c in calls] == ["knowledge-0", "knowledge-1", "knowledge-2", "knowledge-3"]
    assert "Professor James Moriarty" in calls[0].messages[1][1]  # the card's facts as tips
    assert not calls[0].messages[1][1].rstrip().endswith(":")  # no label for the judge to echo
    scores = {"knowledge-0": 8, "knowledge-1": 2, "knowledge-2": 5, "knowledge-3": 1}
    assert judge.score(conversation(*DIALOGUE), scores) == {
        "rated": 4, "knowledge": 4.0, "knowledge_in": 6.5}
    assert judge.score(conversation(*DIALOGUE), {**scores, "knowledge-0": None}) == {
        "rated": 3, "knowledge": 8 / 3, "knowledge_in": 5.0}
    assert judge.score(conversation(*DIALOGUE), {"knowledge-0": None}) == {"rated": 0}


def test_rejection_votes_are_read_as_ditto_and_without_ties() -> None:
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
        # pair 3 (out): a tie; Ditto's Counter.most_common(1) takes the first vote: answered
        "rejection-3-0": "answered", "rejection-3-1": "declined", "rejection-3-2": None,
    }
    assert judge.score(conv, votes) == {
        "judged": 4, "no_votes": 0, "undecided": 1, "accuracy": 2 / 4,
        "accuracy_no_ties": 2 / 3, "answer_accuracy": 0.5, "decline_accuracy": 0.5}
    # The tie broken the other way round: the first vote decides.
    flipped = {**votes, "rejection-3-0": "declined", "rejection-3-1": "answered"}
    assert judge.score(conv, flipped)["decline_accuracy"] == 1.0
    assert judge.score(conv, dict.fromkeys(votes)) == {"judged": 0, "no_votes": 4,
                                                       "undecided": 4}
    assert majority(["a", "b"]) is None and majority([]) is None and majority(["a", "b", "a"]) == "a"
    assert ditto_majority(["b", "a"]) == "b" and ditto_majority([]) is None
    assert rejection_score([], {}) == {"judged": 0, "no_votes": 0, "undecided": 0}


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
    records = run(tmp_path, scripted_study(["In character and right.\n7"], ["DECLINED"],
                                           ["The answer is A."]), "rp")
    assert len(records) == 3
    for r in records:
        assert r["stop_reason"] == "questions_done"
        card = r["participants"]["persona"]["profile"]
        assert r["participants"]["persona"]["system_prompt"].startswith(f"You are {card['name']}.")
        labels = [t["meta"]["label"] for t in r["turns"] if t["participant"] == "questioner"]
        assert sorted(labels) == [IN_KNOWLEDGE] * 2 + [OUT_OF_KNOWLEDGE] * 2
        assert [t["participant"] for t in r["turns"]] == ["questioner", "persona"] * 4
        assert r["scores"]["knowledge"] == {"rated": 4, "knowledge": 7.0, "knowledge_in": 7.0,
                                            "unparseable": 0}
        assert r["scores"]["rejection"] == {"judged": 4, "no_votes": 0, "undecided": 0,
                                            "accuracy": 0.5, "accuracy_no_ties": 0.5,
                                            "answer_accuracy": 0.0, "decline_accuracy": 1.0,
                                            "unparseable": 0}
        # "The answer is A." is not Ditto's answer: counted (after one re-ask), never guessed.
        assert r["scores"]["identity"] == {"turns": 4, "unvoted_turns": 4, "consistency": 0.0,
                                           "unparseable": 12}
    assert len({r["participants"]["persona"]["profile"]["name"] for r in records}) > 1


def test_malformed_judge_output_is_recorded_not_raised(tmp_path: Path) -> None:
    records = run(tmp_path, scripted_study(["Rating (1-10):"], ["not declined; answered"],
                                           ["A"]), "bad")
    for r in records:
        assert r["scores"]["knowledge"] == {"rated": 0, "unparseable": 4}
        assert r["scores"]["rejection"] == {"judged": 0, "no_votes": 4, "undecided": 4,
                                            "unparseable": 12}
        assert r["scores"]["identity"] == {"turns": 4, "unvoted_turns": 4, "consistency": 0.0,
                                           "unparseable": 12}


def test_unparseable_output_is_asked_again_once(tmp_path: Path) -> None:
    # Each judge backend answers badly or well (picked by the request's hash and seed); a
    # bad answer is asked again once with a new seed, and only a second bad one is counted.
    records = run(tmp_path, scripted_study(["Rating (1-10):", "Good.\n8"],
                                           ["not declined; answered", "ANSWERED"],
                                           ["A", "The most suitable role is [Nobody]"]),
                  "reask")
    rated = failed = 0
    for r in records:
        knowledge, identity = r["scores"]["knowledge"], r["scores"]["identity"]
        assert knowledge["rated"] + knowledge["unparseable"] == 4
        assert knowledge.get("knowledge", 8.0) == 8.0
        rated, failed = rated + knowledge["rated"], failed + knowledge["unparseable"]
        rejection = r["scores"]["rejection"]
        assert rejection.get("answer_accuracy", 1.0) == 1.0
        # A parsed vote for a name that is no candidate counts against consistency.
        assert identity["consistency"] == 0.0 and identity["turns"] == 4
    # With one re-ask, about a quarter of the calls stay unparseable (half without it).
    assert rated > failed > 0
