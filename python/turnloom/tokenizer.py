"""Tokenizers and chat formats: how a message becomes a token segment.

A view's lane is the concatenation of per-message segments, so a chat format
must render one message at a time. `ChatFormat.segment` renders a whole
message; `ChatFormat.generation_prefix` opens the speaker's turn before
generation, and `ChatFormat.close_generated` turns the generated ids into the
rest of the speaker's own segment without re-tokenizing them.
"""

from __future__ import annotations

import re
from typing import Any, Protocol, Sequence, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids. `encode` parses special tokens written in the text as
    such (for a template's markup); `encode_text` never does (for contents:
    text from participants is data). `specials` lists the special-token strings."""

    name: str
    eos_token_ids: tuple[int, ...]
    specials: tuple[str, ...]

    def encode(self, text: str) -> list[int]: ...
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...
    def encode_text(self, text: str) -> list[int]: ...
    def encode_text_batch(self, texts: Sequence[str]) -> list[list[int]]: ...
    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """Deterministic tokenizer with no files: UTF-8 bytes plus ChatML specials.

    Used by the scripted backend and by tests that need no model.
    """

    SPECIALS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    _split = re.compile("(" + "|".join(re.escape(s) for s in SPECIALS) + ")")

    def __init__(self) -> None:
        self.name = "bytes"
        self.specials: tuple[str, ...] = self.SPECIALS
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

    def encode_text(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_text_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        out = bytearray()
        for i in ids:
            if i < 256:
                out.append(i)
            else:
                out.extend(self.SPECIALS[i - 256].encode())
        return out.decode("utf-8", errors="replace")


class ChatFormat(Protocol):
    """Renders messages of one chat template: whole (`render_ids`, `prompt_ids`:
    the reference) and as append-only token segments (`segment`), which the
    engine uses where `append_only` holds."""

    tokenizer: Tokenizer
    append_only: bool

    def segment(self, role: str, text: str, first: bool = False) -> list[int]: ...
    def segments(self, roles: Sequence[str], texts: Sequence[str],
                 first: bool = False) -> list[list[int]]: ...
    def generation_prefix(self, role: str = "assistant") -> list[int]: ...
    def first_extra(self, role: str = "assistant") -> list[int] | None: ...
    def close_generated(self, output_ids: Sequence[int], finish_reason: str) -> list[int]: ...
    def render_ids(self, messages: Sequence[Any], add_generation_prompt: bool = False,
                   tools: Sequence[Any] | None = None) -> list[int]: ...
    def prompt_ids(self, messages: Sequence[Any], role: str = "assistant",
                   tools: Sequence[Any] | None = None) -> list[int]: ...


def __getattr__(name: str) -> Any:
    # ChatML is a chat template like any other and lives with them; imported on first
    # use, so that importing turnloom does not load Jinja.
    if name == "ChatMLFormat":
        from turnloom.chat_template import ChatMLFormat

        return ChatMLFormat
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def chatml_bytes() -> ChatFormat:
    """ChatML over the byte tokenizer: the format that needs no model files."""
    from turnloom.chat_template import ChatMLFormat

    return ChatMLFormat(ByteTokenizer())


__all__ = ["ByteTokenizer", "ChatFormat", "Tokenizer", "chatml_bytes"]
