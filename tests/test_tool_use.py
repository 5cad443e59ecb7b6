"""Tool use end to end: the shop domain on the scripted backend's by-turn playback,
tool routing and its budgets, the `next_speaker` hook, environment state after kill -9
and resume, state across branches, and non-JSON state (SQLite, a directory) snapshotted
into JSON state."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import turnloom
from turnloom import Scenario, hookimpl
from turnloom.agents import Reply
from turnloom.backends.base import BackendError, GenRequest, SamplingParams
from turnloom.backends.scripted import Script, ScriptedBackend
from turnloom.builtin.snapshots import (
    restore_directory,
    restore_sqlite,
    snapshot_directory,
    snapshot_sqlite,
)
from turnloom.plugins import get_plugin_manager
from turnloom.tokenizer import ByteTokenizer
from turnloom.chat_template import ChatMLFormat
from turnloom.tools.parsers import HermesParser

turnloom_tau = pytest.importorskip("turnloom_tau")
from turnloom_tau import load_database, pass_hat_k_from_records  # noqa: E402
from turnloom_tau.gold import gold_scripts  # noqa: E402
from turnloom_tau.tasks import expected_state, load_tasks  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tool_use.toml"
HERMES = HermesParser()


def records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "conversations.jsonl").read_text().splitlines()]


def call(name: str, **args: Any) -> str:
    return HERMES.render("", [(name, args)])


# --- the scripted backend's by-turn playback ------------------------------------------------

FMT = ChatMLFormat(ByteTokenizer())


def prompt(messages: list[tuple[str, str]]) -> list[int]:
    return FMT.prompt_ids([{"role": r, "content": c} for r, c in messages], "assistant", None)


def ask(backend: ScriptedBackend, ids: list[int]) -> Any:
    req = GenRequest(rid="r", input_ids=ids, params=SamplingParams(seed=1, max_new_tokens=200))
    return asyncio.run(backend.generate([req]))[0]


def test_by_turn_plays_the_matching_script_one_line_per_own_message() -> None:
    b = ScriptedBackend(scripts=[Script("case A", ("a0", "a1", "a2")),
                                 Script("case B", ("b0", "b1"))])
    assert ask(b, prompt([("user", "hi (case B)")])).text == "b0"
    two = prompt([("user", "hi (case A)"), ("assistant", "a0"), ("user", "more"),
                  ("assistant", "a1"), ("tool", "42"), ("user", "and?")])
    assert ask(b, two).text == "a2"
    over = ask(b, prompt([("user", "case B"), ("assistant", "b0"), ("user", "x"),
                          ("assistant", "b1"), ("user", "y")]))
    assert over.finish_reason == "error" and "has 2 lines, asked for line 3" in over.error
    none = ask(b, prompt([("user", "case C")]))
    assert none.finish_reason == "error" and "no script's `match`" in none.error


def test_by_turn_settings_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps([{"match": "k", "lines": ["one"]}]))
    b = ScriptedBackend.from_settings({"script": "by-turn", "scripts_file": str(path)})
    assert ask(b, prompt([("user", "k")])).text == "one"
    inline = ScriptedBackend.from_settings({"script": "by-turn",
                                            "scripts": [{"match": "k", "lines": ["two"]}]})
    assert ask(inline, prompt([("user", "k")])).text == "two"
    with pytest.raises(BackendError, match="needs `scripts`"):
        ScriptedBackend.from_settings({"script": "by-turn"})
    with pytest.raises(BackendError, match='played with script = "by-turn"'):
        ScriptedBackend.from_settings({"scripts": [{"match": "k", "lines": ["x"]}]})
    with pytest.raises(BackendError, match="not both"):
        ScriptedBackend.from_settings({"script": "by-turn", "scripts_file": str(path),
                                       "scripts": [{"match": "k", "lines": ["x"]}]})
    with pytest.raises(BackendError, match="missing.json"):
        ScriptedBackend.from_settings({"script": "by-turn",
                                       "scripts_file": str(tmp_path / "missing.json")})
    path.write_text('[{"match": "k"}]')
    with pytest.raises(BackendError, match="lines"):
        ScriptedBackend.from_settings({"script": "by-turn", "scripts_file": str(path)})
    with pytest.raises(BackendError, match="invalid scripted backend settings"):
        ScriptedBackend.from_settings({"script": "in-order"})


def test_hash_mode_is_unchanged_by_scripts() -> None:
    plain = ScriptedBackend(["x", "y", "z"])
    ids = prompt([("user", "hello")])
    assert ask(plain, ids).text in {"x", "y", "z"}
    assert plain.scripts is None


def test_example_scripts_are_the_plugins_gold_scripts() -> None:
    for speaker in ("customer", "agent"):
        path = ROOT / "examples" / "data" / f"tau_gold_{speaker}.json"
        assert json.loads(path.read_text()) == gold_scripts(speaker), (
            f"{path.name} is stale: python -m turnloom_tau.gold examples/data")


# --- the shop example end to end ------------------------------------------------------------

@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tool_use") / "run"
    turnloom.run(turnloom.load_scenario(EXAMPLE), out=out, progress=False)
    return out


def test_example_plays_every_task_twice_to_reward_one(example_run: Path) -> None:
    recs = records(example_run)
    tasks = load_tasks()
    assert len(recs) == 2 * len(tasks)
    for rec in recs:
        score = rec["scores"]["tau-reward"]
        assert score["task"] == rec["index"] % len(tasks)
        assert score["trial"] == rec["index"] // len(tasks)
        assert score["reward"] == 1.0 and score["tool_errors"] == 0, rec["conversation_id"]
        assert rec["stop_reason"] == "customer_stop"
    assert pass_hat_k_from_records(recs) == {1: 1.0, 2: 1.0}


def test_example_records_are_openai_tool_calling(example_run: Path) -> None:
    rec = records(example_run)[0]
    calls = [c for m in rec["messages"] for c in m.get("tool_calls") or []]
    results = [m for m in rec["messages"] if m["role"] == "tool"]
    task = load_tasks()[0]
    assert [c["function"]["name"] for c in calls] == [name for name, _ in task.actions]
    assert [m["tool_call_id"] for m in results] == [c["id"] for c in calls]
    assert all(m["name"] == "shop" for m in results)
    names = {t["function"]["name"] for t in rec["participants"]["agent"]["tools"]}
    assert {"cancel_order", "get_order", "find_customer_by_email"} <= names
    # the customer's view hides the shop; the agent sees everything
    assert rec["participants"]["customer"]["view"]["shop"] is None
    assert rec["participants"]["agent"]["view"]["shop"] is not None


# --- routing and budgets -----------------------------------------------------------------------

def shop_scenario(agent_lines: list[str], max_turns: int = 12, **run: Any) -> Scenario:
    """The shop with a user who always says the same line and an agent playing
    `agent_lines` in order."""
    return Scenario.from_dict({
        "run": {"name": "route", "conversations": 1, "max_turns": max_turns, "seed": 5, **run},
        "backends": {
            "user": {"type": "scripted", "lines": ["Hello (case R)"]},
            "agent": {"type": "scripted", "script": "by-turn",
                      "scripts": [{"match": "(case R)", "lines": agent_lines}]},
        },
        "participants": [
            {"name": "user", "agent": "user-simulator", "backend": "user",
             "system_prompt": "You are a customer."},
            {"name": "agent", "agent": "tau-agent", "backend": "agent",
             "sampling": {"max_new_tokens": 400}},
            {"name": "shop", "agent": "tau-shop"},
        ],
        "turns": {"order": ["user", "agent"]},
        "scorers": [{"name": "tau-reward", "settings": {"agent": "agent"}}],
    })


def run_one(tmp_path: Path, scenario: Scenario, pm: Any = None) -> dict[str, Any]:
    turnloom.run(scenario, out=tmp_path / "run", progress=False, plugin_manager=pm)
    (rec,) = records(tmp_path / "run")
    return rec


def speakers(rec: dict[str, Any]) -> list[str]:
    return [t["participant"] for t in rec["turns"]]


def test_several_tool_steps_then_a_reply_then_the_customer(tmp_path: Path) -> None:
    lines = [call("find_customer_by_email", email="ana.ruiz@example.com"),
             call("get_order", order_id="#L1001"),
             HERMES.render("", [("get_product", {"product_id": "P401"}),
                                ("get_product", {"product_id": "P102"})]),
             "Order #L1001 holds a pack and a stove."]
    rec = run_one(tmp_path, shop_scenario(lines, max_turns=10))
    assert speakers(rec) == ["user", "agent", "shop", "agent", "shop", "agent", "shop", "shop",
                             "agent", "user"]
    assert rec["stop_reason"] == "max_turns"  # every message counts: calls and results too
    msgs = [m for m in rec["messages"] if m["role"] != "system"]
    call_ids = [c["id"] for m in msgs for c in m.get("tool_calls") or []]
    assert [m["tool_call_id"] for m in msgs if m["role"] == "tool"] == call_ids
    assert msgs[2]["content"] == "cus_ana_ruiz"
    assert msgs[8] == {"role": "assistant", "content": "Order #L1001 holds a pack and a stove.",
                       "name": "agent"}
    assert rec["scores"]["tau-reward"]["tool_errors"] == 0


def test_max_tool_steps_stops_a_run_of_tool_calls(tmp_path: Path) -> None:
    lines = [call("get_order", order_id="#L1001")] * 5 + ["done"]
    rec = run_one(tmp_path, shop_scenario(lines, max_turns=30, max_tool_steps=2))
    assert rec["stop_reason"] == "max_tool_steps"
    assert speakers(rec) == ["user", "agent", "shop", "agent", "shop", "agent"]


def test_max_tool_calls_caps_the_conversations_calls(tmp_path: Path) -> None:
    two = HERMES.render("", [("get_order", {"order_id": "#L1001"}),
                             ("get_product", {"product_id": "P401"})])
    rec = run_one(tmp_path, shop_scenario([two, "ok", two, "ok"], max_turns=30,
                                          max_tool_calls=3))
    assert rec["stop_reason"] == "max_tool_calls"
    calls = sum(len(m.get("tool_calls") or []) for m in rec["messages"])
    assert calls == 4 and speakers(rec)[-1] == "agent"


def test_unknown_tool_malformed_call_and_bad_arguments_are_answered_and_counted(
        tmp_path: Path) -> None:
    lines = [call("launch_rocket", target="moon"),
             '<tool_call>\n{"name": "get_order", "arguments": {"order_id": </tool_call>',
             call("get_order", order="#L1001"),
             "Sorry, I could not look that up."]
    rec = run_one(tmp_path, shop_scenario(lines, max_turns=8))
    assert speakers(rec) == ["user", "agent", "shop", "agent", "shop", "agent", "shop", "agent"]
    errors = [t["meta"].get("tool_error") for t in rec["turns"] if t["participant"] == "shop"]
    assert errors == ["unknown_tool", "invalid_json", "invalid_arguments"]
    answers = [m["content"] for m in rec["messages"] if m["role"] == "tool"]
    assert all(a.startswith("Error: ") for a in answers) and "launch_rocket" in answers[0]
    assert rec["scores"]["tau-reward"]["tool_errors"] == 3
    assert rec["errors"] == []  # answered to the agent, never a crash


class SkipThird:
    """Alternates the user and the assistant, leaving `third` out."""

    @hookimpl
    def next_speaker(self, conversation: Any, default: str) -> str | None:
        last = conversation.last
        if last is None:
            return None  # the turn order's opener
        return "assistant" if last.participant == "user" else "user"


class BadRouter:
    @hookimpl
    def next_speaker(self, conversation: Any, default: str) -> str | None:
        return "nobody"


def three_speakers(name: str) -> Scenario:
    return Scenario.from_dict({
        "run": {"name": name, "conversations": 1, "max_turns": 6, "seed": 1},
        "backends": {"sim": {"type": "scripted", "lines": ["hi"]}},
        "participants": [{"name": "user", "agent": "user-simulator"},
                         {"name": "assistant", "agent": "assistant"},
                         {"name": "third", "agent": "assistant"}],
    })


def test_next_speaker_hook_routes_turns(tmp_path: Path) -> None:
    plain = run_one(tmp_path / "a", three_speakers("plain"))
    assert speakers(plain) == ["user", "assistant", "third"] * 2
    pm = get_plugin_manager(autoload=False)
    pm.register(SkipThird())
    routed = run_one(tmp_path / "b", three_speakers("routed"), pm)
    assert speakers(routed) == ["user", "assistant"] * 3
    pm = get_plugin_manager(autoload=False)
    pm.register(BadRouter())
    bad = run_one(tmp_path / "c", three_speakers("bad"), pm)
    assert any("next_speaker named 'nobody'" in e for e in bad["errors"])


# --- state across branches ----------------------------------------------------------------------

class Ledger:
    """An environment that appends (branch, turn) to a list in its JSON state."""

    def tools(self, conversation: Any, me: str) -> None:
        return None  # no tools; having the method is what makes initial_state apply

    def initial_state(self, conversation: Any) -> Any:
        return {"log": []}

    def respond(self, conversation: Any, me: str, rng: random.Random) -> Reply:
        state = conversation.state
        state["log"].append([conversation.branch, len(conversation.turns)])
        return Reply(f"logged {len(state['log'])}", state=state)


class MetaMutator:
    """A plugin that changes nested `meta` in place on every turn, and records the final
    environment state into meta at the end."""

    @hookimpl
    def on_conversation_start(self, conversation: Any) -> None:
        conversation.meta.setdefault("seen", {"branches": []})

    @hookimpl
    def on_turn_end(self, conversation: Any, turn: Any) -> None:
        conversation.meta["seen"]["branches"].append(conversation.branch)

    @hookimpl
    def on_conversation_end(self, conversation: Any) -> None:
        conversation.meta["final_state"] = conversation.state


class LedgerPlugin(MetaMutator):
    @hookimpl
    def register_environments(self, register: Any) -> None:
        register("ledger", lambda settings=None: Ledger())


def test_branches_fork_state_and_meta_copy_on_write(tmp_path: Path) -> None:
    s = Scenario.from_dict({
        "run": {"name": "fork", "conversations": 2, "max_turns": 8, "seed": 3},
        "backends": {"sim": {"type": "scripted", "lines": ["hi", "ok", "go on"]}},
        "participants": [{"name": "user", "agent": "user-simulator"},
                         {"name": "ledger", "agent": "ledger"}],
        "branches": [{"at_turn": 2, "n": 3}, {"at_turn": 4, "n": 2}],  # user turns
    })
    pm = get_plugin_manager(autoload=False)
    pm.register(LedgerPlugin())
    turnloom.run(s, out=tmp_path / "run", progress=False, plugin_manager=pm)
    recs = records(tmp_path / "run")
    assert len(recs) == 2 * 3 * 2
    for rec in recs:
        b = rec["branch"]
        log = rec["meta"]["final_state"]["log"]
        # Branch ids are mixed-radix (first fork's choice + 3 x second's): the write at
        # turn 1 is shared by all, turn 3's by the first fork's line, the rest are own.
        assert [t for _, t in log] == [1, 3, 5, 7]
        assert [br for br, _ in log] == [0, b % 3, b, b], rec["conversation_id"]
        seen = rec["meta"]["seen"]["branches"]
        assert seen == [0, 0, b % 3, b % 3, b, b, b, b], rec["conversation_id"]


# --- non-JSON state: a real SQLite database, snapshotted into the JSON state ----------------------

class Notes:
    """The worked example of docs/TOOLS.md: tools over a SQLite database whose file
    image travels base64-encoded in the conversation's JSON state."""

    # No tools() at all: initial_state applies to any environment.
    def initial_state(self, conversation: Any) -> Any:
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE notes (branch INTEGER, turn INTEGER, text TEXT)")
        conn.commit()
        return {"sqlite": snapshot_sqlite(conn)}

    def respond(self, conversation: Any, me: str, rng: random.Random) -> Reply:
        conn = restore_sqlite(conversation.state["sqlite"])
        conn.execute("INSERT INTO notes VALUES (?, ?, ?)",
                     (conversation.branch, len(conversation.turns), conversation.turns[-1].text))
        conn.commit()
        (n,) = conn.execute("SELECT COUNT(*) FROM notes").fetchone()
        return Reply(f"{n} notes", state={"sqlite": snapshot_sqlite(conn)})


class NotesPlugin(MetaMutator):
    @hookimpl
    def register_environments(self, register: Any) -> None:
        register("notes", lambda settings=None: Notes())


NOTES = {
    "run": {"name": "notes", "conversations": 2, "max_turns": 6, "seed": 9},
    "backends": {"sim": {"type": "scripted", "lines": ["buy milk", "call Bo", "fix bike"]}},
    "participants": [{"name": "user", "agent": "user-simulator"},
                     {"name": "notes", "agent": "notes"}],
    "branches": [{"at_turn": 2, "n": 2}],
}


def test_sqlite_state_snapshots_fork_and_resume(tmp_path: Path) -> None:
    pm = get_plugin_manager(autoload=False)
    pm.register(NotesPlugin())
    turnloom.run(Scenario.from_dict(NOTES), out=tmp_path / "run", progress=False,
                 plugin_manager=pm)
    for rec in records(tmp_path / "run"):
        conn = restore_sqlite(rec["meta"]["final_state"]["sqlite"])
        rows = conn.execute("SELECT branch, turn, text FROM notes ORDER BY turn").fetchall()
        users = [m["content"] for m in rec["messages"] if m["name"] == "user"]
        assert [r[2] for r in rows] == users
        assert [r[0] for r in rows] == [0, rec["branch"], rec["branch"]]
    # Resume from a log cut after a few turns: the same databases, byte for byte.
    full = (tmp_path / "run" / "conversations.jsonl").read_bytes()
    cut = tmp_path / "cut"
    cut.mkdir()
    for name in ("manifest.json", "turns.wal"):
        (cut / name).write_bytes((tmp_path / "run" / name).read_bytes())
    wal = cut / "turns.wal"
    wal.write_bytes(wal.read_bytes()[: len(wal.read_bytes()) // 3])
    turnloom.resume(cut, progress=False, plugin_manager=pm)
    assert (cut / "conversations.jsonl").read_bytes() == full


def test_directory_snapshots_are_deterministic_and_safe(tmp_path: Path) -> None:
    box = tmp_path / "box"
    (box / "src").mkdir(parents=True)
    (box / "src" / "main.py").write_text("print('hi')\n")
    (box / "notes.txt").write_text("one\n")
    snap = snapshot_directory(box)
    assert snapshot_directory(box) == snap
    back = restore_directory(snap, tmp_path / "back")
    assert (back / "src" / "main.py").read_text() == "print('hi')\n"
    assert snapshot_directory(back) == snap
    (back / "notes.txt").write_text("two\n")
    assert snapshot_directory(back) != snap
    with pytest.raises(ValueError, match="not base64"):
        restore_sqlite("not base64!")


# --- the shop's state after kill -9 and `turnloom resume` -----------------------------------------

DRIVER = textwrap.dedent("""
    import sys
    import turnloom
    from turnloom import hookimpl
    from turnloom.plugins import get_plugin_manager

    class FinalState:
        @hookimpl
        def on_conversation_end(self, conversation):
            conversation.meta["final_state"] = conversation.state

    pm = get_plugin_manager()
    pm.register(FinalState())
    if sys.argv[1] == "run":
        turnloom.run(sys.argv[2], out=sys.argv[3], progress=False, plugin_manager=pm)
    else:
        turnloom.resume(sys.argv[2], progress=False, plugin_manager=pm)
""")


def crash_scenario(path: Path) -> Path:
    text = EXAMPLE.read_text()
    text = text.replace("conversations = 68", "conversations = 34")
    text = text.replace('\nscript = "by-turn"\n', '\nscript = "by-turn"\nlatency_s = 0.01\n')
    text = text.replace('scripts_file = "examples/', f'scripts_file = "{ROOT.as_posix()}/examples/')
    text += "\n[[branches]]\nat_turn = 3\nn = 2\n"
    path.write_text(text)
    return path


def test_state_after_kill_9_and_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    scenario = crash_scenario(tmp_path / "s.toml")
    env = {**os.environ, "TURNLOOM_PROGRESS_INTERVAL": "60"}

    def py(*args: str) -> list[str]:
        return [sys.executable, str(driver), *args]

    subprocess.run(py("run", str(scenario), str(tmp_path / "full")), env=env, check=True,
                   capture_output=True, timeout=300)
    run_dir = tmp_path / "crashed"
    rng = random.Random(11)
    kills = 0
    for _ in range(3):  # SIGKILL each process at a random instant once its log is written
        started = (run_dir / "manifest.json").exists()
        cmd = py("resume", str(run_dir)) if started else py("run", str(scenario), str(run_dir))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wal = run_dir / "turns.wal"
        size = wal.stat().st_size if wal.exists() else 0
        while proc.poll() is None and (not wal.exists() or wal.stat().st_size <= size):
            time.sleep(0.02)
        try:
            proc.wait(timeout=rng.uniform(0.0, 1.0))
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
        else:
            assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
            break  # finished: nothing left to interrupt
        finally:
            if proc.stderr:
                proc.stderr.close()
    assert kills >= 1, "the run finished before it could be killed"
    done = subprocess.run(py("resume", str(run_dir)), env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    for name in ("conversations.jsonl", "scores.jsonl"):
        assert (run_dir / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    recs = records(run_dir)
    assert len(recs) == 2 * len(load_tasks())
    for rec in recs:
        task = load_tasks()[rec["index"]]
        assert rec["meta"]["final_state"] == expected_state(task), rec["conversation_id"]
    assert recs[0]["meta"]["final_state"] != load_database()
