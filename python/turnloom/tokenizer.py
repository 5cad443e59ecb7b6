"""Tokenizers and chat formats: how a message becomes a token segment.

A view's lane is the concatenation of per-message segments, so a chat format
must render one message at a time. `ChatFormat.segment` renders a whole
message; `ChatFormat.generation_prefix` opens the speaker's turn before
generation, and `ChatFormat.close_generated` turns the generated ids into the
rest of the speaker's own segment without re-tokenizing them.
"""

from __future__ import annotations

import re
from typing import Protocol, Sequence, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids. Special tokens written in text are parsed as such."""

    name: str
    eos_token_ids: tuple[int, ...]

    def encode(self, text: str) -> list[int]: ...
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...
    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """Deterministic tokenizer with no files: UTF-8 bytes plus ChatML specials.

    Used by the scripted backend and by tests that need no model.
    """

    SPECIALS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    _split = re.compile("(" + "|".join(re.escape(s) for s in SPECIALS) + ")")

    def __init__(self) -> None:
        self.name = "bytes"
        self.special_ids = {s: 256 + i for i, s in enumerate(self.SPECIALS)}
        self.eos_token_ids: tuple[int, ...] = (self.special_ids["<|im_end|>"], self.special_ids["<|endoftext|>"])
        self.vocab_size = 256 + len(self.SPECIALS)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for part in self._split.split(text):
            special = self.special_ids.get(part)
            if special is not None:
                ids.append(special)
            elif part:
                ids.extend(part.encode("utf-8"))
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        out = bytearray()
        for i in ids:
            if i < 256:
                out.append(i)
            else:
                out.extend(self.SPECIALS[i - 256].encode())
        return out.decode("utf-8", errors="replace")


class ChatFormat(Protocol):
    """Renders messages of one chat template as append-only token segments."""

    tokenizer: Tokenizer

    def segment(self, role: str, text: str) -> list[int]: ...
    def segments(self, roles: Sequence[str], texts: Sequence[str]) -> list[list[int]]: ...
    def generation_prefix(self, role: str = "assistant") -> list[int]: ...
    def close_generated(self, output_ids: Sequence[int], finish_reason: str) -> list[int]: ...


class ChatMLFormat:
    """ChatML (`<|im_start|>role\\ntext<|im_end|>\\n`), used by SmolLM2 and Qwen.

    ChatML is append-only: rendering a conversation message by message gives
    the same tokens as rendering it whole (tested against the Jinja template).
    """

    def __init__(self, tokenizer: Tokenizer, end_token: str = "<|im_end|>") -> None:
        self.tokenizer = tokenizer
        self.end_token = end_token
        end_ids = tokenizer.encode(end_token)
        if len(end_ids) != 1:
            raise ValueError(f"{end_token!r} is not a single special token in {tokenizer.name}")
        self.end_id = end_ids[0]
        self._newline = tokenizer.encode("\n")
        self._prefix_cache: dict[str, list[int]] = {}

    def _render(self, role: str, text: str) -> str:
        return f"<|im_start|>{role}\n{text}{self.end_token}\n"

    def segment(self, role: str, text: str) -> list[int]:
        return self.tokenizer.encode(self._render(role, text))

    def segments(self, roles: Sequence[str], texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer.encode_batch([self._render(r, t) for r, t in zip(roles, texts)])

    def generation_prefix(self, role: str = "assistant") -> list[int]:
        cached = self._prefix_cache.get(role)
        if cached is None:
            cached = self._prefix_cache[role] = self.tokenizer.encode(f"<|im_start|>{role}\n")
        return list(cached)

    def close_generated(self, output_ids: Sequence[int], finish_reason: str) -> list[int]:
        """The generated ids plus what closes the message, as a full render would have it."""
        if output_ids and output_ids[-1] == self.end_id:  # the model closed the message itself
            return [*output_ids, *self._newline]
        ids = list(output_ids)
        while ids and ids[-1] in self.tokenizer.eos_token_ids and ids[-1] != self.end_id:
            ids.pop()
        if not ids or ids[-1] != self.end_id:
            ids.append(self.end_id)
        ids.extend(self._newline)
        return ids
