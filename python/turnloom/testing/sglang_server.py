"""A loopback server that speaks SGLang's native HTTP protocol.

Routes and shapes follow SGLang's `http_server.py` and `io_struct.py`:

- ``POST /generate``: ``input_ids`` (one list, or a batch of lists) or
  ``text``; ``sampling_params`` (one dict for all, or one per request);
  ``rid``; ``return_logprob`` / ``return_text_in_logprobs``; ``stream``.
  A single prompt is answered with one object, a batch with a list:
  ``{"text", "output_ids", "meta_info": {"id", "finish_reason",
  "prompt_tokens", "completion_tokens", "cached_tokens", "e2e_latency", ...}}``.
  ``output_ids`` keep the matched stop token and stop-string tokens, as
  SGLang's do; ``text`` has them trimmed.
- ``GET /health``, ``/health_generate``: 200, empty body.
- ``GET /get_model_info`` (and ``/model_info``), ``/get_server_info`` (and
  ``/server_info``) with ``model_path``, ``max_total_num_tokens``,
  ``max_req_input_len``, ``context_length`` ...; ``GET /v1/models``.
- ``GET|POST /flush_cache``: 200, or 400 while requests are running.
- A running batch: at most ``max_running_requests`` requests run at once
  (unset: SGLang's default from the cache capacity, see
  `turnloom.backends._sglang_common.running_capacity`); the rest of a POST
  waits for free slots, first come first served. ``peak_running`` is the
  most that ran at once. ``/server_info`` reports ``max_running_requests`` as
  SGLang does, as the server argument (None when unset).
- Invalid input: 400 with ``{"error": {"message": ...}}``; a bad JSON body:
  400 with ``{"object": "error", "message", "type", "param", "code"}``;
  wrong API key: 401 ``{"error": "Unauthorized"}``.

``cached_tokens`` come from a radix-cache model (`turnloom._core.RadixCache`
by default): a request matches on arrival, pins its cached prefix while it
runs and on finish caches prompt + output (less the last sampled token,
whose KV does not exist yet, as in SGLang).

Version-dependent behaviour (``version``, default "0.5.23"), each read from
that release's source:

- info routes: ``/server_info`` and ``/model_info`` from 0.5.6; older
  releases have only ``/get_server_info`` and ``/get_model_info``. The server
  info is the server arguments, the scheduler's start-up info,
  ``internal_states`` and ``version``; 0.5.23's internal states carry
  ``effective_max_running_requests_per_dp``, and
  ``enable_deterministic_inference`` exists from 0.5.3.
- ``sampling_seed``: unknown before 0.5.3, where SamplingParams(**params)
  raises TypeError, which SGLang's handler does not catch: HTTP 500 for the
  whole batch, as any unknown sampling key gets in every version. From 0.5.3
  the seed is honoured only with ``enable_deterministic_inference`` (without
  it the fake samples from fresh randomness, as SGLang ignores the seed).
- request ids: 0.5.23 answers 400 for the whole batch when a rid repeats in
  it or is still live from another request ("Duplicate request ID
  detected"). Older releases register the second over the first and route
  outputs by rid, and so does the fake: the later request gets whichever of
  the two outputs finishes first, and the earlier request's POST is never
  answered.
- length: a prompt of context_length tokens or more, or prompt +
  max_new_tokens >= context_length (0.5.6 and older) / > context_length
  (0.5.23), fails the whole batch with 400 and SGLang's message.
- ``POST /abort_request {"rid", "abort_all"}``: when the rid is live, every
  live request whose rid *starts with* it is aborted (the scheduler matches by
  prefix in every version); each comes back with finish_reason
  ``{"type": "abort", "message": "Aborted", "status_code": null,
  "err_type": null}`` and no output. (Real SGLang aborts the same way when a
  client disconnects; the fake aborts only on the route, and an aborted
  request answers when its running group ends.)
- ``max_queued_requests``: a POST whose requests would queue past it is
  answered 503 ``{"object": "error", "message": "The request queue is
  full.", ...}`` (the scheduler's abort with status 503).
- ``cached_tokens``: /generate reports them in every version (SGLang's
  ``--enable-cache-report`` gates only the OpenAI routes' usage); with
  ``disable_radix_cache`` nothing is cached, so they are 0.

Deviation: the fake starts with ``enable_deterministic_inference=True``
(SGLang's default is off) so that seeded tests reproduce; pass False to
model the default.

Run standalone: ``python -m turnloom.testing.sglang_server --port 30000``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import msgspec

from turnloom.backends._sglang_common import parse_version, running_capacity
from turnloom.testing._httpserver import LoopbackServer, Reply, Request
from turnloom.testing.fake_model import (
    Detokenizer,
    Generation,
    HashModel,
    TokenModel,
    decode_loop,
    output_text,
)
from turnloom.testing.faults import Fault, FaultSchedule
from turnloom.tokenizer import ByteTokenizer

SAMPLING_KEYS = frozenset({
    "max_new_tokens", "stop", "stop_token_ids", "stop_regex", "temperature", "top_p", "top_k",
    "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty", "min_new_tokens",
    "n", "json_schema", "regex", "ebnf", "structural_tag", "ignore_eos", "skip_special_tokens",
    "spaces_between_special_tokens", "no_stop_trim", "custom_params", "stream_interval",
    "logit_bias", "sampling_seed",
})
SEED_SINCE = (0, 5, 3)
NEW_INFO_ROUTES_SINCE = (0, 5, 6)  # /server_info and /model_info
STRICT_RIDS_SINCE = (0, 5, 23)  # duplicate and live rids refused
TOTAL_MAY_FILL_SINCE = (0, 5, 23)  # prompt + max_new_tokens == context_len accepted
UNSUPPORTED_SAMPLING = ("json_schema", "regex", "ebnf", "structural_tag", "stop_regex")
UNSUPPORTED_INPUTS = ("input_embeds", "image_data", "video_data", "audio_data")


class BadRequest(ValueError):
    """Answered with SGLang's 400 error body."""


class UnknownKeyword(TypeError):
    """SamplingParams(**params) with a key it does not take: SGLang answers 500."""


@dataclass
class _Item:
    rid: str
    input_ids: list[int]
    params: dict[str, Any]
    return_logprob: bool
    logprob_text: bool = False
    cached: int = 0
    gen: Generation | None = None
    aborted: bool = False
    # Before 0.5.23 a later request with the same rid takes over the rid's
    # output route: `taken_by` is that request; `received` the first output
    # routed to it (its own or the earlier one's, whichever finished first).
    taken_by: "_Item | None" = None
    received: dict[str, Any] | None = None
    done: bool = False


class SGLangTestServer(LoopbackServer):
    """SGLang's native protocol over loopback, with a radix-cache model and faults.

    model: token stream per request (default `HashModel`, or a real model's step
    function); detokenizer: ids -> text for ``text``, stop strings and logprob
    text; latency: seconds per HTTP request, plus `per_token_latency` per output
    token of the longest item and `prefill_latency` per uncached prompt token;
    max_running_requests: the running batch (see the module docstring).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 model_path: str = "turnloom/hash-model", cache_capacity: int = 1 << 16,
                 context_length: int = 32768, model: TokenModel | None = None,
                 tokenizer: Any = None, detokenizer: Detokenizer | None = None,
                 eos_token_ids: Sequence[int] | None = None,
                 latency: float = 0.0, per_token_latency: float = 0.0,
                 prefill_latency: float = 0.0, faults: FaultSchedule | None = None,
                 api_key: str | None = None, cache: Any = None,
                 max_running_requests: int | None = None, version: str = "0.5.23",
                 enable_deterministic_inference: bool = True,
                 max_queued_requests: int | None = None,
                 disable_radix_cache: bool = False) -> None:
        super().__init__(host, port)
        parsed = parse_version(version)
        if parsed is None:
            raise ValueError(f"version: {version!r} is not an SGLang version like '0.5.23'")
        self.version = version
        self._v = parsed
        self.enable_deterministic_inference = enable_deterministic_inference
        self.max_queued_requests = max_queued_requests
        self.disable_radix_cache = disable_radix_cache
        self.live: dict[str, _Item] = {}
        """Requests received and not yet answered, by rid."""
        self.waiting = 0
        self.model_path = model_path
        self.context_length = context_length
        self.tokenizer = tokenizer or ByteTokenizer()
        self.detok = detokenizer or (Detokenizer.bytes() if tokenizer is None
                                     else Detokenizer(self.tokenizer.decode))
        self.eos_token_ids = tuple(self.tokenizer.eos_token_ids if eos_token_ids is None
                                   else eos_token_ids)
        self.model: TokenModel = model or HashModel(
            eos_token_id=self.eos_token_ids[0] if self.eos_token_ids else None)
        if cache is None:
            from turnloom._core import RadixCache

            cache = RadixCache(cache_capacity)
        self.cache = cache
        self.latency = latency
        self.per_token_latency = per_token_latency
        self.prefill_latency = prefill_latency
        self.faults = faults or FaultSchedule()
        self.api_key = api_key
        self.max_running_requests = max_running_requests
        self.running_limit = running_capacity({
            "max_running_requests": max_running_requests,
            "max_total_num_tokens": int(self.cache.capacity),
            "context_length": context_length}) or 1
        self.running = 0
        self.peak_running = 0
        self._slot_freed = asyncio.Condition()
        self.requests: deque[dict[str, Any]] = deque(maxlen=10_000)
        """Bodies of the latest /generate requests (for tests to inspect)."""

    # -- introspection (thread-safe) ---------------------------------------

    def cache_stats(self) -> dict[str, int]:
        return dict(self.call(self.cache.stats))

    def inject(self, kind: str, times: int = 1, **kw: Any) -> None:
        """Shorthand for faults.push(Fault(kind, ...), times)."""
        self.faults.push(Fault(kind, **kw), times)

    # -- routing -----------------------------------------------------------

    async def handle(self, request: Request) -> Reply:
        if self.api_key and not request.path.startswith(("/health", "/metrics")):
            if request.headers.get("authorization") != f"Bearer {self.api_key}":
                return Reply.json({"error": "Unauthorized"}, status=401)
        fault = self.faults.draw(request.path)
        if fault is not None and fault.kind not in ("slow", "malformed", "truncate", "wrong_batch"):
            return self._fault_reply(fault)
        reply = await self._route(request, fault)
        if fault is not None:
            reply = self._apply_late_fault(fault, reply)
        return reply

    async def _route(self, request: Request, fault: Fault | None) -> Reply:
        routes: dict[str, tuple[tuple[str, ...], Callable[..., Any]]] = {
            "/generate": (("POST", "PUT"), self._generate),
            "/health": (("GET",), self._health),
            "/health_generate": (("GET",), self._health),
            "/get_model_info": (("GET",), self._model_info),
            "/get_server_info": (("GET",), self._server_info),
            "/flush_cache": (("GET", "POST"), self._flush_cache),
            "/abort_request": (("POST",), self._abort_request),
            "/v1/models": (("GET",), self._models),
        }
        if self._v >= NEW_INFO_ROUTES_SINCE:
            routes["/model_info"] = (("GET",), self._model_info)
            routes["/server_info"] = (("GET",), self._server_info)
        entry = routes.get(request.path)
        if entry is None:
            return Reply.json({"detail": "Not Found"}, status=404)
        methods, fn = entry
        if request.method not in methods:
            return Reply.json({"detail": "Method Not Allowed"}, status=405)
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay)
        if fn == self._generate:
            return await self._generate(request, fault)
        return await fn(request) if asyncio.iscoroutinefunction(fn) else fn(request)

    def _fault_reply(self, fault: Fault) -> Reply:
        if fault.kind == "reset":
            return Reply(reset=True)
        if fault.kind == "hang":
            return Reply(hang=True)
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        return Reply.json(_http_exception_body(fault.status, "injected fault"),
                          status=fault.status, headers=headers, delay=fault.delay)

    @staticmethod
    def _apply_late_fault(fault: Fault, reply: Reply) -> Reply:
        if fault.kind == "malformed":
            return Reply(status=200, body=b'{"text": "oops", "meta_info": ')
        if fault.kind == "truncate":
            return Reply(status=200, body=reply.body, truncate=max(1, len(reply.body) // 2))
        return reply

    # -- simple routes ------------------------------------------------------

    def _health(self, request: Request) -> Reply:
        return Reply(status=200)

    def _model_info(self, request: Request) -> Reply:
        return Reply.json({
            "model_path": self.model_path,
            "tokenizer_path": self.model_path,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": "default",
        })

    def _server_info(self, request: Request) -> Reply:
        capacity = int(self.cache.capacity)
        state: dict[str, Any] = {"last_gen_throughput": 0.0, "num_running_reqs": self.running}
        extra: dict[str, Any] = {}
        if self._v >= SEED_SINCE:
            extra["enable_deterministic_inference"] = self.enable_deterministic_inference
        if self._v >= STRICT_RIDS_SINCE:
            state["effective_max_running_requests_per_dp"] = self.running_limit
            extra.update(launch_command=None, frontend="python")
        return Reply.json({
            **extra,
            "model_path": self.model_path,
            "tokenizer_path": self.model_path,
            "served_model_name": self.model_path,
            "context_length": self.context_length,
            "skip_tokenizer_init": False,
            "disable_radix_cache": self.disable_radix_cache,
            "enable_cache_report": False,
            "max_queued_requests": self.max_queued_requests,
            "schedule_policy": "fcfs",
            "tp_size": 1,
            "dp_size": 1,
            "api_key": None,
            "status": "ready",
            "max_total_num_tokens": capacity,
            "max_running_requests": self.max_running_requests,
            "enable_dp_attention": False,
            "max_req_input_len": min(self.context_length, capacity) - 1,
            "internal_states": [state],
            "version": self.version,
        })

    def _models(self, request: Request) -> Reply:
        return Reply.json({"object": "list", "data": [{
            "id": self.model_path, "object": "model", "created": int(time.time()),
            "owned_by": "sglang", "root": self.model_path, "max_model_len": self.context_length,
        }]})

    def _abort_request(self, request: Request) -> Reply:
        try:
            body = request.json()
        except msgspec.DecodeError as e:
            return Reply.json(_validation_error_body(f"JSON decode error: {e}"), status=400)
        rid = body.get("rid", "") if isinstance(body, dict) else ""
        abort_all = bool(body.get("abort_all")) if isinstance(body, dict) else False
        if not abort_all and (not isinstance(rid, str) or rid not in self.live):
            return Reply(status=200)  # the tokenizer manager drops an unknown rid
        for live_rid, item in self.live.items():
            # The scheduler's test, in every version: a prefix match.
            if abort_all or live_rid.startswith(rid):
                item.aborted = True
        return Reply(status=200)

    def _flush_cache(self, request: Request) -> Reply:
        if self.running:
            return Reply.text(
                "Cache not flushed: requests are running or waiting.\n", status=400)
        self.cache.clear()
        return Reply.text("Cache flushed.\n")

    # -- /generate ----------------------------------------------------------

    async def _generate(self, request: Request, fault: Fault | None) -> Reply:
        try:
            body = request.json()
        except msgspec.DecodeError as e:
            return Reply.json(_validation_error_body(f"JSON decode error: {e}"), status=400)
        if not isinstance(body, dict):
            return Reply.json(_validation_error_body("Input should be a valid dictionary"),
                              status=400)
        self.requests.append(body)
        try:
            items, single = self._parse_generate(body)
        except BadRequest as e:
            return Reply.json({"error": {"message": str(e)}}, status=400)
        except UnknownKeyword as e:  # SGLang's TypeError escapes its handler
            self.errors.append(f"TypeError: {e}")
            return Reply.text("Internal Server Error", status=500)
        queued = self.waiting + max(0, self.running + len(items) - self.running_limit)
        if self.max_queued_requests is not None and queued > self.max_queued_requests:
            return Reply.json(_http_exception_body(503, "The request queue is full.",
                                                   "Service Unavailable"), status=503)
        for item in items:
            earlier = self.live.get(item.rid)
            if earlier is not None:  # only before 0.5.23: later ones were refused above
                earlier.taken_by = item
            self.live[item.rid] = item
        try:
            delivered = self._deliver(items, await self._run_items(items))
        finally:
            for item in items:
                if self.live.get(item.rid) is item:
                    del self.live[item.rid]
        if delivered is None:  # an output of this POST went to another request: no answer
            return Reply(hang=True)
        outs = delivered
        if fault is not None and fault.kind == "wrong_batch" and not single:
            outs = outs[:-1]
        if body.get("stream"):
            chunks = []
            for i, out in enumerate(outs):
                if not single:
                    out = {**out, "index": i}
                chunks.append(b"data: " + msgspec.json.encode(out) + b"\n\n")
            chunks.append(b"data: [DONE]\n\n")
            return Reply(body=b"".join(chunks), content_type="text/event-stream")
        return Reply.json(outs[0] if single else outs)

    def _deliver(self, items: list[_Item], outs: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """Route finished outputs by rid as SGLang before 0.5.23 does: its state
        per rid was replaced by the later request with that rid, so an output
        goes to whichever request holds the rid now, and is dropped if that one
        has been answered already. None: this POST waits forever."""
        routed: list[dict[str, Any]] = []
        lost = False
        for item, out in zip(items, outs):
            item.done = True
            holder = item.taken_by
            if holder is None:
                routed.append(item.received or out)
                continue
            lost = True
            if holder.received is None and not holder.done:
                holder.received = out  # the later request gets this one's output
        return None if lost else routed

    def _parse_generate(self, body: dict[str, Any]) -> tuple[list[_Item], bool]:
        for key in UNSUPPORTED_INPUTS:
            if body.get(key) is not None:
                raise BadRequest(f"{key} is not supported by this test server")
        text, input_ids = body.get("text"), body.get("input_ids")
        if (text is None) == (input_ids is None):
            raise BadRequest("Either text, input_ids or input_embeds should be provided.")
        if input_ids is not None:
            if not isinstance(input_ids, list) or len(input_ids) == 0:
                raise BadRequest("input_ids cannot be empty.")
            single = isinstance(input_ids[0], int)
            prompts = [input_ids] if single else input_ids
            for p in prompts:
                if not isinstance(p, list) or not all(isinstance(t, int) for t in p):
                    raise BadRequest("input_ids should be a list of ints or a list of lists of ints.")
                if not p:
                    raise BadRequest("input_ids cannot be empty.")
        else:
            single = isinstance(text, str)
            texts = [text] if single else text
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise BadRequest("Text should be a list for batch processing.")
            prompts = self.tokenizer.encode_batch(texts)
        n = len(prompts)
        rids = self._rids(body.get("rid"), n, single)
        params = self._params(body.get("sampling_params"), n)
        if self._v < SEED_SINCE and any("sampling_seed" in p for p in params):
            raise UnknownKeyword("SamplingParams.__init__() got an unexpected keyword "
                                 "argument 'sampling_seed'")
        logprob = body.get("return_logprob") or False
        logprobs = logprob if isinstance(logprob, list) else [bool(logprob)] * n
        if len(logprobs) != n:
            raise BadRequest("return_logprob should have the same length as the batch.")
        with_text = bool(body.get("return_text_in_logprobs"))
        items = []
        for prompt, rid, p, lp in zip(prompts, rids, params, logprobs):
            self._check_length(len(prompt), p.get("max_new_tokens"))
            if self._v >= STRICT_RIDS_SINCE and rid in self.live:
                raise BadRequest(f"Duplicate request ID detected: {rid}")
            items.append(_Item(rid, list(prompt), p, bool(lp), with_text))
        return items, single

    def _check_length(self, prompt: int, max_new_tokens: Any) -> None:
        """tokenizer_manager._validate_one_request, without auto-truncation."""
        ctx = self.context_length
        if prompt >= ctx:
            raise BadRequest(f"The input ({prompt} tokens) is longer than the model's context "
                             f"length ({ctx} tokens).")
        if not isinstance(max_new_tokens, int):
            return
        total = prompt + max_new_tokens
        if total > ctx or (total == ctx and self._v < TOTAL_MAY_FILL_SINCE):
            raise BadRequest(
                f"Requested token count exceeds the model's maximum context length of {ctx} "
                f"tokens. You requested a total of {total} tokens: {prompt} tokens from the "
                f"input messages and {max_new_tokens} tokens for the completion. Please reduce "
                "the number of tokens in the input messages or the completion to fit within "
                "the limit.")

    def _rids(self, rid: Any, n: int, single: bool) -> list[str]:
        if rid is None:
            return [uuid.uuid4().hex for _ in range(n)]
        if single:
            if not isinstance(rid, str):
                raise BadRequest("The rid should be a string for a single request.")
            return [rid]
        if isinstance(rid, str):
            return [f"{rid}_{i}" for i in range(n)]
        if not isinstance(rid, list) or not all(isinstance(r, str) for r in rid):
            raise BadRequest("The rid should be a string or a list of strings.")
        if len(rid) != n:
            raise BadRequest(
                "The specified rids length mismatch with the batch_size for batch processing.")
        if len(set(rid)) != len(rid) and self._v >= STRICT_RIDS_SINCE:
            dupes = sorted({r for r in rid if rid.count(r) > 1})
            raise BadRequest(f"Duplicate request IDs detected within the request: {dupes}")
        return rid

    @staticmethod
    def _params(sp: Any, n: int) -> list[dict[str, Any]]:
        if sp is None:
            sp = {}
        if isinstance(sp, dict):
            sp = [sp] * n
        if not isinstance(sp, list) or not all(isinstance(p, dict) for p in sp):
            raise BadRequest("sampling_params should be a dict or a list of dicts.")
        if len(sp) != n:
            raise BadRequest("The length of sampling_params should be equal to the batch size.")
        return [_check_sampling(p) for p in sp]

    async def _run_items(self, items: list[_Item]) -> list[dict[str, Any]]:
        """Run a POST's items as slots of the running batch free up."""
        started = time.perf_counter()
        k = 0
        self.waiting += len(items)
        while k < len(items):
            n = await self._take_slots(len(items) - k)
            self.waiting -= n
            try:
                await self._run_group(items[k:k + n])
            finally:
                async with self._slot_freed:
                    self.running -= n
                    self._slot_freed.notify_all()
            k += n
        elapsed = time.perf_counter() - started
        return [self._output(item, elapsed) for item in items]

    async def _take_slots(self, wanted: int) -> int:
        async with self._slot_freed:
            await self._slot_freed.wait_for(lambda: self.running < self.running_limit)
            n = min(wanted, self.running_limit - self.running)
            self.running += n
            self.peak_running = max(self.peak_running, self.running)
            return n

    async def _run_group(self, items: list[_Item]) -> None:
        for item in items:
            # At least one prompt token is always computed, so never all cached.
            item.cached = (0 if self.disable_radix_cache
                           else self.cache.match_len(item.input_ids[:-1]))
            self.cache.pin(item.input_ids[: item.cached])
        try:
            for item in items:
                params = item.params
                if not self.enable_deterministic_inference:  # SGLang ignores the seed
                    params = {k: v for k, v in params.items() if k != "sampling_seed"}
                item.gen = decode_loop(self.model, item.input_ids, params, self.detok,
                                       self.eos_token_ids)
            longest = max(len(i.gen.output_ids) for i in items if i.gen is not None)
            uncached = sum(len(i.input_ids) - i.cached for i in items)
            delay = (self.latency + self.per_token_latency * longest
                     + self.prefill_latency * uncached)
            if delay > 0:
                await asyncio.sleep(delay)
        finally:
            for item in items:
                self.cache.unpin(item.input_ids[: item.cached])
        for item in items:
            assert item.gen is not None
            if not (self.disable_radix_cache or item.aborted):
                self.cache.insert(item.input_ids + item.gen.output_ids[:-1])

    def _output(self, item: _Item, elapsed: float) -> dict[str, Any]:
        gen = item.gen
        assert gen is not None
        if item.aborted:  # FINISH_ABORT().to_json(), output dropped
            return {"text": "", "output_ids": [], "meta_info": {
                "id": item.rid, "finish_reason": {"type": "abort", "message": "Aborted",
                                                  "status_code": None, "err_type": None},
                "prompt_tokens": len(item.input_ids), "weight_version": "default",
                "completion_tokens": 0, "cached_tokens": item.cached, "e2e_latency": elapsed}}
        skip = item.params.get("skip_special_tokens", True) is not False
        meta: dict[str, Any] = {
            "id": item.rid,
            "finish_reason": gen.finish,
            "prompt_tokens": len(item.input_ids),
            "weight_version": "default",
            "completion_tokens": len(gen.output_ids),
            "cached_tokens": item.cached,
            "e2e_latency": elapsed,
        }
        if item.return_logprob:
            with_text = item.logprob_text
            meta["input_token_logprobs"] = []
            meta["output_token_logprobs"] = [
                [_fake_logprob(t, k), t, self.detok.text([t], False) if with_text else None]
                for k, t in enumerate(gen.output_ids)]
        return {
            "text": output_text(gen, self.detok, skip, bool(item.params.get("no_stop_trim"))),
            "output_ids": list(gen.output_ids),
            "meta_info": meta,
        }


def _check_sampling(p: dict[str, Any]) -> dict[str, Any]:
    for key in p:
        if key not in SAMPLING_KEYS:
            raise UnknownKeyword(f"Unexpected keyword argument '{key}'")
    for key in UNSUPPORTED_SAMPLING:
        if p.get(key) is not None:
            raise BadRequest(f"sampling_params.{key} is not supported by this test server")
    if (p.get("n") or 1) != 1:
        raise BadRequest("n > 1 is not supported by this test server")
    t = p.get("temperature", 1.0)
    t = 1.0 if t is None else t
    if not isinstance(t, (int, float)) or t < 0:
        raise BadRequest(f"temperature must be a non-negative finite number, got {t}.")
    top_p = p.get("top_p", 1.0)
    top_p = 1.0 if top_p is None else top_p
    if not 0.0 < top_p <= 1.0:
        raise BadRequest(f"top_p must be in (0, 1], got {top_p}.")
    top_k = p.get("top_k", -1)
    top_k = -1 if top_k is None else top_k
    if top_k < 1 and top_k != -1:
        raise BadRequest(f"top_k must be -1 (disable) or at least 1, got {top_k}.")
    rp = p.get("repetition_penalty", 1.0)
    rp = 1.0 if rp is None else rp
    if not 0.0 < rp <= 2.0:
        raise BadRequest(
            f"repetition_penalty must be in (0, 2] (1.0 = no penalty), got {rp}.")
    mnt = p.get("max_new_tokens", 128)
    if mnt is not None and (not isinstance(mnt, int) or mnt < 0):
        raise BadRequest(f"max_new_tokens must be at least 0, got {mnt}.")
    stop_ids = p.get("stop_token_ids")
    if stop_ids is not None and not all(isinstance(t, int) for t in stop_ids):
        raise BadRequest("stop_token_ids should be a list of ints.")
    return p


def _fake_logprob(token: int, position: int) -> float:
    return -((token * 2654435761 + position) % 1000) / 250.0


def _http_exception_body(status: int, message: str, kind: str | None = None) -> dict[str, Any]:
    return {"object": "error", "message": message, "type": kind or str(status), "param": None,
            "code": status}


def _validation_error_body(message: str) -> dict[str, Any]:
    return {"object": "error", "message": message, "type": "Bad Request", "param": None,
            "code": 400}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m turnloom.testing.sglang_server",
        description="Serve SGLang's native HTTP protocol from a deterministic hash model.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--model-path", default="turnloom/hash-model")
    parser.add_argument("--cache-capacity", type=int, default=1 << 16)
    parser.add_argument("--context-length", type=int, default=32768)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--per-token-latency", type=float, default=0.0)
    parser.add_argument("--prefill-latency", type=float, default=0.0)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--max-running-requests", type=int, default=None)
    parser.add_argument("--max-queued-requests", type=int, default=None)
    parser.add_argument("--version", default="0.5.23", dest="sglang_version",
                        help="SGLang release whose behaviour to reproduce")
    parser.add_argument("--no-deterministic-inference", action="store_true",
                        help="ignore sampling_seed, as SGLang does by default")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--fault-kinds", default="status",
                        help="comma-separated: status,reset,hang,malformed,truncate,wrong_batch,slow")
    parser.add_argument("--fault-status", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    faults = FaultSchedule(rate=args.fault_rate, kinds=args.fault_kinds.split(","),
                           status=args.fault_status, seed=args.seed)
    server = SGLangTestServer(
        host=args.host, port=args.port, model_path=args.model_path,
        cache_capacity=args.cache_capacity, context_length=args.context_length,
        latency=args.latency, per_token_latency=args.per_token_latency,
        prefill_latency=args.prefill_latency, faults=faults, api_key=args.api_key,
        max_running_requests=args.max_running_requests, version=args.sglang_version,
        max_queued_requests=args.max_queued_requests,
        enable_deterministic_inference=not args.no_deterministic_inference)
    server.serve_forever()


if __name__ == "__main__":
    main()
