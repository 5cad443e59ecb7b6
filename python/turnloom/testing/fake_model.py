"""Deterministic stand-in for a language model, and SGLang's stopping rules.

`HashModel` yields token ids drawn from a seeded hash of the prompt and the
sampling seed, with EOS after a length drawn from the same seed: the same
(prompt, seed) always gives the same tokens, different seeds usually differ.
Any callable with the same signature (for example one that steps a real
model) can replace it in the test servers.

`decode_loop` applies the stopping rules in SGLang's order: length first,
then EOS / stop token ids (skipped with ignore_eos), then stop strings.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from turnloom.tokenizer import ByteTokenizer

TokenModel = Callable[[Sequence[int], Mapping[str, Any]], Iterable[int]]
"""(prompt ids, sampling params as sent) -> a stream of token ids."""

_WORDS = "abcdefghijklmnopqrstuvwxyz" + " " * 6


class HashModel:
    """Token ids from a seeded hash of (prompt, seed); EOS after a seeded length."""

    def __init__(self, alphabet: Sequence[int] | None = None, eos_token_id: int | None = 257,
                 min_len: int = 2, max_len: int = 24) -> None:
        self.alphabet = list(alphabet) if alphabet is not None else [ord(c) for c in _WORDS]
        self.eos_token_id = eos_token_id
        self.min_len = min_len
        self.max_len = max_len

    def __call__(self, input_ids: Sequence[int], params: Mapping[str, Any]) -> Iterator[int]:
        rng = random.Random(self.seed_of(input_ids, params))
        length = rng.randint(self.min_len, self.max_len)
        for i in range(length):
            yield rng.choice(self.alphabet)
        if self.eos_token_id is not None:
            yield self.eos_token_id
        while True:  # past EOS, only reached with ignore_eos
            yield rng.choice(self.alphabet)

    @staticmethod
    def seed_of(input_ids: Sequence[int], params: Mapping[str, Any]) -> bytes:
        temperature = params.get("temperature", 1.0)
        seed = params.get("sampling_seed", params.get("seed"))
        if temperature is not None and temperature < 1e-6:
            seed = 0  # greedy: one answer per prompt
        elif seed is None:
            return os.urandom(16)
        h = hashlib.blake2b(digest_size=16)
        h.update(struct.pack("<q", int(seed)))
        h.update(struct.pack(f"<{len(input_ids)}q", *input_ids))
        return h.digest()


@dataclass
class Generation:
    output_ids: list[int]
    finish: dict[str, Any]
    """SGLang's finish_reason object: {"type": "stop", "matched": id|str|None} or
    {"type": "length", "length": n}."""


class Detokenizer:
    """Decode with SGLang's skip_special_tokens behaviour for a turnloom tokenizer."""

    def __init__(self, decode: Callable[[Sequence[int]], str], special_ids: Iterable[int] = ()) -> None:
        self.decode = decode
        self.special_ids = frozenset(special_ids)

    @classmethod
    def bytes(cls) -> "Detokenizer":
        tok = ByteTokenizer()
        return cls(tok.decode, tok.special_ids.values())

    def text(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        if skip_special_tokens and self.special_ids:
            ids = [i for i in ids if i not in self.special_ids]
        return self.decode(ids)


def decode_loop(model: TokenModel, input_ids: Sequence[int], params: Mapping[str, Any],
                detok: Detokenizer, eos_token_ids: Iterable[int]) -> Generation:
    """Generate until a stopping rule fires, in SGLang's order."""
    max_new = params.get("max_new_tokens", 128)
    max_new = 128 if max_new is None else int(max_new)
    ignore_eos = bool(params.get("ignore_eos", False))
    stops = set(params.get("stop_token_ids") or ()) | set(eos_token_ids)
    stop_strs = params.get("stop") or []
    if isinstance(stop_strs, str):
        stop_strs = [stop_strs]
    out: list[int] = []
    if max_new <= 0:
        return Generation(out, {"type": "length", "length": max_new})
    for token in model(input_ids, params):
        out.append(int(token))
        if len(out) >= max_new:
            return Generation(out, {"type": "length", "length": max_new})
        if not ignore_eos and token in stops:
            return Generation(out, {"type": "stop", "matched": int(token)})
        if stop_strs:
            decoded = detok.decode(out)
            for s in stop_strs:
                if s and s in decoded:
                    return Generation(out, {"type": "stop", "matched": s})
    return Generation(out, {"type": "stop", "matched": None})


def output_text(gen: Generation, detok: Detokenizer, skip_special_tokens: bool = True,
                no_stop_trim: bool = False) -> str:
    """The text SGLang returns: matched stop token and stop string trimmed."""
    ids = gen.output_ids
    matched = gen.finish.get("matched")
    if not no_stop_trim and isinstance(matched, int) and ids:
        ids = ids[:-1]
    text = detok.text(ids, skip_special_tokens)
    if not no_stop_trim and isinstance(matched, str):
        pos = text.find(matched)
        if pos != -1:
            text = text[:pos]
    return text
