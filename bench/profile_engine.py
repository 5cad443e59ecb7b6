"""B1's turnloom side, layer by layer: what the run directory costs per turn.

B1's baseline keeps its conversations in memory; a turnloom run also writes its run
directory. This runs B1's turnloom side (`bench_engine.run_turnloom`: scripted
backend, SmolLM2's tokenizer, batch 128) with those layers switched off one after
another, each configuration in a fresh process, best of `--repeat`:

  as shipped        the engine and everything it writes
  - exports         Collector.add_tree only counts trees: no conversations.jsonl or
                    scores.jsonl lines are encoded or written
  - log             and WalWriter.append drops its events: no write-ahead log records
  - records         and Engine._record builds an empty record: no messages or turn
                    list per finished conversation

The difference between two rows is that layer's cost per turn. A diagnostic: the
switched-off configurations are not runs a user can ask for (every run keeps its log).

CPU time on a shared machine moves by 10-20% between runs, more than some layers
cost. `--instructions` counts instructions instead (valgrind's cachegrind, exact and
repeatable): per turn, from a run of `--conversations` less one of a tenth of that,
which cancels start-up (imports, the tokenizer's loading).

`--bytecodes` shows where the interpreter's own work goes instead: the bytecodes
executed per turn (sys.settrace's opcode events), by function and by source line, as
shipped, again differenced against a run of a tenth the size. They repeat between
runs but for the few bytecodes of each timed fsync of the write-ahead log.

    .venv/bin/python bench/profile_engine.py                       # 20,000 conversations, 3 repeats
    .venv/bin/python bench/profile_engine.py --bytecodes --conversations 3000      # ~1 min
    .venv/bin/python bench/profile_engine.py --instructions --conversations 3000   # ~3 min
    .venv/bin/python bench/profile_engine.py --conversations 2000 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Callable, Sequence

import machine

LAYERS = ("exports", "log", "records")
LABELS = {"": "as shipped", "exports": "- exports", "log": "- log", "records": "- records"}


def switch_off(layer: str) -> None:
    """Patch one layer out of this process's engine."""
    if layer == "exports":
        from turnloom.collect import Collector

        def count_only(self: Any, index: int, records: Any) -> None:
            self.trees += 1
            self.records += len(records)

        Collector.add_tree = count_only  # type: ignore[method-assign]
    elif layer == "log":
        from turnloom.wal import WalWriter

        WalWriter.append = lambda self, event: None  # type: ignore[method-assign]
    elif layer == "records":
        from turnloom.engine import Engine
        from turnloom.records import ConversationRecord

        def empty_record(self: Any, state: Any) -> ConversationRecord:
            return ConversationRecord(
                conversation_id=state.conversation_id, index=state.index, branch=state.branch,
                seed=state.seed, messages=[], participants={}, turns=[], tokens={},
                stop_reason=state.stop_reason or "", scores=state.scores,
                errors=state.errors, meta=state.meta)

        Engine._record = empty_record  # type: ignore[method-assign]
    else:
        raise ValueError(f"unknown layer {layer!r} (known: {', '.join(LAYERS)})")


def count_bytecodes(run: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], dict[str, int]]:
    """Run `run` with every executed bytecode counted by "file:line function"."""
    counts: dict[str, int] = {}

    def tracer(frame: Any, event: str, arg: Any) -> Callable[..., Any]:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        code = frame.f_code
        prefix = f"{os.path.basename(code.co_filename)}:"
        suffix = f" {code.co_name}"

        def opcode(frame: Any, event: str, arg: Any) -> Callable[..., Any]:
            if event == "opcode":
                key = f"{prefix}{frame.f_lineno}{suffix}"
                counts[key] = counts.get(key, 0) + 1
            return opcode
        return opcode

    sys.settrace(tracer)
    try:
        row = run()
    finally:
        sys.settrace(None)
    return row, counts


def bytecodes_per_turn(args: argparse.Namespace, tokenizer: str) -> dict[str, float]:
    """Bytecodes per turn by "file:line function": a run less one of a tenth the size."""
    big, small = (child([], n, args, tokenizer, flags=("--bytecodes",))[0]
                  for n in (args.conversations, max(1, args.conversations // 10)))
    turns = big["turns"] - small["turns"]
    keys = set(big["bytecodes"]) | set(small["bytecodes"])
    return {k: (big["bytecodes"].get(k, 0) - small["bytecodes"].get(k, 0)) / turns for k in keys}


def by_function(per_line: dict[str, float]) -> dict[str, float]:
    """Sum "file:line function" counts into "file function"."""
    out: dict[str, float] = {}
    for key, n in per_line.items():
        where, function = key.split(" ", 1)
        name = f"{where.rsplit(':', 1)[0]} {function}"
        out[name] = out.get(name, 0.0) + n
    return out


def print_bytecodes(per_line: dict[str, float], top: int, out: Callable[[str], None] = print) -> None:
    total = sum(per_line.values())
    out(f"bytecodes per turn: {total:,.0f}")
    for title, counts in (("function", by_function(per_line)), ("line", per_line)):
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        out(f"{'per turn':>10}{'share':>7}  {title}")
        for key, n in ranked:
            out(f"{n:>10,.1f}{n / total:>7.1%}  {key}")


def run_child(conversations: int, turns: int, tokenizer: str, off: list[str]) -> dict[str, Any]:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_engine import run_turnloom

    for layer in off:
        switch_off(layer)
    return run_turnloom(conversations, turns, tokenizer)


def child(off: list[str], conversations: int, args: argparse.Namespace, tokenizer: str,
          wrapper: Sequence[str] = (), flags: Sequence[str] = ()) -> tuple[dict[str, Any], str]:
    """One fresh process with `off` switched off (under `wrapper`, with the child's
    `flags`): its result row and its stderr."""
    command = [*wrapper, sys.executable, __file__, "--child", ",".join(off), "--conversations",
               str(conversations), "--turns", str(args.turns), "--tokenizer", tokenizer, *flags]
    env = {**os.environ, "TURNLOOM_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"run with {off or 'nothing'} off failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def cpu_per_turn(off: list[str], args: argparse.Namespace, tokenizer: str) -> float:
    """Best CPU microseconds per turn of `--repeat` fresh processes."""
    rows = [child(off, args.conversations, args, tokenizer)[0] for _ in range(args.repeat)]
    return min(r["cpu"] / r["turns"] * 1e6 for r in rows)


def instructions_per_turn(off: list[str], args: argparse.Namespace, tokenizer: str) -> float:
    """Instructions per turn: a run less one of a tenth the size, under cachegrind."""
    counts = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.conversations, max(1, args.conversations // 10)):
            wrapper = ["valgrind", "--tool=cachegrind", "--cache-sim=no",
                       f"--cachegrind-out-file={tmp}/cg.out"]
            row, err = child(off, n, args, tokenizer, wrapper)
            found = re.search(r"I\s+refs:\s+([\d,]+)", err)
            if found is None:
                raise SystemExit(f"no instruction count in valgrind's output:\n{err[-2000:]}")
            counts.append((int(found.group(1).replace(",", "")), row["turns"]))
    (big, big_turns), (small, small_turns) = counts
    return (big - small) / (big_turns - small_turns)


def print_table(rows: list[tuple[str, float]], unit: str,
                out: Callable[[str], None] = print) -> None:
    full = rows[0][1]
    digits = 2 if unit == "us" else 0
    out(f"{'configuration':<14}{unit + '/turn':>14}{'layer ' + unit + '/turn':>18}{'share':>7}")
    prev = None
    for name, per_turn in rows:
        layer = share = ""
        if prev is not None:
            layer, share = f"{prev - per_turn:,.{digits}f}", f"{(prev - per_turn) / full:.0%}"
        out(f"{LABELS[name]:<14}{per_turn:>14,.{digits}f}{layer:>18}{share:>7}")
        prev = per_turn
    out(f"layer {unit}/turn: what switching that layer off saved per turn; "
        "share: of the run as shipped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--turns", type=int, default=8, help="messages per conversation")
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per row (best kept)")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions under valgrind instead of timing")
    parser.add_argument("--bytecodes", action="store_true",
                        help="count the bytecodes each function and line runs per turn instead")
    parser.add_argument("--top", type=int, default=15, help="rows per --bytecodes table")
    parser.add_argument("--tokenizer", help="chat format (default: SmolLM2's when prepared)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        off = [layer for layer in args.child.split(",") if layer]
        if args.bytecodes:
            row, counts = count_bytecodes(
                lambda: run_child(args.conversations, args.turns, args.tokenizer, off))
            row["bytecodes"] = counts
        else:
            row = run_child(args.conversations, args.turns, args.tokenizer, off)
        print(json.dumps(row))
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_engine import tokenizer_spec

    tokenizer = args.tokenizer or tokenizer_spec()
    if args.instructions and shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    print(machine.describe())
    if args.bytecodes:
        print(f"B1 turnloom side as shipped: {args.conversations:,} conversations x {args.turns} "
              f"messages, tokenizer {tokenizer}, bytecodes less a run of a tenth the size",
              flush=True)
        print_bytecodes(bytecodes_per_turn(args, tokenizer), args.top)
        return
    how = ("instructions (cachegrind), less a run of a tenth the size" if args.instructions
           else f"best CPU time of {args.repeat}")
    print(f"B1 turnloom side by layer: {args.conversations:,} conversations x {args.turns} "
          f"messages, tokenizer {tokenizer}, {how}", flush=True)
    measure = instructions_per_turn if args.instructions else cpu_per_turn
    rows = []
    for k in range(len(LAYERS) + 1):
        off = list(LAYERS[:k])
        rows.append((off[-1] if off else "", measure(off, args, tokenizer)))
    print_table(rows, "instr" if args.instructions else "us")


if __name__ == "__main__":
    main()
