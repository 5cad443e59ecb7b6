"""Gold playback on the scripted backend: each task's gold lines as a by-turn script.

The scripted backend's ``script = "by-turn"`` mode plays, for each prompt, the script
whose `match` text the prompt contains, one line per turn of the speaker. The customer's
prompt holds its task's instruction (its system prompt); the agent's view holds only
what the customer says, so the gold customer opens with its case number, the one thing
that tells two tasks with the same opening apart.

    python -m turnloom_tau.gold DIR   # writes DIR/tau_gold_customer.json, DIR/tau_gold_agent.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from turnloom.tools.parsers import ToolParser

from turnloom_tau.tasks import Task, gold_dialogue, load_tasks

SPEAKERS = ("customer", "agent")


def case_tag(task: Task) -> str:
    return f"(case {task.id})"


def gold_script_lines(task: Task, parser: ToolParser | None = None) -> list[tuple[str, str]]:
    """The task's gold dialogue with the case number in the customer's opening."""
    lines = gold_dialogue(task, parser)
    who, opening = lines[0]
    return [(who, f"{opening} {case_tag(task)}"), *lines[1:]]


def gold_scripts(speaker: str, parser: ToolParser | None = None) -> list[dict[str, Any]]:
    """One by-turn script per task for `speaker` ("customer" or "agent")."""
    if speaker not in SPEAKERS:
        raise ValueError(f"gold_scripts: speaker must be one of {SPEAKERS}, got {speaker!r}")
    return [{"match": task.instruction if speaker == "customer" else case_tag(task),
             "lines": [text for who, text in gold_script_lines(task, parser) if who == speaker]}
            for task in load_tasks()]


def write_scripts(directory: Path, parser: ToolParser | None = None) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for speaker in SPEAKERS:
        path = directory / f"tau_gold_{speaker}.json"
        path.write_text(json.dumps(gold_scripts(speaker, parser), indent=1) + "\n",
                        encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m turnloom_tau.gold DIR", file=sys.stderr)
        return 2
    for path in write_scripts(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
