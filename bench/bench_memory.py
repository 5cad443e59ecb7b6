"""Peak memory against run size: it must track the active frontier, not the run.

Each size runs `turnloom run` on the scripted backend in a fresh subprocess
(short two-message conversations, the same `max_active` for every size) and
reports the child's peak RSS (its own VmHWM, read as it exits, which counts
the Rust core's allocations too), its wall time and the lines of
conversations.jsonl (every conversation must be there). Not ru_maxrss from
wait4: Linux carries a process's high-water mark across exec, so that figure
also counts the parent's resident memory at the fork (a test runner of 190 MiB
made a 40 MiB run read as 191 MiB). A second table varies `max_active` at one
size to give the slope c of the bound

    peak RSS <= base + c * max_active      (independent of the conversation count)

    .venv/bin/python bench/bench_memory.py                                  # 10k, 100k, 1M
    .venv/bin/python bench/bench_memory.py --sizes 20000 100000 --frontiers
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SCENARIO = """\
[run]
name = "bench-memory"
conversations = {conversations}
max_turns = 2
seed = 1
batch_size = 256
max_inflight = 2
max_active = {max_active}
wal_sync_s = 1.0

[backends.sim]
type = "scripted"
lines = ["Sure.", "Tell me more about it.", "Thanks, that helps."]

[[participants]]
name = "user"
agent = "user-simulator"
system_prompt = "You are a student."

[[participants]]
name = "assistant"
agent = "assistant"
system_prompt = "You are a tutor."
"""


# `turnloom run ARGS` in this process, then its peak RSS (kB) written to the file named first.
_LAUNCHER = """\
import sys
from turnloom.cli import main
try:
    code = main(sys.argv[2:])
finally:
    with open("/proc/self/status") as status, open(sys.argv[1], "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM:")).split()[1])
sys.exit(code)
"""


@dataclass
class Measurement:
    conversations: int
    max_active: int
    peak_rss_mib: float
    wall_s: float
    lines: int


def count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


def measure(conversations: int, max_active: int, workdir: Path) -> Measurement:
    """Run once in a fresh process; its output is deleted afterwards."""
    scenario = workdir / f"s{conversations}_{max_active}.toml"
    scenario.write_text(SCENARIO.format(conversations=conversations, max_active=max_active))
    out = workdir / f"run{conversations}_{max_active}"
    env = {**os.environ, "TURNLOOM_DISABLE_PLUGIN_AUTOLOAD": "1",
           "TURNLOOM_PROGRESS_INTERVAL": "3600"}
    peak_file = workdir / f"peak{conversations}_{max_active}"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, str(peak_file), "run", str(scenario),
                           "--out", str(out), "--no-progress", "--overwrite"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"run of {conversations} failed: {done.stderr.decode(errors='replace')}")
    peak_kib = int(peak_file.read_text())
    peak_file.unlink()
    lines = count_lines(out / "conversations.jsonl")
    for file in out.iterdir():
        file.unlink()
    out.rmdir()
    return Measurement(conversations, max_active, peak_kib / 1024, wall, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--max-active", type=int, default=256)
    parser.add_argument("--frontiers", action="store_true",
                        help="also vary max_active (64, 256, 1024) at the smallest size")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"max_active = {args.max_active}, two messages per conversation, scripted backend")
        print(f"{'conversations':>13} {'peak RSS MiB':>13} {'wall s':>8} {'lines':>10}")
        for n in args.sizes:
            m = measure(n, args.max_active, work)
            print(f"{m.conversations:>13,} {m.peak_rss_mib:>13.1f} {m.wall_s:>8.1f} "
                  f"{m.lines:>10,}", flush=True)
            if m.lines != n:
                raise SystemExit(f"incomplete output: {m.lines} lines for {n} conversations")
        if args.frontiers:
            n = min(args.sizes)
            rows = [measure(n, k, work) for k in (64, 256, 1024)]
            print(f"\nconversations = {n:,}")
            print(f"{'max_active':>13} {'peak RSS MiB':>13}")
            for m in rows:
                print(f"{m.max_active:>13,} {m.peak_rss_mib:>13.1f}")
            slope = (rows[-1].peak_rss_mib - rows[0].peak_rss_mib) / (1024 - 64) * 1024
            base = rows[0].peak_rss_mib - slope * 64 / 1024
            print(f"fit: peak RSS ~ {base:.1f} MiB + {slope:.1f} KiB x max_active")


if __name__ == "__main__":
    main()
