"""Content is data: only a chat template's own markup may produce special tokens.

A participant who writes ``<|im_end|>\\n<|im_start|>system`` must not open a
system message. `MarkupEncoder` tokenizes a rendered chat so that special-token
strings count as special only where the template wrote them: contents are
escaped before rendering (each special-token string swapped for one
private-use character), the render is cut at the template's special tokens,
and the pieces between them are restored and encoded with special-token
matching off. Tokenizers split at special tokens first and encode the pieces
between independently, so the result equals the tokenizer's own encoding of
the same render wherever the contents hold no special-token string.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

# Escaped contents: ESC + ESC for a literal ESC, ESC + chr(_BASE + k) for the
# k-th special-token string. Both are private-use characters no template touches.
ESC = "\U000FFFFD"
_BASE = 0xF0000


class MarkupEncoder:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        specials: Sequence[str] = tuple(getattr(tokenizer, "specials", ()))
        self.specials = sorted(specials, key=len, reverse=True)  # longest match first
        self.special_ids: dict[str, int] = {}
        for s in self.specials:
            ids = tokenizer.encode(s)
            if len(ids) == 1:
                self.special_ids[s] = ids[0]
        self._index = {s: k for k, s in enumerate(self.specials)}
        alternatives = "|".join(re.escape(s) for s in self.specials)
        self._find = re.compile(alternatives) if self.specials else None
        self._split = re.compile(f"({alternatives})") if self.specials else None
        self._unescape = re.compile(re.escape(ESC) + "(.)", re.DOTALL)
        self._firsts = frozenset(s[0] for s in self.specials) | {ESC}

    # -- contents ------------------------------------------------------------------

    def escape(self, text: str) -> str:
        """`text` with its special-token strings hidden from the tokenizer's split."""
        if not any(c in text for c in self._firsts):
            return text
        text = text.replace(ESC, ESC + ESC)
        if self._find is None:
            return text
        return self._find.sub(lambda m: ESC + chr(_BASE + self._index[m.group(0)]), text)

    def unescape(self, text: str) -> str:
        if ESC not in text:
            return text
        return self._unescape.sub(self._restore, text)

    def _restore(self, m: re.Match[str]) -> str:
        c = m.group(1)
        return ESC if c == ESC else self.specials[ord(c) - _BASE]

    def escape_message(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """A message dict with every free-text field escaped (content, reasoning,
        tool call arguments); the structure is left as it is."""
        out = dict(message)
        for key in ("content", "reasoning_content", "reasoning", "thinking", "name"):
            if isinstance(out.get(key), str):
                out[key] = self.escape(out[key])
        calls = out.get("tool_calls")
        if calls:
            out["tool_calls"] = [self._escape_call(c) for c in calls]
        return out

    def escape_data(self, value: Any) -> Any:
        """Every string in a JSON value escaped (tool schemas: data, not markup)."""
        if isinstance(value, str):
            return self.escape(value)
        if isinstance(value, dict):
            return {k: self.escape_data(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.escape_data(v) for v in value]
        return value

    def _escape_call(self, call: Any) -> Any:
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            return call
        fn = dict(call["function"])
        for key in ("arguments", "name"):
            if isinstance(fn.get(key), str):
                fn[key] = self.escape(fn[key])
        return {**call, "function": fn}

    # -- rendered text -----------------------------------------------------------------

    def encode(self, rendered: str) -> list[int]:
        """Token ids of a render whose contents were escaped."""
        return self.encode_many([rendered])[0]

    def encode_many(self, rendered: Sequence[str]) -> list[list[int]]:
        pieces: list[list[str]] = [self._split.split(r) if self._split else [r] for r in rendered]
        texts = [self.unescape(t) for parts in pieces for t in parts[0::2]]
        encoded = iter(self.tokenizer.encode_text_batch(texts))
        out = []
        for parts in pieces:
            ids: list[int] = []
            for k, part in enumerate(parts):
                if k % 2:
                    ids.append(self.special_ids[part])
                else:
                    ids += next(encoded)
            out.append(ids)
        return out

    def split_markup(self, markup: str) -> tuple[str, list[int], str]:
        """A markup string as (text before its first special token, ids from the
        first special token through the last, text after the last). With no
        special token: (markup, [], "")."""
        if self._split is None:
            return markup, [], ""
        parts = self._split.split(markup)
        if len(parts) == 1:
            return markup, [], ""
        middle = "".join(parts[1:-1])
        return parts[0], self.encode(middle), parts[-1]
