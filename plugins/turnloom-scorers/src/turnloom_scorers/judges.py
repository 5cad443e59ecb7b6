"""LLM judges run through the engine: a 1-10 single score and an A/B pairwise verdict.

Both ask for a strict answer format and raise `turnloom.judging.Unparseable`
when the output does not follow it (the engine retries such a call once, then
passes None to `score`).

- ``single-score``: "Rating: [[N]]" with N in 1..10 after a short rationale;
  asked once per turn of ``participant``, or once for the whole conversation.
- ``pairwise``: the i-th answers of participants ``a`` and ``b`` in the same
  conversation, shown after the dialogue so far; the verdict is "[[A]]", "[[B]]"
  or "[[C]]" (tie). Each pair is asked twice with the positions swapped; a
  participant wins a pair only when both orders pick it, anything else is a tie.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from turnloom.judging import JudgeCall, Unparseable
from turnloom.records import ConversationState
from turnloom.references import check_participant_names

from turnloom_scorers.settings import Settings, decode

DEFAULT_CRITERIA = "helpfulness, relevance, accuracy, depth and clarity"

_RATING = re.compile(r"Rating:\s*\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_CHOICE = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def transcript(messages: Sequence[tuple[str, str, str]]) -> str:
    """Messages as "[name]: text" blocks, the way judges are shown a dialogue."""
    return "\n\n".join(f"[{name}]: {text}" for name, _, text in messages)


class SingleScoreSettings(Settings, frozen=True):
    participant: str | None = None  # None: judge the whole conversation once
    criteria: str = DEFAULT_CRITERIA


class SingleScore:
    """A 1-10 rating with a rationale, per turn of a participant or per conversation."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        s = decode(SingleScoreSettings, settings, "single-score judge")
        self.participant = s.participant
        self.criteria = s.criteria

    def check_participants(self, names: Sequence[str]) -> None:
        check_participant_names(names, participant=self.participant)

    def _system(self) -> str:
        return (f"You are an impartial judge. Rate the quality of the response you are shown "
                f"for {self.criteria}, on a scale of 1 to 10. First explain your rating in one "
                f"or two sentences, then give it exactly in this format: Rating: [[5]]")

    def calls(self, conversation: ConversationState) -> list[JudgeCall]:
        if self.participant is None:
            if not conversation.messages:
                return []
            text = ("Here is a conversation.\n\n" + transcript(conversation.messages)
                    + "\n\nRate the conversation as a whole.")
            return [JudgeCall(key="conversation",
                              messages=(("system", self._system()), ("user", text)))]
        calls = []
        for turn in conversation.turns_of(self.participant):
            if not turn.text.strip():
                continue
            before = conversation.messages[:turn.turn]
            text = ("Here is a conversation so far.\n\n" + transcript(before)
                    + f"\n\nRate this response by [{self.participant}]:\n\n{turn.text}")
            calls.append(JudgeCall(key=f"turn{turn.turn}", meta={"turn": turn.turn},
                                   messages=(("system", self._system()), ("user", text))))
        return calls

    def parse(self, call: JudgeCall, text: str) -> Any:
        ratings = {float(m) for m in _RATING.findall(text)}
        if len(ratings) != 1:
            raise Unparseable("expected exactly one 'Rating: [[N]]'" if not ratings
                              else f"conflicting ratings {sorted(ratings)}")
        rating = ratings.pop()
        if not 1 <= rating <= 10:
            raise Unparseable(f"rating {rating} is outside 1..10")
        rationale = _RATING.split(text, maxsplit=1)[0].strip()
        return {"rating": rating, "rationale": rationale[:500]}

    def score(self, conversation: ConversationState,
              verdicts: dict[str, Any]) -> dict[str, Any] | None:
        if not verdicts:
            return None
        ratings = [v["rating"] for v in verdicts.values() if v is not None]
        out: dict[str, Any] = {"judged": len(ratings), "asked": len(verdicts)}
        if ratings:
            out.update(rating=sum(ratings) / len(ratings), min=min(ratings), max=max(ratings))
        return out


class PairwiseSettings(Settings, frozen=True):
    a: str
    b: str
    criteria: str = DEFAULT_CRITERIA


class Pairwise:
    """A/B verdicts between two participants' answers, asked in both orders."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        s = decode(PairwiseSettings, settings, "pairwise judge")
        if s.a == s.b:
            raise ValueError("invalid pairwise judge settings: `a` and `b` must differ")
        self.a, self.b, self.criteria = s.a, s.b, s.criteria

    def check_participants(self, names: Sequence[str]) -> None:
        check_participant_names(names, a=self.a, b=self.b)

    def _system(self) -> str:
        return (f"You are an impartial judge. Compare two responses, A and B, to the last "
                f"message of a conversation, for {self.criteria}. Ignore the order in which "
                f"they are shown and their length. Explain briefly, then give your verdict "
                f"exactly as [[A]] if A is better, [[B]] if B is better, or [[C]] for a tie.")

    def calls(self, conversation: ConversationState) -> list[JudgeCall]:
        calls = []
        pairs = zip(conversation.turns_of(self.a), conversation.turns_of(self.b))
        for i, (ta, tb) in enumerate(pairs):
            before = [m for m in conversation.messages[:min(ta.turn, tb.turn)]
                      if m[0] not in (self.a, self.b)]
            context = transcript(before)
            for order, (first, second) in (("ab", (ta, tb)), ("ba", (tb, ta))):
                text = (f"Conversation so far:\n\n{context}\n\n[Response A]\n{first.text}\n"
                        f"[End of response A]\n\n[Response B]\n{second.text}\n"
                        f"[End of response B]")
                calls.append(JudgeCall(key=f"pair{i}.{order}",
                                       meta={"pair": i, "first": first.participant,
                                             "second": second.participant},
                                       messages=(("system", self._system()), ("user", text))))
        return calls

    def parse(self, call: JudgeCall, text: str) -> Any:
        choices = set(_CHOICE.findall(text))
        if len(choices) != 1:
            raise Unparseable("expected exactly one of [[A]], [[B]], [[C]]" if not choices
                              else f"conflicting verdicts {sorted(choices)}")
        choice = choices.pop()
        winner = {"A": call.meta["first"], "B": call.meta["second"], "C": "tie"}[choice]
        return {"choice": choice, "winner": winner}

    def score(self, conversation: ConversationState,
              verdicts: dict[str, Any]) -> dict[str, Any] | None:
        pairs = sorted({int(key.split(".")[0][4:]) for key in verdicts})
        if not pairs:
            return None
        wins = {self.a: 0, self.b: 0, "tie": 0}
        consistent = judged = 0
        for i in pairs:
            ab, ba = verdicts.get(f"pair{i}.ab"), verdicts.get(f"pair{i}.ba")
            if ab is None or ba is None:
                continue
            judged += 1
            if ab["winner"] == ba["winner"]:
                consistent += 1
                wins[ab["winner"]] += 1
            else:
                wins["tie"] += 1
        out: dict[str, Any] = {"a": self.a, "b": self.b, "pairs": len(pairs), "judged": judged}
        if judged:
            out.update(a_wins=wins[self.a], b_wins=wins[self.b], ties=wins["tie"],
                       a_win_rate=wins[self.a] / judged, b_win_rate=wins[self.b] / judged,
                       consistency=consistent / judged)
        return out
