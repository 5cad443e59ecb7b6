"""Engine cost against an OpenAI-compatible server, next to a plain asyncio loop
with the official `openai` SDK and `verifiers`' multi-turn environment: same
conversations, same concurrency.

Every side simulates N conversations of `--turns` messages between a simulated
user and an assistant, each with its own system prompt and view (the user's
view has the roles flipped), sampling with the same settings and seeds.

  turnloom  a Scenario run through `turnloom.api.run` with the `openai`
            backend (`--endpoint`: "completions" sends token ids, "chat"
            sends the speaker's view as messages), writing its run directory.
  openai    `AsyncOpenAI().chat.completions.create` per turn over the full
            history, asyncio.gather over conversations behind a semaphore of
            the same concurrency.
  verifiers a `verifiers.MultiTurnEnv` whose `env_response` plays the simulated
            user (the same server, the user's view), its rollouts run by
            `env.evaluate(..., max_concurrent=C)` with verifiers' own client
            (bench/peer_verifiers.py). verifiers' pins conflict with turnloom's
            venv, so it runs from its own: `scripts/bench_peers.sh` builds
            `.venv-peers` (or pass `--verifiers-python PATH`); without it the
            side is skipped.

Each side runs in a fresh subprocess and reports its own CPU time. Two uses:

  (1) one fast loopback server (turnloom's OpenAI test server, in its own
      process): CPU per turn is what the client side costs;
      .venv/bin/python bench/bench_chat_api.py
  (2) a real server serving the embedded model: turns per second, the
      engine's overhead over the plain loop (aim: <= 5%);
      scripts/servers.sh start   # prints its URL
      .venv/bin/python bench/bench_chat_api.py --url URL --endpoint chat \\
          --conversations 16 --turns 4 --concurrency 4 --tokenizer default
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

USER_PROMPT = "You are a curious person asking an assistant about the sea. Write one line."
ASSISTANT_PROMPT = "You are a helpful assistant. Answer in one short sentence."
OPENER = "Hello!"


def cpu_now() -> float:
    """This process's CPU seconds plus its ended children's."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# --- turnloom side ---------------------------------------------------------------------


def run_turnloom(args: argparse.Namespace) -> dict[str, Any]:
    from turnloom.api import run
    from turnloom.backends import openai_compat  # noqa: F401  (imported before the clock starts,
    from turnloom.plugins import get_plugin_manager  # as the plain loop imports `openai` first)

    plugins = get_plugin_manager()
    from turnloom.config import BackendSpec, ParticipantSpec, RunSettings, Scenario

    settings = {"base_url": args.url, "model": args.model, "endpoint": args.endpoint,
                "max_concurrency": args.concurrency, "backoff": 0.05, "timeout": 600.0}
    from turnloom.backends.base import SamplingParams

    sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0)
    sc = Scenario(
        run=RunSettings(name="bench-chat-api", conversations=args.conversations,
                        max_turns=args.turns, seed=0),
        backends={"api": BackendSpec(type="openai", tokenizer=args.tokenizer, settings=settings,
                                     batch_size=args.batch_size, max_inflight=args.max_inflight)},
        participants=(
            ParticipantSpec(name="user", agent="user-simulator", system_prompt=USER_PROMPT,
                            sampling=sampling),
            ParticipantSpec(name="assistant", agent="assistant", system_prompt=ASSISTANT_PROMPT,
                            sampling=sampling),
        ),
    )
    out = tempfile.mkdtemp(prefix="bench-chat-api-")
    try:
        c, t = cpu_now(), time.perf_counter()
        result = run(sc, out=f"{out}/run", overwrite=True, progress=False, plugin_manager=plugins)
        seconds, cpu = time.perf_counter() - t, cpu_now() - c
    finally:
        shutil.rmtree(out, ignore_errors=True)
    summary = result.summary
    usage = summary["backends"]["api"]
    return {"turns": summary["turns"], "seconds": seconds, "cpu": cpu,
            "failed": (summary.get("failed") or {}).get("conversations", 0),
            "prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"]}


# --- plain loop side -------------------------------------------------------------------


async def plain_loop(args: argparse.Namespace) -> dict[str, Any]:
    import openai

    base = openai.DefaultAsyncHttpxClient.__mro__[1]
    http_lib: Any = sys.modules[base.__module__.split(".")[0]]
    limits = http_lib.Limits(max_connections=args.concurrency,
                             max_keepalive_connections=args.concurrency)
    client = openai.AsyncOpenAI(base_url=args.url, api_key=os.environ.get("OPENAI_API_KEY", "none"),
                                max_retries=3, timeout=600.0,
                                http_client=openai.DefaultAsyncHttpxClient(limits=limits))
    gate = asyncio.Semaphore(args.concurrency)
    turns = prompt_tokens = completion_tokens = 0

    async def conversation(index: int) -> None:
        nonlocal turns, prompt_tokens, completion_tokens
        history: list[tuple[str, str]] = []  # (speaker, text)
        for turn in range(args.turns):
            speaker = "user" if turn % 2 == 0 else "assistant"
            system = USER_PROMPT if speaker == "user" else ASSISTANT_PROMPT
            view: list[Any] = [{"role": "system", "content": system}]
            for who, text in history:
                mine = who == speaker
                view.append({"role": "assistant" if mine else "user", "content": text})
            if len(view) == 1:
                view.append({"role": "user", "content": OPENER})
            async with gate:
                reply = await client.chat.completions.create(
                    model=args.model, messages=view, max_tokens=args.max_new_tokens,
                    temperature=1.0, seed=index * 1000 + turn)
            history.append((speaker, reply.choices[0].message.content or ""))
            turns += 1
            if reply.usage is not None:
                prompt_tokens += reply.usage.prompt_tokens
                completion_tokens += reply.usage.completion_tokens

    c, t = cpu_now(), time.perf_counter()
    try:
        await asyncio.gather(*(conversation(i) for i in range(args.conversations)))
    finally:
        await client.close()
    return {"turns": turns, "seconds": time.perf_counter() - t, "cpu": cpu_now() - c,
            "failed": 0, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}


# --- driver ----------------------------------------------------------------------------


def side_in_subprocess(side: str, args: argparse.Namespace) -> dict[str, Any]:
    shared = ["--url", args.url, "--model", args.model,
              "--conversations", str(args.conversations), "--turns", str(args.turns),
              "--concurrency", str(args.concurrency), "--max-new-tokens", str(args.max_new_tokens)]
    if side == "verifiers":
        cmd = [args.verifiers_python, str(Path(__file__).with_name("peer_verifiers.py")), *shared]
    else:
        cmd = [sys.executable, __file__, "--side", side, *shared,
               "--endpoint", args.endpoint, "--tokenizer", args.tokenizer]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"{side} side failed:\n{out.stderr[-2000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    # The whole process, interpreter start and imports included, on both sides.
    row["process_cpu"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return row


def loopback_server() -> tuple[subprocess.Popen[str], str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "turnloom.testing.openai_server",
                             "--port", str(port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if "listening" not in proc.stdout.readline():
        raise RuntimeError("the loopback server did not start")
    return proc, f"http://127.0.0.1:{port}/v1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=None, help="server base URL (default: a loopback fake)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    parser.add_argument("--tokenizer", default="bytes",
                        help="turnloom model spec whose ids the server speaks (bytes: the fake)")
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--verifiers-python", default=None,
                        help="the python of a venv with verifiers (default: .venv-peers/bin/python "
                             "when it exists; scripts/bench_peers.sh builds it; '' leaves it out)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds, the sides' order alternating; the table shows each "
                             "figure's median and the ratios are given round by round")
    parser.add_argument("--batch-size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--max-inflight", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=("turnloom", "openai"), default=None,
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "turnloom":
        print(json.dumps(run_turnloom(args)))
        return
    if args.side == "openai":
        print(json.dumps(asyncio.run(plain_loop(args))))
        return
    sides = ["turnloom", "openai"]
    if args.verifiers_python is None:
        peers = Path(__file__).resolve().parent.parent / ".venv-peers" / "bin" / "python"
        if peers.exists():
            args.verifiers_python = str(peers)
    if args.verifiers_python:
        sides.append("verifiers")
    server = None
    if args.url is None:
        server, args.url = loopback_server()
    rounds: list[dict[str, dict[str, Any]]] = []
    try:
        for k in range(args.repeat):
            # Alternating the order spreads a drifting load (or a server's warm
            # cache) over both sides.
            order = sides if k % 2 == 0 else sides[::-1]
            rounds.append({side: side_in_subprocess(side, args) for side in order})
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
    rows = {side: {key: statistics.median(r[side][key] for r in rounds) for key in rounds[0][side]}
            for side in sides}
    where = "loopback fake" if server is not None else args.url
    print(f"{args.conversations} conversations x {args.turns} turns, concurrency "
          f"{args.concurrency}, {args.max_new_tokens} new tokens, server: {where}, "
          f"turnloom endpoint: {args.endpoint}"
          + (f"; medians of {args.repeat} rounds" if args.repeat > 1 else ""))
    # The server's work per turn (prompt and generated tokens) is printed next to
    # the rates: against a real model a side whose replies run longer is slower
    # for that reason alone.
    # CPU ms/turn: from the first request's preparation to the last reply (the
    # client and the engine at work); process: the whole subprocess, start-up too.
    print(f"{'side':10} {'turns':>6} {'failed':>6} {'CPU ms/turn':>12} {'process':>8} {'turns/s':>9} "
          f"{'prompt tok/turn':>16} {'new tok/turn':>13}")
    for side, r in rows.items():
        n = max(1, r['turns'])
        print(f"{side:10} {r['turns']:6.0f} {r['failed']:6.0f} {1000 * r['cpu'] / n:12.3f} "
              f"{1000 * r['process_cpu'] / n:8.3f} "
              f"{r['turns'] / r['seconds']:9.2f} {r['prompt_tokens'] / n:16.1f} "
              f"{r['completion_tokens'] / n:13.1f}")
    print_ratios("openai", rows["turnloom"], rows["openai"])
    if args.repeat > 1:
        rates = [turns_per_s(r["turnloom"]) / max(1e-9, turns_per_s(r["openai"])) for r in rounds]
        print("turnloom turns/s / openai turns/s, round by round: "
              + ", ".join(f"{x:.3f}" for x in rates) + f" (median {statistics.median(rates):.3f})")
    if "verifiers" not in rows:
        print("verifiers: not measured (scripts/bench_peers.sh builds .venv-peers with it, "
              "or pass --verifiers-python PATH)")
        return
    print_ratios("verifiers", rows["turnloom"], rows["verifiers"])


def per_turn(row: dict[str, Any], key: str) -> float:
    return row[key] / max(1, row["turns"])


def turns_per_s(row: dict[str, Any]) -> float:
    return row["turns"] / row["seconds"]


def print_ratios(peer: str, t: dict[str, Any], other: dict[str, Any]) -> None:
    cpu_ratio = per_turn(other, "cpu") / max(1e-9, per_turn(t, "cpu"))
    process_ratio = per_turn(other, "process_cpu") / max(1e-9, per_turn(t, "process_cpu"))
    rate_ratio = turns_per_s(t) / max(1e-9, turns_per_s(other))
    print(f"{peer} CPU per turn / turnloom CPU per turn: {cpu_ratio:.2f}x "
          f"(whole processes: {process_ratio:.2f}x); "
          f"turnloom turns/s / {peer} turns/s: {rate_ratio:.3f}")

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
