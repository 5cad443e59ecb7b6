"""USP consistency as the paper measures it: profile facts judged against the user's
messages by a judge model, and the embedding similarity of the re-extracted profile;
the word-overlap comparison is the cheap `usp-consistency-lexical`. And the role flip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import turnloom
from turnloom.judging import Unparseable
from turnloom.plugins import get_plugin_manager
from turnloom.records import ConversationState, TurnRecord
from turnloom import Scenario
from turnloom_usp.consistency import compare_profiles
from turnloom_usp.judged_consistency import (
    JudgedConsistency,
    embedder,
    fact_sentences,
    paragraph_similarity,
    parse_fact_verdicts,
)
from turnloom_usp.profile import parse_profile
from turnloom_usp.simulator import UspUser

TARGET: dict[str, Any] = {
    "facts": {"age": 34, "occupation": "nurse", "location": "Leeds, UK",
              "goal": "plan healthy dinners for night shifts"},
    "traits": {"speaking_style": "warm and brief"},
}
# The same person in other words: what a good extractor writes after a faithful dialogue.
PARAPHRASE: dict[str, Any] = {
    "facts": {"age": 34, "occupation": "works as a registered hospital RN",
              "location": "lives in the city of Leeds in England",
              "goal": "wants nutritious evening meal ideas that suit working overnight"},
    "traits": {"speaking_style": "friendly, says little"},
}
MESSAGES = ["Hi! I'm a nurse in Leeds and I'm 34.",
            "I work nights, so I'd like healthy dinner plans that fit my shifts."]


def conversation(profile: dict[str, Any]) -> ConversationState:
    conv = ConversationState("c-0", 0, 1)
    conv.profiles["user"] = profile
    for i, text in enumerate(MESSAGES + ["Here are some ideas."]):
        who = "user" if i < len(MESSAGES) else "assistant"
        conv.messages.append((who, who, text))
        conv.turns.append(TurnRecord(conversation_id="c-0", branch=0, turn=i, participant=who,
                                     role=who, text=text, node=i))
    return conv


def test_word_overlap_scores_a_faithful_paraphrase_low() -> None:
    # The weakness of the lexical measure, on the hand-made pair.
    lexical = compare_profiles(parse_profile(TARGET), parse_profile(PARAPHRASE))
    assert lexical.overall < 0.4


def test_judged_facts_score_a_faithful_dialogue_fully() -> None:
    judge = JudgedConsistency({"embedder": "tfidf"})
    conv = conversation(TARGET)
    calls = {c.key: c for c in judge.calls(conv)}
    assert set(calls) == {"facts", "profile"}
    prompt = calls["facts"].messages[1][1]
    assert "1. The user is 34 years old." in prompt and "4. What the user wants" in prompt
    assert "Here are some ideas" not in prompt  # only the user's messages are judged
    labels = judge.parse(calls["facts"], "1: supported\n2: supported\n3: supported\n4: supported")
    profile = judge.parse(calls["profile"], json.dumps(PARAPHRASE))
    score = judge.score(conv, {"facts": labels, "profile": profile})
    assert score is not None
    assert score["facts_supported"] == 1.0 and score["facts_contradicted"] == 0.0
    assert score["facts_judged"] == 4 and score["extracted"] == 1
    assert set(score) >= {"facts_similarity", "traits_similarity", "profile_similarity"}
    mixed = judge.score(conv, {"facts": ["supported", "contradicted", "unmentioned",
                                         "supported"], "profile": None})
    assert mixed == {"facts_supported": 0.5, "facts_contradicted": 0.25, "facts_judged": 4,
                     "extracted": 0}


def test_fact_verdicts_parse_strictly() -> None:
    assert parse_fact_verdicts("1: Supported\n2. contradicted\n**3)** unmentioned", 3) == [
        "supported", "contradicted", "unmentioned"]
    for bad in ("1: supported\n2: supported",  # fact 3 missing
                "1: supported\n2: supported\n3: maybe",
                "1: supported\n1: contradicted\n2: supported\n3: supported",
                "1: supported\n2: supported\n3: supported\n4: supported",  # no fact 4
                "Rating: 1: supported"):
        with pytest.raises(Unparseable):
            parse_fact_verdicts(bad, 3)


def test_fact_sentences_cover_the_filled_facts() -> None:
    assert fact_sentences(parse_profile(TARGET)) == [
        "The user is 34 years old.", "The user's occupation: nurse.",
        "The user lives in Leeds, UK.",
        "What the user wants from this conversation: plan healthy dinners for night shifts."]


def test_identical_profiles_are_fully_similar_and_missing_traits_score_zero() -> None:
    target = parse_profile(TARGET)
    same = paragraph_similarity(target, target, embedder("tfidf"))
    assert same == pytest.approx({"facts_similarity": 1.0, "traits_similarity": 1.0})
    no_traits = paragraph_similarity(target, parse_profile({"facts": TARGET["facts"]}),
                                     embedder("tfidf"))
    assert no_traits["traits_similarity"] == 0.0


@pytest.mark.model
def test_the_semantic_embedder_prefers_the_paraphrase(embedded_model: None) -> None:
    other = parse_profile({"facts": {"age": 71, "occupation": "retired sailor",
                                     "location": "Valparaiso, Chile",
                                     "goal": "repair the engine of a fishing boat"},
                           "traits": {"speaking_style": "gruff and long-winded"}})
    embed = embedder("smollm2-135m-instruct")
    target = parse_profile(TARGET)
    close = paragraph_similarity(target, parse_profile(PARAPHRASE), embed)
    far = paragraph_similarity(target, other, embed)
    assert close["facts_similarity"] > far["facts_similarity"]


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="invalid usp-consistency settings"):
        JudgedConsistency({"embeder": "tfidf"})
    with pytest.raises(ValueError, match="usp-consistency settings: embedder.*no-such-model"):
        JudgedConsistency({"embedder": "no-such-model"})


def test_role_flip_is_a_setting() -> None:
    flipped = UspUser({})
    assert (flipped.role_in_view("user", "user"), flipped.role_in_view("bot", "user")) == (
        "assistant", "user")
    plain = UspUser({"role_flip": False})  # USP's checkpoint writes the user turns
    assert (plain.role_in_view("user", "user"), plain.role_in_view("bot", "user")) == (
        "user", "assistant")


def test_a_study_with_the_judged_consistency(tmp_path: Path) -> None:
    import turnloom_usp.plugin

    # One judge line answers both calls: ten fact verdicts (bank profiles fill all ten
    # facts) and a JSON profile.
    verdicts = "\n".join(f"{i}: {'supported' if i <= 7 else 'contradicted'}"
                         for i in range(1, 11))
    line = json.dumps({"facts": {"occupation": "nurse"}}) + "\n" + verdicts
    scenario = Scenario.from_dict({
        "run": {"name": "usp", "conversations": 2, "max_turns": 4, "seed": 5},
        "backends": {"sim": {"type": "scripted", "lines": ["I need help planning dinners."]},
                     "judge": {"type": "scripted", "lines": [line]}},
        "participants": [
            {"name": "user", "agent": "usp-user", "backend": "sim", "sampler": "usp-profiles",
             "settings": {"role_flip": False}},
            {"name": "assistant", "agent": "assistant", "backend": "sim"}],
        "judges": [{"name": "consistency", "judge": "usp-consistency", "backend": "judge",
                    "sampling": {"max_new_tokens": 400},
                    "settings": {"embedder": "tfidf"}}],
    })
    pm = get_plugin_manager(autoload=False)
    pm.register(turnloom_usp.plugin, name="usp")
    result = turnloom.run(scenario, out=tmp_path / "run", progress=False, plugin_manager=pm)
    for r in result.conversations():
        score = r["scores"]["consistency"]
        assert score["facts_supported"] == pytest.approx(0.7)
        assert score["facts_contradicted"] == pytest.approx(0.3)
        assert score["extracted"] == 1 and score["unparseable"] == 0
        assert 0.0 <= score["facts_similarity"] <= 1.0


def test_by_index_plays_each_bank_profile_once() -> None:
    import random

    from turnloom_usp.bank import load_bank
    from turnloom_usp.sampler import DiverseProfileSampler

    bank = load_bank()
    sampler = DiverseProfileSampler({"strategy": "by-index"})
    ids = [sampler.sample(random.Random(i), i)["id"] for i in range(len(bank) + 2)]
    assert ids[:len(bank)] == [p.id for p in bank]  # each once, in bank order
    assert ids[len(bank):] == [bank[0].id, bank[1].id]  # then a second pass
    density = DiverseProfileSampler({})
    drawn = {density.sample(random.Random(i), i)["id"] for i in range(len(bank))}
    assert len(drawn) < len(bank)  # seeded draws repeat some and skip others
