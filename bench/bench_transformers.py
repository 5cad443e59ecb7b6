"""B3: SmolLM2 on CPU, turnloom against a naive per-conversation `generate` loop.

Both sides hold the same multi-turn conversations: a system prompt, then per turn
one user message (drawn per conversation from QUESTIONS by the scripted-user
environment) answered by the model, greedy, with the same max_new_tokens.

- turnloom: a Scenario run through `turnloom.api.run` (the engine, its forest and
  scheduler, the transformers backend batching every ready conversation, with
  prefix KV reuse between turns; `--no-reuse` adds a row without it);
- naive: what a user would write: for every conversation, one turn after the
  other, re-render the whole history with `apply_chat_template` and call
  `model.generate` on it. It replays the user messages of the turnloom run, so
  both sides answer the same questions.

Rates are generated tokens per second of generation (model loading excluded on
both sides; the engine's figure is its run loop).

    .venv/bin/python bench/bench_transformers.py                       # 64 conversations x 4 turns
    .venv/bin/python bench/bench_transformers.py --conversations 4 --turns 2 --max-new-tokens 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import machine

SYSTEM = "You are a helpful assistant. Answer briefly."
TOPICS = ("the moon", "volcanoes", "bread baking", "chess openings", "honey bees", "rain",
          "bicycles", "jazz", "prime numbers", "coffee", "glaciers", "comets")
QUESTIONS = tuple(q.format(topic=t) for t in TOPICS for q in (
    "Tell me one interesting fact about {topic}.",
    "Give me a short example related to {topic}.",
    "What should I read next about {topic}?",
))


@dataclass
class Outcome:
    name: str
    generated: int
    seconds: float
    prompt_tokens: int = 0
    cached_tokens: int = 0

    @property
    def rate(self) -> float:
        return self.generated / self.seconds if self.seconds else 0.0


def run_turnloom(conversations: int, turns: int, max_new: int, reuse: bool, max_batch: int,
                 out: Path) -> tuple[Outcome, list[list[str]]]:
    """The engine on the transformers backend; returns the outcome and each
    conversation's user messages (for the naive side to replay)."""
    from turnloom.api import run
    from turnloom.backends.base import SamplingParams
    from turnloom.config import BackendSpec, ParticipantSpec, RunSettings, Scenario

    scenario = Scenario(
        run=RunSettings(name="bench-b3", conversations=conversations, max_turns=2 * turns, seed=0),
        backends={"hf": BackendSpec(type="transformers", settings={
            "prefix_reuse": reuse, "max_batch": max_batch, "device": "cpu"})},
        participants=(
            ParticipantSpec(name="user", agent="scripted-user",
                            settings={"lines": list(QUESTIONS), "shuffle": True}),
            ParticipantSpec(name="assistant", agent="assistant", system_prompt=SYSTEM,
                            sampling=SamplingParams(max_new_tokens=max_new, temperature=0.0)),
        ),
    )
    result = run(scenario, out=out, overwrite=True, progress=False)
    summary = result.summary
    usage = summary["participants"]["assistant"]
    users = []
    with open(out / "conversations.jsonl") as f:
        for line in f:
            record = json.loads(line)
            users.append([m["content"] for m in record["messages"] if m["role"] == "user"])
    name = "turnloom: engine, batched" + (" + prefix KV reuse" if reuse else ", no reuse")
    outcome = Outcome(name, usage["completion_tokens"], summary["timing"]["wall_s"],
                      usage["prompt_tokens"], usage["cached_tokens"])
    return outcome, users


def run_naive(model_dir: str, user_turns: list[list[str]], max_new: int) -> Outcome:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok: Any = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    eos = tok.convert_tokens_to_ids("<|im_end|>")

    def one_turn(messages: list[dict[str, str]]) -> tuple[str, int, int]:
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=False)
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                                 do_sample=False, eos_token_id=eos, pad_token_id=eos)
        new = out[0, ids.shape[1]:]
        return tok.decode(new, skip_special_tokens=True), len(new), ids.shape[1]

    one_turn([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}])  # warm-up
    generated = prompt_tokens = 0
    start = time.perf_counter()
    for users in user_turns:
        messages = [{"role": "system", "content": SYSTEM}]
        for user in users:
            messages.append({"role": "user", "content": user})
            text, n, p = one_turn(messages)
            generated += n
            prompt_tokens += p
            messages.append({"role": "assistant", "content": text})
    return Outcome("naive: HF generate per conversation per turn", generated, time.perf_counter() - start,
                   prompt_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=64)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--no-reuse", action="store_true", help="add an engine run without prefix KV reuse")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for every mode (0: torch's default); 1 is steadier on a shared machine")
    args = parser.parse_args()
    print(machine.describe(), flush=True)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from turnloom.models import default_model_dir

    model_dir = str(default_model_dir())
    work = Path(tempfile.mkdtemp(prefix="bench-b3-"))
    modes = [True, False] if args.no_reuse else [True]
    outcomes = []
    users: list[list[str]] = []
    for reuse in modes:
        outcome, users = run_turnloom(args.conversations, args.turns, args.max_new_tokens, reuse,
                                      args.max_batch, work / f"run-{int(reuse)}")
        outcomes.append(outcome)
    outcomes.append(run_naive(model_dir, users, args.max_new_tokens))
    naive = outcomes[-1]

    print(f"\n{args.conversations} conversations x {args.turns} turns, max_new_tokens={args.max_new_tokens}, "
          f"greedy, SmolLM2-135M-Instruct, CPU, {torch.get_num_threads()} torch threads\n")
    header = f"{'mode':<44} {'gen tok':>8} {'prompt tok':>10} {'reused':>7} {'wall s':>8} {'gen tok/s':>9} {'speed-up':>8}"
    print(header)
    print("-" * len(header))
    for o in outcomes:
        print(f"{o.name:<44} {o.generated:>8} {o.prompt_tokens:>10} {o.cached_tokens:>7} {o.seconds:>8.1f} "
              f"{o.rate:>9.1f} {o.rate / naive.rate:>7.2f}x")
    print(f"load average at the end: {machine.load()}")


if __name__ == "__main__":
    main()
