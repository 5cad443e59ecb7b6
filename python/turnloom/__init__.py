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
)
from turnloom.api import RunResult, arun, aresume, resume, run
from turnloom.config import Scenario, ScenarioError, load_scenario
from turnloom.exporters import export_run
from turnloom.hookspecs import hookimpl

__all__ = [
    "CapacityError",
    "Forest",
    "InvalidArgumentError",
    "JobError",
    "RadixCache",
    "RunResult",
    "Scenario",
    "ScenarioError",
    "Scheduler",
    "StaleNodeError",
    "TurnloomError",
    "UnknownNodeError",
    "aresume",
    "arun",
    "export_run",
    "hookimpl",
    "load_scenario",
    "resume",
    "run",
]
