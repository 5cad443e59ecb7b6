"""turnloom hook implementations: what the `usp` entry point registers."""

from __future__ import annotations

import turnloom
from turnloom.hookspecs import Register
from turnloom_usp.extractor import ProfileConsistency, ProfileExtractor
from turnloom_usp.judged_consistency import JudgedConsistency
from turnloom_usp.metrics import FaultScorer, LoopScorer
from turnloom_usp.sampler import DiverseProfileSampler
from turnloom_usp.simulator import UspUser


@turnloom.hookimpl
def register_agents(register: Register) -> None:
    register("usp-user", UspUser)


@turnloom.hookimpl
def register_samplers(register: Register) -> None:
    register("usp-profiles", DiverseProfileSampler)


@turnloom.hookimpl
def register_scorers(register: Register) -> None:
    register("usp-loops", LoopScorer)
    register("usp-faults", FaultScorer)


# Optional so that the plugin still loads with a turnloom that has no judges hook.
@turnloom.hookimpl(optionalhook=True)
def register_judges(register: Register) -> None:
    register("usp-extract", ProfileExtractor)
    register("usp-consistency", JudgedConsistency)
    register("usp-consistency-lexical", ProfileConsistency)
