"""A chat API serves each request on its own: a conversation's next turn goes out
as soon as its own reply is back, never held until a slower conversation's reply
arrives (a batch barrier would make every conversation as slow as the slowest)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import turnloom
from turnloom import Scenario
from turnloom.plugins import get_plugin_manager
from turnloom.testing._httpserver import Reply, Request
from turnloom.testing.openai_server import OpenAITestServer

SLOW_S = 1.5


class OneSlowRequest(OpenAITestServer):
    """Answers the first chat request SLOW_S late, every other one at once, and
    notes when each request arrived and when the slow one was answered."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[float] = []
        self.slow_answered = 0.0

    async def handle(self, request: Request) -> Reply:
        if not request.path.endswith("/chat/completions"):
            return await super().handle(request)
        self.arrivals.append(time.monotonic())
        first = len(self.arrivals) == 1
        reply = await super().handle(request)
        if first:
            await asyncio.sleep(SLOW_S)
            self.slow_answered = time.monotonic()
        return reply


def test_conversations_move_on_while_another_waits_for_its_reply(tmp_path: Path) -> None:
    conversations, turns = 4, 6
    scenario = Scenario.from_dict({
        "run": {"name": "dispatch", "conversations": conversations, "max_turns": turns},
        "backends": {"api": {"type": "openai", "tokenizer": "bytes",
                             "settings": {"base_url": "URL", "model": "turnloom/hash-model",
                                          "endpoint": "chat", "max_concurrency": 8}}},
        "participants": [
            {"name": "user", "agent": "user-simulator", "system_prompt": "You are Ada.",
             "sampling": {"max_new_tokens": 4}},
            {"name": "assistant", "agent": "assistant", "sampling": {"max_new_tokens": 4}},
        ],
    })
    with OneSlowRequest() as server:
        scenario.backends["api"].settings["base_url"] = server.url + "/v1"
        result = turnloom.run(scenario, out=tmp_path / "run", progress=False,
                              plugin_manager=get_plugin_manager(autoload=False))
        arrivals, slow_answered = server.arrivals, server.slow_answered
    assert result.summary["turns"] == conversations * turns
    assert result.summary["backends"]["api"]["batch_size"] == 1
    # The other three conversations played every turn while the slow reply was out.
    before = sum(t < slow_answered for t in arrivals)
    assert before >= 1 + (conversations - 1) * turns, (before, len(arrivals))
