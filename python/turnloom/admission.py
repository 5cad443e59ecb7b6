"""Expected cache footprint of one conversation tree on one backend: the
`tree_reserve` the backend's scheduler holds for each tree it admits.

The scheduler admits a tree when it is small (system prompts and a first
message), but the tree grows turn by turn and branch by branch; without a
reserve for its final size, a burst of admissions overcommits the backend's
prefix cache and it thrashes. The estimate starts from a prior worked out
from the scenario and moves to the sizes of the trees that finish.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

from turnloom.config import Scenario

# A message rarely fills max_new_tokens; capping its expected length keeps a
# generous limit (say 4096) from reserving a whole cache for one tree.
EXPECTED_MESSAGE_CAP = 128
# A view whose system prompt is not known before the run (an agent plugin
# writes its own) is assumed to hold this many tokens for it.
DEFAULT_SYSTEM_TOKENS = 64


def expected_message_tokens(max_new_tokens: int) -> int:
    """Expected length of a message whose speaker may generate `max_new_tokens`."""
    return min(max_new_tokens, EXPECTED_MESSAGE_CAP)


def prior_tree_tokens(system_tokens: int, message_tokens: Sequence[int],
                      forks: Mapping[int, int]) -> int:
    """Tokens of a tree whose views hold `system_tokens` of system prompts and
    whose message t adds `message_tokens[t]` (summed over the views); at a fork
    `forks[t] = n` message t and every later one exist once per branch, so a
    tree is its trunk up to the fork plus n times the rest."""
    total, copies = system_tokens, 1
    for turn, tokens in enumerate(message_tokens):
        copies *= forks.get(turn, 1)
        total += copies * tokens
    return total


def scenario_prior(scenario: Scenario, system_tokens: Sequence[int]) -> int:
    """Prior size of one tree of `scenario` on a backend holding one view per
    entry of `system_tokens` (each view's system prompt length).

    An upper bound more than an estimate: every message is counted at its
    speaker's min(max_new_tokens, EXPECTED_MESSAGE_CAP) in every view (views
    that hide a speaker hold less), every conversation runs to run.max_turns,
    and a fork turn drawn per conversation is taken at its earliest candidate
    (the largest tree). Overestimating only admits fewer trees at first; the
    scheduler's floor keeps the backend busy meanwhile.
    """
    order = scenario.turn_order()
    speakers = [scenario.participants[order[t % len(order)]] for t in range(scenario.run.max_turns)]
    views = len(system_tokens)
    per_message = [views * expected_message_tokens(p.sampling.max_new_tokens) for p in speakers]
    return prior_tree_tokens(sum(system_tokens), per_message, scenario_forks(scenario))


def scenario_forks(scenario: Scenario) -> dict[int, int]:
    """Message index -> branches of a scenario's forks; a fork drawn per
    conversation is taken at its earliest candidate (the largest tree)."""
    return {b.at_turn: b.n for b in scenario.branches}


def mean_branches(forks: Mapping[int, int], turns: Iterable[int]) -> float:
    """Mean number of branches a tree has at message indices `turns` (a fork
    `forks[t] = n` multiplies message t and every later one): the jobs that one
    admitted tree keeps waiting or running on average over its life."""
    ordered = sorted(turns)
    if not ordered:
        return 1.0
    copies, total, fork_turns = 1, 0, sorted(forks)
    for t in ordered:
        while fork_turns and fork_turns[0] <= t:
            copies *= forks[fork_turns.pop(0)]
        total += copies
    return total / len(ordered)


def floor_trees(min_runnable: int, branches: float) -> int | None:
    """The most trees the scheduler's floor may admit past its budget: enough
    for `min_runnable` jobs once they have branched. Counting a tree in its
    one-job trunk as one job would admit a batch of trunks that then outgrow
    the cache by the branching factor. None (no cap) without a floor."""
    if min_runnable <= 0:
        return None
    return max(1, math.ceil(min_runnable / branches))


def scenario_branches(scenario: Scenario, views: Sequence[Any]) -> float:
    """`mean_branches` of a scenario's trees at the messages spoken by `views`
    (ParticipantRT: a backend's agents); a fork drawn per conversation is taken
    at its earliest candidate, as in `scenario_prior`."""
    order = scenario.turn_order()
    ids = {v.index for v in views}
    turns = [t for t in range(scenario.run.max_turns) if order[t % len(order)] in ids]
    return mean_branches(scenario_forks(scenario), turns)


def system_prompt_tokens(view: Any) -> int:
    """Tokens of a participant's configured system prompt in its chat format
    (placeholders count as written); DEFAULT_SYSTEM_TOKENS when none is set."""
    text = view.spec.system_prompt
    if text is None:
        return DEFAULT_SYSTEM_TOKENS
    return len(view.fmt.segments(["system"], [text])[0])


class TreeSizeEstimator:
    """Expected size in tokens of one conversation tree in a backend's cache:
    the running mean of the sizes of finished trees, with the prior counted
    as `prior_weight` of them.

    A mean rather than a high quantile: the budget holds many trees at once,
    and what overcommits the cache is the sum of their sizes, which is close
    to their number times the mean; a high quantile would reserve as if every
    tree were among the largest and leave part of the cache unused. (With few
    trees admitted, a tree larger than its reserve still grows its own
    footprint as its prompts lengthen.) The prior's weight damps the start of
    a run, where the first trees to finish are the ones that stopped early.

    `views` are the view ids whose tokens the backend caches (its agents').
    """

    def __init__(self, prior: int, views: Sequence[int] = (), prior_weight: int = 1) -> None:
        if prior < 0 or prior_weight < 1:
            raise ValueError(f"need prior >= 0 and prior_weight >= 1, got {prior}, {prior_weight}")
        self.prior = prior
        self.views = list(views)
        self._total = prior * prior_weight
        self._count = prior_weight
        self.observed = 0

    @property
    def estimate(self) -> int:
        return math.ceil(self._total / self._count)

    def observe(self, tokens: int) -> int:
        """Add the size of a finished tree; returns the new estimate."""
        self._total += tokens
        self._count += 1
        self.observed += 1
        return self.estimate


def estimator_for(scenario: Scenario, views: Sequence[Any]) -> TreeSizeEstimator | None:
    """The estimator of a backend whose agents are `views` (ParticipantRT);
    None when it holds no view (a judges-only backend)."""
    if not views:
        return None
    prior = scenario_prior(scenario, [system_prompt_tokens(v) for v in views])
    return TreeSizeEstimator(prior, [v.index for v in views])
