"""B3 (bench/bench_transformers.py) still runs end to end at a tiny size and both
sides answer the same questions (no timing assertions)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_transformers.py"


@pytest.mark.model
def test_b3_table(embedded_model):
    env = {**os.environ, "TURNLOOM_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run([sys.executable, str(BENCH), "--conversations", "3", "--turns", "2",
                           "--max-new-tokens", "6", "--no-reuse", "--threads", "1"],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("machine: ") and lines[-1].startswith("load average at the end: ")
    rows = [line for line in done.stdout.splitlines()
            if line.startswith(("turnloom:", "naive:"))]
    assert [r.split(":")[0] for r in rows] == ["turnloom", "turnloom", "naive"]
    cells = [r.rsplit(None, 6)[1:] for r in rows]  # gen tok, prompt tok, reused, wall, rate, x
    generated = {int(c[0]) for c in cells}
    assert generated and max(generated) <= 3 * 2 * 6 and min(generated) > 0
    # Same questions on both sides; prompts differ only by the replies greedy decoding
    # gave in earlier turns (batched and single-sequence numerics may part ways).
    prompt_tokens = [int(c[1]) for c in cells]
    assert max(prompt_tokens) <= 1.25 * min(prompt_tokens), rows
    assert int(cells[0][2]) > 0 and int(cells[1][2]) == 0  # KV reused only with reuse on
    assert rows[2].endswith("1.00x")
