"""bench_chat_api's third side: the same conversations played through `verifiers`'
multi-turn environment, the way a verifiers user writes a simulated user.

Runs in its own venv (`scripts/bench_peers.sh` builds `.venv-peers`: verifiers
pins packages that conflict with turnloom's):

    .venv-peers/bin/python bench/peer_verifiers.py --url URL --model M \\
        --conversations N --turns T --concurrency C --max-new-tokens K

and prints one JSON line {"turns", "seconds", "cpu", "failed", "prompt_tokens",
"completion_tokens"}, as bench_chat_api's other sides do.

verifiers 0.4.0 no longer ships `MultiTurnEnv` (it keeps only its agent/harness
stack, where each agent's rollout is a separate program behind an intercepting
proxy); 0.3.1 is the latest release with it, as `import verifiers as vf`.

The environment: a `vf.MultiTurnEnv` whose policy is the assistant.
  - dataset: N rows (`datasets.Dataset`, in memory), each prompt the assistant's
    system prompt; `example_id` is the conversation index.
  - `setup_state`: the simulated user opens (its view: its system prompt and
    OPENER as the user message); its reply becomes the assistant's first user
    message.
  - the assistant's turns are verifiers' own model calls (`get_model_response`
    with the seed of that turn added to the sampling args).
  - `env_response`: the simulated user's next message, from the same server with
    the user's view (roles flipped), through the same `get_model_response` (so
    verifiers counts its tokens in the rollout's usage).
  - ends after `--turns` messages: `max_turns` counts the assistant's turns
    (half of them, rounded up); an odd count ends on the user's message
    (`final_env_response`).
Rollouts are run by `env.evaluate(...)` (verifiers' `generate` underneath) with
verifiers' chat-completions client (`AsyncOpenAI` inside, built from a
`ClientConfig`) and `max_concurrent=C` conversations in flight: each plays one
request at a time, so at most C requests are in flight, as on the other sides.
Scoring: the default rubric (no reward functions; reward 0) plus the
environment's own turn-count metric, as any MultiTurnEnv rollout has.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_chat_api import ASSISTANT_PROMPT, OPENER, USER_PROMPT  # noqa: E402


def cpu_now() -> float:
    """This process's CPU seconds plus its ended children's (as bench_chat_api)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def build_env(args: argparse.Namespace) -> Any:
    # verifiers lives in its own venv; mypy runs in turnloom's, without it.
    import verifiers as vf  # type: ignore[import-not-found, unused-ignore]
    from datasets import Dataset  # type: ignore[import-untyped, unused-ignore]

    turns = args.turns

    class SimulatedUserEnv(vf.MultiTurnEnv):
        """The assistant is the policy; the environment plays the simulated user."""

        def user_view(self, messages: Any) -> list[Any]:
            """The user's view of the conversation so far: its own system prompt,
            its messages as "assistant", the assistant's as "user"."""
            view: list[Any] = [vf.SystemMessage(content=USER_PROMPT)]
            for message in messages:
                if message.role == "user":
                    view.append(vf.AssistantMessage(content=message.content))
                elif message.role == "assistant":
                    view.append(vf.UserMessage(content=message.content or ""))
            if len(view) == 1:
                view.append(vf.UserMessage(content=OPENER))
            return view

        async def user_says(self, state: Any, messages: Any, turn: int) -> str:
            response = await self.get_model_response(
                state, self.user_view(messages),
                sampling_args={**state["sampling_args"],
                               "seed": state["example_id"] * 1000 + turn})
            state["turns"] += 1
            return response.message.content or ""

        async def setup_state(self, state: Any) -> Any:
            state["turns"] = 0
            opening = await self.user_says(state, [], 0)
            state["prompt"] = [*state["prompt"], vf.UserMessage(content=opening)]
            if turns == 1:
                state["final_env_response"] = []
            return state

        async def get_model_response(self, state: Any, prompt: Any, client: Any = None,
                                     model: Any = None, tool_defs: Any = None,
                                     sampling_args: Any = None) -> Any:
            if sampling_args is None:  # the assistant's turn: message 2k + 1
                turn = 2 * len(state["trajectory"]) + 1
                sampling_args = {**state["sampling_args"],
                                 "seed": state["example_id"] * 1000 + turn}
                state["turns"] += 1
            return await super().get_model_response(state, prompt, client, model,
                                                     tool_defs, sampling_args)

        async def env_response(self, messages: Any, state: Any, **kwargs: Any) -> Any:
            turn = 2 * len(state["trajectory"])  # after k assistant turns: message 2k
            reply = [vf.UserMessage(content=await self.user_says(state, messages, turn))]
            if turn + 1 >= turns:
                state["final_env_response"] = reply
            return reply

    rows = [{"prompt": [{"role": "system", "content": ASSISTANT_PROMPT}],
             "example_id": i} for i in range(args.conversations)]
    return SimulatedUserEnv(eval_dataset=Dataset.from_list(rows), max_turns=(turns + 1) // 2,
                            sampling_args={"max_tokens": args.max_new_tokens,
                                           "temperature": 1.0})


async def play(args: argparse.Namespace) -> dict[str, Any]:
    from verifiers.clients import resolve_client  # type: ignore[import-not-found, unused-ignore]
    from verifiers.types import ClientConfig  # type: ignore[import-not-found, unused-ignore]

    env = build_env(args)
    client = resolve_client(ClientConfig(
        api_base_url=args.url, api_key_var="OPENAI_API_KEY", timeout=600.0, max_retries=3,
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency))
    quiet = lambda *a, **k: None  # noqa: E731  (no progress bar, as the other sides)
    c, t = cpu_now(), time.perf_counter()
    try:
        results = await env.evaluate(client=client, model=args.model,
                                     num_examples=args.conversations,
                                     max_concurrent=args.concurrency,
                                     state_columns=["turns"], on_start=quiet,
                                     on_progress=quiet, on_log=quiet)
    finally:
        await client.close()
    seconds, cpu = time.perf_counter() - t, cpu_now() - c
    outputs = results["outputs"]
    usage = [o.get("token_usage") or {} for o in outputs]
    return {"turns": sum(o.get("turns", 0) for o in outputs), "seconds": seconds, "cpu": cpu,
            "failed": sum(1 for o in outputs if o.get("error")),
            "prompt_tokens": int(sum(u.get("input_tokens", 0) for u in usage)),
            "completion_tokens": int(sum(u.get("output_tokens", 0) for u in usage))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", default="default")
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(play(args))))


if __name__ == "__main__":
    main()
