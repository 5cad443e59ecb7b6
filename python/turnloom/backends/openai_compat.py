"""OpenAI-compatible HTTP APIs: vLLM, SGLang's OpenAI routes, llama.cpp server,
hosted APIs.

Two endpoints:

- ``completions`` (``POST {base_url}/completions``): the prompt goes out as
  token ids (``"prompt": [ids]``), which vLLM, SGLang and llama.cpp accept, so
  history is never re-rendered. Preferred.
- ``chat`` (``POST {base_url}/chat/completions``): the server applies its own
  chat template, so the token-id prompt has to become messages again. The
  backend decodes it with the `tokenizer` given to the constructor and reads
  ChatML turns (what turnloom's ChatMLFormat renders); a prompt that is not
  ChatML goes out as one user message. Pass `messages_from_ids` to handle
  another template.

Output ids: a reply's ``choices[i].token_ids`` when the server sends them
(vLLM with ``return_token_ids``, enable with the setting of that name);
otherwise the reply text re-encoded with `tokenizer`; otherwise empty.
``usage.prompt_tokens_details.cached_tokens`` is read when present.

Rate limits: requests and tokens per minute (token buckets; a request costs
its prompt plus max_new_tokens). 429, 408, 409 and 5xx replies and transport
faults are retried with exponential backoff and jitter, honouring
Retry-After / retry-after-ms; a 429 also pauses every request. A circuit
breaker (`CircuitBreaker`) guards the endpoint: `breaker_threshold`
consecutive failures (transport faults, 5xx, malformed replies; not 408/409/429,
which mean busy) open it, and attempts then fail fast without a request for
`breaker_cooldown` seconds; then one probe request goes out, and its success
closes the breaker, its failure re-opens it. The API key
is read from the environment variable named by ``api_key_env``
(OPENAI_API_KEY by default); without it no Authorization header is sent.

Parameters: max_new_tokens -> max_tokens, temperature, top_p, stop, seed;
top_k, repetition_penalty and stop_token_ids only when set (hosted APIs
reject them; vLLM and SGLang accept them).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from typing import Any, Callable, Literal, Mapping, Sequence

import msgspec

from turnloom.backends._http import (
    CircuitBreaker,
    HTTPClient,
    MalformedReply,
    Response,
    TransportError,
    error_message,
    split_url,
)
from turnloom.backends._ratelimit import per_minute
from turnloom.backends._sglang_common import error_result, trim_stop_string
from turnloom.backends.base import Backend, BackendError, BackendInfo, GenRequest, GenResult

Messages = list[dict[str, str]]
RETRY_STATUSES = frozenset({408, 409, 429})


class OpenAISettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of `OpenAIBackend`; times are in seconds."""

    model: str
    base_url: str = "https://api.openai.com/v1"
    endpoint: Literal["completions", "chat"] = "completions"
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 600.0
    connect_timeout: float = 10.0
    retries: int = 5
    backoff: float = 1.0
    backoff_max: float = 60.0
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_concurrency: int = 16
    max_batch: int = 64
    return_token_ids: bool = False
    cache_capacity_tokens: int | None = None
    extra_body: dict[str, Any] = {}
    breaker_threshold: int = 10
    breaker_cooldown: float = 10.0

    def __post_init__(self) -> None:
        try:
            split_url(self.base_url)
        except ValueError as e:
            raise ValueError(f"base_url: {e}") from None
        for name in ("timeout", "connect_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("retries", "backoff", "backoff_max", "breaker_cooldown"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("max_concurrency", "max_batch", "breaker_threshold"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


class _Retry(Exception):
    """Worth another attempt; `busy` when the server answered that it is overloaded
    (not a failure of the endpoint as far as the circuit breaker is concerned)."""

    def __init__(self, message: str, after: float | None = None, busy: bool = False) -> None:
        super().__init__(message)
        self.after = after
        self.busy = busy


class _Fail(Exception):
    pass


class OpenAIBackend(Backend):
    """One HTTP request per GenRequest (their seeds differ), run concurrently."""

    def __init__(self, base_url: str, model: str, *,
                 endpoint: Literal["completions", "chat"] = "completions",
                 api_key: str | None = None, tokenizer: Any = None,
                 messages_from_ids: Callable[[Sequence[int]], Messages] | None = None,
                 timeout: float = 600.0, connect_timeout: float = 10.0, retries: int = 5,
                 backoff: float = 1.0, backoff_max: float = 60.0,
                 requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, max_concurrency: int = 16,
                 max_batch: int = 64, return_token_ids: bool = False,
                 cache_capacity_tokens: int | None = None,
                 extra_body: Mapping[str, Any] | None = None,
                 breaker_threshold: int = 10, breaker_cooldown: float = 10.0,
                 rng: random.Random | None = None) -> None:
        if endpoint not in ("completions", "chat"):
            raise BackendError(f"openai: endpoint must be 'completions' or 'chat', not {endpoint!r}")
        try:
            split_url(base_url)
        except ValueError as e:
            raise BackendError(f"openai: {e}") from None
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.endpoint = endpoint
        self.reads_token_ids = endpoint == "completions"  # chat decodes prompts to messages
        self.api_key = api_key
        self.tokenizer = tokenizer
        self._custom_messages = messages_from_ids
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.max_concurrency = max_concurrency
        self.max_batch = max_batch
        self.return_token_ids = return_token_ids
        self.cache_capacity_tokens = cache_capacity_tokens
        self.extra_body = dict(extra_body or {})
        self._rpm = per_minute(requests_per_minute)
        self._tpm = per_minute(tokens_per_minute)
        self._rng = rng or random.Random()
        self._client: HTTPClient | None = None
        self._gate: asyncio.Semaphore | None = None
        self._paused_until = 0.0
        self.breaker = CircuitBreaker(breaker_threshold, breaker_cooldown)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | OpenAISettings,
                      **kwargs: Any) -> "OpenAIBackend":
        """Build from a settings table; an unknown or bad field raises BackendError naming it.
        `tokenizer` / `messages_from_ids` go in as keyword arguments."""
        if not isinstance(settings, OpenAISettings):
            try:
                settings = msgspec.convert(dict(settings), OpenAISettings)
            except msgspec.ValidationError as e:
                raise BackendError(f"invalid openai backend settings: {e}") from None
        return cls(settings.base_url, settings.model, endpoint=settings.endpoint,
                   api_key=os.environ.get(settings.api_key_env) or None,
                   timeout=settings.timeout, connect_timeout=settings.connect_timeout,
                   retries=settings.retries, backoff=settings.backoff,
                   backoff_max=settings.backoff_max,
                   requests_per_minute=settings.requests_per_minute,
                   tokens_per_minute=settings.tokens_per_minute,
                   max_concurrency=settings.max_concurrency, max_batch=settings.max_batch,
                   return_token_ids=settings.return_token_ids,
                   cache_capacity_tokens=settings.cache_capacity_tokens,
                   extra_body=settings.extra_body,
                   breaker_threshold=settings.breaker_threshold,
                   breaker_cooldown=settings.breaker_cooldown, **kwargs)

    def use_chat_format(self, fmt: Any) -> None:
        """The engine's chat format: its tokenizer decodes prompts and encodes replies."""
        self.tokenizer = fmt.tokenizer

    def messages_from_ids(self, ids: Sequence[int]) -> Messages:
        if self._custom_messages is not None:
            return self._custom_messages(ids)
        assert self.tokenizer is not None
        return chatml_messages(self.tokenizer.decode(ids))

    async def start(self) -> None:
        if self.endpoint == "chat" and self.tokenizer is None and self._custom_messages is None:
            raise BackendError("openai: the chat endpoint needs a tokenizer (or messages_from_ids) "
                               "to turn token-id prompts back into messages")
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._client = HTTPClient(timeout=self.timeout, connect_timeout=self.connect_timeout,
                                  headers=headers)
        self._gate = asyncio.Semaphore(self.max_concurrency)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def info(self) -> BackendInfo:
        return BackendInfo(name=f"openai-{self.endpoint}", model=self.model,
                           cache_capacity_tokens=self.cache_capacity_tokens,
                           max_batch=self.max_batch, replicas=1)

    # -- generation -----------------------------------------------------------

    async def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        if not requests:
            return []
        if self._client is None:
            raise BackendError("OpenAIBackend.generate called before start()")
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, req: GenRequest) -> GenResult:
        started = time.monotonic()
        try:
            body = self._body(req)
        except _Fail as e:
            return error_result(req, str(e))
        url = self.base_url + ("/chat/completions" if self.endpoint == "chat" else "/completions")
        last = ""
        breaker = self.breaker
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(max(self._delay(attempt - 1, None), breaker.retry_in()))
            if not breaker.allow():
                state = "open" if breaker.state == "open" else "half-open, probe in flight"
                last = f"{url}: circuit {state} (last error: {last or 'none'})"
                continue
            try:
                result = await self._exchange(req, url, body, started)
            except _Retry as e:
                last = str(e)
                breaker.success() if e.busy else breaker.failure()
                if e.after is not None:
                    self._paused_until = max(self._paused_until, time.monotonic() + e.after)
                continue
            except _Fail as e:
                breaker.success()  # the endpoint works; this request is wrong
                return error_result(req, str(e), time.monotonic() - started)
            except Exception as e:  # never let one request sink the batch
                breaker.failure()
                return error_result(req, f"{type(e).__name__}: {e}", time.monotonic() - started)
            breaker.success()
            return result
        return error_result(req, f"{last} (gave up after {self.retries + 1} attempts)",
                            time.monotonic() - started)

    async def _exchange(self, req: GenRequest, url: str, body: dict[str, Any],
                        started: float) -> GenResult:
        assert self._client is not None and self._gate is not None
        async with self._gate:
            wait = self._paused_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if self._rpm is not None:
                await self._rpm.acquire(1)
            if self._tpm is not None:
                await self._tpm.acquire(len(req.input_ids) + req.params.max_new_tokens)
            try:
                response = await self._client.post_json(url, body)
            except TransportError as e:
                raise _Retry(f"{url}: {e}") from None
        status = response.status
        if status != 200:
            msg = f"{url}: HTTP {status}: {error_message(response)}"
            if status in RETRY_STATUSES or status >= 500:
                raise _Retry(msg, _retry_after(response), busy=status in RETRY_STATUSES)
            raise _Fail(msg)
        try:
            data = response.json()
            return self._read(req, data, time.monotonic() - started)
        except (MalformedReply, KeyError, IndexError, TypeError, ValueError) as e:
            raise _Retry(f"{url}: malformed reply: {type(e).__name__}: {e}") from None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cap = min(self.backoff_max, self.backoff * (2 ** attempt))
        delay = cap / 2 + self._rng.uniform(0, cap / 2)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    def _body(self, req: GenRequest) -> dict[str, Any]:
        p = req.params
        body: dict[str, Any] = {"model": self.model, "max_tokens": p.max_new_tokens,
                                "temperature": p.temperature, "top_p": p.top_p, "n": 1,
                                "stream": False}
        if self.endpoint == "chat":
            try:
                body["messages"] = self.messages_from_ids(req.input_ids)
            except ValueError as e:
                raise _Fail(f"cannot turn the prompt into chat messages: {e}") from None
        else:
            body["prompt"] = list(req.input_ids)
        if p.stop:
            body["stop"] = list(p.stop)
        if p.seed is not None:
            body["seed"] = p.seed
        if p.top_k != -1:
            body["top_k"] = p.top_k
        if p.repetition_penalty != 1.0:
            body["repetition_penalty"] = p.repetition_penalty
        if p.stop_token_ids:
            body["stop_token_ids"] = list(p.stop_token_ids)
        if self.return_token_ids:
            body["return_token_ids"] = True
        body.update(self.extra_body)
        return body

    def _read(self, req: GenRequest, data: Any, elapsed: float) -> GenResult:
        choice = data["choices"][0]
        if self.endpoint == "chat":
            text = choice["message"].get("content") or ""
        else:
            text = choice["text"]
        if not isinstance(text, str):
            raise TypeError("reply text is not a string")
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        ids = choice.get("token_ids")
        decode = self.tokenizer.decode if self.tokenizer is not None else None
        if isinstance(ids, list) and all(isinstance(t, int) for t in ids):
            for stop in req.params.stop:
                if decode is not None and stop:
                    ids, _ = trim_stop_string(ids, stop, text, decode, None)
        elif self.tokenizer is not None:
            ids = self.tokenizer.encode(text)
        else:
            ids = []
        if len(ids) > req.params.max_new_tokens:
            # Re-encoded text can take more ids than were generated.
            ids = ids[: req.params.max_new_tokens]
        usage = data.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        prompt_tokens = len(req.input_ids)
        cached = min(max(cached, 0), prompt_tokens) if isinstance(cached, int) else 0
        return GenResult(rid=req.rid, output_ids=list(ids), text=text, finish_reason=finish,
                         prompt_tokens=prompt_tokens, cached_tokens=cached, latency_s=elapsed)


_CHATML_TURN = re.compile(r"<\|im_start\|>([^\n]*)\n(.*?)(?:<\|im_end\|>\n?|$)", re.S)


def chatml_messages(text: str) -> Messages:
    """Messages of a ChatML prompt that ends with an open assistant turn.

    Text outside ChatML markers is sent as one user message; an open final
    turn with text in it cannot be continued through a chat API.
    """
    if "<|im_start|>" not in text:
        return [{"role": "user", "content": text}]
    messages: Messages = []
    pos = text.index("<|im_start|>")
    if text[:pos].strip():
        raise ValueError("text before the first <|im_start|>")
    for m in _CHATML_TURN.finditer(text, pos):
        closed = text[m.start():m.end()].rstrip("\n").endswith("<|im_end|>")
        role, content = m.group(1).strip(), m.group(2)
        if not closed:
            if content.strip():
                raise ValueError(f"the prompt ends inside a {role} message with text in it")
            continue  # the generation prefix
        messages.append({"role": role, "content": content})
    if not messages:
        raise ValueError("no complete ChatML message")
    return messages




def _retry_after(response: Response) -> float | None:
    ms = response.headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
