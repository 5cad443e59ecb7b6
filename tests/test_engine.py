"""The engine end to end on the scripted backend: counts, order, seeds, determinism,
branching, stops, memory, accounting, and faults recorded instead of raised."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import turnloom
from turnloom import Scenario, hookimpl
from turnloom.agents import Reply
from turnloom.backends.scripted import ScriptedBackend
from turnloom.plugins import get_plugin_manager
from turnloom.seeds import conversation_seed, turn_seed

LINES = ["Sure, here is a short answer.", "Could you tell me more?", "Let me think.",
         "Three ideas: a list, a plan and a check."]


def scenario(**over: Any) -> Scenario:
    d: dict[str, Any] = {
        "run": {"name": "t", "conversations": 6, "max_turns": 6, "seed": 11, "batch_size": 4,
                "max_inflight": 2},
        "backends": {"sim": {"type": "scripted", "lines": LINES}},
        "participants": [
            {"name": "user", "agent": "user-simulator", "system_prompt": "You are {profile.name}.",
             "sampler": "inline",
             "sampler_settings": {"profiles": [{"name": "Ada"}, {"name": "Bo"}]}},
            {"name": "assistant", "agent": "assistant", "system_prompt": "Be brief.",
             "sampling": {"max_new_tokens": 64}},
        ],
        "scorers": ["length", "stop-reason"],
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(d.get(key), dict):
            d[key] = {**d[key], **value}
        else:
            d[key] = value
    return Scenario.from_dict(d)


def run(tmp_path: Path, s: Scenario, *plugins: object, name: str = "run") -> turnloom.RunResult:
    pm = get_plugin_manager(autoload=False)
    for plugin in plugins:
        pm.register(plugin)
    return turnloom.run(s, out=tmp_path / name, progress=False, plugin_manager=pm)


def records(result: turnloom.RunResult) -> list[dict[str, Any]]:
    return result.conversations()


def test_counts_order_and_roles(tmp_path: Path) -> None:
    result = run(tmp_path, scenario())
    recs = records(result)
    assert [r["index"] for r in recs] == list(range(6))
    assert all(r["branch"] == 0 for r in recs)
    for r in recs:
        assert r["stop_reason"] == "max_turns"
        assert len(r["turns"]) == 6
        assert r["messages"][0] == {"role": "system", "content": "Be brief."}
        speakers = [m["name"] for m in r["messages"][1:]]
        assert speakers == ["user", "assistant"] * 3
        assert [m["role"] for m in r["messages"][1:]] == ["user", "assistant"] * 3
        assert all(m["content"] in LINES for m in r["messages"][1:])
        prof = r["participants"]["user"]["profile"]
        assert r["participants"]["user"]["system_prompt"] == f"You are {prof['name']}."
    s = result.summary
    assert s["conversations"] == 6 and s["turns"] == 36 and s["failures"] == 0
    assert s["stop_reasons"] == {"max_turns": 6}
    assert (tmp_path / "run" / "manifest.json").is_file()
    scores = [json.loads(x) for x in (tmp_path / "run" / "scores.jsonl").read_text().splitlines()]
    assert [x["index"] for x in scores] == list(range(6))
    assert scores[0]["scores"]["length"]["turns"] == 6
    assert len(scores[0]["turn_scores"]) == 6


def test_opener_rotates_turn_order(tmp_path: Path) -> None:
    recs = records(run(tmp_path, scenario(turns={"opener": "assistant"})))
    assert [m["name"] for m in recs[0]["messages"][1:3]] == ["assistant", "user"]


def test_seeds_are_derived_and_recorded(tmp_path: Path) -> None:
    recs = records(run(tmp_path, scenario()))
    for r in recs:
        cseed = conversation_seed(11, r["index"])
        assert r["seed"] == cseed
        assert [t["seed"] for t in r["turns"]] == [turn_seed(cseed, 0, t) for t in range(6)]


def test_two_runs_are_identical(tmp_path: Path) -> None:
    a = run(tmp_path, scenario(), name="a")
    b = run(tmp_path, scenario(), name="b")
    assert a.conversations_path.read_bytes() == b.conversations_path.read_bytes()
    assert a.scores_path.read_bytes() == b.scores_path.read_bytes()
    c = run(tmp_path, scenario(run={"seed": 12}), name="c")
    assert c.conversations_path.read_bytes() != a.conversations_path.read_bytes()


class PromptLog(ScriptedBackend):
    """Scripted replies, keeping every request for inspection."""

    log: list[Any] = []

    async def generate(self, requests):  # type: ignore[no-untyped-def]
        results = await super().generate(requests)
        PromptLog.log.extend(zip(requests, results))
        return results


class PromptLogPlugin:
    @hookimpl
    def register_backends(self, register):  # type: ignore[no-untyped-def]
        register("prompt-log", lambda settings: PromptLog(**settings))


def test_prompts_extend_previous_prompt_with_exact_output_ids(tmp_path: Path) -> None:
    PromptLog.log = []
    s = scenario(backends={"sim": {"type": "prompt-log"}}, run={"conversations": 2})
    run(tmp_path, s, PromptLogPlugin())
    fmt = ScriptedBackend().chat_format
    by_lane: dict[tuple[int, tuple[int, ...]], list[Any]] = {}
    for req, res in PromptLog.log:
        by_lane.setdefault((req.affinity, tuple(req.input_ids[:40])), []).append(
            (req, res))
    prefix = fmt.generation_prefix("assistant")
    checked = 0
    for seq in by_lane.values():
        for (req, res), (nxt, _) in zip(seq, seq[1:]):
            own = req.input_ids + fmt.close_generated(res.output_ids, res.finish_reason)
            # Token-in/token-out: the next prompt starts with this prompt and the exact ids.
            assert nxt.input_ids[: len(own)] == own
            assert nxt.input_ids[-len(prefix):] == prefix
            checked += 1
    assert checked >= 4


class NodeSpy:
    def __init__(self) -> None:
        self.nodes: dict[tuple[int, int, int], int] = {}

    @hookimpl
    def on_turn_end(self, conversation, turn):  # type: ignore[no-untyped-def]
        self.nodes[(conversation.index, turn.branch, turn.turn)] = turn.node


def test_branching_shares_history(tmp_path: Path) -> None:
    spy = NodeSpy()
    s = scenario(branches=[{"at_turn": 2, "n": 3}], run={"conversations": 3})
    recs = records(run(tmp_path, s, spy))
    assert [(r["index"], r["branch"]) for r in recs] == [(i, b) for i in range(3) for b in range(3)]
    for i in range(3):
        group = [r for r in recs if r["index"] == i]
        assert len({json.dumps(r["messages"][:3]) for r in group}) == 1  # system + 2 turns shared
        seeds = {r["turns"][2]["seed"] for r in group}
        assert len(seeds) == 3  # each sibling sampled with its own seed
        assert all(len(r["turns"]) == 6 for r in group)
        # History stored once: the two shared turns were produced (and appended) once,
        # then each sibling grew its own four.
        assert sum(1 for key in spy.nodes if key[0] == i) == 2 + 3 * 4
        for t in range(2):
            assert (i, 1, t) not in spy.nodes and (i, 2, t) not in spy.nodes
        assert len({spy.nodes[(i, b, 2)] for b in range(3)}) == 3


def test_nested_branches_have_distinct_ids(tmp_path: Path) -> None:
    s = scenario(branches=[{"at_turn": 1, "n": 2}, {"at_turn": 3, "n": 3}],
                 run={"conversations": 1})
    recs = records(run(tmp_path, s))
    assert sorted(r["branch"] for r in recs) == list(range(6))


def test_stop_phrase_ends_conversation(tmp_path: Path) -> None:
    lines = ["hello there", "goodbye now"]
    s = scenario(backends={"sim": {"type": "scripted", "lines": lines}},
                 stop={"phrases": ["GOODBYE"]})
    for r in records(run(tmp_path, s)):
        assert r["stop_reason"] == "stop_phrase"
        assert "goodbye" in r["messages"][-1]["content"]
        assert all("goodbye" not in m["content"] for m in r["messages"][1:-1])


def test_user_simulator_stop_phrase(tmp_path: Path) -> None:
    lines = ["ok [END]", "fine"]
    s = scenario(backends={"sim": {"type": "scripted", "lines": lines}})
    d = s.to_dict()
    d["participants"][0]["settings"] = {"stop_phrases": ["[END]"]}
    recs = records(run(tmp_path, Scenario.from_dict(d)))
    stopped = [r for r in recs if r["stop_reason"] == "user_stop"]
    assert stopped
    for r in stopped:
        assert r["messages"][-1] == {"role": "user", "content": "ok", "name": "user"}


def test_max_turns_and_max_tokens(tmp_path: Path) -> None:
    recs = records(run(tmp_path, scenario(run={"max_turns": 3}), name="a"))
    assert all(len(r["turns"]) == 3 and r["stop_reason"] == "max_turns" for r in recs)
    recs = records(run(tmp_path, scenario(stop={"max_tokens": 120}), name="b"))
    assert all(r["stop_reason"] == "max_tokens" and len(r["turns"]) < 6 for r in recs)


def test_environments_answer_inline(tmp_path: Path) -> None:
    s = Scenario.from_dict({
        "run": {"conversations": 3, "max_turns": 5},
        "backends": {"sim": {"type": "scripted", "lines": LINES}},
        "participants": [
            {"name": "student", "agent": "scripted-user",
             "settings": {"lines": ["one", "two", "three"]}},
            {"name": "echo", "agent": "echo", "settings": {"prefix": "> "}},
        ],
    })
    recs = records(run(tmp_path, s))
    assert [m["content"] for m in recs[0]["messages"]] == ["one", "> one", "two", "> two", "three"]
    assert all(t["prompt_tokens"] == 0 for t in recs[0]["turns"])


def test_freeing_keeps_the_forest_small(tmp_path: Path) -> None:
    s = scenario(run={"conversations": 120, "max_active": 8, "batch_size": 8})
    summary = run(tmp_path, s).summary
    mem = summary["memory"]
    assert mem["peak_active_conversations"] <= 8
    assert mem["peak_live_nodes"] <= 8 * 7  # root + 6 turns per active conversation
    assert mem["final_forest"]["live_nodes"] == 0
    assert summary["conversations"] == 120


def test_per_participant_accounting(tmp_path: Path) -> None:
    result = run(tmp_path, scenario())
    recs = records(result)
    parts = result.summary["participants"]
    for name in ("user", "assistant"):
        assert parts[name]["turns"] == 18
        assert parts[name]["requests"] == 18
        assert parts[name]["prompt_tokens"] == sum(r["tokens"][name]["prompt"] for r in recs)
        assert parts[name]["completion_tokens"] == sum(
            r["tokens"][name]["completion"] for r in recs)
    sim = result.summary["backends"]["sim"]
    assert sim["requests"] == 36 and sim["turns"] == 36
    assert sim["prompt_tokens"] == parts["user"]["prompt_tokens"] + parts["assistant"]["prompt_tokens"]
    assert result.summary["scores"]["length.turns"] == 6
    assert (sim["batch_size"], sim["max_inflight"]) == (4, 2)  # the scenario's


def test_batch_size_is_capped_by_the_backend(tmp_path: Path) -> None:
    s = scenario(run={"batch_size": 64},
                 backends={"sim": {"type": "scripted", "lines": LINES, "max_batch": 3}})
    sim = run(tmp_path, s).summary["backends"]["sim"]
    assert (sim["batch_size"], sim["info"]["max_batch"]) == (3, 3)


def test_cache_model_counts_cached_tokens(tmp_path: Path) -> None:
    s = scenario(backends={"sim": {"type": "scripted", "cache_capacity_tokens": 100_000}})
    summary = run(tmp_path, s).summary
    assert summary["cache"]["hit_rate"] > 0.3
    assert summary["backends"]["sim"]["cached_tokens_source"] == "backend"


class Raiser:
    @hookimpl
    def on_turn_end(self, conversation, turn):  # type: ignore[no-untyped-def]
        if conversation.index == 2 and turn.turn == 1:
            raise RuntimeError("boom")


def test_plugin_raising_in_hook_is_recorded(tmp_path: Path) -> None:
    result = run(tmp_path, scenario(), Raiser())
    recs = records(result)
    bad = recs[2]
    assert bad["stop_reason"] == "error" and len(bad["turns"]) == 2
    assert any("raised in on_turn_end" in e and "boom" in e for e in bad["errors"])
    assert all(r["stop_reason"] == "max_turns" for i, r in enumerate(recs) if i != 2)
    assert result.summary["failures"] == 1


class Stopper:
    @hookimpl
    def should_stop(self, conversation, turn):  # type: ignore[no-untyped-def]
        return "enough" if turn.turn == 3 else None


def test_should_stop_hook(tmp_path: Path) -> None:
    recs = records(run(tmp_path, scenario(), Stopper()))
    assert all(r["stop_reason"] == "enough" and len(r["turns"]) == 4 for r in recs)


class Garbage:
    role = "assistant"

    def __init__(self, settings: dict[str, Any]) -> None:
        pass

    def system_prompt(self, conversation, me):  # type: ignore[no-untyped-def]
        return None

    def role_in_view(self, speaker, me):  # type: ignore[no-untyped-def]
        return "assistant" if speaker == me else "user"

    def on_output(self, conversation, me, text, finish_reason):  # type: ignore[no-untyped-def]
        return 42 if conversation.index % 2 else Reply(text)


class GarbagePlugin:
    @hookimpl
    def register_agents(self, register):  # type: ignore[no-untyped-def]
        register("garbage", Garbage)


def test_agent_returning_garbage_is_recorded(tmp_path: Path) -> None:
    d = scenario().to_dict()
    d["participants"][1]["agent"] = "garbage"
    d["participants"][1]["system_prompt"] = None
    result = run(tmp_path, Scenario.from_dict(d), GarbagePlugin())
    recs = records(result)
    for r in recs:
        if r["index"] % 2:
            assert r["stop_reason"] == "error" and len(r["turns"]) == 1
            assert any("expected Reply" in e for e in r["errors"])
        else:
            assert r["stop_reason"] == "max_turns"
    assert result.summary["failures"] == 3


class BadScorer:
    def __init__(self, settings: dict[str, Any]) -> None:
        pass

    def score_turn(self, conversation, turn):  # type: ignore[no-untyped-def]
        raise ValueError("no score")

    def score_conversation(self, conversation):  # type: ignore[no-untyped-def]
        return {"ok": 1}


class BadScorerPlugin:
    @hookimpl
    def register_scorers(self, register):  # type: ignore[no-untyped-def]
        register("bad", BadScorer)


def test_scorer_exception_is_recorded_not_fatal(tmp_path: Path) -> None:
    recs = records(run(tmp_path, scenario(scorers=["bad"]), BadScorerPlugin()))
    for r in recs:
        assert r["stop_reason"] == "max_turns"
        assert r["scores"] == {"bad": {"ok": 1}}
        assert sum("scorer 'bad' failed" in e for e in r["errors"]) == 6


def test_backend_errors_are_retried_then_recorded(tmp_path: Path) -> None:
    flaky = {"sim": {"type": "scripted", "lines": LINES, "fail_every": 5}}
    result = run(tmp_path, scenario(backends=flaky, run={"retry_backoff_s": 0.0}), name="a")
    assert result.summary["failures"] == 0
    assert result.summary["backends"]["sim"]["retries"] > 0
    s = scenario(backends=flaky, run={"retry_backoff_s": 0.0, "max_retries": 0})
    result = run(tmp_path, s, name="b")
    recs = records(result)
    failed = [r for r in recs if r["stop_reason"] == "error"]
    assert failed and result.summary["failures"] == len(failed)
    assert all(any("scripted failure" in e for e in r["errors"]) for r in failed)


def test_profile_values_are_not_template_code(tmp_path: Path) -> None:
    d = scenario(run={"conversations": 1}).to_dict()
    d["participants"][0]["system_prompt"] = "P: {profile} / {profile.name} / {0.__class__}"
    d["participants"][0]["sampler_settings"] = {"profiles": [
        {"name": "{profile.name}{0.__class__}", "age": 3}]}
    rec = records(run(tmp_path, Scenario.from_dict(d)))[0]
    assert rec["participants"]["user"]["system_prompt"] == (
        "P: name: {profile.name}{0.__class__}\nage: 3 / {profile.name}{0.__class__} / "
        "{0.__class__}")


def test_existing_run_dir_needs_overwrite(tmp_path: Path) -> None:
    run(tmp_path, scenario(run={"conversations": 1}))
    with pytest.raises(turnloom.api.rundir.RunDirError, match="overwrite"):
        run(tmp_path, scenario(run={"conversations": 1}))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("x")
    pm = get_plugin_manager(autoload=False)
    with pytest.raises(turnloom.api.rundir.RunDirError, match="not a turnloom run"):
        turnloom.run(scenario(run={"conversations": 1}), out=tmp_path / "other", overwrite=True,
                     progress=False, plugin_manager=pm)
    assert (tmp_path / "other" / "precious.txt").is_file()


def test_arun_inside_a_running_loop(tmp_path: Path) -> None:
    import asyncio

    async def pipeline() -> turnloom.RunResult:
        return await turnloom.arun(scenario(run={"conversations": 2}), out=tmp_path / "x",
                                   progress=False,
                                   plugin_manager=get_plugin_manager(autoload=False))

    result = asyncio.run(pipeline())
    assert result.summary["conversations"] == 2


class Lifecycle:
    def __init__(self) -> None:
        self.started: list[tuple[int, int]] = []
        self.ended: list[tuple[int, int, str]] = []

    @hookimpl
    def on_conversation_start(self, conversation):  # type: ignore[no-untyped-def]
        self.started.append((conversation.index, conversation.branch))
        conversation.meta["tag"] = f"c{conversation.index}b{conversation.branch}"

    @hookimpl
    def on_conversation_end(self, conversation):  # type: ignore[no-untyped-def]
        self.ended.append((conversation.index, conversation.branch, conversation.stop_reason))


def test_lifecycle_hooks_run_per_branch(tmp_path: Path) -> None:
    spy = Lifecycle()
    s = scenario(branches=[{"at_turn": 1, "n": 2}], run={"conversations": 3})
    recs = records(run(tmp_path, s, spy))
    assert sorted(spy.started) == [(i, b) for i in range(3) for b in range(2)]
    assert sorted(spy.ended) == [(i, b, "max_turns") for i in range(3) for b in range(2)]
    assert [r["meta"]["tag"] for r in recs] == [f"c{i}b{b}" for i in range(3) for b in range(2)]


class BadMeta:
    @hookimpl
    def on_turn_end(self, conversation, turn):  # type: ignore[no-untyped-def]
        if conversation.index == 1:
            conversation.meta["oops"] = object()


def test_unserialisable_plugin_data_is_recorded(tmp_path: Path) -> None:
    recs = records(run(tmp_path, scenario(run={"conversations": 2}), BadMeta()))
    assert recs[0]["stop_reason"] == "max_turns"
    assert recs[1]["stop_reason"] == "error" and len(recs[1]["turns"]) == 1
    assert any("not JSON-serialisable" in e for e in recs[1]["errors"])
    assert recs[1]["meta"] == {}


def test_a_shard_of_indices_matches_the_full_run(tmp_path: Path) -> None:
    full = records(run(tmp_path, scenario(), name="full"))
    part = run(tmp_path, scenario(run={"first_index": 2, "conversations": 3}), name="part")
    assert records(part) == full[2:5]
    assert part.summary["conversations"] == 3


def test_fork_turn_drawn_per_conversation(tmp_path: Path) -> None:
    s = scenario(run={"conversations": 12, "max_turns": 8},
                 branches=[{"at_turn": 1, "to_turn": 5, "n": 2}])
    recs = records(run(tmp_path, s))
    forks = {}
    for cid in {r["conversation_id"] for r in recs}:
        a, b = [r for r in recs if r["conversation_id"] == cid]
        shared = next(i for i, (x, y) in enumerate(zip(a["turns"], b["turns"]))
                      if x["seed"] != y["seed"])
        forks[cid] = shared
    assert set(forks.values()) <= {1, 3, 5}  # the assistant's turns in range
    assert len(set(forks.values())) >= 2  # drawn per conversation
    again = records(run(tmp_path, s, name="again"))
    assert again == recs
    with pytest.raises(turnloom.ScenarioError, match="to_turn"):
        scenario(branches=[{"at_turn": 1, "to_turn": 9}])
