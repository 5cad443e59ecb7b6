"""SysBench sessions, CSR/ISR/SSR, the code-only scorer and the judge; diversity measures."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import turnloom
from turnloom.judging import JudgeCall, Unparseable
from turnloom.records import ConversationState, TurnRecord
from turnloom_scorers import diversity, sysbench


def test_metrics_follow_the_paper() -> None:
    # Turn 1 all satisfied, turn 2 one failure, turn 3 all satisfied: the session is stable
    # only up to the first failed turn.
    m = sysbench.metrics([[True, True], [True, False], [True]], session_turns=5)
    assert m == {"csr": 4 / 5, "isr": 2 / 3, "ssr": 1 / 5}
    assert sysbench.metrics([[True]] * 5, 5)["ssr"] == 1.0
    assert sysbench.metrics([[False], [True]], 5)["ssr"] == 0.0
    assert sysbench.metrics([], 5) == {}


def test_shipped_sessions_are_valid() -> None:
    sessions = sysbench.shipped_sessions()
    assert len(sessions) >= 2
    kinds = {c.type for s in sessions for t in s.turns for c in t.constraints}
    assert kinds == {"Action", "Content", "Background", "Role", "Format", "Style"}
    assert all(len(s.turns) == 5 for s in sessions)
    with pytest.raises(ValueError, match=r"constraint 'x'.*unknown instruction type"):
        sysbench.Constraint(type="Format", text="x", check={"type": "nope"})
    with pytest.raises(ValueError, match="invalid sysbench-user settings"):
        sysbench.SysbenchUser({"sessions": [{"id": "s", "system": "x", "turns": [
            {"message": "m", "constraints": [{"type": "Tone", "text": "t"}]}]}]})


def _session_run() -> ConversationState:
    """Plays the travel-agent session with fixed answers."""
    user = sysbench.SysbenchUser({})
    assistant = sysbench.SysbenchAssistant({})
    seed = next(s for s in range(100) if sysbench.pick_session(
        sysbench.shipped_sessions(), ConversationState("c", 0, s)).id == "travel-agent")
    conv = ConversationState("c", index=0, seed=seed)
    conv.system_prompts["assistant"] = assistant.system_prompt(conv, "assistant")
    answers = ["Try Kyoto in spring for the blossoms. - Lina",    # all code checks pass
               "Pack layers, and comfy shoes. - Lina",             # comma: fails
               "I only help with travel. - Lina",
               "* Temples\n* Gardens\n* Markets",
               "April is the best month to go. - Lina"]
    for answer in answers:
        reply = user.respond(conv, "user", random.Random(0))
        for who, text, meta in (("user", reply.text, reply.meta), ("assistant", answer, {})):
            conv.messages.append((who, who, text))
            conv.turns.append(TurnRecord(conversation_id="c", branch=0, turn=len(conv.turns),
                                         participant=who, role=who, text=text,
                                         node=len(conv.turns), meta=meta))
    assert user.respond(conv, "user", random.Random(0)).stop == "sysbench_done"
    return conv


def test_code_only_scorer() -> None:
    conv = _session_run()
    assert "Lina" in conv.system_prompts["assistant"]
    score = sysbench.SysbenchScorer({}).score_conversation(conv)
    # Code-checked per turn: [T,T,T], [T,F], [T], [T,T], [T,T]
    assert score["checked"] == 10 and score["not_checked"] == 6
    assert score["csr"] == pytest.approx(9 / 10)
    assert score["isr"] == pytest.approx(4 / 5)
    assert score["ssr"] == pytest.approx(1 / 5)
    assert score["csr.Style"] == pytest.approx(3 / 4)


def test_judge_asks_only_what_code_cannot_check() -> None:
    conv = _session_run()
    judge = sysbench.SysbenchJudge({})
    calls = judge.calls(conv)
    assert [c.key for c in calls] == ["turn1.c3", "turn2.c2", "turn3.c0", "turn3.c1", "turn4.c2",
                                      "turn5.c2"]
    text = calls[2].messages[1][1]
    assert "Lina" in text and "Politely declines" in text and "I only help with travel." in text
    parse = judge.parse
    assert parse(calls[0], '{"satisfied": true, "reason": "names Kyoto"}') == {
        "satisfied": True, "reason": "names Kyoto"}
    assert parse(calls[0], '```json\n{"satisfied": false}\n```')["satisfied"] is False
    for bad in ('satisfied: true', '{"satisfied": "yes"}', '[true]', 'Sure! {"satisfied": true}'):
        with pytest.raises(Unparseable):
            parse(calls[0], bad)
    verdicts = {c.key: {"satisfied": True, "reason": ""} for c in calls}
    verdicts["turn3.c0"] = None  # unparseable: counted as not satisfied
    score = judge.score(conv, verdicts)
    assert (score["constraints"], score["judged"], score["unverified"]) == (16, 5, 1)
    assert score["csr"] == pytest.approx(14 / 16)
    assert score["isr"] == pytest.approx(3 / 5)
    assert score["ssr"] == pytest.approx(1 / 5)
    rows = [{"scores": {"sb": score}}, {"scores": {}}]
    assert sysbench.corpus_metrics(rows, "sb")["ssr"] == pytest.approx(0.2)


def _play(session: dict, answers: list[str], index: int = 0) -> ConversationState:
    """Plays a one-session deck with fixed answers through the real environment."""
    user = sysbench.SysbenchUser({"sessions": [session]})
    conv = ConversationState("c", index=index, seed=index)
    for answer in answers:
        reply = user.respond(conv, "user", random.Random(0))
        if reply.stop:
            break
        for who, text, meta in (("user", reply.text, reply.meta), ("assistant", answer, {})):
            conv.messages.append((who, who, text))
            conv.turns.append(TurnRecord(conversation_id="c", branch=0, turn=len(conv.turns),
                                         participant=who, role=who, text=text,
                                         node=len(conv.turns), meta=meta))
    return conv


NO_COMMA = {"type": "Style", "text": "No commas.", "check": {"type": "punctuation:no_comma"}}
JUDGED = {"type": "Content", "text": "Answers the question."}


def _session(sid: str, checklists: list[list[dict]], dependent: bool | None = None,
             alignments: list[str | None] | None = None) -> dict:
    alignments = alignments or [None] * len(checklists)
    return {"id": sid, "system": "Never use commas.", "dependent": dependent,
            "turns": [{"message": f"question {k + 1}", "constraints": cs,
                       **({"alignment": a} if a else {})}
                      for k, (cs, a) in enumerate(zip(checklists, alignments))]}


def test_code_only_ssr_divides_by_the_checked_turns() -> None:
    # Five turns, turns 3 and 5 have no code check; every checked constraint passes.
    session = _session("s", [[NO_COMMA], [NO_COMMA], [JUDGED], [NO_COMMA], [JUDGED]])
    conv = _play(session, ["ok"] * 5)
    score = sysbench.SysbenchScorer({}).score_conversation(conv)
    assert (score["checked"], score["not_checked"]) == (3, 2)
    # Stable through all three checked turns: SSR 1, not 3/5.
    assert score["ssr"] == 1.0 and score["csr"] == 1.0 and score["isr"] == 1.0
    # A failure at the second checked turn: streak 1 of 3 checked turns.
    score = sysbench.SysbenchScorer({}).score_conversation(
        _play(session, ["ok", "a, b", "ok", "ok", "ok"]))
    assert score["ssr"] == pytest.approx(1 / 3)
    # Unanswered checked turns (the conversation stopped early) still count against SSR.
    score = sysbench.SysbenchScorer({}).score_conversation(_play(session, ["ok", "ok"]))
    assert score["ssr"] == pytest.approx(2 / 3)


def test_corpus_metrics_pool_as_the_official_analysis() -> None:
    # Session A (dependent): 1 turn of 1 constraint, satisfied; the rest of its turns fail.
    # Session B (parallel): first turn 1 of 3 constraints.
    a = _session("a", [[NO_COMMA], [NO_COMMA]], dependent=True, alignments=["aligned", "misaligned"])
    b = _session("b", [[NO_COMMA, NO_COMMA, JUDGED], [NO_COMMA]], dependent=False,
                 alignments=["misaligned", "aligned"])
    judge = sysbench.SysbenchJudge({})
    conv_a = _play(a, ["fine", "x, y"])
    conv_b = _play(b, ["x, y", "fine"])
    score_a = judge.score(conv_a, {})
    score_b = judge.score(conv_b, {"turn1.c2": {"satisfied": False, "reason": ""}})
    assert (score_a["csr"], score_b["csr"]) == (0.5, 0.25)
    run = sysbench.corpus_metrics([{"scores": {"sb": score_a}}, {"scores": {"sb": score_b}},
                                   {"scores": {}}], "sb")
    # CSR: (1 + 1) / (2 + 4) = 1/3, where a mean of sessions would give (1/2 + 1/4) / 2.
    assert run["csr"] == pytest.approx(2 / 6)
    # ISR over turns: A's turn 1, B's turn 2 satisfied of four turns.
    assert run["isr"] == pytest.approx(2 / 4)
    assert run["isr.aligned"] == 1.0 and run["isr.misaligned"] == 0.0
    # SSR: A streak 1 of 2, B streak 0 of 2.
    assert run["ssr"] == pytest.approx(0.25)
    assert (run["ssr.dependent"], run["ssr.parallel"]) == (0.5, 0.0)
    assert (run["ssr.R1"], run["ssr.R2"]) == (0.5, 0.0)
    assert run["csr.Style"] == pytest.approx(2 / 5) and run["csr.Content"] == 0.0
    assert run["sessions"] == 2
    with pytest.raises(ValueError, match="corpus_metrics: a 'sb' score has no counts"):
        sysbench.corpus_metrics([{"scores": {"sb": {"csr": 1.0, "isr": 1.0, "ssr": 1.0}}}], "sb")


def test_sessions_are_played_once_each_by_index() -> None:
    sessions = [_session(f"s{k}", [[NO_COMMA]]) for k in range(5)]
    user = sysbench.SysbenchUser({"sessions": sessions})
    played = [sysbench.pick_session(user.sessions, ConversationState("c", i, 1000 + i),
                                    user.order).id for i in range(10)]
    assert played == [f"s{k}" for k in range(5)] * 2
    drawn = sysbench.SysbenchUser({"sessions": sessions, "order": "random"})
    assert drawn.order == "random"
    seeds = [sysbench.pick_session(drawn.sessions, ConversationState("c", i, i), "random").id
             for i in range(10)]
    assert seeds == [f"s{random.Random(i).randrange(5)}" for i in range(10)]
    with pytest.raises(ValueError, match="invalid sysbench-user settings: order"):
        sysbench.SysbenchUser({"order": "shuffled"})
    # The labels travel with the turns and the session.
    conv = _play(_session("x", [[NO_COMMA]], dependent=True, alignments=["misaligned"]), ["ok"])
    assert conv.turns[0].meta["sysbench"]["alignment"] == "misaligned"
    assert conv.meta["sysbench"]["dependent"] is True


def test_sysbench_scenario_with_judge_on_the_scripted_backend(tmp_path: Path,
                                                              monkeypatch) -> None:
    monkeypatch.delenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("TURNLOOM_PLUGINS", "scorers")
    scenario = turnloom.Scenario.from_dict({
        "run": {"name": "sysbench", "conversations": 4, "max_turns": 10, "seed": 4},
        "backends": {"sim": {"type": "scripted", "lines": [
            '{"satisfied": true, "reason": "ok"}', "Kyoto - Lina", "Is it 12?"]}},
        "participants": [{"name": "user", "agent": "sysbench-user"},
                         {"name": "assistant", "agent": "sysbench-assistant"}],
        "scorers": [{"name": "sysbench"}],
        "judges": [{"name": "sysbench-judged", "judge": "sysbench"}],
    })
    records = turnloom.run(scenario, out=tmp_path / "run", progress=False).conversations()
    for record in records:
        assert record["errors"] == []
        assert len(record["turns"]) == 10
        judged = record["scores"]["sysbench-judged"]
        code = record["scores"]["sysbench"]
        assert judged["constraints"] == code["checked"] + code["not_checked"]
        assert judged["judged"] + judged["unverified"] == code["not_checked"]
        assert 0.0 <= judged["ssr"] <= judged["isr"] <= 1.0
    assert sysbench.corpus_metrics(records, "sysbench-judged")["sessions"] == 4


# -- diversity -----------------------------------------------------------------------------


def test_distinct_n_and_self_similarity() -> None:
    assert diversity.distinct_n(["a b a b"], 1) == 0.5
    assert diversity.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert diversity.distinct_n([""], 1) == 0.0
    assert diversity.self_similarity(["the cat sat", "the cat sat", "dogs run fast"], 2) == \
        pytest.approx(2 / 3)
    assert diversity.self_similarity(["one"], 2) == 0.0
    stats = diversity.length_stats(["a b", "a b c d"])
    assert stats == {"words_mean": 3.0, "words_sd": 1.0, "words_min": 2, "words_max": 4}


def test_diversity_scorer_and_corpus() -> None:
    conv = ConversationState("c", index=0, seed=0)
    for i, (who, text) in enumerate([("user", "hi there"), ("bot", "I can help you today"),
                                     ("user", "ok"), ("bot", "I can help you today")]):
        conv.messages.append((who, who, text))
        conv.turns.append(TurnRecord(conversation_id="c", branch=0, turn=i, participant=who,
                                     role=who, text=text, node=i))
    scorer = diversity.DiversityScorer({"participant": "bot"})
    assert scorer.score_turn(conv, conv.turns[0]) is None
    assert scorer.score_turn(conv, conv.turns[1]) == {"words": 5, "max_overlap": 0.0}
    assert scorer.score_turn(conv, conv.turns[3]) == {"words": 5, "max_overlap": 1.0}
    whole = scorer.score_conversation(conv)
    assert whole["distinct_1"] == 0.5 and whole["repetition"] == 1.0
    with pytest.raises(ValueError, match="invalid diversity settings"):
        diversity.DiversityScorer({"participants": "bot"})

    def record(*texts: str) -> dict:
        return {"messages": [{"role": "assistant", "name": "bot", "content": t} for t in texts]}

    same = diversity.corpus_diversity([record("a b c"), record("a b c")])
    varied = diversity.corpus_diversity([record("a b c"), record("x y z")])
    assert same["self_similarity"] == 1.0 and varied["self_similarity"] == 0.0
    assert varied["distinct_1"] == 1.0 and same["distinct_1"] == 0.5
    assert diversity.corpus_diversity([]) == {}


def test_embedding_similarity_needs_torch() -> None:
    torch = pytest.importorskip("torch")
    vectors = {"a": [1.0, 0.0], "b": [1.0, 0.1], "c": [0.0, 1.0]}
    sim = diversity.embedding_self_similarity(
        ["a", "b", "c"], lambda texts: torch.tensor([vectors[t] for t in texts]))
    # Mean pairwise cosine: (cos(a,b) + cos(a,c) + cos(b,c)) / 3 = (1/sqrt(1.01) + 0 + 0.1/sqrt(1.01)) / 3.
    assert sim == pytest.approx(1.1 / 1.01 ** 0.5 / 3)


@pytest.mark.model
def test_embedded_model_embeddings_separate_topics(embedded_model: None) -> None:
    from turnloom_scorers.embedding import model_embedder

    embed = model_embedder()
    texts = ["How do I bake sourdough bread at home?", "What flour is best for baking bread?",
             "The stock market fell sharply after the interest rate decision.",
             "Shares dropped as the central bank raised rates."]
    vectors = embed(texts)
    assert tuple(vectors.shape) == (4, vectors.shape[1]) and vectors.shape[1] >= 64
    import torch

    v = torch.nn.functional.normalize(vectors, dim=-1)
    sims = v @ v.T
    # Same-topic pairs are closer than cross-topic pairs.
    assert sims[0, 1] > sims[0, 2] and sims[2, 3] > sims[1, 3]
    # Padding does not change a text's vector (batch of one vs batch of four).
    alone = embed(texts[:1])
    assert torch.allclose(alone[0], vectors[0], atol=1e-4)

    def record(text: str) -> dict:
        return {"messages": [{"role": "user", "name": "u", "content": text}]}

    div = diversity.corpus_diversity([record(t) for t in texts], embed=embed)
    assert 0.0 < div["embedding_self_similarity"] <= 1.0
