"""Resuming a run: replay the write-ahead log into a fresh engine.

The log holds every completed turn (with the speaker's exact output ids) and
how each branch ended. A finished tree's records are rebuilt from them alone.
An unfinished tree is rebuilt in the forest — the speaker's own segment from
its logged ids, the other views re-rendered, which is deterministic — and its
frontier (every branch that still owes a turn, including fork siblings never
logged) is scheduled again. Conversations never logged start from scratch.
Seeds depend only on (index, branch, turn), so the outputs equal an
uninterrupted run's.
"""

from __future__ import annotations

from typing import Iterable

from turnloom.engine import Branch, Engine, Tree
from turnloom.engine.routing import replay_routing
from turnloom.messages import ToolCall
from turnloom.records import ConversationRecord, ConversationState, TurnRecord
from turnloom.views import Said
from turnloom.wal import EndEvent, Event, TurnEvent


def restore(engine: Engine, events: Iterable[Event]) -> None:
    partial: dict[int, list[TurnEvent]] = {}
    ends: dict[int, dict[int, EndEvent]] = {}
    done: set[int] = set()
    collector = engine.collector
    assert collector is not None
    for ev in events:
        if type(ev) is TurnEvent:
            partial.setdefault(ev.index, []).append(ev)
            _account(engine, ev)
        elif type(ev) is EndEvent:
            branches = ends.setdefault(ev.index, {})
            branches[ev.branch] = ev
            if ev.tree_done:
                del ends[ev.index]
                done.add(ev.index)
                tree = _rebuild(engine, ev.index, partial.pop(ev.index, []), branches, None, [])
                collector.add_tree(ev.index, tree.records)
    touched = (set(partial) | set(ends)) - done
    engine.to_start = [i for i in reversed(engine.indices) if i not in done and i not in touched]
    frontier: list[Branch] = []
    finishing: list[tuple[Branch, str]] = []
    for index in sorted(touched):
        _rebuild(engine, index, partial.get(index, []), ends.get(index, {}), frontier, finishing)
    for br, reason in finishing:
        engine._finish(br, reason)
    engine._advance_branches(frontier, forked=True)


def _account(engine: Engine, ev: TurnEvent) -> None:
    p = engine.participants[ev.speaker]
    engine.replayed_turns += 1
    p.usage.turns += 1
    if ev.output_ids is None or p.backend is None:
        return
    engine.replayed_tokens += ev.completion_tokens
    p.backend.usage.turns += 1
    for u in (p.usage, p.backend.usage):
        u.requests += 1
        u.prompt_tokens += ev.prompt_tokens
        u.completion_tokens += ev.completion_tokens
        u.cached_tokens += ev.cached_tokens
        u.latency_s += ev.latency_s


def _rebuild(engine: Engine, index: int, events: list[TurnEvent], ends: dict[int, EndEvent],
             frontier: list[Branch] | None, finishing: list[tuple[Branch, str]]) -> Tree:
    """Walk a tree's logged turns from the root, growing every branch as the live
    engine did. Ended branches become records. With `frontier` None the tree is
    finished and only its records are wanted (no forest nodes); otherwise it is
    rebuilt in the forest and its open branches are added to `frontier` (next
    turn owed) or `finishing` (last turn logged, end not)."""
    tree, state = engine._new_tree(index)
    live = frontier is not None
    lens0: list[int] = []
    full0 = engine._full_at_start(state)
    if live:
        seg = engine._root_segments([state])[0]
        tree.root = engine.forest.add_root(0, "system", "", seg)
        engine.trees[index] = tree
        lens0 = engine._lens(seg)
    by_key = {(ev.branch, ev.turn): ev for ev in events}
    stack: list[tuple[int, int, ConversationState, int, int, list[int], int]] = [
        (0, 0, state, tree.root, -1, lens0, full0)]
    unstarted: list[Branch] = []  # fork siblings that never spoke: their start hook reruns
    while stack:
        owner, t, st, node, node_owner, lens, full = stack.pop()
        children = [owner]
        fork = tree.forks.get(t)
        if fork is not None:
            n, mult = fork
            children += [owner + c * mult for c in range(1, n)]
        # Siblings fork from the state as it was before any of them spoke.
        states = {c: st if c == owner else st.fork(c, t) for c in children}
        for c in children:
            cst = states[c]
            ev = by_key.get((c, t))
            if ev is None:
                if c in ends:
                    tree.records.append(_ended(engine, cst, ends[c]))
                elif live:
                    tree.live += 1
                    br = Branch(tree, cst, c, node, node_owner, t, list(lens), full)
                    replay_routing(engine, br)
                    (frontier if c == owner else unstarted).append(br)  # type: ignore[union-attr]
                continue
            new, new_lens, new_full = _replay_turn(engine, tree, cst, ev, node, lens, full, live)
            if ev.stop is not None:
                if c in ends:
                    tree.records.append(_ended(engine, cst, ends[c]))
                elif live:
                    tree.live += 1
                    br = Branch(tree, cst, c, new, c, t + 1, new_lens, new_full)
                    replay_routing(engine, br)
                    finishing.append((br, ev.stop))
                continue
            stack.append((c, t + 1, cst, new, c, new_lens, new_full))
    if not live:
        return tree
    # Only now that the tree's live count is complete may a failing hook finish a branch.
    frontier.extend(br for br in unstarted if engine._branch_started(br))  # type: ignore[union-attr]
    if tree.live == 0:
        engine._close_tree(tree)
    return tree


def _ended(engine: Engine, state: ConversationState, end: EndEvent) -> ConversationRecord:
    state.stop_reason = end.stop_reason
    state.scores = dict(end.scores)
    state.errors = list(end.errors)
    state.meta = dict(end.meta)
    return engine._record(state)


def _replay_turn(engine: Engine, tree: Tree, state: ConversationState, ev: TurnEvent,
                 parent: int, lens: list[int], full: int,
                 live: bool) -> tuple[int, list[int], int]:
    p = engine.participants[ev.speaker]
    calls = tuple(ToolCall(*c) for c in ev.tool_calls or ())
    node = -1
    new_lens = lens
    if live:
        # The same rules as the live run's (engine/prompts.py), on the logged ids.
        said = Said(p.name, ev.text, calls, ev.tool_call_id, ev.reasoning)
        probe = Branch(tree, state, ev.branch, parent, -1, ev.turn, lens, full)
        by_messages = p.backend is not None and p.backend.prompt_check is not None
        seg, full = engine._segments_one(probe, p, said, None if by_messages else ev.output_ids,
                                         ev.finish_reason, full)
        finish = ev.finish_reason if ev.output_ids is not None else ""
        node = engine.forest.append(parent, ev.speaker, ev.role, ev.text, seg, finish)
        new_lens = list(lens)
        for v, ids in seg.items():
            new_lens[v] += len(ids)
    rec = TurnRecord(conversation_id=state.conversation_id, branch=ev.branch, turn=ev.turn,
                     participant=p.name, role=ev.role, text=ev.text, node=node,
                     parent_turn=ev.turn - 1 if ev.turn else None,
                     prompt_tokens=ev.prompt_tokens, completion_tokens=ev.completion_tokens,
                     cached_tokens=ev.cached_tokens, latency_s=ev.latency_s,
                     finish_reason=ev.finish_reason, seed=ev.seed, meta=ev.reply_meta or {},
                     tool_calls=calls, tool_call_id=ev.tool_call_id, reasoning=ev.reasoning)
    state.messages.append((p.name, ev.role, ev.text))
    state.turns.append(rec)
    if calls or ev.tool_call_id is not None or ev.reasoning is not None:
        state.structured = True
    state.turn_scores.append(dict(ev.scores or {}))
    state.meta = dict(ev.conv_meta or {})
    state.errors.extend(ev.errors or ())
    if ev.state is not None:
        state.state_json = bytes(ev.state[0])
    return node, new_lens, full
