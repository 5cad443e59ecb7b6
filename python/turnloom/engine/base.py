"""What the engine's parts share: the attributes `Engine.__init__` sets and the steps
one part calls in another, declared once so each mixin type-checks on its own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from turnloom.collect import Collector
    from turnloom.config import Scenario
    from turnloom.engine.state import Tree
    from turnloom.runtime import BackendRT, JudgeRT, ParticipantRT
    from turnloom.wal import WalWriter


class EngineBase:
    # Set by Engine.__init__ (annotations only: no class attributes).
    scenario: Scenario
    pm: Any
    registry: Any
    forest: Any
    backends: dict[str, BackendRT]
    participants: list[ParticipantRT]
    views: list[ParticipantRT]
    order: list[ParticipantRT]
    judges: list[JudgeRT]
    judge_jobs: int
    jobs: dict[int, Any]
    _next_job: int
    trees: dict[int, Tree]
    wal: WalWriter | None
    collector: Collector | None
    turn_scorers: list[tuple[str, Any]]
    conv_scorers: list[tuple[str, Any]]
    _participant_info: list[tuple[str, dict[str, Any]]]
    _memo_targets: list[list[tuple[int, Any, Any, dict[tuple[str, str], list[int]]]]]
    phrases: tuple[str, ...]
    case_sensitive: bool
    max_tokens: int | None
    max_turns: int
    max_retries: int
    hook_turn_end: bool
    hook_should_stop: bool
    hook_end: bool
    turns_done: int
    tokens_done: int
    replayed_turns: int
    replayed_tokens: int
    peak_live_nodes: int
    peak_active: int
    wall_s: float
    # Steps of one part that another calls.
    _retry: Callable[..., None]
    _prompts: Callable[..., list[list[int]]]
    _complete: Callable[..., None]
    _ask_judges: Callable[..., bool]
    _segments_one: Callable[..., tuple[dict[int, list[int]], int]]
    _turn_requests: Callable[..., list[Any]]
    by_name: dict[str, ParticipantRT]
