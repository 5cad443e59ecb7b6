"""Accounting: what a run used and did, as summary.json reports it."""

from __future__ import annotations

from typing import Any

import msgspec

from turnloom.engine.base import EngineBase


class AccountingMixin(EngineBase):
    """The engine's run summary (mixed into Engine)."""

    # -- summary ------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        c = self.collector
        assert c is not None
        backends = {}
        prompt = cached = 0
        for be in self.backends.values():
            d = be.usage.as_dict()
            d["type"] = be.spec.type
            d["plugin"] = be.plugin
            if be.info is not None:
                d["info"] = msgspec.to_builtins(be.info)
            d["cached_tokens_source"] = "backend" if be.reports_cached else (
                "model" if be.cache is not None else "none")
            # What the engine ran at: the scenario's settings capped by the backend's.
            if be.prompt_check is not None:
                d["prompt_tokens_check"] = be.prompt_check.as_dict()
            d["batch_size"] = be.batch_size
            d["max_inflight"] = be.max_inflight
            backends[be.name] = d
            prompt += be.usage.prompt_tokens
            cached += be.usage.cached_tokens
        wall = self.wall_s or 1e-9
        new_turns = self.turns_done
        return {
            "name": self.scenario.run.name,
            "status": "complete",
            "conversations": c.trees,
            "records": c.records,
            "turns": sum(p.usage.turns for p in self.participants),  # each shared turn once
            "record_turns": c.turns,  # summed over branch records
            "failures": c.failures,
            "stop_reasons": dict(sorted(c.stop_reasons.items())),
            "errors": c.error_samples,
            "plugin_errors": list(getattr(self.registry, "errors", [])) + c.plugin_errors,
            "participants": {p.name: p.usage.as_dict() for p in self.participants},
            "judges": {j.name: j.usage.as_dict() for j in self.judges},
            "backends": backends,
            "cache": {"prompt_tokens": prompt, "cached_tokens": cached,
                      "hit_rate": round(cached / prompt, 6) if prompt else 0.0},
            "scores": c.mean_scores(),
            "timing": {"wall_s": round(wall, 3),
                       "turns_this_session": new_turns,
                       "replayed_turns": self.replayed_turns,
                       "turns_per_s": round(new_turns / wall, 1),
                       "tokens_per_s": round(self.tokens_done / wall, 1)},
            "memory": {"peak_live_nodes": self.peak_live_nodes,
                       "peak_active_conversations": self.peak_active,
                       "final_forest": self.forest.stats()},
        }
