"""turnloom hooks of the Socratic-tutoring plugin (entry point `socratic`)."""

from __future__ import annotations

import turnloom
from turnloom.hookspecs import Register
from turnloom_socratic.judge import QuestionRelevance
from turnloom_socratic.participants import ProblemSampler, ScriptedStudent, Student, Tutor
from turnloom_socratic.scorers import BugsFixed, Leakage, TutorTurns
from turnloom_socratic.verifier import JudgeVerifier, Verifier


@turnloom.hookimpl
def register_agents(register: Register) -> None:
    register("socratic-tutor", Tutor)
    register("socratic-student", Student)
    register("socratic-verifier", JudgeVerifier)


@turnloom.hookimpl
def register_environments(register: Register) -> None:
    register("socratic-keyword-verifier", Verifier)
    register("socratic-scripted-student", ScriptedStudent)


@turnloom.hookimpl
def register_samplers(register: Register) -> None:
    register("socratic-problems", ProblemSampler)


@turnloom.hookimpl
def register_scorers(register: Register) -> None:
    register("socratic-bugs-fixed", BugsFixed)
    register("socratic-tutor-turns", TutorTurns)
    register("socratic-leakage", Leakage)


# Optional: turnloom versions without LLM judges have no such hook.
@turnloom.hookimpl(optionalhook=True)
def register_judges(register: Register) -> None:
    register("socratic-relevance", QuestionRelevance)
