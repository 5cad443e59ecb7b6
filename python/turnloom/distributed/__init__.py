"""Scale-out: a run split into shards of conversations, each run by the ordinary
engine in its own process (Ray actors across a cluster, or child processes on
this machine), merged into one run directory.

    from turnloom.distributed import run_processes, run_ray, resume_sharded
    result = run_processes("study.toml", out="runs/study", processes=8)   # this machine's cores
    result = run_ray("study.toml", out="/shared/runs/study", address="auto", shards=8)
    result = resume_sharded("/shared/runs/study")    # after the driver was interrupted

Ray is needed only to run on Ray (``pip install 'turnloom[ray]'``); local
processes, planning, merging and `is_sharded` work without it.
"""

from turnloom.distributed.driver import (
    ShardFailed, ShardStatus, is_sharded, resume_processes, resume_ray, resume_sharded,
    run_processes, run_ray)
from turnloom.distributed.plan import Shard, plan_shards

__all__ = ["Shard", "ShardFailed", "ShardStatus", "is_sharded", "plan_shards",
           "resume_processes", "resume_ray", "resume_sharded", "run_processes", "run_ray"]
