"""OpenAI-compatible HTTP APIs: vLLM, SGLang's OpenAI routes, llama.cpp's
servers, hosted APIs.

Two endpoints:

- ``completions`` (``POST {base_url}/completions``): a token backend. The
  prompt goes out as token ids (``"prompt": [ids]``), which vLLM, SGLang and
  llama.cpp's C++ server accept, so history is never re-rendered.
  llama-cpp-python's server does not take them (HTTP 500): the backend
  refuses that pairing at start.
- ``chat`` (``POST {base_url}/chat/completions``): a message backend
  (`takes = "messages"`). The speaker's view goes out as the request's
  `messages` and `tools`, as they are: no local tokenizer, no re-rendering,
  and a user text that looks like a chat-template marker stays one user
  message. Replies' ``tool_calls`` come back structured, reasoning text
  (``reasoning_content``) separately.

Token counts: ``usage.prompt_tokens`` and
``usage.prompt_tokens_details.cached_tokens`` are the server's, recorded per
request (the local prompt length is used only when the server sends no usage).
Output ids: ``choices[i].token_ids`` when the server sends them (vLLM with
``return_token_ids``, enable with the setting of that name); else the reply
text re-encoded with a known tokenizer; else empty.

Knowing the server: at start the backend asks ``GET /models`` what the server
is (`turnloom.probe.identify`, no generation) and then sends explicit values
for the sampling fields that server would otherwise fill with its own defaults
(top_k off, min_p 0, the repetition penalty 1 under the server's name for it:
``repeat_penalty`` on llama.cpp), warns when seeds will not be honoured, and
refuses a mode the server does not support. ``probe = false`` skips this (plain
OpenAI fields only).

Rate limits: requests and tokens per minute (token buckets; a request costs
its prompt plus max_new_tokens). 429, 408, 409, 503 (busy) and other 5xx
replies and transport faults are retried with exponential backoff and jitter,
honouring Retry-After / retry-after-ms; a busy reply with a Retry-After also
pauses every request. A circuit breaker (`CircuitBreaker`) guards the
endpoint: `breaker_threshold` consecutive failures (transport faults, 5xx
other than 503, malformed replies; not busy replies) open it, and attempts
then fail fast without a request for `breaker_cooldown` seconds; then one
probe request goes out, and its success closes the breaker, its failure
re-opens it. A request that gives up names the failure that opened the
breaker. The API key is read from the environment variable named by
``api_key_env`` (OPENAI_API_KEY by default); without it no Authorization
header is sent. ``proxy``, ``tls_verify`` and ``ca_bundle`` set the
connection; HTTP(S)_PROXY / NO_PROXY apply otherwise.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from typing import Any, Literal, Mapping, Sequence

import msgspec

from turnloom.backends._http import (
    CircuitBreaker,
    HTTPClient,
    MalformedReply,
    TransportError,
    busy,
    error_message,
    retry_after,
    retryable,
    split_url,
)
from turnloom.backends._ratelimit import per_minute
from turnloom.backends._sglang_common import error_result, trim_stop_string
from turnloom.backends.base import Backend, BackendError, BackendInfo, GenRequest, GenResult
from turnloom.probe import ServerInfo, identify, sampling_fields

log = logging.getLogger(__name__)

#: finish_reason values that mean the server stopped the request itself.
_ABORTED = frozenset({"abort", "error", "cancelled"})


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
    # Requests per engine call. 1: each conversation moves on as soon as its own
    # reply is back (the server schedules requests one by one anyway).
    max_batch: int = 1
    return_token_ids: bool = False
    cache_capacity_tokens: int | None = None
    extra_body: dict[str, Any] = {}
    breaker_threshold: int = 10
    breaker_cooldown: float = 10.0
    probe: bool = True
    proxy: str | None = None
    tls_verify: bool = True
    ca_bundle: str | None = None

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
                 timeout: float = 600.0, connect_timeout: float = 10.0, retries: int = 5,
                 backoff: float = 1.0, backoff_max: float = 60.0,
                 requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, max_concurrency: int = 16,
                 max_batch: int = 1, return_token_ids: bool = False,
                 cache_capacity_tokens: int | None = None,
                 extra_body: Mapping[str, Any] | None = None,
                 breaker_threshold: int = 10, breaker_cooldown: float = 10.0,
                 probe: bool = True, proxy: str | None = None, tls_verify: bool = True,
                 ca_bundle: str | None = None, rng: random.Random | None = None) -> None:
        if endpoint not in ("completions", "chat"):
            raise BackendError(f"openai: endpoint must be 'completions' or 'chat', not {endpoint!r}")
        try:
            split_url(base_url)
        except ValueError as e:
            raise BackendError(f"openai: {e}") from None
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.endpoint = endpoint
        self.takes = "messages" if endpoint == "chat" else "tokens"
        self.reads_token_ids = endpoint == "completions"
        self.url = self.base_url + ("/chat/completions" if endpoint == "chat" else "/completions")
        self.api_key = api_key
        self.tokenizer = tokenizer
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
        self._template_kwargs: dict[str, Any] = {}
        self.probe = probe
        self.proxy = proxy
        self.tls_verify = tls_verify
        self.ca_bundle = ca_bundle
        self.server: ServerInfo | None = None
        """What `identify` found at start (None with probe off)."""
        self._sampling: dict[str, Any] = {}
        self._penalty_name = "repetition_penalty"
        self._stop_token_ids = True
        self._rpm = per_minute(requests_per_minute)
        self._tpm = per_minute(tokens_per_minute)
        self._rng = rng or random.Random()
        self._client: HTTPClient | None = None
        self._gate: asyncio.Semaphore | None = None
        self._paused_until = 0.0
        self._last_failure = ""
        self.breaker = CircuitBreaker(breaker_threshold, breaker_cooldown)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | OpenAISettings,
                      **kwargs: Any) -> "OpenAIBackend":
        """Build from a settings table; an unknown or bad field raises BackendError naming it.
        `tokenizer` goes in as a keyword argument."""
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
                   breaker_cooldown=settings.breaker_cooldown, probe=settings.probe,
                   proxy=settings.proxy, tls_verify=settings.tls_verify,
                   ca_bundle=settings.ca_bundle, **kwargs)

    def use_chat_format(self, fmt: Any) -> None:
        """The engine's chat format: its tokenizer re-encodes reply text into ids."""
        self.tokenizer = fmt.tokenizer

    def use_chat_template_kwargs(self, kwargs: dict[str, Any]) -> None:
        """The scenario's template variables: on the chat endpoint the server
        renders the template, so they go with each request (vLLM and SGLang
        read `chat_template_kwargs`); on completions the prompt is already rendered."""
        self._template_kwargs = dict(kwargs)

    async def start(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        # One connection per request in flight: a smaller pool churns connections.
        self._client = HTTPClient(timeout=self.timeout, connect_timeout=self.connect_timeout,
                                  headers=headers, max_connections=self.max_concurrency,
                                  proxy=self.proxy, verify=self.tls_verify,
                                  ca_bundle=self.ca_bundle)
        self._gate = asyncio.Semaphore(self.max_concurrency)
        if self.probe:
            await self._know_server()

    async def _know_server(self) -> None:
        assert self._client is not None
        info = await identify(self._client, self.base_url,
                              timeout=min(self.timeout, 2 * self.connect_timeout))
        self.server = info
        for note in info.notes:
            log.warning("openai: %s: %s", self.base_url, note)
        dialect = info.dialect
        if self.endpoint == "completions" and dialect.token_id_prompts is False \
                and info.kind != "openai":
            await self.close()
            raise BackendError(
                f"openai: {self.base_url} is {info.kind}, which does not take token-id prompts "
                f"on /completions; use endpoint = \"chat\"")
        self._sampling = sampling_fields(info)
        self._penalty_name = dialect.penalty_name
        self._stop_token_ids = dialect.stop_token_ids or info.kind == "openai"
        if dialect.seeds != "honoured":
            log.warning("openai: %s is %s: seeds are honoured %s, so seeded requests may "
                        "not reproduce (`turnloom probe %s` tests it)", self.base_url,
                        info.kind, dialect.seeds, self.base_url)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def info(self) -> BackendInfo:
        return BackendInfo(name=f"openai-{self.endpoint}", model=self.model,
                           cache_capacity_tokens=self.cache_capacity_tokens,
                           max_batch=self.max_batch, replicas=1,
                           max_inflight=-(-self.max_concurrency // self.max_batch))

    # -- generation -----------------------------------------------------------

    async def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        if not requests:
            return []
        if self._client is None:
            raise BackendError("OpenAIBackend.generate called before start()")
        if len(requests) == 1:
            return [await self._one(requests[0])]
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, req: GenRequest) -> GenResult:
        started = time.monotonic()
        try:
            body = self._body(req)
        except _Fail as e:
            return error_result(req, str(e))
        url = self.url
        own = ""  # this request's own latest failure
        breaker = self.breaker
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(max(self._delay(attempt - 1, None), breaker.retry_in()))
            if not breaker.allow():
                continue
            try:
                result = await self._exchange(req, url, body, started)
            except _Retry as e:
                own = str(e)
                if e.busy:
                    breaker.success()
                else:
                    self._last_failure = own
                    breaker.failure()
                if e.after is not None:
                    self._paused_until = max(self._paused_until, time.monotonic() + e.after)
                continue
            except _Fail as e:
                breaker.success()  # the endpoint works; this request is wrong
                return error_result(req, str(e), time.monotonic() - started)
            except Exception as e:  # never let one request sink the batch
                self._last_failure = f"{type(e).__name__}: {e}"
                breaker.failure()
                return error_result(req, self._last_failure, time.monotonic() - started)
            breaker.success()
            return result
        if breaker.state != "closed":
            state = "open" if breaker.state == "open" else "half-open, probe in flight"
            cause = own or self._last_failure or "none recorded"
            msg = f"{url}: circuit {state}; last failure: {cause}"
        else:
            msg = own
        return error_result(req, f"{msg} (gave up after {self.retries + 1} attempts)",
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
                await self._tpm.acquire(_prompt_cost(req) + req.params.max_new_tokens)
            try:
                response = await self._client.post_json(url, body)
            except TransportError as e:
                raise _Retry(str(e)) from None
        status = response.status
        if status != 200:
            msg = f"{url}: HTTP {status}: {error_message(response)}"
            if retryable(status):
                raise _Retry(msg, retry_after(response), busy=busy(status))
            raise _Fail(msg)
        try:
            data = response.json()
            return self._read(req, data, time.monotonic() - started)
        except (MalformedReply, KeyError, IndexError, TypeError, ValueError) as e:
            raise _Retry(f"{url}: malformed reply: {type(e).__name__}: {e}") from None

    def _delay(self, attempt: int, retry_after_s: float | None) -> float:
        cap = min(self.backoff_max, self.backoff * (2 ** attempt))
        delay = cap / 2 + self._rng.uniform(0, cap / 2)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        return delay

    def _body(self, req: GenRequest) -> dict[str, Any]:
        p = req.params
        body: dict[str, Any] = {"model": self.model, "max_tokens": p.max_new_tokens,
                                "temperature": p.temperature, "top_p": p.top_p, "n": 1,
                                "stream": False}
        if self.endpoint == "chat":
            if not req.messages:
                raise _Fail("the chat endpoint sends GenRequest.messages (the speaker's view), "
                            "and this request has none")
            body["messages"] = req.messages
            if req.tools:
                body["tools"] = req.tools
        else:
            body["prompt"] = list(req.input_ids)
        if p.stop:
            body["stop"] = list(p.stop)
        if p.seed is not None:
            body["seed"] = p.seed
        if self._sampling:
            # The server's own defaults (top_k 40, min_p 0.05, ...) would apply otherwise.
            body.update(self._sampling)
            if p.top_k > 0:
                body["top_k"] = p.top_k
            body[self._penalty_name] = p.repetition_penalty
        else:
            if p.top_k != -1:
                body["top_k"] = p.top_k
            if p.repetition_penalty != 1.0:
                body["repetition_penalty"] = p.repetition_penalty
        if p.stop_token_ids:
            if not self._stop_token_ids:
                raise _Fail(f"{self.url}: this server ({self.server.kind if self.server else '?'})"
                            " ignores stop_token_ids; use stop strings")
            body["stop_token_ids"] = list(p.stop_token_ids)
        if self.return_token_ids:
            body["return_token_ids"] = True
        if self._template_kwargs and self.endpoint == "chat":
            body["chat_template_kwargs"] = self._template_kwargs
        body.update(self.extra_body)
        return body

    def _read(self, req: GenRequest, data: Any, elapsed: float) -> GenResult:
        choice = data["choices"][0]
        tool_calls = reasoning = None
        if self.endpoint == "chat":
            message = choice["message"]
            text = message.get("content") or ""
            tool_calls = _tool_calls(message.get("tool_calls"))
            reasoning = message.get("reasoning_content") or message.get("reasoning") or None
        else:
            text = choice["text"]
        if not isinstance(text, str):
            raise TypeError("reply text is not a string")
        reason = choice.get("finish_reason")
        if reason in _ABORTED:
            raise _Retry(f"{self.url}: the server ended the request with finish_reason "
                         f"{reason!r}")
        finish = "length" if reason == "length" else "stop"
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
        prompt_tokens = usage.get("prompt_tokens")
        if not isinstance(prompt_tokens, int) or prompt_tokens < 0:
            prompt_tokens = len(req.input_ids)
        details = usage.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        cached = min(max(cached, 0), prompt_tokens) if isinstance(cached, int) else 0
        return GenResult(rid=req.rid, output_ids=list(ids), text=text, finish_reason=finish,
                         prompt_tokens=prompt_tokens, cached_tokens=cached, latency_s=elapsed,
                         tool_calls=tool_calls,
                         reasoning=reasoning if isinstance(reasoning, str) else None)


def _tool_calls(raw: Any) -> list[dict[str, Any]] | None:
    """A reply's tool calls in OpenAI's shape; arguments always a JSON string
    (some servers send an object)."""
    if not raw:
        return None
    if not isinstance(raw, list):
        raise TypeError("tool_calls is not a list")
    calls = []
    for i, call in enumerate(raw):
        fn = call["function"]
        name = fn["name"]
        if not isinstance(name, str):
            raise TypeError("a tool call's function name is not a string")
        args = fn.get("arguments")
        if args is None:
            args = "{}"
        elif not isinstance(args, str):
            args = json.dumps(args)
        calls.append({"id": str(call.get("id") or f"call_{i}"), "type": "function",
                      "function": {"name": name, "arguments": args}})
    return calls


def _prompt_cost(req: GenRequest) -> int:
    """Prompt tokens for the token bucket: the rendered ids, else about 4
    characters a token of the messages."""
    if req.input_ids:
        return len(req.input_ids)
    chars = sum(len(str(m.get("content") or "")) for m in req.messages or ())
    return max(1, chars // 4)
