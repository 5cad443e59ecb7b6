"""Hook specifications: the whole plugin surface of turnloom.

A plugin is any module or object with functions marked `@turnloom.hookimpl`
whose names match the specs below. Built-in plugins are listed in
`turnloom.plugins.DEFAULT_PLUGINS`; third-party packages expose theirs through
the `turnloom` entry-point group.

Registration hooks receive a `register` callable: call it once per component,
``register(name, factory)``. Factories are called with the component's
settings from the scenario (a dict) and return the component. A component that names
other participants in its settings may define ``check_participants(names)``: it is
called with the scenario's participant names when the component is built (by
``turnloom validate`` as by a run) and raises ValueError for a name not among them
(``turnloom.references.check_participant_names`` does that check).

Lifecycle hooks (``on_conversation_start``, ``on_turn_end``, ``should_stop``,
``on_conversation_end``) of an installed plugin apply to a run only when its scenario
lists the plugin in ``plugins = [...]`` or uses one of its components; built-in plugins
and plugins registered by the caller's own code always apply. The run's manifest and
``turnloom show`` name the plugins whose hooks applied.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from turnloom.records import ConversationState, TurnRecord

hookspec = pluggy.HookspecMarker("turnloom")
hookimpl = pluggy.HookimplMarker("turnloom")

Register = Callable[[str, Callable[..., Any]], None]


@hookspec
def register_agents(register: Register) -> None:
    """Register participant types that speak through a backend (LLM agents).

    ``register(name, factory)``; ``factory(settings: dict) -> turnloom.agents.Agent``.
    An agent builds its view of the conversation (system prompt, role mapping)
    and turns model output into a message or a stop.
    """


@hookspec
def register_environments(register: Register) -> None:
    """Register non-LLM participants (deterministic environments, tools).

    ``register(name, factory)``; ``factory(settings: dict) -> turnloom.agents.Environment``.
    An environment answers a turn from the conversation so far, with no backend.
    """


@hookspec
def register_samplers(register: Register) -> None:
    """Register profile and persona samplers.

    ``register(name, factory)``; ``factory(settings: dict) -> turnloom.agents.Sampler``.
    A sampler draws one profile (a dict rendered into a participant's system
    prompt) per conversation from a seeded ``random.Random``.
    """


@hookspec
def register_scorers(register: Register) -> None:
    """Register scorers.

    ``register(name, factory)``; ``factory(settings: dict) -> turnloom.scoring.Scorer``.
    A scorer scores each turn and/or each finished conversation; its scores are
    written to ``scores.jsonl`` and onto the conversation record.
    """


@hookspec
def register_judges(register: Register) -> None:
    """Register LLM judges.

    ``register(name, factory)``; ``factory(settings: dict) -> turnloom.judging.Judge``.
    A judge asks a model questions about each finished conversation; the engine
    generates the answers through the judge's backend, batched with the run's
    other requests, and the judge turns the parsed verdicts into a score.
    """


@hookspec
def register_tool_parsers(register: Register) -> None:
    """Register tool-call parsers: how a model family writes tool calls in its text.

    ``register(name, factory)``; ``factory(settings: dict) -> turnloom.tools.ToolParser``.
    A parser splits generated text into content and ``turnloom.messages.ToolCall``s and
    renders calls back in the family's format; built in: hermes, llama3_json, mistral.
    """


@hookspec
def register_backends(register: Register) -> None:
    """Register generation backends.

    ``register(name, factory)``; ``factory(settings: dict) -> turnloom.backends.Backend``.
    """


@hookspec
def register_exporters(register: Register) -> None:
    """Register dataset exporters.

    ``register(name, factory)``; ``factory(settings: dict) -> turnloom.export.Exporter``.
    An exporter streams finished conversation records into a file format.
    """


@hookspec
def on_conversation_start(conversation: ConversationState) -> None:
    """Called once when a conversation (or a branch of it) starts, before its first turn.

    May add entries to ``conversation.meta``; must not change its messages.
    """


@hookspec
def on_turn_end(conversation: ConversationState, turn: TurnRecord) -> None:
    """Called after every completed turn, once it is appended to the forest.

    Runs before the turn's write-ahead-log event is written, because that event
    records the stop decision; a resumed run does not call it again for logged turns.
    """


@hookspec(firstresult=True)
def should_stop(conversation: ConversationState, turn: TurnRecord) -> str | None:
    """Decide whether the conversation ends after `turn`.

    Return a stop reason (a short string) to end it, or None to go on.
    Stops at the first non-None result.
    """


@hookspec
def on_conversation_end(conversation: ConversationState) -> None:
    """Called once when a conversation ends, after its scores are computed."""


@hookspec(firstresult=True)
def next_speaker(conversation: ConversationState, default: str) -> str | None:
    """Choose who speaks next in `conversation`, or return None to keep `default`.

    Called before every turn that tool routing does not decide (a pending tool call
    goes to the environment owning its tool, a tool result back to its caller).
    `default` is the participant the turn order names. Return a participant name;
    a name that is not a participant is a conversation error. Read-only: the
    conversation must not be changed. Stops at the first non-None result.
    """
