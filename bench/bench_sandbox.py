"""Sandbox throughput: code-against-tests runs per second, against a plain subprocess.

Each run executes one problem's correct function against its unit tests (the
`sum_evens` problem of turnloom-socratic, 4 tests) in a new process.

  sandbox   `turnloom_socratic.sandbox.run_tests`: a private temp dir, `python -I -S -B`
            running the runner, rlimits (memory, CPU, processes, file size), an audit
            hook, a network namespace via `unshare` where available, events over a pipe,
            the temp dir deleted afterwards.
  baseline  what a user would write without isolation: `subprocess.run([python, "-c",
            code + tests], capture_output=True)` in the current directory.

Both run sequentially and from a thread pool of `--workers` threads (each run is a
subprocess, so threads give real parallelism). Ratio = baseline runs/s / sandbox
runs/s (the sandbox's cost factor).

    .venv/bin/python bench/bench_sandbox.py
    .venv/bin/python bench/bench_sandbox.py --runs 200 --workers 4
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from turnloom_socratic.dataset import load_problems
from turnloom_socratic.sandbox import Limits, run_tests, unshare_prefix


def baseline_program(code: str, entry: str, cases: list[tuple[list, object]]) -> str:
    checks = "".join(f"assert {entry}(*{args!r}) == {expected!r}\n" for args, expected in cases)
    return code + checks + "print('ok')\n"


def measure(job: Callable[[], bool], runs: int, workers: int) -> tuple[float, int]:
    """Wall seconds for `runs` calls of `job` over `workers` threads, and how many passed."""
    t0 = time.perf_counter()
    if workers == 1:
        ok = sum(job() for _ in range(runs))
    else:
        with ThreadPoolExecutor(workers) as pool:
            ok = sum(pool.map(lambda _: job(), range(runs)))
    return time.perf_counter() - t0, ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--network", choices=["auto", "audit"], default="auto",
                        help="network isolation of the sandbox (auto: unshare where it works)")
    args = parser.parse_args()

    problem = load_problems()["sum_evens"]
    cases = [(c.args, c.expected) for c in problem.tests]
    limits = Limits(network=args.network)
    program = baseline_program(problem.code, problem.entry, cases)

    def sandboxed() -> bool:
        return run_tests(problem.code, problem.entry, problem.tests, limits).all_passed

    def plain() -> bool:
        done = subprocess.run([sys.executable, "-c", program], capture_output=True)
        return done.returncode == 0 and done.stdout.strip() == b"ok"

    isolation = ("unshare --net + audit hook" if args.network == "auto" and unshare_prefix()
                 else "audit hook only")
    print(f"{args.runs} runs of {problem.id!r} ({len(cases)} tests) per row; "
          f"{os.cpu_count()} CPUs; network isolation: {isolation}")
    header = f"{'side':<10} {'workers':>7} {'runs':>6} {'passed':>6} {'wall s':>8} {'runs/s':>8} {'ms/run':>8} {'cost x':>7}"
    print(header)
    print("-" * len(header))
    for workers in sorted({1, args.workers}):
        rows = {}
        for side, job in (("baseline", plain), ("sandbox", sandboxed)):
            job()  # warm the page cache
            wall, ok = measure(job, args.runs, workers)
            rows[side] = args.runs / wall
            cost = rows["baseline"] / rows[side]
            print(f"{side:<10} {workers:>7} {args.runs:>6} {ok:>6} {wall:>8.2f} "
                  f"{rows[side]:>8.1f} {1000 * wall / args.runs:>8.1f} {cost:>6.2f}x")


if __name__ == "__main__":
    main()
