"""How many conversations complete when the SGLang replicas misbehave.

Runs the engine with the ``sglang`` HTTP backend against loopback SGLang
servers that inject a fault mix on /generate (default: 10% HTTP 5xx, 5%
connection resets, 5% malformed JSON, 2% hangs past the 1 s client timeout),
and prints completed / total conversations, the faults injected and the
causes recorded for conversations that failed.

    .venv/bin/python bench/bench_faults.py --conversations 2000 --replicas 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import Counter
from pathlib import Path

from turnloom.testing.chaos import DEFAULT_MIX, fault_mix_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mix", type=json.loads, default=dict(DEFAULT_MIX),
                        help='JSON object of fault kind -> probability per request')
    args = parser.parse_args()
    os.environ.setdefault("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", "1")
    with tempfile.TemporaryDirectory() as tmp:
        report = fault_mix_run(Path(tmp) / "run", conversations=args.conversations,
                               replicas=args.replicas, mix=args.mix, seed=args.seed)
    injected = sum(report.injected.values())
    print(f"fault mix per /generate request: {args.mix}")
    print(f"requests: {report.requests}, faults injected: {injected} {report.injected}")
    print(f"conversations completed: {report.completed}/{report.conversations} "
          f"({100 * report.completion_rate:.2f}%), failed and recorded: {report.failed}, "
          f"lost: {args.conversations - report.conversations}")
    for cause, n in Counter(c.split(":")[0] for c in report.failure_causes).most_common(5):
        print(f"  failure cause {cause!r}: {n}")
    print(f"wall: {report.wall_s:.1f}s")


if __name__ == "__main__":
    main()
