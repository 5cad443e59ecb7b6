"""tau-bench's reward and pass^k on hand-made cases."""

from __future__ import annotations

import hashlib
from math import comb

import msgspec
import pytest

pytest.importorskip("turnloom_tau")

from turnloom.records import ConversationState  # noqa: E402
from turnloom_tau.plugin import TauReward  # noqa: E402
from turnloom_tau.reward import (  # noqa: E402
    data_hash,
    output_found,
    pass_hat_k,
    pass_hat_k_from_records,
    reward,
)
from turnloom_tau.tasks import expected_state, load_database, load_tasks  # noqa: E402


def test_hash_is_tau_benchs_sha256_of_the_sorted_tuples():
    data = {"b": [1, {"y": 2, "x": "s"}], "a": 1.5}
    text = "(('a', 1.5), ('b', (1, (('x', 's'), ('y', 2)))))"
    assert data_hash(data) == hashlib.sha256(text.encode()).hexdigest()
    assert data_hash({"a": 1, "b": 2}) == data_hash({"b": 2, "a": 1})  # key order is irrelevant
    assert data_hash({"a": [1, 2]}) != data_hash({"a": [2, 1]})  # list order is not
    assert data_hash({"a": 1}) != data_hash({"a": 1.0})  # str(1) != str(1.0), as in tau-bench


def test_outputs_match_case_insensitively_with_commas_dropped_from_messages():
    assert output_found("1200", ["That comes to 1,200 dollars"])
    assert output_found("Spark canister stove", ["the SPARK CANISTER STOVE is in stock"])
    assert not output_found("1,200", ["That comes to 1,200 dollars"])  # the output keeps its comma
    assert not output_found("247", ["two hundred forty-seven"])


def test_reward_needs_the_state_and_every_output():
    state = {"orders": {"#1": {"status": "cancelled"}}}
    same = {"orders": {"#1": {"status": "cancelled"}}}
    other = {"orders": {"#1": {"status": "pending"}}}
    assert reward(state, same, [], []).reward == 1.0
    assert reward(state, other, [], ["anything"]).reward == 0.0
    result = reward(state, same, ["247", "shipped"], ["Refund: 247.00", "it has SHIPPED"])
    assert (result.reward, result.outputs) == (1.0, {"247": True, "shipped": True})
    result = reward(state, same, ["247", "shipped"], ["Refund: 247.00"])
    assert (result.reward, result.state_matches, result.outputs["shipped"]) == (0.0, True, False)
    result = reward(state, other, ["247"], ["Refund: 247.00"])
    assert (result.reward, result.state_matches) == (0.0, False)


def test_pass_hat_k_on_hand_made_trials():
    # task a: n=4 trials, c=2 successes; task b: 4 of 4; task c: 0 of 4.
    rewards = {"a": [1, 0, 1, 0], "b": [1, 1, 1, 1], "c": [0, 0, 0, 0]}
    triples = [(task, trial, float(r)) for task, rs in rewards.items() for trial, r in enumerate(rs)]
    got = pass_hat_k(triples)
    assert list(got) == [1, 2, 3, 4]
    # per task C(c,k)/C(n,k): a = 2/4, 1/6, 0, 0; b = 1 for every k; c = 0.
    assert got[1] == pytest.approx((2 / 4 + 1 + 0) / 3)
    assert got[2] == pytest.approx((1 / 6 + 1 + 0) / 3)
    assert got[3] == pytest.approx((0 + 1 + 0) / 3)
    assert got[4] == pytest.approx(1 / 3)
    assert comb(2, 2) / comb(4, 2) == pytest.approx(1 / 6)


def test_pass_hat_k_counts_only_exact_successes_and_checks_trials():
    assert pass_hat_k([("a", 0, 0.9999999), ("a", 1, 0.99)]) == {1: 0.5, 2: 0.0}
    with pytest.raises(ValueError, match="same number of trials; task 'b' has 1"):
        pass_hat_k([("a", 0, 1.0), ("a", 1, 1.0), ("b", 0, 1.0)])
    with pytest.raises(ValueError, match="trial 0 is given twice"):
        pass_hat_k([("a", 0, 1.0), ("a", 0, 1.0)])
    with pytest.raises(ValueError, match="at least one result"):
        pass_hat_k([])


def test_pass_hat_k_from_exported_records():
    records = [{"conversation_id": f"c{i}", "branch": 0,
                "scores": {"tau-reward": {"task": f"t{i % 2}", "trial": i // 2,
                                          "reward": 1.0 if i != 3 else 0.0}}}
               for i in range(4)]
    records.append({"conversation_id": "c0b", "branch": 1, "scores": {}})  # branches are not trials
    assert pass_hat_k_from_records(records) == {1: 0.75, 2: 0.5}
    with pytest.raises(ValueError, match="'c9' has no 'tau-reward' score"):
        pass_hat_k_from_records([{"conversation_id": "c9", "scores": {}}])


def Finished(index: int, state: object, messages: list[tuple[str, str, str]]) -> ConversationState:
    """A finished conversation as scorers see it: its messages and the environment's
    final state."""
    conversation = ConversationState(f"c{index}", index, seed=0)
    conversation.messages = messages
    conversation.state_json = msgspec.json.encode(state)
    return conversation


def test_reward_scorer_on_hand_made_final_states():
    tasks = load_tasks()
    i = next(k for k, t in enumerate(tasks) if t.outputs and t.writes)
    task = tasks[i]
    scorer = TauReward({"agent": "agent"})
    good = Finished(i + len(tasks), expected_state(task),
                    [("customer", "user", task.opening),
                     ("agent", "assistant", '<tool_call>{"name": "x", "arguments": {}}</tool_call>'),
                     ("agent", "assistant", task.answer)])
    score = scorer.score_conversation(good)
    assert score == {"reward": 1.0, "state_matches": 1, "outputs_found": len(task.outputs),
                     "outputs": len(task.outputs), "task": i, "trial": 1, "tool_errors": 0}
    untouched = Finished(i, load_database(), good.messages)
    assert scorer.score_conversation(untouched)["reward"] == 0.0
    silent = Finished(i, expected_state(task), good.messages[:2])
    assert scorer.score_conversation(silent)["outputs_found"] == 0
    # the customer saying the answer does not count: only the agent's messages do
    parrot = Finished(i, expected_state(task), [("customer", "user", task.answer)])
    assert scorer.score_conversation(parrot)["reward"] == 0.0
