"""A deterministic, rule-based backend for tests and engine benchmarks.

The reply to a request is one of the canned `lines`, chosen by hashing the
prompt ids and the seed, tokenized with the backend's chat format and closed
with EOS. Same prompt and seed, same reply, in any process (integer tuples hash
the same everywhere). It honours max_new_tokens ("length"), stop_token_ids and
stop strings, can simulate latency and failures, and can model a prefix cache.

Settings (``from_settings``): lines, tokenizer (chat-format spec, "bytes"),
latency_s (per batch), max_batch, cache_capacity_tokens (reports cached tokens
from a modelled radix cache), fail_every (every k-th request fails), eos.

``script = "by-turn"`` plays scripts in order instead (gold conversations):
``scripts`` (or ``scripts_file``, a JSON file of the same list) holds entries
``{match, lines}``. A request plays the first script whose `match` text occurs in
its decoded prompt, and its line number k is how many messages of the speaker's
own role the prompt already holds (occurrences of the generation prefix the
prompt ends with, less that last one). A prompt no script matches, or a script
with no line k, is a failed request naming the reason.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import msgspec

from turnloom.backends.base import (
    Backend,
    BackendError,
    BackendInfo,
    GenRequest,
    GenResult,
)
from turnloom.tokenizer import ChatFormat, chatml_bytes

DEFAULT_LINES = (
    "Sure, here is a short answer.",
    "Could you tell me a bit more about that?",
    "I think the simplest way is to start small and iterate.",
    "That makes sense. What would you try first?",
    "Here are three ideas: a list, a plan and a check.",
    "Thanks, that helps a lot.",
    "Let me think about it step by step.",
    "Interesting question! It depends on the details.",
)
# Hash only the prompt's tail: it holds the last messages, and hashing stays O(1) per turn.
_TAIL = 32
DEFAULT_MAX_BATCH = 128


class Script(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One conversation's lines for one speaker, played in order (``script = "by-turn"``)."""

    match: str  # text that only this conversation's prompts contain
    lines: tuple[str, ...]


class ScriptedSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    lines: tuple[str, ...] = DEFAULT_LINES
    tokenizer: str = "bytes"
    latency_s: float = 0.0
    # Replies are instant, so a batch only has to amortise per-call costs; past ~128 a
    # batch's prompts and records stop fitting the CPU caches and runs get slower
    # (bench/README.md, B1's batch-size sweep).
    max_batch: int = DEFAULT_MAX_BATCH
    cache_capacity_tokens: int | None = None
    fail_every: int = 0
    eos: bool = True
    model: str = "scripted"
    script: Literal["hash", "by-turn"] = "hash"
    scripts: tuple[Script, ...] = ()
    scripts_file: str | None = None


def load_scripts(path: str) -> tuple[Script, ...]:
    """The scripts of a JSON file: a list of ``{"match": str, "lines": [str, ...]}``."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise BackendError(f"scripted backend: scripts_file {path!r}: {exc.strerror}") from None
    try:
        return msgspec.json.decode(raw, type=tuple[Script, ...])
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise BackendError(f"scripted backend: scripts_file {path!r}: {exc}") from None


class ScriptedBackend(Backend):
    """Canned replies chosen by hash(prompt tail, prompt length, seed)."""

    def __init__(self, lines: Sequence[str] = DEFAULT_LINES, *,
                 chat_format: ChatFormat | None = None, latency_s: float = 0.0,
                 max_batch: int = DEFAULT_MAX_BATCH, cache_capacity_tokens: int | None = None,
                 fail_every: int = 0, eos: bool = True, model: str = "scripted",
                 scripts: Sequence[Script] | None = None) -> None:
        if not lines:
            raise BackendError("scripted backend: `lines` must not be empty")
        if scripts is not None and not scripts:
            raise BackendError('scripted backend: script = "by-turn" needs `scripts` or '
                               "`scripts_file`")
        self.lines = tuple(lines)
        # By-turn playback (None: lines chosen by hash, the default).
        self.scripts = tuple(scripts) if scripts is not None else None
        self.latency_s = latency_s
        self.max_batch = max_batch
        self.fail_every = fail_every
        self.eos = eos
        self.model = model
        self.cache_capacity_tokens = cache_capacity_tokens
        self._cache: Any = None
        self._calls = 0
        self.chat_format: ChatFormat = chat_format or chatml_bytes()
        self.use_chat_format(self.chat_format)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> ScriptedBackend:
        try:
            s = msgspec.convert(dict(settings), ScriptedSettings)
        except msgspec.ValidationError as exc:
            raise BackendError(f"invalid scripted backend settings: {exc}") from None
        from turnloom.runtime import load_chat_format

        scripts: tuple[Script, ...] | None = None
        if s.script == "by-turn":
            if s.scripts and s.scripts_file:
                raise BackendError("scripted backend: give `scripts` or `scripts_file`, not both")
            scripts = load_scripts(s.scripts_file) if s.scripts_file else s.scripts
        elif s.scripts or s.scripts_file:
            raise BackendError('scripted backend: `scripts` are played with script = "by-turn"')
        return cls(s.lines, chat_format=load_chat_format(s.tokenizer), latency_s=s.latency_s,
                   max_batch=s.max_batch, cache_capacity_tokens=s.cache_capacity_tokens,
                   fail_every=s.fail_every, eos=s.eos, model=s.model, scripts=scripts)

    def use_chat_format(self, chat_format: ChatFormat) -> None:
        """Speak the token ids of `chat_format` (the engine's, for this backend)."""
        self.chat_format = chat_format
        tok = chat_format.tokenizer
        eos = [getattr(chat_format, "end_id", tok.eos_token_ids[0])] if self.eos else []
        # A line is what a model writes: text, whatever special-token strings it spells.
        encoded = tok.encode_text_batch(list(self.lines))
        self._eos_ids = frozenset(tok.eos_token_ids)
        self._replies = [(ids + eos, text) for ids, text in zip(encoded, self.lines)]
        if self.scripts is not None:
            self._script_replies = [
                [(ids + eos, text) for ids, text in zip(tok.encode_text_batch(list(sc.lines)),
                                                        sc.lines)]
                for sc in self.scripts]
            fmt = chat_format
            self._own_prefixes = [(fmt.generation_prefix(role),
                                   tok.decode(fmt.generation_prefix(role)))
                                  for role in ("assistant", "user")]

    def info(self) -> BackendInfo:
        return BackendInfo(name="scripted", model=self.model,
                           cache_capacity_tokens=self.cache_capacity_tokens,
                           max_batch=self.max_batch)

    async def start(self) -> None:
        if self.cache_capacity_tokens:
            from turnloom._core import RadixCache

            self._cache = RadixCache(self.cache_capacity_tokens)

    async def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        if not requests:
            return []
        t0 = time.perf_counter()
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        replies = self._replies
        n = len(replies)
        cache = self._cache
        fail_every = self.fail_every
        # By-turn playback picks each reply up front; the hash mode's loop stays as it was.
        picked = None if self.scripts is None else [self._script_reply(r) for r in requests]
        out: list[GenResult] = []
        for k, req in enumerate(requests):
            ids = req.input_ids
            n_prompt = len(ids)
            self._calls += 1
            if fail_every and self._calls % fail_every == 0:
                out.append(GenResult(rid=req.rid, output_ids=[], text="", finish_reason="error",
                                     prompt_tokens=n_prompt, error="scripted failure"))
                continue
            p = req.params
            if picked is None:
                output, text = replies[hash((p.seed, n_prompt, tuple(ids[-_TAIL:]))) % n]
            else:
                choice = picked[k]
                if isinstance(choice, str):
                    out.append(GenResult(rid=req.rid, output_ids=[], text="",
                                         finish_reason="error", prompt_tokens=n_prompt,
                                         error=choice))
                    continue
                output, text = choice
            finish = "stop"
            if p.stop_token_ids or p.stop:
                output, text = self._apply_stops(list(output), p.stop_token_ids, p.stop)
            if len(output) > p.max_new_tokens:
                output = output[: p.max_new_tokens]
                text = self._text(output)
                finish = "length"
            else:
                output = list(output)
            cached = 0
            if cache is not None:
                cached = cache.match_len(ids)
                cache.insert(list(ids) + output)
            out.append(GenResult(rid=req.rid, output_ids=output, text=text,
                                 finish_reason=finish, prompt_tokens=n_prompt,
                                 cached_tokens=cached))
        elapsed = time.perf_counter() - t0
        for r in out:
            r.latency_s = elapsed
        return out

    def _script_reply(self, req: GenRequest) -> tuple[list[int], str] | str:
        """The next line of the script this prompt plays, or why there is none."""
        assert self.scripts is not None
        ids = req.input_ids
        text = self.chat_format.tokenizer.decode(ids)
        for s, script in enumerate(self.scripts):
            if script.match in text:
                break
        else:
            return f"scripted by-turn: no script's `match` occurs in the prompt (…{text[-120:]!r})"
        # The speaker's own earlier messages open with the prefix the prompt ends with.
        for prefix_ids, prefix in self._own_prefixes:
            if prefix_ids and ids[-len(prefix_ids):] == prefix_ids:
                k = text.count(prefix) - 1
                break
        else:
            return "scripted by-turn: the prompt does not end with a generation prefix"
        lines = self._script_replies[s]
        if k >= len(lines):
            return (f"scripted by-turn: script {s} (match {script.match[:60]!r}) has "
                    f"{len(lines)} lines, asked for line {k + 1}")
        return lines[k]

    def _text(self, ids: Sequence[int]) -> str:
        eos = self._eos_ids
        return self.chat_format.tokenizer.decode([i for i in ids if i not in eos])

    def _apply_stops(self, ids: list[int], stop_ids: Sequence[int],
                     stops: Sequence[str]) -> tuple[list[int], str]:
        if stop_ids:
            wanted = set(stop_ids)
            for j, t in enumerate(ids):
                if t in wanted:
                    ids = ids[: j + 1]
                    break
        if stops:
            full = self._text(ids)
            hits = [full.find(s) for s in stops if s and s in full]
            if hits:
                pos = min(hits)
                # The longest prefix of ids whose text stays before the stop string.
                keep = 0
                for k in range(1, len(ids) + 1):
                    piece = self._text(ids[:k])
                    if len(piece) > pos or not full.startswith(piece):
                        break
                    keep = k
                ids = ids[:keep]
                return ids, self._text(ids)
        return ids, self._text(ids)
