"""A tau-bench-style tool-use domain for turnloom: an outdoor-gear shop (database, tools,
policy, tasks), tau-bench's reward and pass^k. Components are in `turnloom_tau.plugin`."""

from turnloom_tau.reward import pass_hat_k, pass_hat_k_from_records, reward
from turnloom_tau.tasks import expected_state, gold_dialogue, load_database, load_tasks, task_for_index

__all__ = ["expected_state", "gold_dialogue", "load_database", "load_tasks", "pass_hat_k",
           "pass_hat_k_from_records", "reward", "task_for_index"]
