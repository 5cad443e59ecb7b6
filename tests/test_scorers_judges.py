"""LLM judges of turnloom_scorers (single-score, pairwise, sysbench): parsing and scoring
on hand-written outputs, the engine running them, and one scenario on SmolLM2."""

from __future__ import annotations

from pathlib import Path

import pytest

import turnloom
from turnloom.judging import Judge, JudgeCall, Unparseable
from turnloom.records import ConversationState, TurnRecord
from turnloom_scorers import judges

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def build(*messages: tuple[str, str]) -> ConversationState:
    conv = ConversationState("c", index=0, seed=0)
    for i, (participant, text) in enumerate(messages):
        role = "user" if participant == "user" else "assistant"
        conv.messages.append((participant, role, text))
        conv.turns.append(TurnRecord(conversation_id="c", branch=0, turn=i,
                                     participant=participant, role=role, text=text, node=i))
    return conv


CONV = build(("user", "How do plants eat?"), ("a", "Photosynthesis."), ("b", "They eat soil."),
             ("user", "And at night?"), ("a", "They respire."), ("b", ""))


def test_single_score_calls_per_turn_and_per_conversation() -> None:
    per_turn = judges.SingleScore({"participant": "a"})
    assert isinstance(per_turn, Judge)
    calls = per_turn.calls(CONV)
    assert [c.key for c in calls] == ["turn1", "turn4"]
    system, user = calls[1].messages
    assert system[0] == "system" and "Rating: [[5]]" in system[1]
    assert "[user]: And at night?" in user[1] and user[1].endswith("They respire.")
    assert "They respire." not in user[1].split("Rate this response")[0]
    whole = judges.SingleScore({}).calls(CONV)
    assert [c.key for c in whole] == ["conversation"]
    assert judges.SingleScore({"participant": "b"}).calls(CONV)[0].key == "turn2"  # empty skipped
    assert judges.SingleScore({}).calls(build()) == []
    with pytest.raises(ValueError, match="invalid single-score judge settings.*participnt"):
        judges.SingleScore({"participnt": "a"})


@pytest.mark.parametrize("text, verdict", [
    ("Clear and correct. Rating: [[8]]", {"rating": 8.0, "rationale": "Clear and correct."}),
    ("Rating:[[ 10 ]]", {"rating": 10.0, "rationale": ""}),
    ("Fine.\nRating: [[7]]\nAgain: Rating: [[7]]", {"rating": 7.0, "rationale": "Fine."}),
])
def test_single_score_parses_the_required_format(text: str, verdict: dict) -> None:
    call = JudgeCall(key="conversation", messages=())
    assert judges.SingleScore({}).parse(call, text) == verdict


@pytest.mark.parametrize("text, reason", [
    ("I would give it an 8.", "exactly one"),
    ("Rating: 8", "exactly one"),
    ("Rating: [[eight]]", "exactly one"),
    ("Rating: [[0]]", "outside 1..10"),
    ("Rating: [[11]]", "outside 1..10"),
    ("Rating: [[3]] or maybe Rating: [[9]]", "conflicting ratings"),
    ("", "exactly one"),
])
def test_single_score_rejects_other_output(text: str, reason: str) -> None:
    with pytest.raises(Unparseable, match=reason):
        judges.SingleScore({}).parse(JudgeCall(key="k", messages=()), text)


def test_single_score_combines_verdicts() -> None:
    judge = judges.SingleScore({"participant": "a"})
    assert judge.score(CONV, {"turn1": {"rating": 4.0}, "turn4": {"rating": 8.0}}) == {
        "judged": 2, "asked": 2, "rating": 6.0, "min": 4.0, "max": 8.0}
    assert judge.score(CONV, {"turn1": None, "turn4": {"rating": 8.0}})["rating"] == 8.0
    assert judge.score(CONV, {"turn1": None}) == {"judged": 0, "asked": 1}
    assert judge.score(CONV, {}) is None


def test_pairwise_asks_each_pair_in_both_orders() -> None:
    judge = judges.Pairwise({"a": "a", "b": "b"})
    calls = judge.calls(CONV)
    assert [c.key for c in calls] == ["pair0.ab", "pair0.ba", "pair1.ab", "pair1.ba"]
    ab, ba = calls[0], calls[1]
    assert ab.meta == {"pair": 0, "first": "a", "second": "b"}
    assert ba.meta == {"pair": 0, "first": "b", "second": "a"}
    text_ab, text_ba = ab.messages[1][1], ba.messages[1][1]
    assert text_ab.index("Photosynthesis.") < text_ab.index("They eat soil.")
    assert text_ba.index("They eat soil.") < text_ba.index("Photosynthesis.")
    # Neither candidate's own earlier answers leak into the context.
    assert "Photosynthesis" not in calls[2].messages[1][1].split("[Response A]")[0]
    with pytest.raises(ValueError, match="must differ"):
        judges.Pairwise({"a": "x", "b": "x"})
    with pytest.raises(ValueError, match=r"pairwise judge settings.*`b`"):
        judges.Pairwise({"a": "x"})


def test_pairwise_parse_maps_positions_to_participants() -> None:
    judge = judges.Pairwise({"a": "a", "b": "b"})
    ab, ba = judge.calls(CONV)[:2]
    assert judge.parse(ab, "A is more accurate. [[A]]") == {"choice": "A", "winner": "a"}
    assert judge.parse(ba, "[[A]]") == {"choice": "A", "winner": "b"}
    assert judge.parse(ba, "Equal. [[C]]") == {"choice": "C", "winner": "tie"}
    for bad in ("A is better.", "[[D]]", "[[A]] no wait [[B]]", ""):
        with pytest.raises(Unparseable):
            judge.parse(ab, bad)


def test_pairwise_cancels_position_bias() -> None:
    judge = judges.Pairwise({"a": "a", "b": "b"})
    a, b, tie = ({"winner": w} for w in ("a", "b", "tie"))
    verdicts = {"pair0.ab": a, "pair0.ba": a,      # a wins in both orders
                "pair1.ab": a, "pair1.ba": b}      # each time the first shown: a tie
    score = judge.score(CONV, verdicts)
    assert score == {"a": "a", "b": "b", "pairs": 2, "judged": 2, "a_wins": 1, "b_wins": 0,
                     "ties": 1, "a_win_rate": 0.5, "b_win_rate": 0.0, "consistency": 0.5}
    partial = judge.score(CONV, {"pair0.ab": b, "pair0.ba": None, "pair1.ab": tie,
                                 "pair1.ba": tie})
    assert (partial["judged"], partial["ties"], partial["consistency"]) == (1, 1, 1.0)
    assert judge.score(CONV, {}) is None


def test_judges_through_the_engine_on_the_scripted_backend(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("TURNLOOM_PLUGINS", "scorers")
    # The scripted backend answers every prompt (turns and judge calls) with one of these.
    lines = ["Good answer. Rating: [[7]]", "[[B]]", "no verdict here"]
    scenario = turnloom.Scenario.from_dict({
        "run": {"name": "judged", "conversations": 8, "max_turns": 3, "seed": 2},
        "backends": {"sim": {"type": "scripted", "lines": lines}},
        "participants": [
            {"name": "user", "agent": "scripted-user", "settings": {"lines": ["Hi?", "Why?"]}},
            {"name": "a", "agent": "assistant"}, {"name": "b", "agent": "assistant"}],
        "judges": [{"name": "quality", "judge": "single-score", "settings": {"participant": "a"}},
                   {"name": "preference", "judge": "pairwise",
                    "settings": {"a": "a", "b": "b"}}],
    })
    records = turnloom.run(scenario, out=tmp_path / "run", progress=False).conversations()
    seen_ratings = seen_unparseable = 0
    for record in records:
        assert record["errors"] == []
        quality, preference = record["scores"]["quality"], record["scores"]["preference"]
        assert quality["asked"] == 1 and quality["judged"] + quality["unparseable"] == 1
        if quality["judged"]:
            assert quality["rating"] == 7.0
        seen_ratings += quality["judged"]
        seen_unparseable += quality["unparseable"]
        assert preference["pairs"] == 1
        assert preference["judged"] + (preference["unparseable"] > 0) == 1
        if preference["judged"]:
            # "[[B]]" in both orders names a different participant each time: a tie.
            assert (preference["ties"], preference["consistency"]) == (1, 0.0)
    assert seen_ratings and seen_unparseable  # both outcomes occurred and were recorded


@pytest.mark.model
def test_judge_example_on_smollm2_parses_or_records_unparseable(tmp_path: Path,
                                                               embedded_model: None) -> None:
    data = turnloom.load_scenario(EXAMPLES / "judge_single.toml").to_dict()
    data["run"].update(conversations=1)
    data["backends"]["local"]["settings"]["threads"] = 1
    for judge in data["judges"]:
        judge["sampling"]["max_new_tokens"] = 24
    records = turnloom.run(turnloom.Scenario.from_dict(data), out=tmp_path / "judge",
                           progress=False).conversations()
    [record] = records
    assert record["errors"] == []
    quality, preference = record["scores"]["quality"], record["scores"]["preference"]
    # One turn of "concise" to rate and one pair to compare (asked in both orders).
    assert quality["judged"] + quality["unparseable"] == quality["asked"] == 1
    if quality["judged"]:
        assert 1 <= quality["rating"] <= 10
    assert preference["pairs"] == 1
    assert preference["judged"] == (1 if preference["unparseable"] == 0 else 0)
