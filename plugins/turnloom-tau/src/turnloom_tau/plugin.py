"""The shop domain's components, registered with turnloom.

- environment ``tau-shop``: the tool environment; its state is the database (JSON);
  it answers one pending tool call per turn through the shared validation, so a
  malformed or refused call comes back to the agent as "Error: ..." and is counted in
  the turn's meta (``tool_error``: its kind);
- agent ``tau-customer``: the simulated customer, told the task's instructions (tau-bench's
  user rules); "###STOP###" in its output ends the conversation;
- agent ``tau-agent``: the service agent, whose system prompt is the policy; its output is
  split into content and tool calls by the configured parser (default ``hermes``);
- scorer ``tau-reward``: tau-bench's reward from the final ``conversation.state`` and the
  agent's messages, with the task's index and the trial for pass^k (`turnloom_tau.reward`).

Conversation index i plays task i mod T in trial i // T (`tasks.task_for_index`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from turnloom.agents import Reply
from turnloom.hookspecs import Register, hookimpl
from turnloom.messages import ToolCall
from turnloom.records import ConversationState
from turnloom.references import check_participant_names
from turnloom.tools.parsers import BUILTIN_PARSERS, ToolParser
from turnloom.tools.validate import CallResult

from turnloom_tau.reward import reward
from turnloom_tau.tasks import (
    STOP,
    TOOLKIT,
    Task,
    expected_state,
    load_database,
    load_tasks,
    policy,
    task_for_index,
)

CUSTOMER_PROMPT = """You are a customer talking to the customer service agent of an outdoor-gear shop.

Instruction: {instruction}

Rules:
- Write one message at a time, as the customer.
- Do not give away the whole instruction at once; give only what the current step needs.
- Do not make up information the instruction does not give you (an order id, an email): say you do not know it.
- When your goal is met, reply with only '{stop}' to end the conversation.
- Use your own words rather than repeating the instruction."""


def _settings(cls: type, settings: Mapping[str, Any] | None, what: str) -> Any:
    try:
        return msgspec.convert(dict(settings or {}), cls)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{what} settings: {exc}") from None


def _parser(name: str, what: str) -> ToolParser:
    if name not in BUILTIN_PARSERS:
        raise ValueError(f"{what}: unknown tool-call parser {name!r} "
                         f"(built in: {', '.join(sorted(BUILTIN_PARSERS))})")
    return BUILTIN_PARSERS[name]()


def task_of(conversation: ConversationState) -> tuple[Task, int]:
    tasks = load_tasks()
    task_index, trial = task_for_index(conversation.index, len(tasks))
    return tasks[task_index], trial


def current_state(conversation: ConversationState) -> Any:
    """The conversation's database: its state, or the initial one before any write."""
    state = conversation.state
    return load_database() if state is None else state


# --- environment ----------------------------------------------------------------------

class ShopEnvironment:
    """The shop's tools over the per-conversation database."""

    def tools(self, conversation: ConversationState, me: str) -> list[dict[str, Any]]:
        return TOOLKIT.schemas

    def initial_state(self, conversation: ConversationState) -> Any:
        return load_database()

    def answer(self, call: ToolCall, state: Any) -> CallResult:
        """One call's answer and the database after it (never raises for a bad call)."""
        return TOOLKIT.call(call, state)

    def respond(self, conversation: ConversationState, me: str, rng: random.Random) -> Reply:
        pending = conversation.pending_tool_calls()
        if not pending:
            return Reply(text="Error: no tool call is waiting for an answer",
                         meta={"tool_error": "no_pending_call"})
        call = pending[0]
        result = self.answer(call, current_state(conversation))
        meta = {"tool_error": result.error.kind} if result.error else {}
        return Reply(text=result.text, meta=meta, tool_call_id=call.id,
                     state=result.state)


# --- agents ---------------------------------------------------------------------------

class CustomerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    environment: str = "shop"  # the environment's participant name: not in the customer's view


class Customer:
    """The simulated customer of the conversation's task."""

    role = "user"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings = _settings(CustomerSettings, settings, "tau-customer")
        # Without a tool environment the default names no one: `environment` is
        # checked only when the scenario sets it.
        self._environment_set = "environment" in (settings or {})

    def check_participants(self, names: Sequence[str]) -> None:
        if self._environment_set:
            check_participant_names(names, environment=self.settings.environment)

    def system_prompt(self, conversation: ConversationState, me: str) -> str:
        task, _ = task_of(conversation)
        return CUSTOMER_PROMPT.format(instruction=task.instruction, stop=STOP)

    def role_in_view(self, speaker: str, me: str) -> str | None:
        if speaker == self.settings.environment:
            return None  # the customer never sees tool results
        return "assistant" if speaker == me else "user"

    def on_output(self, conversation: ConversationState, me: str, text: str,
                  finish_reason: str) -> Reply:
        pos = text.find(STOP)
        if pos >= 0:
            return Reply(text[:pos].strip(), stop="customer_stop")
        return Reply(text.strip())


class AgentSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    parser: str = "hermes"


class ShopAgent:
    """The service agent: the policy as its system prompt, tool calls parsed from its text."""

    role = "assistant"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        s = _settings(AgentSettings, settings, "tau-agent")
        self.parser = _parser(s.parser, "tau-agent")

    def system_prompt(self, conversation: ConversationState, me: str) -> str:
        return policy()

    def role_in_view(self, speaker: str, me: str) -> str:
        return "assistant" if speaker == me else "user"

    def on_output(self, conversation: ConversationState, me: str, text: str,
                  finish_reason: str) -> Reply:
        parsed = self.parser.parse(text, random.Random(f"{conversation.conversation_id}/"
                                                       f"{conversation.branch}/"
                                                       f"{len(conversation.turns)}"))
        return Reply(text=parsed.content, tool_calls=tuple(parsed.calls))


# --- scorer ---------------------------------------------------------------------------

class RewardSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    agent: str = "agent"  # the agent's participant name
    parser: str = "hermes"  # strips tool-call markup should it be left in a message's text


class TauReward:
    """tau-bench's reward of a finished conversation, with its task and trial."""

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        s = _settings(RewardSettings, settings, "tau-reward")
        self.agent = s.agent
        self.parser = _parser(s.parser, "tau-reward")

    def check_participants(self, names: Sequence[str]) -> None:
        check_participant_names(names, agent=self.agent)

    def score_turn(self, conversation: ConversationState, turn: Any) -> None:
        return None

    def score_conversation(self, conversation: ConversationState) -> dict[str, Any]:
        tasks = load_tasks()
        task_index, trial = task_for_index(conversation.index, len(tasks))
        task = tasks[task_index]
        rng = random.Random(0)
        said = [self.parser.parse(text, rng).content
                for speaker, _, text in conversation.messages if speaker == self.agent]
        result = reward(current_state(conversation), expected_state(task), task.outputs, said)
        return {"reward": result.reward, "state_matches": int(result.state_matches),
                "outputs_found": sum(result.outputs.values()), "outputs": len(task.outputs),
                "task": task_index, "trial": trial,  # scores are numbers: the task's index
                # malformed, unknown or refused calls answered with "Error: ..."
                "tool_errors": sum(1 for t in conversation.turns if "tool_error" in t.meta)}


@hookimpl
def register_environments(register: Register) -> None:
    register("tau-shop", lambda settings=None: ShopEnvironment())


@hookimpl
def register_agents(register: Register) -> None:
    register("tau-customer", Customer)
    register("tau-agent", ShopAgent)


@hookimpl
def register_scorers(register: Register) -> None:
    register("tau-reward", TauReward)
