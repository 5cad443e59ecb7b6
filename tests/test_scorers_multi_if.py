"""Multi-IF: the instruction-adding simulated user, the per-turn scorer, resume, examples."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import turnloom
from turnloom.records import ConversationState, TurnRecord
from turnloom_scorers import ifeval, multi_if
from turnloom_scorers.instructions import InstructionError, conflicts, parse_instruction

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def only_this_plugin(monkeypatch):
    monkeypatch.delenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("TURNLOOM_PLUGINS", "scorers")


def _say(conv: ConversationState, participant: str, text: str, meta: dict | None = None) -> None:
    role = "user" if participant == "user" else "assistant"
    conv.messages.append((participant, role, text))
    conv.turns.append(TurnRecord(conversation_id="c", branch=0, turn=len(conv.turns),
                                 participant=participant, role=role, text=text,
                                 node=len(conv.turns), meta=meta or {}))


def _user_turn(env: multi_if.MultiIfUser, conv: ConversationState, seed: int) -> str:
    reply = env.respond(conv, "user", random.Random(seed))
    assert reply.stop is None
    _say(conv, "user", reply.text, reply.meta)
    return reply.text


def test_instructions_accumulate_without_conflicts() -> None:
    env = multi_if.MultiIfUser({"per_turn": 2, "turns": 3})
    for seed in range(30):
        conv = ConversationState("c", index=0, seed=seed)
        for k in range(3):
            text = _user_turn(env, conv, seed * 10 + k)
            _say(conv, "assistant", "ok")
            added = conv.meta["multi_if"]["added"]
            assert len(added) == k + 1
            for d in added[-1]:
                # The new instruction's text is in the user's message.
                assert parse_instruction(d).description() in text
        types = [d["type"] for turn in conv.meta["multi_if"]["added"] for d in turn]
        assert len(types) == 6
        assert not any(conflicts(a, b) for i, a in enumerate(types) for b in types[i + 1:])
        assert env.respond(conv, "user", random.Random(0)).stop == "multi_if_done"


def test_user_is_deterministic_per_seed_and_settings_are_checked() -> None:
    env = multi_if.MultiIfUser({})
    texts = []
    for _ in range(2):
        conv = ConversationState("c", index=0, seed=42)
        texts.append([_user_turn(env, conv, k) for k in range(3)])
    assert texts[0] == texts[1]
    only = multi_if.MultiIfUser({"types": ["punctuation:no_comma"], "per_turn": 1})
    conv = ConversationState("c", index=0, seed=1)
    _user_turn(only, conv, 0)
    _user_turn(only, conv, 1)  # nothing left to add: no conflict-free type remains
    assert conv.meta["multi_if"]["added"] == [[{"type": "punctuation:no_comma"}], []]
    with pytest.raises(InstructionError, match="unknown instruction type 'punctuation:nocomma'"):
        multi_if.MultiIfUser({"types": ["punctuation:nocomma"]})
    with pytest.raises(ValueError, match=r"invalid multi-if-user settings.*per_trun"):
        multi_if.MultiIfUser({"per_trun": 1})


def test_scorer_checks_the_instructions_in_force() -> None:
    conv = ConversationState("c", index=0, seed=0)
    no_comma = {"type": "punctuation:no_comma"}
    ender = {"type": "startend:end_checker", "end_phrase": "Bye."}
    conv.meta["multi_if"] = {"task": "t", "added": [[no_comma], [ender]]}
    _say(conv, "user", "q1", {"multi_if": {"turn": 1, "new": [no_comma]}})
    _say(conv, "assistant", "Fine thanks")                    # follows no_comma
    _say(conv, "user", "q2", {"multi_if": {"turn": 2, "new": [ender]}})
    _say(conv, "assistant", "Sure, here.\nBye.")               # only the ender (loosely both)
    scorer = multi_if.MultiIfScorer({})
    first = scorer.score_turn(conv, conv.turns[1])
    second = scorer.score_turn(conv, conv.turns[3])
    assert scorer.score_turn(conv, conv.turns[0]) is None
    assert first == {"turn": 1, "instructions": 1, "prompt_strict": 1.0,
                     "instruction_strict": 1.0, "prompt_loose": 1.0, "instruction_loose": 1.0,
                     "overall": 1.0}
    assert second["turn"] == 2 and second["instructions"] == 2
    assert (second["prompt_strict"], second["instruction_strict"]) == (0.0, 0.5)
    assert (second["prompt_loose"], second["instruction_loose"]) == (1.0, 1.0)
    whole = scorer.score_conversation(conv)
    assert whole["turn1.prompt_strict"] == 1.0 and whole["turn2.prompt_strict"] == 0.0
    assert whole["prompt_strict"] == 0.5 and whole["instruction_strict"] == pytest.approx(2 / 3)
    assert whole["turns_scored"] == 2


def test_accuracy_curve_over_records() -> None:
    def record(*scores: dict) -> dict:
        return {"turns": [{"scores": {"multi-if": s}} for s in scores]}

    s1 = {"turn": 1, **{m: 1.0 for m in multi_if.METRICS}}
    s2 = {"turn": 2, **{m: 0.0 for m in multi_if.METRICS}}
    s2b = {"turn": 2, **{m: 0.5 for m in multi_if.METRICS}}
    curve = multi_if.accuracy_curve([record(s1, s2), record(s1, s2b), record()])
    assert curve[1]["prompt_strict"] == 1.0 and curve[1]["n"] == 2
    assert curve[2]["overall"] == 0.25 and curve[2]["n"] == 2


def _scenario(conversations: int = 6) -> turnloom.Scenario:
    return turnloom.Scenario.from_dict({
        "run": {"name": "mif", "conversations": conversations, "max_turns": 6, "seed": 1},
        "backends": {"sim": {"type": "scripted", "lines": [
            "Sure, here it is.", "\"no commas here at all\"", "<<Title>>\n* one\n* two",
            "Answer: my answer is yes. P.S. bye"]}},
        "participants": [{"name": "user", "agent": "multi-if-user", "settings": {"per_turn": 1}},
                         {"name": "assistant", "agent": "assistant"}],
        "scorers": [{"name": "multi-if"}, {"name": "diversity",
                                          "settings": {"participant": "assistant"}}],
    })


def _rescore(record: dict) -> list[ifeval.Evaluation]:
    """Independently recompute each answer's evaluation from the exported record."""
    added: list[dict] = []
    out = []
    spoken = [m for m in record["messages"] if m["role"] != "system"]
    for message, info in zip(spoken, record["turns"], strict=True):
        if info["participant"] == "user":
            added += info["meta"]["multi_if"]["new"]
        else:
            out.append(ifeval.evaluate([parse_instruction(d) for d in added],
                                       message["content"]))
    return out


def test_multi_if_scenario_end_to_end(tmp_path: Path, only_this_plugin) -> None:
    records = turnloom.run(_scenario(), out=tmp_path / "run", progress=False).conversations()
    assert len(records) == 6
    for record in records:
        assert record["errors"] == [] and record["stop_reason"] == "max_turns"
        assert [len(t) for t in record["meta"]["multi_if"]["added"]] == [1, 1, 1]
        answers = [t for t in record["turns"] if t["participant"] == "assistant"]
        for ev, info in zip(_rescore(record), answers):
            assert info["scores"]["multi-if"] == {"turn": info["scores"]["multi-if"]["turn"],
                                                  "instructions": len(ev.strict),
                                                  **ev.scores()}
        assert [a["scores"]["multi-if"]["instructions"] for a in answers] == [1, 2, 3]
        assert set(record["scores"]["diversity"]) >= {"distinct_1", "distinct_4", "repetition"}
    curve = multi_if.accuracy_curve(records)
    assert sorted(curve) == [1, 2, 3] and all(c["n"] == 6 for c in curve.values())


def test_resume_keeps_the_instruction_state(tmp_path: Path, only_this_plugin) -> None:
    full = turnloom.run(_scenario(4), out=tmp_path / "full", progress=False)
    # Cut the log half-way (as a crash would), then resume: the result must be identical,
    # so the simulated user found its instructions in the logged conversation.meta.
    run_dir = tmp_path / "cut"
    turnloom.run(_scenario(4), out=run_dir, progress=False)
    log = run_dir / "turns.wal"
    data = log.read_bytes()
    log.write_bytes(data[:len(data) // 2])
    for name in ("conversations.jsonl", "scores.jsonl", "summary.json"):
        (run_dir / name).unlink(missing_ok=True)
    resumed = turnloom.resume(run_dir, progress=False)
    assert resumed.conversations_path.read_bytes() == full.conversations_path.read_bytes()


@pytest.mark.model
def test_multi_if_example_runs_on_smollm2(tmp_path: Path, embedded_model: None) -> None:
    data = turnloom.load_scenario(EXAMPLES / "multi_if.toml").to_dict()
    data["run"].update(conversations=2, batch_size=2)
    data["participants"][1]["sampling"]["max_new_tokens"] = 16
    data["backends"]["local"]["settings"]["threads"] = 1
    result = turnloom.run(turnloom.Scenario.from_dict(data), out=tmp_path / "mif",
                          progress=False)
    records = result.conversations()
    assert len(records) == 2
    for record in records:
        assert record["errors"] == []
        answers = [t for t in record["turns"] if t["participant"] == "assistant"]
        assert len(answers) == 3
        assert [a["scores"]["multi-if"]["turn"] for a in answers] == [1, 2, 3]
        for ev, info in zip(_rescore(record), answers):
            assert info["scores"]["multi-if"]["prompt_strict"] == ev.scores()["prompt_strict"]
    json.dumps(multi_if.accuracy_curve(records))


def test_multi_if_reading_counts_a_word_per_chinese_character() -> None:
    # 35 Han characters in 5 space-separated runs: Multi-IF's code counts 35 words.
    answer = "我们今天去公园 散步因为天气很 好而且阳光明媚 大家都很开心地 玩了一整个下午"
    assert sum(ch.strip() != "" for ch in answer) == 35
    at_least_30 = parse_instruction({"type": "length_constraints:number_words",
                                     "num_words": 30, "relation": "at least"})
    assert ifeval.evaluate([at_least_30], answer, "multi-if").strict == (True,)
    # Google's IFEval counts runs of word characters: 5.
    assert ifeval.evaluate([at_least_30], answer, "ifeval").strict == (False,)
    assert multi_if.MultiIfScorer({}).reading == "multi-if"


def test_multi_if_reading_splits_hindi_sentences_on_danda() -> None:
    answer = "मैं आज बाजार गया। मैंने फल खरीदे। फिर मैं घर लौट आया।"
    three = parse_instruction({"type": "length_constraints:number_sentences",
                               "num_sentences": 3, "relation": "at least"})
    assert ifeval.evaluate([three], answer, "multi-if").strict == (True,)
    # nltk's English Punkt model does not know the danda: one sentence.
    assert ifeval.evaluate([three], answer, "ifeval").strict == (False,)


def test_multi_if_scorer_rejects_an_unknown_reading() -> None:
    with pytest.raises(ValueError, match="invalid multi-if settings"):
        multi_if.MultiIfScorer({"reading": "xx"})
