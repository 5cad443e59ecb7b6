"""A Hugging Face `tokenizer.json` as a turnloom Tokenizer, with no torch or transformers.

Only the `tokenizers` package is needed, so the engine can tokenize for a
remote backend on a machine that has no model runtime installed.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Sequence

import tokenizers

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def token_content(value: Any) -> str | None:
    """A special token as tokenizer_config writes it: a string, or a dict with "content"."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


class HFTokenizer:
    """Text <-> ids through the Rust `tokenizers` library.

    `encode` never adds BOS/EOS or other post-processing (segments are
    concatenated, so each must be exactly its text), while special tokens
    written in the text (``<|im_start|>``) are still parsed as single ids.
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        name: str,
        eos_token_ids: Sequence[int] = (),
        special_tokens: dict[str, str] | None = None,
    ) -> None:
        self._tok = tokenizer
        self.name = name
        self.eos_token_ids = tuple(dict.fromkeys(eos_token_ids))
        self.special_tokens = dict(special_tokens or {})
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        # encode_batch_fast skips offset tracking; older tokenizers lack it.
        self._batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        added = tokenizer.get_added_tokens_decoder().values()
        self.specials: tuple[str, ...] = tuple(t.content for t in added if t.special)
        # Contents are data: `encode_text` reads special-token strings as plain text by
        # switching the tokenizer's `encode_special_tokens` for the call (a second copy
        # of the tokenizer would cost as much as loading it). The switch needs the
        # tokenizer to itself, so every use goes through the lock.
        self._lock = threading.Lock()

    @classmethod
    def from_dir(cls, path: str | Path, name: str | None = None) -> HFTokenizer:
        """Load `tokenizer.json`, with special tokens from `tokenizer_config.json` and
        extra EOS ids from `generation_config.json` when those exist."""
        path = Path(path)
        tok = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        config = read_json(path / "tokenizer_config.json")
        specials = {k: v for k in SPECIAL_TOKEN_KEYS if (v := token_content(config.get(k)))}
        eos: list[int] = []
        if (eos_text := specials.get("eos_token")) is not None:
            eos_id = tok.token_to_id(eos_text)
            if eos_id is not None:
                eos.append(eos_id)
        generation = read_json(path / "generation_config.json").get("eos_token_id")
        if isinstance(generation, int):
            eos.append(generation)
        elif isinstance(generation, list):
            eos.extend(i for i in generation if isinstance(i, int))
        return cls(tok, name=name or path.name, eos_token_ids=eos, special_tokens=specials)

    def encode(self, text: str) -> list[int]:
        with self._lock:
            return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        with self._lock:
            return [e.ids for e in self._batch(list(texts), add_special_tokens=False)]

    def encode_text(self, text: str) -> list[int]:
        tok = self._tok
        with self._lock:
            tok.encode_special_tokens = True
            try:
                return tok.encode(text, add_special_tokens=False).ids
            finally:
                tok.encode_special_tokens = False

    def encode_text_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        tok = self._tok
        with self._lock:
            tok.encode_special_tokens = True
            try:
                return [e.ids for e in self._batch(list(texts), add_special_tokens=False)]
            finally:
                tok.encode_special_tokens = False

    def decode(self, ids: Sequence[int]) -> str:
        with self._lock:
            return self._tok.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        with self._lock:
            return self._tok.token_to_id(token)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r}, vocab_size={self.vocab_size})"
