"""What an unfinished sharded run has done so far, shard by shard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from turnloom import rundir
from turnloom.distributed.plan import Shard, shard_path
from turnloom.distributed.walcount import WalCounter


def describe_partial(run_dir: Path, manifest: dict[str, Any]) -> str:
    shards = [Shard.from_dict(s) for s in manifest["sharding"]["shards"]]
    total = manifest.get("scenario", {}).get("run", {}).get("conversations", "?")
    lines, conversations, turns, complete = [], 0, 0, 0
    for shard in shards:
        path = shard_path(run_dir, shard)
        counts = WalCounter(path / rundir.WAL).poll()
        state = "not started"
        if (path / rundir.SUMMARY).is_file():
            summary = json.loads((path / rundir.SUMMARY).read_text(encoding="utf-8"))
            if summary.get("status") == "complete":
                state = "complete"
                complete += 1
        elif (path / rundir.MANIFEST).is_file():
            state = "incomplete"
        conversations += counts.conversations
        turns += counts.turns
        last = shard.first_index + shard.conversations - 1
        lines.append(f"    {shard.dir}  conversations {shard.first_index}..{last}: {state}, "
                     f"{counts.conversations} finished, {counts.turns} turns logged")
    head = (f"incomplete sharded run in {run_dir}: {complete} of {len(shards)} shards complete, "
            f"{conversations} of {total} conversations finished, {turns} turns logged")
    on_ray = manifest["sharding"].get("executor", "ray") == "ray"
    tail = f"  continue it with: turnloom resume {run_dir}{' --ray ADDRESS' if on_ray else ''}"
    return "\n".join([head, *lines, tail])
