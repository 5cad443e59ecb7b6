"""Tool use: the shop domain's simulated conversations per second on the scripted backend.

Both sides play the same gold conversations (turnloom_tau's tasks, the customer's and
the agent's lines in order, the agent's Hermes tool calls run against the shop's
database) with the same tokenizer and chat template (SmolLM2's, with the tools passed):

- turnloom: examples/tool_use.toml with that tokenizer on both scripted backends
  (`script = "by-turn"`), in one engine process;
- a plain asyncio loop as users write it: message dicts per view, the view rendered
  whole with `apply_chat_template(messages, tools=..., add_generation_prompt=True)`
  and tokenized every turn, the tool calls parsed and executed, tool messages appended.

The loop reads its next line directly; turnloom's scripted backend finds it from the
prompt (decoding it), work a real model's server would not do. Both sides check that
every conversation ends with reward 1.

    python bench/bench_tool_use.py                       # ~2 minutes on 2 busy cores
    python bench/bench_tool_use.py --plot docs/bench_tool_use.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tool_use.toml"
MODEL = "smollm2-135m-instruct"


def turnloom_side(conversations: int) -> tuple[float, int]:
    """Seconds the run took after its set-up, and conversations with reward 1."""
    import turnloom

    text = EXAMPLE.read_text()
    text = text.replace("conversations = 68", f"conversations = {conversations}")
    text = text.replace('type = "scripted"', f'type = "scripted"\ntokenizer = "{MODEL}"')
    text = text.replace('scripts_file = "examples/', f'scripts_file = "{ROOT.as_posix()}/examples/')
    with tempfile.TemporaryDirectory() as tmp:
        scenario = Path(tmp) / "s.toml"
        scenario.write_text(text)
        result = turnloom.run(turnloom.load_scenario(scenario), out=Path(tmp) / "run",
                              progress=False)
        # The engine's own time (summary timing), after the tokenizers are loaded, as the
        # loop's time starts after its tokenizer is.
        wall = float(result.summary["timing"]["wall_s"])
        ok = sum(json.loads(line)["scores"]["tau-reward"]["reward"] == 1.0
                 for line in (Path(tmp) / "run" / "conversations.jsonl").open())
    return wall, ok


async def naive_conversation(index: int, tok: Any) -> float:
    """One conversation with message dicts and a full render + tokenization per turn."""
    from turnloom.tools.parsers import HermesParser
    from turnloom_tau.gold import gold_script_lines
    from turnloom_tau.plugin import CUSTOMER_PROMPT
    from turnloom_tau.reward import reward
    from turnloom_tau.tasks import STOP, TOOLKIT, expected_state, load_database, load_tasks, policy

    tasks = load_tasks()
    task = tasks[index % len(tasks)]
    lines = gold_script_lines(task)
    customer_lines = iter([t for who, t in lines if who == "customer"])
    agent_lines = iter([t for who, t in lines if who == "agent"])
    parser = HermesParser()
    rng = random.Random(index)
    tools = TOOLKIT.schemas
    db = load_database()
    agent: list[dict[str, Any]] = [{"role": "system", "content": policy()}]
    customer = [{"role": "system",
                 "content": CUSTOMER_PROMPT.format(instruction=task.instruction, stop=STOP)}]
    said: list[str] = []
    while True:
        tok.apply_chat_template(customer, add_generation_prompt=True)  # the customer's prompt
        await asyncio.sleep(0)  # the request
        line = next(customer_lines)
        if STOP in line:
            break
        customer.append({"role": "assistant", "content": line})
        agent.append({"role": "user", "content": line})
        while True:
            tok.apply_chat_template(agent, tools=tools, add_generation_prompt=True)
            await asyncio.sleep(0)
            parsed = parser.parse(next(agent_lines), rng)
            if not parsed.calls:
                agent.append({"role": "assistant", "content": parsed.content})
                customer.append({"role": "user", "content": parsed.content})
                said.append(parsed.content)
                break
            agent.append({"role": "assistant", "content": parsed.content, "tool_calls": [
                {"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments}} for c in parsed.calls]})
            for c in parsed.calls:
                result = TOOLKIT.call(c, db)
                db = result.state
                agent.append({"role": "tool", "content": result.text, "tool_call_id": c.id})
    return reward(db, expected_state(task), task.outputs, said).reward


def naive_side(conversations: int, concurrency: int = 64) -> tuple[float, int]:
    from transformers import AutoTokenizer

    from turnloom.models import resolve_model

    tok = AutoTokenizer.from_pretrained(str(resolve_model(MODEL)))

    async def main() -> list[float]:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> float:
            async with sem:
                return await naive_conversation(i, tok)

        return await asyncio.gather(*(one(i) for i in range(conversations)))

    t0 = time.perf_counter()
    rewards = asyncio.run(main())
    return time.perf_counter() - t0, sum(r == 1.0 for r in rewards)


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    names = [r["side"] for r in rows]
    rates = [r["conversations_per_s"] for r in rows]
    bars = ax.bar(names, rates, color=["tab:blue" if n == "turnloom" else "tab:orange"
                                       for n in names])
    for bar, rate in zip(bars, rates):
        ax.annotate(f"{rate:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom")
    ax.set_ylabel("conversations / s")
    ax.set_title(f"shop domain, gold playback, {rows[0]['conversations']} conversations\n"
                 f"({MODEL} tokenizer and template, tools passed)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=136, help="34 tasks x 4 trials")
    parser.add_argument("--plot", metavar="PNG", help="draw the bars (needs matplotlib)")
    args = parser.parse_args(argv)
    n = args.conversations
    rows = []
    for side, fn in (("turnloom", turnloom_side), ("asyncio loop", naive_side)):
        wall, ok = fn(n)
        rows.append({"side": side, "conversations": n, "wall_s": round(wall, 2),
                     "conversations_per_s": n / wall, "reward_1": ok})
        print(f"{side:>13}: {n} conversations in {wall:6.2f} s = {n / wall:7.2f} conv/s "
              f"({ok}/{n} with reward 1)", flush=True)
    ratio = rows[0]["conversations_per_s"] / rows[1]["conversations_per_s"]
    print(f"turnloom / asyncio loop: {ratio:.2f}x")
    if args.plot:
        plot(rows, args.plot)
        print(f"figure: {args.plot}")
    return 0 if all(r["reward_1"] == n for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
