"""SysBench: system-message following over a five-turn session, with per-turn checklists.

A session (`data/sysbench_sessions.json`, or inline settings) has a system
message and user turns; each turn has constraints typed Action, Content,
Background, Role, Format or Style. A constraint with a ``check`` (an IFEval
instruction dict) is verified by code; the others need the ``sysbench`` judge.

- ``sysbench-user`` (environment) sends the session's user turns and puts each
  turn's checklist in its ``meta["sysbench"]``; ``sysbench-assistant`` (agent)
  takes the session's system message as its system prompt. Both pick the
  session from the conversation's seed, so they always agree.
- ``sysbench`` scorer: the code-verifiable constraints only.
- ``sysbench`` judge: every constraint (code where it can, the model otherwise).

Metrics (SysBench): CSR = satisfied constraints / all constraints; ISR = turns
with every constraint satisfied / turns; SSR = turns satisfied in a row from
turn 1 / session turns (averaged over sessions by `corpus_metrics`). A
constraint the judge could not verify (unparseable output) counts as not
satisfied, and is reported under ``unverified``.
"""

from __future__ import annotations

import json
import random
import re
from functools import lru_cache
from typing import Any, Iterable, Literal, Mapping, Sequence

import msgspec

from turnloom.agents import Reply
from turnloom.judging import JudgeCall, Unparseable
from turnloom.records import ConversationState, TurnRecord

from turnloom_scorers import ifeval
from turnloom_scorers.instructions import parse_instruction
from turnloom_scorers.judges import transcript
from turnloom_scorers.settings import Settings, decode, load_data

META_KEY = "sysbench"
ConstraintType = Literal["Action", "Content", "Background", "Role", "Format", "Style"]


class Constraint(Settings, frozen=True):
    type: ConstraintType
    text: str
    check: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.check is not None:
            parse_instruction(self.check, f"constraint {self.text!r}")


class SessionTurn(Settings, frozen=True):
    message: str
    constraints: tuple[Constraint, ...]


class Session(Settings, frozen=True):
    id: str
    system: str
    turns: tuple[SessionTurn, ...]


@lru_cache(maxsize=1)
def shipped_sessions() -> tuple[Session, ...]:
    return msgspec.convert(load_data("sysbench_sessions.json")["sessions"],
                           tuple[Session, ...])


class SessionSettings(Settings, frozen=True):
    sessions: tuple[Session, ...] | None = None  # default: the shipped sessions


def _sessions(settings: Mapping[str, Any], component: str) -> tuple[Session, ...]:
    s = decode(SessionSettings, settings, component)
    sessions = s.sessions if s.sessions is not None else shipped_sessions()
    if not sessions or any(not x.turns for x in sessions):
        raise ValueError(f"invalid {component} settings: sessions need at least one turn")
    return sessions


def pick_session(sessions: Sequence[Session], conversation: ConversationState) -> Session:
    return sessions[random.Random(conversation.seed).randrange(len(sessions))]


class SysbenchAssistant:
    """An LLM assistant whose system prompt is the session's system message."""

    role = "assistant"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.sessions = _sessions(settings, "sysbench-assistant")

    def system_prompt(self, conversation: ConversationState, me: str) -> str | None:
        return pick_session(self.sessions, conversation).system

    def role_in_view(self, speaker: str, me: str) -> str:
        return "assistant" if speaker == me else "user"

    def on_output(self, conversation: ConversationState, me: str, text: str,
                  finish_reason: str) -> Reply:
        return Reply(text.strip())


class SysbenchUser:
    """Sends the session's user turns in order, each with its checklist in meta."""

    role = "user"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.sessions = _sessions(settings, "sysbench-user")

    def respond(self, conversation: ConversationState, me: str, rng: random.Random) -> Reply:
        session = pick_session(self.sessions, conversation)
        k = len(conversation.turns_of(me))
        if k >= len(session.turns):
            return Reply("", stop="sysbench_done")
        conversation.meta[META_KEY] = {"session": session.id, "turns": len(session.turns)}
        turn = session.turns[k]
        return Reply(turn.message, meta={META_KEY: {
            "session": session.id, "turn": k + 1,
            "constraints": [msgspec.to_builtins(c) for c in turn.constraints]}})


def answered_turns(conversation: ConversationState, participant: str
                   ) -> list[tuple[int, TurnRecord, list[Constraint]]]:
    """(session turn number, answer, checklist) for each answer by `participant`
    that follows a sysbench user turn."""
    out = []
    for turn in conversation.turns_of(participant):
        asked = next((t for t in reversed(conversation.turns[:turn.turn])
                      if META_KEY in t.meta), None)
        if asked is None or asked.turn != turn.turn - 1:
            continue
        info = asked.meta[META_KEY]
        checklist = [msgspec.convert(c, Constraint) for c in info["constraints"]]
        out.append((int(info["turn"]), turn, checklist))
    return out


def check_by_code(constraint: Constraint, response: str) -> bool | None:
    """Strict IFEval reading of a code-verifiable constraint; None when it has no check."""
    if constraint.check is None:
        return None
    return ifeval.follows(parse_instruction(constraint.check), response)


def metrics(turns: Sequence[Sequence[bool]], session_turns: int) -> dict[str, float]:
    """CSR, ISR and this session's SSR from per-turn constraint results."""
    total = sum(len(t) for t in turns)
    if not turns or not total:
        return {}
    satisfied_turns = [all(t) for t in turns]
    streak = 0
    for ok in satisfied_turns:
        if not ok:
            break
        streak += 1
    return {"csr": sum(sum(t) for t in turns) / total,
            "isr": sum(satisfied_turns) / len(turns),
            "ssr": streak / max(session_turns, len(turns))}


def _by_type(results: Iterable[tuple[Constraint, bool]]) -> dict[str, float]:
    counts: dict[str, list[int]] = {}
    for c, ok in results:
        entry = counts.setdefault(c.type, [0, 0])
        entry[0] += ok
        entry[1] += 1
    return {f"csr.{kind}": n / total for kind, (n, total) in sorted(counts.items())}


class ScorerSettings(Settings, frozen=True):
    participant: str = "assistant"


class SysbenchScorer:
    """CSR/ISR/SSR over the code-verifiable constraints only (no model needed)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.participant = decode(ScorerSettings, settings, "sysbench scorer").participant

    def score_turn(self, conversation: ConversationState, turn: TurnRecord) -> None:
        return None

    def score_conversation(self, conversation: ConversationState) -> dict[str, Any] | None:
        per_turn: list[list[bool]] = []
        pairs: list[tuple[Constraint, bool]] = []
        skipped = 0
        for _, answer, checklist in answered_turns(conversation, self.participant):
            results = []
            for c in checklist:
                ok = check_by_code(c, answer.text)
                if ok is None:
                    skipped += 1
                    continue
                results.append(ok)
                pairs.append((c, ok))
            if results:
                per_turn.append(results)
        if not per_turn:
            return None
        session_turns = (conversation.meta.get(META_KEY) or {}).get("turns", len(per_turn))
        return {**metrics(per_turn, session_turns), **_by_type(pairs),
                "checked": len(pairs), "not_checked": skipped}


_JSON_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)


class SysbenchJudge:
    """Every constraint: code-verified where it has a check, judged by the model otherwise."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.participant = decode(ScorerSettings, settings, "sysbench judge").participant

    def calls(self, conversation: ConversationState) -> list[JudgeCall]:
        system = conversation.system_prompts.get(self.participant, "")
        calls = []
        for number, answer, checklist in answered_turns(conversation, self.participant):
            history = transcript(conversation.messages[:answer.turn])
            for j, c in enumerate(checklist):
                if c.check is not None:
                    continue
                text = (f"System message given to the assistant:\n{system}\n\n"
                        f"Conversation so far:\n\n{history}\n\n"
                        f"Assistant's reply:\n{answer.text}\n\n"
                        f"Constraint ({c.type}): {c.text}\n\n"
                        'Does the reply satisfy the constraint? Answer with only a JSON object: '
                        '{"satisfied": true or false, "reason": "one short sentence"}')
                calls.append(JudgeCall(
                    key=f"turn{number}.c{j}", meta={"turn": number, "constraint": j},
                    messages=(("system", "You check whether an assistant's reply satisfies "
                                         "one constraint. Be strict and literal."),
                              ("user", text))))
        return calls

    def parse(self, call: JudgeCall, text: str) -> Any:
        body = text.strip()
        fenced = _JSON_FENCE.match(body)
        if fenced:
            body = fenced.group(1)
        try:
            value = json.loads(body)
        except ValueError:
            raise Unparseable("the output is not a JSON object") from None
        if not isinstance(value, dict) or not isinstance(value.get("satisfied"), bool):
            raise Unparseable('expected {"satisfied": true|false, ...}')
        reason = value.get("reason")
        return {"satisfied": value["satisfied"],
                "reason": reason[:300] if isinstance(reason, str) else ""}

    def score(self, conversation: ConversationState,
              verdicts: dict[str, Any]) -> dict[str, Any] | None:
        per_turn: list[list[bool]] = []
        pairs: list[tuple[Constraint, bool]] = []
        unverified = judged = 0
        for number, answer, checklist in answered_turns(conversation, self.participant):
            results = []
            for j, c in enumerate(checklist):
                ok = check_by_code(c, answer.text)
                if ok is None:
                    verdict = verdicts.get(f"turn{number}.c{j}")
                    if verdict is None:
                        unverified += 1
                        ok = False
                    else:
                        judged += 1
                        ok = verdict["satisfied"]
                results.append(ok)
                pairs.append((c, ok))
            per_turn.append(results)
        if not per_turn:
            return None
        session_turns = (conversation.meta.get(META_KEY) or {}).get("turns", len(per_turn))
        return {**metrics(per_turn, session_turns), **_by_type(pairs),
                "constraints": len(pairs), "judged": judged, "unverified": unverified}


def corpus_metrics(records: Iterable[Mapping[str, Any]], score: str = "sysbench"
                   ) -> dict[str, float]:
    """Run-level CSR, ISR, SSR: means over the conversations' ``scores[score]``."""
    rows = [r["scores"][score] for r in records if (r.get("scores") or {}).get(score)]
    rows = [r for r in rows if "csr" in r]
    if not rows:
        return {}
    return {m: sum(r[m] for r in rows) / len(rows) for m in ("csr", "isr", "ssr")} | {
        "sessions": len(rows)}
