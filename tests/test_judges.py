"""LLM judges through the engine (batched requests, strict parsing, one re-ask,
unparseable verdicts recorded, resume judging once), and hidden views."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Sequence

import pytest

import turnloom
from turnloom import Scenario, hookimpl
from turnloom.agents import Reply
from turnloom.backends.base import GenRequest, GenResult
from turnloom.backends.scripted import ScriptedBackend
from turnloom.config import ScenarioError
from turnloom.judging import Judge, JudgeCall, Unparseable
from turnloom.plugins import get_plugin_manager
from turnloom.records import ConversationState

LINES = ["Sure, here is a short answer.", "Could you tell me more?", "Let me think."]


class JudgingBackend(ScriptedBackend):
    """Scripted replies for turns; for judge prompts (holding "[judge:MODE]") a
    reply by MODE: `good` rates by prompt length, `flaky` is garbage the first
    time a prompt is seen, `broken` is always garbage."""

    seen: dict[tuple[int, ...], int] = {}  # (tree, *prompt) -> times asked
    judge_requests: list[GenRequest] = []

    async def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        results = await super().generate(requests)
        tok = self.chat_format.tokenizer
        out = []
        for req, res in zip(requests, results):
            prompt = tok.decode(req.input_ids)
            if "[judge:" not in prompt:
                out.append(res)
                continue
            JudgingBackend.judge_requests.append(req)
            mode = prompt.split("[judge:", 1)[1].split("]", 1)[0]
            key = (req.affinity, *req.input_ids)
            n = JudgingBackend.seen[key] = JudgingBackend.seen.get(key, 0) + 1
            if mode == "good" or (mode == "flaky" and n > 1):
                text = f"Rating: [[{1 + len(req.input_ids) % 10}]]"
            else:
                text = "I think it was fine."
            ids = tok.encode(text)
            out.append(GenResult(rid=req.rid, output_ids=ids, text=text, finish_reason="stop",
                                 prompt_tokens=len(req.input_ids)))
        return out


class RatingJudge:
    """Rates each assistant turn 1-10; format "Rating: [[N]]"."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.mode = settings.get("mode", "good")

    def calls(self, conversation: ConversationState) -> list[JudgeCall]:
        return [JudgeCall(key=f"turn{t.turn}",
                          messages=(("system", f"[judge:{self.mode}] Rate reply {t.turn}."),
                                    ("user", t.text)))
                for t in conversation.turns if t.participant == "assistant"]

    def parse(self, call: JudgeCall, text: str) -> int:
        if not text.startswith("Rating: [[") or not text.endswith("]]"):
            raise Unparseable(f"no rating in {text!r}")
        return int(text[10:-2])

    def score(self, conversation: ConversationState, verdicts: dict[str, Any]) -> dict[str, Any]:
        ratings = [v for v in verdicts.values() if v is not None]
        return {"mean": sum(ratings) / len(ratings) if ratings else None, "n": len(ratings),
                "keys": list(verdicts)}


class BadJudge(RatingJudge):
    def calls(self, conversation: ConversationState) -> list[Any]:
        return ["not a call"]


class Plugin:
    @hookimpl
    def register_backends(self, register):  # type: ignore[no-untyped-def]
        register("judging", lambda settings: JudgingBackend(LINES, **settings))

    @hookimpl
    def register_judges(self, register):  # type: ignore[no-untyped-def]
        register("rating", RatingJudge)
        register("bad", BadJudge)


def scenario(judges: list[dict[str, Any]], **run: Any) -> Scenario:
    return Scenario.from_dict({
        "run": {"name": "j", "conversations": 5, "max_turns": 4, "seed": 3, "batch_size": 8,
                **run},
        "backends": {"sim": {"type": "judging"}},
        "participants": [{"name": "user", "agent": "user-simulator"},
                         {"name": "assistant", "agent": "assistant"}],
        "judges": judges,
    })


def run(tmp_path: Path, s: Scenario, name: str = "run") -> turnloom.RunResult:
    pm = get_plugin_manager(autoload=False)
    pm.register(Plugin())
    return turnloom.run(s, out=tmp_path / name, progress=False, plugin_manager=pm)


def test_judge_scores_every_conversation(tmp_path: Path) -> None:
    JudgingBackend.judge_requests = []
    result = run(tmp_path, scenario([{"name": "quality", "judge": "rating"}]))
    recs = result.conversations()
    assert len(recs) == 5
    for rec in recs:
        score = rec["scores"]["quality"]
        assert score["keys"] == ["turn1", "turn3"]  # one call per assistant turn, in order
        assert score["n"] == 2 and 1 <= score["mean"] <= 10
        assert score["unparseable"] == 0
    assert len(JudgingBackend.judge_requests) == 10
    # Judge calls are sampled deterministically by default and carry derived seeds.
    assert {r.params.temperature for r in JudgingBackend.judge_requests} == {0.0}
    assert len({r.params.seed for r in JudgingBackend.judge_requests}) == 10
    assert result.summary["judges"]["quality"]["requests"] == 10
    assert result.summary["scores"]  # judge scores reach the summary like any other


def test_unparseable_output_is_asked_again_once_then_recorded(tmp_path: Path) -> None:
    JudgingBackend.seen = {}
    JudgingBackend.judge_requests = []
    s = scenario([{"name": "flaky", "judge": "rating", "settings": {"mode": "flaky"}},
                  {"name": "broken", "judge": "rating", "settings": {"mode": "broken"}}],
                 conversations=3)
    recs = run(tmp_path, s).conversations()
    for rec in recs:
        assert rec["scores"]["flaky"]["n"] == 2 and rec["scores"]["flaky"]["unparseable"] == 0
        broken = rec["scores"]["broken"]
        assert broken["n"] == 0 and broken["mean"] is None and broken["unparseable"] == 2
        assert rec["stop_reason"] == "max_turns" and rec["errors"] == []
    # 3 conversations x 2 turns x 2 judges, each asked twice: 24 requests, no more.
    assert len(JudgingBackend.judge_requests) == 24
    # The re-ask uses a new seed.
    by_prompt: dict[tuple[int, ...], set[int]] = {}  # (tree, *prompt) -> seeds
    for req in JudgingBackend.judge_requests:
        by_prompt.setdefault((req.affinity, *req.input_ids), set()).add(req.params.seed)  # type: ignore[arg-type]
    assert all(len(seeds) == 2 for seeds in by_prompt.values())


def test_judge_that_breaks_its_contract_is_recorded(tmp_path: Path) -> None:
    recs = run(tmp_path, scenario([{"name": "q", "judge": "bad"}], conversations=2)).conversations()
    for rec in recs:
        assert "q" not in rec["scores"]
        assert any("judge 'bad' ('q') failed in calls" in e for e in rec["errors"])


def test_resume_judges_each_conversation_once(tmp_path: Path) -> None:
    s = scenario([{"name": "quality", "judge": "rating"}], conversations=4)
    full = run(tmp_path, s, "full")
    # A log cut after the last turn of a conversation but before its end event:
    # resume must judge that conversation and reach the same output.
    from turnloom.wal import EndEvent, read_events, WalWriter

    events = list(read_events(full.run_dir / "turns.wal"))
    cut = next(i for i, ev in enumerate(events) if isinstance(ev, EndEvent))
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("manifest.json",):
        (partial / name).write_bytes((full.run_dir / name).read_bytes())
    w = WalWriter(partial / "turns.wal")
    for ev in events[:cut]:
        w.append(ev)
    w.close()
    pm = get_plugin_manager(autoload=False)
    pm.register(Plugin())
    resumed = turnloom.resume(partial, progress=False, plugin_manager=pm)
    assert resumed.conversations_path.read_bytes() == full.conversations_path.read_bytes()


def test_judges_are_checked_in_the_scenario() -> None:
    pm = get_plugin_manager(autoload=False)
    pm.register(Plugin())
    from turnloom.plugins import Registry

    registry = Registry.from_plugin_manager(pm)
    with pytest.raises(ScenarioError, match="unknown judge 'ratng'.*did you mean 'rating'"):
        scenario([{"name": "q", "judge": "ratng"}]).validate(registry)
    with pytest.raises(ScenarioError, match="two scores would be named 'q'"):
        Scenario.from_dict({**scenario([]).to_dict(), "scorers": [{"name": "q"}],
                            "judges": [{"name": "q", "judge": "rating"}]})
    with pytest.raises(ScenarioError, match="unknown backend 'nope'"):
        scenario([{"name": "q", "judge": "rating", "backend": "nope"}])
    # Sampling given in part keeps the judge deterministic.
    s = scenario([{"name": "q", "judge": "rating", "sampling": {"max_new_tokens": 9}}])
    assert s.judges[0].sampling.temperature == 0.0 and s.judges[0].sampling.max_new_tokens == 9


def test_judge_protocol_is_runtime_checkable() -> None:
    assert isinstance(RatingJudge({}), Judge)
    assert not isinstance(object(), Judge)


# -- hidden views ---------------------------------------------------------------------------


class Whisperer:
    """An environment whose messages only the assistant sees."""

    role = "user"

    def respond(self, conversation: ConversationState, me: str, rng: random.Random) -> Reply:
        return Reply(f"[hint {len(conversation.turns)}]")


class Blind:
    """An assistant that does not see the whisperer."""

    role = "assistant"

    def __init__(self, settings: dict[str, Any]) -> None:
        pass

    def system_prompt(self, conversation: ConversationState, me: str) -> None:
        return None

    def role_in_view(self, speaker: str, me: str) -> str | None:
        if speaker == "whisperer":
            return None
        return "assistant" if speaker == me else "user"

    def on_output(self, conversation: ConversationState, me: str, text: str,
                  finish_reason: str) -> Reply:
        return Reply(text)


class HiddenPlugin:
    @hookimpl
    def register_environments(self, register):  # type: ignore[no-untyped-def]
        register("whisperer", lambda settings: Whisperer())

    @hookimpl
    def register_agents(self, register):  # type: ignore[no-untyped-def]
        register("blind", Blind)


def test_hidden_messages_stay_out_of_a_view(tmp_path: Path) -> None:
    JudgingBackend.judge_requests = []
    s = Scenario.from_dict({
        "run": {"name": "h", "conversations": 2, "max_turns": 6, "seed": 1},
        "backends": {"sim": {"type": "judging"}},
        "participants": [{"name": "whisperer", "agent": "whisperer"},
                         {"name": "seer", "agent": "assistant"},
                         {"name": "blind", "agent": "blind"}],
    })
    pm = get_plugin_manager(autoload=False)
    pm.register(Plugin())
    pm.register(HiddenPlugin())
    log: list[tuple[GenRequest, GenResult]] = []

    original = JudgingBackend.generate

    async def spy(self: JudgingBackend, requests: Sequence[GenRequest]) -> list[GenResult]:
        results = await original(self, requests)
        log.extend(zip(requests, results))
        return results

    JudgingBackend.generate = spy  # type: ignore[method-assign]
    try:
        result = turnloom.run(s, out=tmp_path / "h", progress=False, plugin_manager=pm)
    finally:
        JudgingBackend.generate = original  # type: ignore[method-assign]
    tok = ScriptedBackend().chat_format.tokenizer
    prompts = [tok.decode(r.input_ids) for r, _ in log]
    # Two agents speak twice each per conversation; the blind one's prompts never hold a hint.
    assert len(prompts) == 8
    with_hint = [p for p in prompts if "[hint" in p]
    assert len(with_hint) == 4  # the seer's prompts
    # The transcript keeps every message.
    rec = result.conversations()[0]
    assert [m.get("name") for m in rec["messages"]] == ["whisperer", "seer", "blind"] * 2
    assert json.dumps(rec).count("[hint") == 2
