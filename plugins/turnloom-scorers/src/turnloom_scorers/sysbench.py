"""SysBench: system-message following over a five-turn session, with per-turn checklists.

A session (`data/sysbench_sessions.json`, or inline settings) has a system
message and user turns; each turn has constraints typed Action, Content,
Background, Role, Format or Style. A constraint with a ``check`` (an IFEval
instruction dict) is verified by code; the others need the ``sysbench`` judge.

- ``sysbench-user`` (environment) sends the session's user turns and puts each
  turn's checklist (and its aligned/misaligned label) in its ``meta["sysbench"]``;
  ``sysbench-assistant`` (agent) takes the session's system message as its
  system prompt. Both pick the session with `turnloom.items.item_index`
  (``order = "by-index"`` by default: conversation i plays session i mod n), so
  they always agree.
- ``sysbench`` scorer: the code-verifiable constraints only.
- ``sysbench`` judge: every constraint (code where it can, the model otherwise).

Metrics (SysBench, as its official analysis script computes them): CSR =
satisfied constraints / all constraints; ISR = turns with every constraint
satisfied / turns; SSR = turns satisfied in a row from turn 1 / session turns.
Per conversation each score also carries its counts, and `corpus_metrics`
pools them over the run as the official code does: CSR and ISR over all
constraints and turns (not a mean of per-session rates), SSR as the mean of
per-session streaks, with the paper's splits (aligned/misaligned turns,
dependent/parallel sessions, per constraint type, R1..R5). A constraint the
judge could not verify (unparseable output) counts as not satisfied, and is
reported under ``unverified``. The code-only scorer sees only the turns that
have a code check: its SSR divides by those turns, not by all session turns.
"""

from __future__ import annotations

import json
import random
import re
from functools import lru_cache
from typing import Any, Iterable, Literal, Mapping, NamedTuple, Sequence

import msgspec

from turnloom.agents import Reply
from turnloom.items import ItemOrder, check_order, item_index
from turnloom.judging import JudgeCall, Unparseable
from turnloom.records import ConversationState, TurnRecord
from turnloom.references import check_participant_names

from turnloom_scorers import ifeval
from turnloom_scorers.instructions import parse_instruction
from turnloom_scorers.judges import transcript
from turnloom_scorers.settings import Settings, decode, load_data

META_KEY = "sysbench"
ConstraintType = Literal["Action", "Content", "Background", "Role", "Format", "Style"]
# The paper's labels: does a turn's request agree with the system message, and do a
# session's turns build on each other (dependent) or stand alone (parallel)?
Alignment = Literal["aligned", "misaligned"]


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
    alignment: Alignment | None = None


class Session(Settings, frozen=True):
    id: str
    system: str
    turns: tuple[SessionTurn, ...]
    dependent: bool | None = None  # multi-turn dependent (True) or parallel (False)


@lru_cache(maxsize=1)
def shipped_sessions() -> tuple[Session, ...]:
    return msgspec.convert(load_data("sysbench_sessions.json")["sessions"],
                           tuple[Session, ...])


class SessionSettings(Settings, frozen=True):
    sessions: tuple[Session, ...] | None = None  # default: the shipped sessions
    order: str = "by-index"  # "by-index": each session once, in order; "random": seeded draws


def _sessions(settings: Mapping[str, Any], component: str) -> tuple[tuple[Session, ...], ItemOrder]:
    s = decode(SessionSettings, settings, component)
    order = check_order(s.order, f"invalid {component} settings: order")
    sessions = s.sessions if s.sessions is not None else shipped_sessions()
    if not sessions or any(not x.turns for x in sessions):
        raise ValueError(f"invalid {component} settings: sessions need at least one turn")
    return sessions, order


def pick_session(sessions: Sequence[Session], conversation: ConversationState,
                 order: ItemOrder = "by-index") -> Session:
    return sessions[item_index(len(sessions), conversation.index, conversation.seed, order)]


class SysbenchAssistant:
    """An LLM assistant whose system prompt is the session's system message."""

    role = "assistant"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.sessions, self.order = _sessions(settings, "sysbench-assistant")

    def system_prompt(self, conversation: ConversationState, me: str) -> str | None:
        return pick_session(self.sessions, conversation, self.order).system

    def role_in_view(self, speaker: str, me: str) -> str:
        return "assistant" if speaker == me else "user"

    def on_output(self, conversation: ConversationState, me: str, text: str,
                  finish_reason: str) -> Reply:
        return Reply(text.strip())


class SysbenchUser:
    """Sends the session's user turns in order, each with its checklist in meta."""

    role = "user"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.sessions, self.order = _sessions(settings, "sysbench-user")

    def respond(self, conversation: ConversationState, me: str, rng: random.Random) -> Reply:
        session = pick_session(self.sessions, conversation, self.order)
        k = len(conversation.turns_of(me))
        if k >= len(session.turns):
            return Reply("", stop="sysbench_done")
        conversation.meta[META_KEY] = {
            "session": session.id, "turns": len(session.turns), "dependent": session.dependent,
            # The code-only scorer's SSR divisor: session turns with at least one code check.
            "checked_turns": sum(any(c.check is not None for c in t.constraints)
                                 for t in session.turns)}
        turn = session.turns[k]
        return Reply(turn.message, meta={META_KEY: {
            "session": session.id, "turn": k + 1, "alignment": turn.alignment,
            "constraints": [msgspec.to_builtins(c) for c in turn.constraints]}})


class AnsweredTurn(NamedTuple):
    number: int  # the session turn (1-based)
    answer: TurnRecord
    checklist: list[Constraint]
    alignment: str | None


def answered_turns(conversation: ConversationState, participant: str) -> list[AnsweredTurn]:
    """Each answer by `participant` that follows a sysbench user turn, with that
    turn's number, checklist and alignment label."""
    out = []
    for turn in conversation.turns_of(participant):
        asked = next((t for t in reversed(conversation.turns[:turn.turn])
                      if META_KEY in t.meta), None)
        if asked is None or asked.turn != turn.turn - 1:
            continue
        info = asked.meta[META_KEY]
        checklist = [msgspec.convert(c, Constraint) for c in info["constraints"]]
        out.append(AnsweredTurn(int(info["turn"]), turn, checklist, info.get("alignment")))
    return out


def check_by_code(constraint: Constraint, response: str) -> bool | None:
    """Strict IFEval reading of a code-verifiable constraint; None when it has no check."""
    if constraint.check is None:
        return None
    return ifeval.follows(parse_instruction(constraint.check), response)


def metrics(turns: Sequence[Sequence[bool]], session_turns: int) -> dict[str, float]:
    """CSR, ISR and this session's SSR from per-turn constraint results; turns the
    session has but `turns` lacks (not answered) count against SSR."""
    total = sum(len(t) for t in turns)
    if not turns or not total:
        return {}
    satisfied_turns = [all(t) for t in turns]
    return {"csr": sum(sum(t) for t in turns) / total,
            "isr": sum(satisfied_turns) / len(turns),
            "ssr": _streak(satisfied_turns) / max(session_turns, len(turns))}


def _streak(satisfied_turns: Iterable[bool]) -> int:
    streak = 0
    for ok in satisfied_turns:
        if not ok:
            break
        streak += 1
    return streak


def session_score(turns: Sequence[tuple[str | None, Sequence[tuple[Constraint, bool]]]],
                  session_turns: int, dependent: bool | None) -> dict[str, Any]:
    """One session's CSR/ISR/SSR and per-type CSR from (alignment, [(constraint, ok)])
    per evaluated turn, plus the counts `corpus_metrics` pools over a run."""
    per_turn = [[ok for _, ok in results] for _, results in turns]
    # Scores hold numbers and dicts of numbers only: counts are {"satisfied", "total"}.
    by_type: dict[str, dict[str, int]] = {}
    by_alignment: dict[str, dict[str, int]] = {}
    for alignment, results in turns:
        for c, ok in results:
            entry = by_type.setdefault(c.type, {"satisfied": 0, "total": 0})
            entry["satisfied"] += ok
            entry["total"] += 1
        if alignment is not None:
            entry = by_alignment.setdefault(alignment, {"satisfied": 0, "total": 0})
            entry["satisfied"] += all(ok for _, ok in results)
            entry["total"] += 1
    session_turns = max(session_turns, len(per_turn))
    counts = {"constraints": sum(map(len, per_turn)), "satisfied": sum(map(sum, per_turn)),
              "turns": len(per_turn), "turns_satisfied": sum(map(all, per_turn)),
              "streak": _streak(map(all, per_turn)), "session_turns": session_turns,
              "by_type": {k: by_type[k] for k in sorted(by_type)},
              "by_alignment": {k: by_alignment[k] for k in sorted(by_alignment)},
              "dependent": None if dependent is None else int(dependent)}
    return {**metrics(per_turn, session_turns),
            **{f"csr.{k}": v["satisfied"] / v["total"] for k, v in sorted(by_type.items())},
            "counts": counts}


def _session_info(conversation: ConversationState) -> dict[str, Any]:
    return conversation.meta.get(META_KEY) or {}


class ScorerSettings(Settings, frozen=True):
    participant: str = "assistant"


class SysbenchScorer:
    """CSR/ISR/SSR over the code-verifiable constraints only (no model needed)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.participant = decode(ScorerSettings, settings, "sysbench scorer").participant

    def check_participants(self, names: Sequence[str]) -> None:
        check_participant_names(names, participant=self.participant)

    def score_turn(self, conversation: ConversationState, turn: TurnRecord) -> None:
        return None

    def score_conversation(self, conversation: ConversationState) -> dict[str, Any] | None:
        turns: list[tuple[str | None, list[tuple[Constraint, bool]]]] = []
        skipped = 0
        for _, answer, checklist, alignment in answered_turns(conversation, self.participant):
            results = []
            for c in checklist:
                ok = check_by_code(c, answer.text)
                if ok is None:
                    skipped += 1
                    continue
                results.append((c, ok))
            # A turn with no code check says nothing about SSR: it is left out of the
            # streak and of the divisor (the session's checked turns).
            if results:
                turns.append((alignment, results))
        if not turns:
            return None
        info = _session_info(conversation)
        score = session_score(turns, info.get("checked_turns", len(turns)), info.get("dependent"))
        return {**score, "checked": score["counts"]["constraints"], "not_checked": skipped}


_JSON_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)


class SysbenchJudge:
    """Every constraint: code-verified where it has a check, judged by the model otherwise."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.participant = decode(ScorerSettings, settings, "sysbench judge").participant

    def check_participants(self, names: Sequence[str]) -> None:
        check_participant_names(names, participant=self.participant)

    def calls(self, conversation: ConversationState) -> list[JudgeCall]:
        system = conversation.system_prompts.get(self.participant, "")
        calls = []
        for number, answer, checklist, _ in answered_turns(conversation, self.participant):
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
        turns: list[tuple[str | None, list[tuple[Constraint, bool]]]] = []
        unverified = judged = 0
        for number, answer, checklist, alignment in answered_turns(conversation,
                                                                   self.participant):
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
                results.append((c, ok))
            turns.append((alignment, results))
        if not turns:
            return None
        info = _session_info(conversation)
        score = session_score(turns, info.get("turns", len(turns)), info.get("dependent"))
        return {**score, "constraints": score["counts"]["constraints"], "judged": judged,
                "unverified": unverified}


def corpus_metrics(records: Iterable[Mapping[str, Any]], score: str = "sysbench"
                   ) -> dict[str, float]:
    """Run-level SysBench metrics from the conversations' ``scores[score]``, pooled as
    the official analysis does: CSR = all satisfied constraints / all constraints
    (``csr.<Type>`` likewise per type), ISR = all satisfied turns / all turns
    (``isr.aligned``, ``isr.misaligned``), SSR = mean per-session streak / session
    turns (``ssr.dependent``, ``ssr.parallel``), and ``ssr.R<k>``: the share of
    sessions satisfied in every turn from 1 to k."""
    rows = [r["scores"][score] for r in records if (r.get("scores") or {}).get(score)]
    if any("counts" not in r for r in rows if "csr" in r):
        raise ValueError(f"corpus_metrics: a {score!r} score has no counts (scored before "
                         "sessions carried them); rescore the run")
    counts = [r["counts"] for r in rows if "csr" in r]
    if not counts:
        return {}
    out: dict[str, float] = {
        "csr": sum(c["satisfied"] for c in counts) / sum(c["constraints"] for c in counts),
        "isr": sum(c["turns_satisfied"] for c in counts) / sum(c["turns"] for c in counts),
        "ssr": _mean_ssr(counts), "sessions": len(counts)}
    for field, prefix in (("by_type", "csr"), ("by_alignment", "isr")):
        pooled: dict[str, list[int]] = {}
        for c in counts:
            for key, entry in c[field].items():
                total = pooled.setdefault(key, [0, 0])
                total[0] += entry["satisfied"]
                total[1] += entry["total"]
        out |= {f"{prefix}.{key}": n / total for key, (n, total) in sorted(pooled.items())}
    for label, dependent in (("dependent", True), ("parallel", False)):
        group = [c for c in counts
                 if c["dependent"] is not None and bool(c["dependent"]) is dependent]
        if group:
            out[f"ssr.{label}"] = _mean_ssr(group)
    longest = max(c["session_turns"] for c in counts)
    for k in range(1, longest + 1):
        out[f"ssr.R{k}"] = sum(c["streak"] >= k for c in counts) / len(counts)
    return out


def _mean_ssr(counts: Sequence[Mapping[str, Any]]) -> float:
    return sum(c["streak"] / c["session_turns"] for c in counts) / len(counts)
