"""Applying turns: replies become forest nodes, are logged and scored; branches finish."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Sequence

import msgspec

from turnloom.agents import Reply
from turnloom.engine.base import EngineBase
from turnloom.engine.checks import (
    _check_meta,
    _checked_reply,
    _fault,
    _json_encode,
    _require_json,
    _structured,
)
from turnloom.engine.routing import route_after
from turnloom.engine.state import Branch, Tree
from turnloom.messages import call_to_openai
from turnloom.plugins import call_hook_safely, first_result_safely
from turnloom.records import (
    ConversationRecord,
    ConversationState,
    Message,
    TurnInfo,
    TurnRecord,
)
from turnloom.runtime import (
    ParticipantRT,
)
from turnloom.views import Said
from turnloom.wal import EndEvent, TurnEvent

_MEMO_SIZE = 4096
_UNSET = msgspec.UNSET


class TurnsMixin(EngineBase):
    """The engine's steps from a reply to a recorded turn (mixed into Engine)."""

    def _respond(self, work: Sequence[tuple[Branch, ParticipantRT, int]]) -> list[tuple[Any, ...]]:
        items = []
        for br, p, seed in work:
            state = br.state
            try:
                reply = _checked_reply(p.obj.respond(state, p.name, random.Random(seed)))
                structured = _structured(reply)
            except Exception as exc:
                _fault(state, f"environment {p.spec.agent!r} of {p.name!r} failed in respond", exc)
                self._finish(br, "error")
                continue
            items.append((br, p, reply, None, seed, 0.0, 0, structured))
        return items

    def _apply(self, items: Sequence[tuple[Any, ...]]) -> list[Branch]:
        """Append the replies as nodes, log them, run scorers and hooks, and return
        the branches that go on."""
        if not items:
            return []
        parents = []
        speakers = []
        roles = []
        texts = []
        segs: list[dict[int, list[int]]] = []
        finishes = []
        kept: list[tuple[Any, ...]] = []
        # Segments of the other views: looked up in each format's memo, the misses
        # tokenized afterwards in one batch per format.
        misses: dict[int, tuple[Any, dict[tuple[str, str], list[int]], list[Any]]] = {}
        targets = self._memo_targets
        for item in items:
            br, p, reply, res, structured = item[0], item[1], item[2], item[3], item[7]
            text = reply.text
            if not text and reply.stop and not structured:
                self._finish(br, reply.stop)
                continue
            kept.append(item)
            finishes.append(res.finish_reason if res is not None else "")
            lens = br.lens
            if structured or (p.is_agent and (res is None or not lens[p.index]
                                              or p.backend.prompt_check is not None)):
                # Structure, an opening message, or a message whose ids the engine did not
                # see generated (prefilled, or from a chat API, which returns text): the
                # general rules (engine/prompts.py), the own view rendered from the text.
                said = Said(p.name, text, reply.tool_calls, reply.tool_call_id, reply.reasoning)
                own_ids = (res.output_ids if res is not None and p.backend.prompt_check is None
                           else None)
                seg, br.full = self._segments_one(
                    br, p, said, own_ids, res.finish_reason if res is not None else "", br.full)
                segs.append(seg)
                parents.append(br.node)
                speakers.append(p.index)
                roles.append(p.role)
                texts.append(text)
                continue
            if res is not None:
                seg = {p.index: p.prefix + p.fmt.close_generated(res.output_ids,
                                                                 res.finish_reason)}
            else:
                seg = {}
            for vi, fmt, role, memo in targets[p.index]:
                if not lens[vi]:  # the view's opening message: templates may add to it
                    seg[vi] = fmt.segment(role, text, first=True)
                    continue
                ids = memo.get((role, text))
                if ids is None:
                    miss = misses.get(id(fmt))
                    if miss is None:
                        miss = misses[id(fmt)] = (fmt, memo, [])
                    miss[2].append((seg, vi, role, text))
                    seg[vi] = None  # type: ignore[assignment]  # filled below; keeps the views' order
                else:
                    seg[vi] = ids
            segs.append(seg)
            parents.append(br.node)
            speakers.append(p.index)
            roles.append(p.role)
            texts.append(text)
        if not kept:
            return []
        for fmt, memo, wanted in misses.values():
            fresh = fmt.segments([w[2] for w in wanted], [w[3] for w in wanted])
            if len(memo) > _MEMO_SIZE:
                memo.clear()
            for (seg, vi, role, text), ids in zip(wanted, fresh):
                seg[vi] = memo[(role, text)] = ids
        nodes = self.forest.append_many(parents, speakers, roles, texts, segs, finishes)
        return self._record_turns(kept, nodes, segs)

    def _record_turns(self, kept: Sequence[tuple[Any, ...]], nodes: Sequence[int],
                      segs: Sequence[dict[int, list[int]]]) -> list[Branch]:
        """Advance each branch past its new node, record and log the turn, run turn
        scorers and hooks; finish the branches that stop, return the others."""
        go_on = []
        wal_append = self.wal.append  # type: ignore[union-attr]
        turn_scorers = self.turn_scorers
        hook_turn_end = self.hook_turn_end
        hook_should_stop = self.hook_should_stop
        stop_phrases = bool(self.phrases)
        max_tokens = self.max_tokens
        max_turns = self.max_turns
        for (br, p, reply, res, seed, latency, cached, structured), node, seg in zip(
                kept, nodes, segs):
            t = br.turn
            parent_owner = br.node_owner
            branch = br.branch
            br.node = node
            br.node_owner = branch
            br.turn = t + 1
            lens = br.lens
            for v, ids in seg.items():
                lens[v] += len(ids)
            state = br.state
            text = reply.text
            meta = reply.meta
            if res is not None:
                prompt_tokens = res.prompt_tokens
                output_ids = res.output_ids
                completion = len(output_ids)
                finish = res.finish_reason
            else:
                prompt_tokens = completion = 0
                finish = "stop"
                output_ids = None
            if structured:
                rec = TurnRecord(state.conversation_id, branch, t, p.name, p.role, text, node,
                                 t - 1 if t else None, prompt_tokens, completion, cached,
                                 latency, finish, seed, meta, reply.tool_calls,
                                 reply.tool_call_id, reply.reasoning)
            else:
                rec = TurnRecord(state.conversation_id, branch, t, p.name, p.role, text, node,
                                 t - 1 if t else None, prompt_tokens, completion, cached,
                                 latency, finish, seed, meta)
            state.messages.append((p.name, p.role, text))
            state.turns.append(rec)
            errors = state.errors
            n_err = len(errors)
            route_stop = None
            if structured:
                state.structured = True
                new_state = None
                if reply.state is not _UNSET:
                    state.state_json = _json_encode(reply.state)
                    new_state = [msgspec.Raw(state.state_json)]
                route_stop = self._route_after(br, p, reply)
            elif br.route >= 0:
                route_stop = self._route_after(br, p, reply)
            else:
                br.rr += 1
            scores: dict[str, Any] = {}
            if turn_scorers:
                self._score_turn(state, rec, t, scores)
            state.turn_scores.append(scores)
            stop = reply.stop
            n_hook = len(errors)
            if hook_turn_end:
                call_hook_safely(self.pm, "on_turn_end", errors, conversation=state, turn=rec)
            if stop is None and hook_should_stop:
                result = first_result_safely(self.pm, "should_stop", errors,
                                             conversation=state, turn=rec)
                if result is not None:
                    stop = str(result)
            if state.meta:
                _check_meta(state)
            if len(errors) > n_hook:
                stop = "error"
            if stop is None and route_stop is not None:
                stop = route_stop
            if stop is None:
                if stop_phrases or max_tokens is not None:
                    stop = self._stop_condition(br, text, t)
                elif t + 1 >= max_turns:
                    stop = "max_turns"
            # Positional, in TurnEvent's field order (this is the hottest line of a run).
            if not structured:
                wal_append(TurnEvent(
                    state.index, branch, parent_owner, t, p.index, p.role, text, output_ids,
                    finish, seed, prompt_tokens, completion, cached, latency, meta or None,
                    scores or None, state.meta or None,
                    errors[n_err:] if len(errors) > n_err else None, stop))
            else:
                wal_append(TurnEvent(
                    state.index, branch, parent_owner, t, p.index, p.role, text, output_ids,
                    finish, seed, prompt_tokens, completion, cached, latency, meta or None,
                    scores or None, state.meta or None,
                    errors[n_err:] if len(errors) > n_err else None, stop,
                    [[c.id, c.name, c.arguments] for c in reply.tool_calls] or None,
                    reply.tool_call_id, reply.reasoning, new_state))
            if stop is None:
                go_on.append(br)
            else:
                self._finish(br, stop)
        self.turns_done += len(kept)
        for p, n in Counter(item[1] for item in kept).items():
            p.usage.turns += n
            if p.backend is not None:
                p.backend.usage.turns += n
        return go_on

    def _route_after(self, br: Branch, p: ParticipantRT, reply: Reply) -> str | None:
        """Who speaks after a message that is part of a tool exchange (or ends one):
        calls go to the environment that owns the tool, results back to the caller
        once every call is answered, a text reply ends the caller's turn. Returns a
        stop reason when a budget runs out or a call cannot be routed."""
        return route_after(self, br, p, reply)

    def _score_turn(self, state: ConversationState, rec: TurnRecord, t: int,
                    scores: dict[str, Any]) -> None:
        for name, scorer in self.turn_scorers:
            try:
                score = scorer.score_turn(state, rec)
                if score is not None:
                    if not isinstance(score, dict):
                        raise TypeError(f"returned {type(score).__name__}, expected dict or None")
                    _require_json(score, "the score")
                    scores[name] = score
            except Exception as exc:
                state.errors.append(f"scorer {name!r} failed on turn {t}: "
                                    f"{type(exc).__name__}: {exc}")

    def _stop_condition(self, br: Branch, text: str, t: int) -> str | None:
        if self.phrases:
            hay = text if self.case_sensitive else text.lower()
            for phrase in self.phrases:
                if phrase in hay:
                    return "stop_phrase"
        if self.max_tokens is not None:
            nxt = self.order[(t + 1) % len(self.order)]
            if nxt.is_agent and br.lens[nxt.index] + len(nxt.prefix) > self.max_tokens:
                return "max_tokens"
        if t + 1 >= self.max_turns:
            return "max_turns"
        return None

    # -- finishing -------------------------------------------------------------------

    def _finish(self, br: Branch, reason: str) -> None:
        """End a branch: conversation scores, then its judges (if any), then `_complete`."""
        state = br.state
        state.stop_reason = reason
        for name, scorer in self.conv_scorers:
            try:
                score = scorer.score_conversation(state)
                if score is not None:
                    if not isinstance(score, dict):
                        raise TypeError(f"returned {type(score).__name__}, expected dict or None")
                    _require_json(score, "the score")
                    state.scores[name] = score
            except Exception as exc:
                state.errors.append(f"scorer {name!r} failed on the conversation: "
                                    f"{type(exc).__name__}: {exc}")
        if self.judges and reason != "error" and self._ask_judges(br):
            return  # completed when the last verdict is in
        self._complete(br)

    def _complete(self, br: Branch) -> None:
        """Log the branch's end and record it; close the tree when it was the last."""
        state = br.state
        if self.hook_end:
            call_hook_safely(self.pm, "on_conversation_end", state.errors, conversation=state)
            _check_meta(state)
        record = self._record(state)
        tree = br.tree
        tree.live -= 1
        done = tree.live == 0
        self.wal.append(EndEvent(tree.index, br.branch, done, record.stop_reason,  # type: ignore[union-attr]
                                 record.scores, record.errors, record.meta))
        tree.records.append(record)
        if done:
            self._close_tree(tree)

    def _close_tree(self, tree: Tree) -> None:
        if tree.root >= 0 and self.forest.is_live(tree.root):
            for be in tree.backends:
                if be.tree_size is not None:
                    # Its real size in the backend's views sizes the trees admitted next.
                    size = self.forest.subtree_tokens(tree.root, be.tree_size.views)
                    be.sched.set_tree_reserve(be.tree_size.observe(size))
            self.forest.free_subtree(tree.root)
        for be in tree.backends:
            be.sched.finish_tree(tree.root)
        del self.trees[tree.index]
        self.collector.add_tree(tree.index, tree.records)  # type: ignore[union-attr]

    def _record(self, state: ConversationState) -> ConversationRecord:
        lead = self._lead_prompt(state)
        messages = [] if lead is None else [Message("system", lead)]
        recs = state.turns
        if len(state.turn_scores) < len(recs):
            recs = recs[:len(state.turn_scores)]
        if state.structured:
            messages += [_message(rec) for rec in recs]
        else:
            messages += [Message(rec.role, rec.text, rec.participant) for rec in recs]
        turns = [TurnInfo(rec.participant, rec.role, rec.seed, rec.prompt_tokens,
                          rec.completion_tokens, rec.finish_reason, scores, rec.meta)
                 for rec, scores in zip(recs, state.turn_scores)]
        tokens: dict[str, dict[str, int]] = {p.name: {"prompt": 0, "completion": 0}
                                             for p in self.participants}
        for rec in recs:
            tk = tokens[rec.participant]
            tk["prompt"] += rec.prompt_tokens
            tk["completion"] += rec.completion_tokens
        participants = {}
        profiles = state.profiles
        prompts = state.system_prompts
        for name, base in self._participant_info:
            info = dict(base)
            if name in profiles:
                info["profile"] = profiles[name]
            if name in prompts:
                info["system_prompt"] = prompts[name]
            if name in state.tools:
                info["tools"] = state.tools[name]
            participants[name] = info
        return ConversationRecord(
            conversation_id=state.conversation_id, index=state.index, branch=state.branch,
            seed=state.seed, messages=messages, participants=participants, turns=turns,
            tokens=tokens, stop_reason=state.stop_reason or "", scores=state.scores,
            errors=state.errors, meta=state.meta)

    def _lead_prompt(self, state: ConversationState) -> str | None:
        for p in self.views:
            if p.role == "assistant" and p.name in state.system_prompts:
                return state.system_prompts[p.name]
        return None


def _message(rec: TurnRecord) -> Message:
    """A turn in OpenAI chat format: tool results as role "tool"."""
    if rec.tool_call_id is not None:
        return Message("tool", rec.text, rec.participant, tool_call_id=rec.tool_call_id)
    if not rec.tool_calls and rec.reasoning is None:
        return Message(rec.role, rec.text, rec.participant)
    return Message(rec.role, rec.text, rec.participant,
                   tool_calls=[call_to_openai(c) for c in rec.tool_calls] or None,
                   reasoning_content=rec.reasoning)
