"""turnloom: simulate multi-turn LLM dialogues at scale, with a Rust core."""

from turnloom._core import (
    CapacityError,
    Forest,
    InvalidArgumentError,
    JobError,
    RadixCache,
    Scheduler,
    StaleNodeError,
    TurnloomError,
    UnknownNodeError,
    __version__,
)
from turnloom.hookspecs import hookimpl

__all__ = [
    "CapacityError",
    "Forest",
    "InvalidArgumentError",
    "JobError",
    "RadixCache",
    "Scheduler",
    "StaleNodeError",
    "TurnloomError",
    "UnknownNodeError",
    "__version__",
    "hookimpl",
]
