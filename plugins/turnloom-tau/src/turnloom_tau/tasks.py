"""The shop's data and tasks: the initial database, the tasks, each task's expected final
database (the gold actions applied to the initial one, computed here, never stored), the
task a conversation plays, and each task's gold conversation for the scripted backend."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from turnloom.messages import ToolCall
from turnloom.tools.parsers import HermesParser, ToolParser
from turnloom.tools.validate import ToolKit

from turnloom_tau.shop import TOOLS, WRITE_TOOLS, Database

STOP = "###STOP###"
TOOLKIT = ToolKit(TOOLS)


@functools.cache
def _text(name: str) -> str:
    return resources.files("turnloom_tau").joinpath("data", name).read_text(encoding="utf-8")


def load_database() -> Database:
    """A fresh copy of the initial database."""
    db: Database = json.loads(_text("db.json"))
    return db


def policy() -> str:
    """The policy document the agent must follow (its system prompt)."""
    return _text("policy.md")


@dataclass(frozen=True)
class Task:
    """One task: who the customer is, what they want (hidden from the agent), what they
    are told, the gold actions and the answers the agent must give."""

    id: str
    customer_id: str
    identify: str  # "email" or "name_zip": how the customer can be found
    goal: str
    instruction: str
    opening: str
    actions: tuple[tuple[str, dict[str, Any]], ...]
    outputs: tuple[str, ...]
    confirm: str  # the agent's confirmation question before its writes ("" without writes)
    answer: str  # the agent's closing message; holds every required output

    @property
    def writes(self) -> tuple[tuple[str, dict[str, Any]], ...]:
        return tuple(a for a in self.actions if a[0] in WRITE_TOOLS)


@functools.cache
def load_tasks() -> tuple[Task, ...]:
    raw = json.loads(_text("tasks.json"))
    return tuple(Task(id=t["id"], customer_id=t["customer_id"], identify=t["identify"],
                      goal=t["goal"], instruction=t["instruction"], opening=t["opening"],
                      actions=tuple((name, args) for name, args in t["actions"]),
                      outputs=tuple(t["outputs"]), confirm=t["confirm"], answer=t["answer"])
                 for t in raw)


def task_for_index(index: int, n_tasks: int | None = None) -> tuple[int, int]:
    """(task index, trial) of conversation `index`: tasks in order, once per trial."""
    if index < 0:
        raise ValueError(f"conversation index must be >= 0, got {index}")
    n = len(load_tasks()) if n_tasks is None else n_tasks
    return index % n, index // n


def apply_actions(db: Database, actions: tuple[tuple[str, dict[str, Any]], ...]) -> Database:
    """`db` after the actions; a gold action the shop refuses is a bug in the task data."""
    for i, (name, args) in enumerate(actions):
        result = TOOLKIT.call(ToolCall(f"gold_{i}", name, json.dumps(args)), db)
        if result.error is not None:
            raise ValueError(f"gold action {i} ({name}) fails: {result.error.message}")
        db = result.state
    return db


@functools.cache
def _expected(task_id: str) -> str:
    task = next(t for t in load_tasks() if t.id == task_id)
    return json.dumps(apply_actions(load_database(), task.actions))


def expected_state(task: Task) -> Database:
    """The database once the task is done right (a fresh copy)."""
    db: Database = json.loads(_expected(task.id))
    return db


def identify_line(task: Task, db: Database | None = None) -> str:
    customer = (db or load_database())["customers"][task.customer_id]
    if task.identify == "email":
        return f"Sure, my email is {customer['email']}."
    return (f"I don't remember which email I used. I'm {customer['first_name']} "
            f"{customer['last_name']}, postal code {customer['address']['zip']}.")


def gold_dialogue(task: Task, parser: ToolParser | None = None) -> list[tuple[str, str]]:
    """The task's gold conversation as ("customer" | "agent", text) lines, the agent's
    tool calls written in `parser`'s format (Hermes ``<tool_call>`` by default), one call
    per agent turn; the environment's answers come in between and are not listed."""
    write = parser or HermesParser()
    lines = [("customer", task.opening),
             ("agent", "I can help with that. First, could you tell me your email address, "
                       "or your name and postal code?"),
             ("customer", identify_line(task))]
    reads = [a for a in task.actions if a[0] not in WRITE_TOOLS]
    lines += [("agent", write.render("", [action])) for action in reads]
    if task.writes:
        lines += [("agent", task.confirm), ("customer", "Yes, please go ahead.")]
        lines += [("agent", write.render("", [action])) for action in task.writes]
    lines += [("agent", task.answer), ("customer", STOP)]
    return lines


def scripted_lines(speaker: str, parser: ToolParser | None = None) -> list[str]:
    """Every gold line of one speaker over all tasks, in task order (a scripted backend's
    `lines` for that participant)."""
    return [text for task in load_tasks() for who, text in gold_dialogue(task, parser)
            if who == speaker]

