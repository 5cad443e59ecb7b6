"""Scale-out past one machine: a run split into shards of conversations, each
run by the ordinary engine in a Ray actor, merged into one run directory.

    from turnloom.distributed import run_ray, resume_ray
    result = run_ray("study.toml", out="/shared/runs/study", address="auto", shards=8)
    result = resume_ray("/shared/runs/study")        # after the driver was interrupted

Ray is needed only to run (``pip install 'turnloom[ray]'``); planning, merging
and `is_sharded` work without it.
"""

from turnloom.distributed.driver import ShardFailed, ShardStatus, is_sharded, resume_ray, run_ray
from turnloom.distributed.plan import Shard, plan_shards

__all__ = ["Shard", "ShardFailed", "ShardStatus", "is_sharded", "plan_shards", "resume_ray",
           "run_ray"]
