"""An example turnloom plugin; copy this package to start your own.

It adds:

- the ``question-rate`` scorer: per turn, whether the speaker asked a question (0 or 1);
  per conversation, the fraction of the scored participant's turns that did;
- the ``countdown`` environment: a participant without a model that answers with the
  number of its turns left and stops the conversation when that reaches zero;
- a ``should_stop`` rule: a conversation ends once a message contains a goodbye phrase,
  ``conversation.meta["goodbye_phrase"]`` (default "goodbye"; None or "" turns it off).

turnloom finds this module through the ``turnloom`` entry point in pyproject.toml and
calls the functions marked ``@turnloom.hookimpl`` whose names match its hooks
(``turnloom.hookspecs``).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

import turnloom
from turnloom.agents import Reply
from turnloom.records import ConversationState, TurnRecord
from turnloom.references import check_participant_names

DEFAULT_GOODBYE = "goodbye"


@dataclass(frozen=True)
class QuestionRate:
    """How often a participant asks a question.

    Settings: ``participant`` -- whose turns to score (default: everyone's).
    """

    participant: str | None = None

    def score_turn(self, conversation: ConversationState,
                   turn: TurnRecord) -> dict[str, Any] | None:
        if not self._scores(turn):
            return None
        return {"asks_question": int(asks_question(turn.text))}

    def score_conversation(self, conversation: ConversationState) -> dict[str, Any] | None:
        turns = [turn for turn in conversation.turns if self._scores(turn)]
        if not turns:
            return None  # nothing to say: the participant never spoke
        asked = sum(asks_question(turn.text) for turn in turns)
        return {"question_rate": asked / len(turns)}

    def check_participants(self, names: tuple[str, ...]) -> None:
        # Called once the scenario is known (by `turnloom validate` as by a run): a
        # setting that names a participant must name one of the scenario's, or the
        # scorer would silently score nothing. `setting` points the error at its line.
        check_participant_names(names, participant=self.participant)

    def _scores(self, turn: TurnRecord) -> bool:
        return self.participant is None or turn.participant == self.participant


def asks_question(text: str) -> bool:
    return "?" in text


@dataclass(frozen=True)
class Countdown:
    """A deterministic participant: it speaks `turns` times, each time saying how many
    of its turns are left after this one, and stops the conversation at "0".

    Settings: ``turns`` -- how many times it speaks (default 3: "2", "1", "0").
    """

    turns: int = 3

    def __post_init__(self) -> None:
        # Settings come from a scenario file: fail on a bad value with a clear message.
        if not isinstance(self.turns, int) or isinstance(self.turns, bool) or self.turns < 1:
            raise ValueError(f"countdown: 'turns' must be a positive integer, got {self.turns!r}")

    def respond(self, conversation: ConversationState, me: str, rng: random.Random) -> Reply:
        left = max(self.turns - len(conversation.turns_of(me)) - 1, 0)
        return Reply(text=str(left), stop="countdown finished" if left == 0 else None)


def said_goodbye(text: str, phrase: str) -> bool:
    """Whether `text` contains `phrase` as whole words, in any case."""
    if phrase.casefold() not in text.casefold():  # cheap check first: this runs every turn
        return False
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, re.IGNORECASE) is not None


@turnloom.hookimpl
def register_scorers(register):
    # A factory takes the component's settings (a dict from the scenario).
    register("question-rate", lambda settings: QuestionRate(**settings))


@turnloom.hookimpl
def register_environments(register):
    register("countdown", lambda settings: Countdown(**settings))


@turnloom.hookimpl
def should_stop(conversation: ConversationState, turn: TurnRecord) -> str | None:
    phrase = conversation.meta.get("goodbye_phrase", DEFAULT_GOODBYE)
    if phrase and said_goodbye(turn.text, phrase):
        return "goodbye"
    return None  # None lets the other plugins (and the conversation) go on
