"""turnloom hook implementations: what the `roleplay` entry point registers."""

from __future__ import annotations

import turnloom
from turnloom.hookspecs import Register
from turnloom_roleplay.judges import IdentityJudge, KnowledgeJudge, RejectionJudge
from turnloom_roleplay.persona import CardSampler, Persona
from turnloom_roleplay.questioner import Questioner


@turnloom.hookimpl
def register_agents(register: Register) -> None:
    register("persona", Persona)


@turnloom.hookimpl
def register_environments(register: Register) -> None:
    register("persona-questioner", Questioner)


@turnloom.hookimpl
def register_samplers(register: Register) -> None:
    register("persona-cards", CardSampler)


# Optional so that the plugin still loads with a turnloom that has no judges hook.
@turnloom.hookimpl(optionalhook=True)
def register_judges(register: Register) -> None:
    register("persona-identity", IdentityJudge)
    register("persona-knowledge", KnowledgeJudge)
    register("persona-rejection", RejectionJudge)
