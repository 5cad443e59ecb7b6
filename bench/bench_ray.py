"""B4: the Ray path (`turnloom.distributed.run_ray`) against the single-process engine.

Workload: B1's (bench_engine.py): N conversations x `--turns` messages between a
simulated user and an assistant on the scripted backend, SmolLM2's tokenizer when
the converted model is cached, run directories in a temp dir, third-party
plugins not loaded.

  single   `turnloom.api.run` in one process (B1's turnloom side)
  ray      `run_ray` with 1, 2, ... shards on a local Ray instance started once
           beforehand (`ray.init(num_cpus=max shards)`; its start-up is printed
           on its own line, not charged to the runs). A run's wall time covers
           starting one actor per shard (a fresh worker process each), the
           shards' engines, polling, and merging the shard outputs and summaries.

CPU s adds up the driver's process and every shard actor's process (from its
start: Ray worker boot, imports, tokenizer, engine); the fairer figure on a
shared machine. Ray's own daemons (raylet, GCS) are not counted.

Each side runs in a fresh subprocess; each row is the fastest of `--repeat`
runs (3), as the machine may be shared. Turns/s = turns / wall s; "x single" is
the single row's wall time over this row's (below 1: slower). The shard columns
split a Ray run: the slowest shard's own engine time, the merge, and the rest
(actor start-up, scheduling, polling).

    .venv/bin/python bench/bench_ray.py                         # 20,000 conversations
    .venv/bin/python bench/bench_ray.py --conversations 2000 --shards 1,2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import scenario, tokenizer_spec  # noqa: E402


def run_single(conversations: int, turns: int, tokenizer: str,
               repeat: int) -> list[dict[str, Any]]:
    from turnloom.api import run

    best: dict[str, Any] = {}
    for _ in range(repeat):
        out = tempfile.mkdtemp(prefix="bench-ray-")
        try:
            t, c = time.perf_counter(), time.process_time()
            result = run(scenario(conversations, turns, tokenizer), out=f"{out}/run",
                         progress=False)
            seconds, cpu = time.perf_counter() - t, time.process_time() - c
        finally:
            shutil.rmtree(out, ignore_errors=True)
        if not best or seconds < best["seconds"]:
            best = {"side": "single", "shards": 0, "turns": result.summary["turns"],
                    "seconds": seconds, "cpu": cpu}
    return [best]


def run_sharded(conversations: int, turns: int, tokenizer: str, shard_counts: list[int],
                repeat: int, poll_s: float) -> list[dict[str, Any]]:
    import ray

    from turnloom.distributed import run_ray

    t = time.perf_counter()
    ray.init(num_cpus=max(shard_counts), include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 1024 * 1024)
    rows = [{"side": "ray-start", "seconds": time.perf_counter() - t}]
    try:
        for shards in shard_counts:
            best: dict[str, Any] = {}
            for _ in range(repeat):
                out = tempfile.mkdtemp(prefix="bench-ray-")
                try:
                    t, c = time.perf_counter(), time.process_time()
                    result = run_ray(scenario(conversations, turns, tokenizer),
                                     out=f"{out}/run", shards=shards, progress=False, poll_s=poll_s)
                    seconds, driver_cpu = time.perf_counter() - t, time.process_time() - c
                finally:
                    shutil.rmtree(out, ignore_errors=True)
                if best and seconds >= best["seconds"]:
                    continue
                sharding = result.summary["sharding"]
                per_shard = sharding["per_shard"]
                best = {"side": "ray", "shards": shards, "turns": result.summary["turns"],
                        "seconds": seconds,
                        "cpu": driver_cpu + sum(s["cpu_s"]["process"] for s in per_shard),
                        "shard_s": max(s["wall_s"] for s in per_shard),
                        "merge_s": sharding["merge_s"]}
            rows.append(best)
    finally:
        ray.shutdown()
    return rows


def spawn(side: str, args: argparse.Namespace, tokenizer: str) -> list[dict[str, Any]]:
    command = [sys.executable, __file__, "--side", side, "--conversations",
               str(args.conversations), "--turns", str(args.turns), "--tokenizer", tokenizer,
               "--shards", args.shards, "--repeat", str(args.repeat), "--poll-s", str(args.poll_s)]
    env = {**os.environ, "TURNLOOM_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{side} run failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict[str, Any]], conversations: int,
                out: Callable[[str], None] = print) -> None:
    single = next(r for r in rows if r["side"] == "single")
    out(f"{'side':<8}{'shards':>7}{'conversations':>14}{'turns':>10}{'wall s':>9}{'turns/s':>10}"
        f"{'x single':>10}{'CPU s':>9}{'CPU x':>8}{'shard s':>9}{'merge s':>9}{'other s':>9}")
    for r in rows:
        if r["side"] == "ray-start":
            continue
        shard = r.get("shard_s")
        split = (f"{shard:>9.2f}{r['merge_s']:>9.2f}{r['seconds'] - shard - r['merge_s']:>9.2f}"
                 if shard is not None else f"{'':>27}")
        out(f"{r['side']:<8}{r['shards'] or '-':>7}{conversations:>14,}{r['turns']:>10,}"
            f"{r['seconds']:>9.2f}{r['turns'] / r['seconds']:>10,.0f}"
            f"{single['seconds'] / r['seconds']:>9.2f}x{r['cpu']:>9.2f}"
            f"{r['cpu'] / single['cpu']:>7.2f}x{split}")
    start = next((r for r in rows if r["side"] == "ray-start"), None)
    if start is not None:
        out(f"local Ray instance start-up (not in the rows): {start['seconds']:.2f} s")
    out("x single = single wall s / this row's wall s (below 1: slower); CPU s = the driver's "
        "process + every shard actor's process (Ray's own daemons not counted), CPU x = this "
        "row's / single's; shard s = slowest shard's engine wall time, other s = wall s - shard s "
        "- merge s (actor start-up, scheduling, polling)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--turns", type=int, default=8, help="messages per conversation")
    parser.add_argument("--shards", default="1,2", help="comma-separated shard counts")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per row; the fastest is shown (the machine may be shared)")
    parser.add_argument("--poll-s", type=float, default=0.5,
                        help="seconds between the driver's progress polls (run_ray's default)")
    parser.add_argument("--side", choices=("single", "ray"), help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shard_counts = [int(x) for x in args.shards.split(",") if x.strip()]
    if not shard_counts or min(shard_counts) < 1:
        parser.error("--shards: one or more positive counts, e.g. 1,2")
    if args.repeat < 1:
        parser.error("--repeat: must be at least 1")
    if args.side == "single":
        print(json.dumps(run_single(args.conversations, args.turns, args.tokenizer,
                                    args.repeat)))
        return
    if args.side == "ray":
        print(json.dumps(run_sharded(args.conversations, args.turns, args.tokenizer,
                                     shard_counts, args.repeat, args.poll_s)))
        return

    tokenizer = tokenizer_spec()
    print(f"{args.turns} messages per conversation, two participants, scripted replies, "
          f"tokenizer {tokenizer}; {os.cpu_count()} CPUs; best of {args.repeat} runs",
          flush=True)
    rows = spawn("single", args, tokenizer) + spawn("ray", args, tokenizer)
    print_table(rows, args.conversations)


if __name__ == "__main__":
    main()
