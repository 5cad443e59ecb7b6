"""Transformers backend vs a naive per-conversation `generate` loop, multi-turn.

Both sides run the same model on the same scripted conversations (a system
prompt, then one scripted user message per turn, each answered by the model)
with greedy decoding and the same max_new_tokens:

- naive: for every conversation and turn, re-render the whole history with
  `apply_chat_template` and call HF `model.generate` on it, one at a time;
- turnloom: all conversations of a turn go to `TransformersBackend.generate`
  as one batch; prompts grow by appending token segments (no re-rendering), and
  with prefix reuse each turn prefills only the tokens new since the last one.

    python bench/bench_transformers.py --conversations 16 --turns 3 --max-new-tokens 48
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from typing import Any

SYSTEM = "You are a helpful assistant. Answer briefly."
TOPICS = (
    "the moon", "volcanoes", "bread baking", "chess openings", "honey bees", "the Roman empire",
    "rain", "bicycles", "jazz", "penguins", "prime numbers", "coffee", "glaciers", "kites",
    "octopuses", "libraries", "tea", "deserts", "trains", "comets",
)
TURNS = (
    "Tell me one interesting fact about {topic}.",
    "Why is that surprising?",
    "Give me a short example related to {topic}.",
    "Summarise our chat in one sentence.",
    "What should I read next about {topic}?",
)


def user_message(conversation: int, turn: int) -> str:
    topic = TOPICS[conversation % len(TOPICS)]
    return TURNS[turn % len(TURNS)].format(topic=topic)


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


def run_naive(model_dir: str, conversations: int, turns: int, max_new: int) -> Outcome:
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
    for c in range(conversations):
        messages = [{"role": "system", "content": SYSTEM}]
        for t in range(turns):
            messages.append({"role": "user", "content": user_message(c, t)})
            text, n, p = one_turn(messages)
            generated += n
            prompt_tokens += p
            messages.append({"role": "assistant", "content": text})
    return Outcome("naive: HF generate per conversation per turn", generated, time.perf_counter() - start,
                   prompt_tokens)


def run_turnloom(conversations: int, turns: int, max_new: int, reuse: bool, max_batch: int) -> Outcome:
    from turnloom.backends.base import GenRequest, SamplingParams
    from turnloom.backends.transformers import TransformersBackend
    from turnloom.models import load_chat_format

    fmt = load_chat_format("default")
    backend = TransformersBackend.from_settings({"prefix_reuse": reuse, "max_batch": max_batch, "device": "cpu"})
    params = SamplingParams(max_new_tokens=max_new, temperature=0.0)

    async def run() -> Outcome:
        await backend.start()
        warm = fmt.segment("system", SYSTEM) + fmt.segment("user", "Hi") + fmt.generation_prefix()
        await backend.generate([GenRequest(rid="warm", input_ids=warm, params=params, affinity=-1)])
        backend.prefix_store.clear()
        lanes = [fmt.segment("system", SYSTEM) for _ in range(conversations)]
        generated = prompt_tokens = cached = 0
        start = time.perf_counter()
        for t in range(turns):
            requests = []
            for c in range(conversations):
                lanes[c] = lanes[c] + fmt.segment("user", user_message(c, t))
                requests.append(GenRequest(rid=f"{c}-{t}", input_ids=lanes[c] + fmt.generation_prefix(),
                                           params=params, affinity=c))
            for c, result in enumerate(await backend.generate(requests)):
                assert result.finish_reason in ("stop", "length"), result.error
                generated += len(result.output_ids)
                prompt_tokens += result.prompt_tokens
                cached += result.cached_tokens
                lanes[c] = lanes[c] + fmt.generation_prefix() + fmt.close_generated(result.output_ids,
                                                                                   result.finish_reason)
        elapsed = time.perf_counter() - start
        await backend.close()
        name = "turnloom: batched" + (" + prefix KV reuse" if reuse else ", no reuse")
        return Outcome(name, generated, elapsed, prompt_tokens, cached)

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=16)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--skip-no-reuse", action="store_true", help="leave out the batched run without reuse")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for every mode (0: torch's default); 1 is steadier on a shared machine")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from turnloom.models import default_model_dir

    model_dir = str(default_model_dir())
    outcomes = [run_turnloom(args.conversations, args.turns, args.max_new_tokens, True, args.max_batch)]
    if not args.skip_no_reuse:
        outcomes.append(run_turnloom(args.conversations, args.turns, args.max_new_tokens, False, args.max_batch))
    outcomes.append(run_naive(model_dir, args.conversations, args.turns, args.max_new_tokens))
    naive = outcomes[-1]

    import torch

    print(f"\n{args.conversations} conversations x {args.turns} turns, max_new_tokens={args.max_new_tokens}, "
          f"greedy, SmolLM2-135M-Instruct, CPU, {torch.get_num_threads()} torch threads\n")
    header = f"{'mode':<48} {'gen tok':>8} {'prompt tok':>10} {'reused':>7} {'wall s':>8} {'gen tok/s':>9} {'speed-up':>8}"
    print(header)
    print("-" * len(header))
    for o in outcomes:
        print(f"{o.name:<48} {o.generated:>8} {o.prompt_tokens:>10} {o.cached_tokens:>7} {o.seconds:>8.1f} "
              f"{o.rate:>9.1f} {o.rate / naive.rate:>7.2f}x")


if __name__ == "__main__":
    main()
