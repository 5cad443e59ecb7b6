"""SGLang over its native HTTP protocol, across one or several replicas.

A batch goes out as one ``POST /generate`` per replica with a list of
``input_ids`` and one ``sampling_params`` dict per request; the reply is a
list of results in the same order. Each conversation tree
(``GenRequest.affinity``) is pinned to one replica by rendezvous hashing, so
its growing prefix stays in that replica's radix cache; it moves only when
its replica fails, and stays where it moved to.

Transport faults, 5xx/408/429 replies, malformed JSON, a reply of the
wrong length and results that SGLang aborted (finish_reason "abort") are
retried with exponential backoff and jitter (honouring Retry-After); what
still fails comes back as results with finish_reason "error". Other 4xx
replies are not retried, but SGLang answers a whole batch with 400 when one
of its requests is bad, so a refused batch is split in halves until the bad
request stands alone and the others go through. A request that does not fit
the server's context length (prompt + max_new_tokens, by the server
version's rule) fails alone before anything is sent.

Request ids: every POST gives each request a fresh random 128-bit id (32 hex
digits), never the engine's rid. SGLang registers requests by rid, and
0.5.23 refuses a batch holding a rid that is still live (0.5.6 and older
route one request's output to the other), so ids must be unique across
processes and hosts sharing a server, and across retries of one request
(a timed-out attempt may still run). SGLang also aborts by rid *prefix* (its
scheduler matches ``rid.startswith(abort_rid)``, on /abort_request and when a
client disconnects), so ids of one fixed length, of which none is a prefix
of another, keep an abort to the one request it names.

Seeds: ``sampling_seed`` is sent only to servers that take it (0.5.3 and
newer); a warning is logged, once per replica, when seeded requests go to a
server that will not honour them (too old, or not started with
``--enable-deterministic-inference``).

Each replica has a circuit breaker (`CircuitBreaker`): `fail_threshold`
consecutive failures (transport faults, 5xx other than 503, malformed or
short replies) open it, and its conversations move to the other replicas. While open nothing is
sent to it. After `health_interval` seconds a ``/health`` probe runs; if it
passes the breaker is half-open and the next batch is the probe: success
closes it, failure re-opens it for another `health_interval`; other batches
for that replica wait for the probe's outcome (which costs them no attempt).
When every replica is open, a retry waits for the earliest cooldown instead
of sending. A 503 is SGLang saying it is busy (its request queue is full, or
a request waited or ran past its timeout): it is retried after a backoff and
counts as an answer, not a failure, so it never opens the breaker.

Batch size: by default (``max_batch`` unset) each replica gets POSTs of up to
the number of requests its server runs at once (`running_capacity` of its
server info: max_running_requests, or SGLang's own default from the KV pool),
and the engine's calls are sized to all live replicas together, so the
engine's calls in flight keep every server's running batch full. A set
``max_batch`` caps both instead. When the server info gives neither number,
the batch is DEFAULT_MAX_BATCH.

Settings (``from_settings``): urls, timeout, connect_timeout, retries,
backoff, backoff_max, max_batch, max_inflight, api_key, api_key_env,
health_interval, fail_threshold, wait_ready, model.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

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
from turnloom.backends._sglang_common import (
    BadItem,
    Version,
    context_length,
    error_result,
    length_error,
    needs_piece_texts,
    parse_version,
    read_result,
    running_capacity,
    sampling_params,
    seed_support,
)
from turnloom.backends.base import Backend, BackendError, BackendInfo, GenRequest, GenResult

DEFAULT_MAX_BATCH = 64  # per replica, when its server info tells no running capacity
BUSY_STATUSES = (408, 429, 503)  # the server answered but cannot take the work now

log = logging.getLogger(__name__)


def new_rid() -> str:
    """A request id for one attempt: 128 random bits as 32 hex digits. Equal
    length and uniqueness make it no other id's prefix (SGLang aborts by prefix)."""
    return uuid.uuid4().hex


class SGLangHTTPSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of `SGLangHTTPBackend`; times are in seconds."""

    urls: str | list[str]
    timeout: float = 600.0
    connect_timeout: float = 10.0
    retries: int = 3
    backoff: float = 0.5
    backoff_max: float = 20.0
    max_batch: int | None = None
    max_inflight: int = 8
    api_key: str | None = None
    api_key_env: str | None = None
    health_interval: float = 5.0
    fail_threshold: int = 3
    wait_ready: float = 0.0
    model: str | None = None

    def __post_init__(self) -> None:
        urls = [self.urls] if isinstance(self.urls, str) else self.urls
        if not urls:
            raise ValueError("urls: at least one URL is needed")
        for url in urls:
            try:
                split_url(url)
            except ValueError as e:
                raise ValueError(f"urls: {e}") from None
        for name in ("timeout", "connect_timeout", "health_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("retries", "backoff", "backoff_max", "wait_ready"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("max_batch", "max_inflight", "fail_threshold"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1")


@dataclass
class _Replica:
    url: str
    breaker: CircuitBreaker
    capacity: int | None = None
    running: int | None = None
    """Requests its server runs at once (from its server info), when known."""
    model: str = ""
    error: str = ""
    version: Version | None = None
    context_length: int | None = None
    send_seed: bool = True
    seed_warning: str = ""
    """Why seeds sent here will not reproduce; logged once, when the first seeded request comes."""
    gate: asyncio.Semaphore | None = field(default=None, repr=False)
    probe: asyncio.Event | None = field(default=None, repr=False)  # set when a half-open probe ends

    @property
    def healthy(self) -> bool:
        """Conversations may be routed here (breaker closed or half-open)."""
        return self.breaker.state != "open"


@dataclass
class _Outcome:
    """What one POST gave for its requests: results, or an error per request."""

    results: dict[int, GenResult] = field(default_factory=dict)
    retry: dict[int, str] = field(default_factory=dict)
    final: dict[int, str] = field(default_factory=dict)
    retry_after: float | None = None
    deferred: dict[int, str] = field(default_factory=dict)
    """Not sent: their replica is half-open with its probe in flight (not an attempt)."""
    probes: list[asyncio.Event] = field(default_factory=list)


class SGLangHTTPBackend(Backend):
    """SGLang's native ``/generate`` over HTTP, with replica affinity and retries.

    `tokenizer` (optional; anything with ``decode(ids)``) lets stop-string
    matches be cut from ``output_ids`` locally; without it the backend asks
    SGLang for per-token texts on requests that carry stop strings.
    """

    def __init__(self, urls: str | Sequence[str], *, timeout: float = 600.0,
                 connect_timeout: float = 10.0, retries: int = 3, backoff: float = 0.5,
                 backoff_max: float = 20.0, max_batch: int | None = None,
                 max_inflight: int = 8,
                 api_key: str | None = None, health_interval: float = 5.0,
                 fail_threshold: int = 3, wait_ready: float = 0.0, model: str | None = None,
                 tokenizer: Any = None, rng: random.Random | None = None) -> None:
        url_list = [urls] if isinstance(urls, str) else list(urls)
        if not url_list:
            raise BackendError("SGLangHTTPBackend needs at least one URL")
        for url in url_list:
            try:
                split_url(url)
            except ValueError as e:
                raise BackendError(f"sglang-http: {e}") from None
        self._replicas = [_Replica(url.rstrip("/"), CircuitBreaker(fail_threshold, health_interval))
                          for url in url_list]
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.max_batch_setting = max_batch
        self.max_inflight = max_inflight
        self.api_key = api_key
        self.health_interval = health_interval
        self.fail_threshold = fail_threshold
        self.wait_ready = wait_ready
        self._model = model
        self._decode: Callable[[Sequence[int]], str] | None = (
            tokenizer.decode if tokenizer is not None else None)
        self._rng = rng or random.Random()
        self._moved: dict[int, int] = {}
        self._client: HTTPClient | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | SGLangHTTPSettings,
                      **kwargs: Any) -> "SGLangHTTPBackend":
        """Build from a settings table; an unknown or bad field raises BackendError naming it."""
        if not isinstance(settings, SGLangHTTPSettings):
            try:
                settings = msgspec.convert(dict(settings), SGLangHTTPSettings)
            except msgspec.ValidationError as e:
                raise BackendError(f"invalid sglang-http backend settings: {e}") from None
        api_key = settings.api_key
        if settings.api_key_env:
            api_key = os.environ.get(settings.api_key_env) or api_key
            if api_key is None:
                raise BackendError(
                    f"sglang-http: environment variable {settings.api_key_env} is not set")
        return cls(settings.urls, timeout=settings.timeout,
                   connect_timeout=settings.connect_timeout, retries=settings.retries,
                   backoff=settings.backoff, backoff_max=settings.backoff_max,
                   max_batch=settings.max_batch, max_inflight=settings.max_inflight,
                   api_key=api_key, health_interval=settings.health_interval,
                   fail_threshold=settings.fail_threshold, wait_ready=settings.wait_ready,
                   model=settings.model, **kwargs)

    def use_chat_format(self, fmt: Any) -> None:
        """The engine's chat format: its tokenizer cuts stop-string matches locally."""
        self._decode = fmt.tokenizer.decode

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._client = HTTPClient(timeout=self.timeout, connect_timeout=self.connect_timeout,
                                  headers=headers)
        for replica in self._replicas:
            replica.gate = asyncio.Semaphore(self.max_inflight)
        await asyncio.gather(*(self._connect_replica(r) for r in self._replicas))
        live = [r for r in self._replicas if r.healthy]
        if not live:
            details = "; ".join(f"{r.url}: {r.error}" for r in self._replicas)
            await self.close()
            raise BackendError(f"no SGLang replica is reachable ({details})")
        models = {r.model for r in live if r.model}
        if len(models) > 1:
            listing = ", ".join(f"{r.model} at {r.url}" for r in live)
            await self.close()
            raise BackendError(f"SGLang replicas serve different models: {listing}")
        if self._model is None:
            self._model = models.pop() if models else ""

    async def _connect_replica(self, replica: _Replica) -> None:
        assert self._client is not None
        deadline = time.monotonic() + self.wait_ready
        while True:
            replica.error = await self._health(replica)
            if not replica.error or time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(1.0, self.wait_ready))
        if replica.error:
            self._set_down(replica)
            return
        try:
            info = await self._server_info(replica)
        except (TransportError, MalformedReply) as e:
            replica.error = f"server info: {e}"
            self._set_down(replica)
            return
        capacity = info.get("max_total_num_tokens")
        replica.capacity = capacity if isinstance(capacity, int) and capacity > 0 else None
        replica.running = running_capacity(info)
        model = info.get("served_model_name") or info.get("model_path")
        replica.model = model if isinstance(model, str) else ""
        replica.version = parse_version(info.get("version"))
        replica.send_seed, replica.seed_warning = seed_support(info)
        replica.context_length = context_length(info, await self._models(replica))

    async def _health(self, replica: _Replica) -> str:
        """'' when healthy, else why not."""
        assert self._client is not None
        try:
            r = await self._client.get(replica.url + "/health",
                                       timeout=min(self.timeout, 30.0))
        except TransportError as e:
            return str(e)
        return "" if r.status == 200 else f"/health answered HTTP {r.status}"

    async def _server_info(self, replica: _Replica) -> dict[str, Any]:
        assert self._client is not None
        # Newer SGLang names it /server_info and keeps /get_server_info as an alias.
        for route in ("/server_info", "/get_server_info"):
            r = await self._client.get(replica.url + route, timeout=min(self.timeout, 30.0))
            if r.status == 200:
                data = r.json()
                if isinstance(data, dict):
                    return data
                raise MalformedReply(f"{route} did not answer an object")
            if r.status != 404:
                raise MalformedReply(f"{route} answered HTTP {r.status}: {error_message(r)}")
        return {}

    async def _models(self, replica: _Replica) -> Any:
        """/v1/models, whose max_model_len is the context length SGLang checks
        against; None when the route fails (the length check is then skipped
        unless the server info gives a context_length)."""
        assert self._client is not None
        try:
            r = await self._client.get(replica.url + "/v1/models",
                                       timeout=min(self.timeout, 30.0))
            return r.json() if r.status == 200 else None
        except (TransportError, MalformedReply):
            return None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def info(self) -> BackendInfo:
        caps = [r.capacity for r in self._replicas]
        total = sum(c for c in caps if c) if caps and all(caps) else None
        return BackendInfo(name="sglang-http", model=self._model or "",
                           cache_capacity_tokens=total, max_batch=self.max_batch,
                           replicas=len(self._replicas))

    @property
    def max_batch(self) -> int:
        """Requests per engine call: the set max_batch, else what the live replicas
        run at once together."""
        if self.max_batch_setting is not None:
            return self.max_batch_setting
        live = [r for r in self._replicas if r.healthy] or self._replicas
        return sum(self._post_size(r) for r in live)

    def _post_size(self, replica: _Replica) -> int:
        """Requests per POST to this replica."""
        if self.max_batch_setting is not None:
            return self.max_batch_setting
        return replica.running or DEFAULT_MAX_BATCH

    # -- replica choice -------------------------------------------------------

    def replica_for(self, affinity: int) -> int:
        """Index of the replica that serves this conversation tree now."""
        moved = self._moved.get(affinity)
        if moved is not None and self._replicas[moved].healthy:
            return moved
        home = self._rendezvous(affinity, range(len(self._replicas)))
        if moved is None and self._replicas[home].healthy:
            return home
        healthy = [i for i, r in enumerate(self._replicas) if r.healthy]
        if not healthy:
            return moved if moved is not None else home
        target = self._rendezvous(affinity, healthy)
        if target == home:
            self._moved.pop(affinity, None)
        else:
            self._moved[affinity] = target
        return target

    def _rendezvous(self, affinity: int, candidates: Any) -> int:
        def score(i: int) -> bytes:
            key = f"{affinity}|{self._replicas[i].url}".encode()
            return hashlib.blake2b(key, digest_size=8).digest()

        return max(candidates, key=score)

    def _set_down(self, replica: _Replica) -> None:
        replica.breaker.trip()

    def _record_failure(self, replica: _Replica, error: str) -> None:
        replica.error = error
        replica.breaker.failure()

    def breaker_states(self) -> dict[str, str]:
        """Each replica's circuit-breaker state, by URL."""
        return {r.url: r.breaker.state for r in self._replicas}

    async def _probe_down(self) -> None:
        """Health-probe the open replicas whose cooldown is over; when every
        replica is open, first wait for the earliest cooldown to end."""
        if not any(r.healthy for r in self._replicas):
            await asyncio.sleep(min(r.breaker.retry_in() for r in self._replicas))
        due = [r for r in self._replicas if r.breaker.due()]

        async def probe(replica: _Replica) -> None:
            error = await self._health(replica)
            if error:
                replica.error = error
                replica.breaker.trip()
            else:
                replica.breaker.half_open()

        if due:
            await asyncio.gather(*(probe(r) for r in due))

    # -- generation -----------------------------------------------------------

    async def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        if not requests:
            return []
        if self._client is None:
            raise BackendError("SGLangHTTPBackend.generate called before start()")
        results: list[GenResult | None] = [None] * len(requests)
        tries = [0] * len(requests)
        pending = list(range(len(requests)))
        # Waiting on half-open probes costs no attempt, but is bounded all the same.
        waits_left = 4 * (self.retries + 1)
        started = time.monotonic()
        while pending:
            await self._probe_down()
            outcome = await self._attempt(requests, pending, tries)
            elapsed = time.monotonic() - started
            for i, res in outcome.results.items():
                results[i] = res
            for i, msg in outcome.final.items():
                results[i] = error_result(requests[i], msg, elapsed)
            retry = []
            for i, msg in outcome.retry.items():
                tries[i] += 1
                if tries[i] > self.retries:
                    results[i] = error_result(
                        requests[i], f"{msg} (gave up after {tries[i]} attempts)", elapsed)
                else:
                    retry.append(i)
            deferred = sorted(outcome.deferred)
            if deferred:
                waits_left -= 1
                if waits_left < 0:
                    for i in deferred:
                        results[i] = error_result(
                            requests[i], f"{outcome.deferred[i]} (gave up waiting for it)",
                            elapsed)
                    deferred = []
            pending = sorted(retry + deferred)
            if retry:
                await asyncio.sleep(self._delay(max(tries[i] for i in retry) - 1,
                                                outcome.retry_after))
            if deferred:
                await _first_set(outcome.probes, self.timeout)
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cap = min(self.backoff_max, self.backoff * (2 ** attempt))
        delay = cap / 2 + self._rng.uniform(0, cap / 2)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    async def _attempt(self, requests: Sequence[GenRequest], pending: list[int],
                       tries: list[int]) -> _Outcome:
        groups: dict[int, list[int]] = {}
        for i in pending:
            groups.setdefault(self.replica_for(requests[i].affinity), []).append(i)
        chunks = [(rep, idxs[k:k + size])
                  for rep, idxs in groups.items()
                  for size in (self._post_size(self._replicas[rep]),)
                  for k in range(0, len(idxs), size)]
        parts = await asyncio.gather(*(self._post(self._replicas[rep], requests, idxs, tries)
                                       for rep, idxs in chunks))
        total = _Outcome()
        for part in parts:
            _merge(total, part)
        return total

    async def _post(self, replica: _Replica, requests: Sequence[GenRequest],
                    idxs: list[int], tries: list[int]) -> _Outcome:
        breaker = replica.breaker
        if not breaker.allow():
            out = _Outcome()
            if breaker.state == "half_open" and replica.probe is not None:
                msg = f"{replica.url}: circuit half-open, probe in flight"
                out.deferred = {i: msg for i in idxs}
                out.probes.append(replica.probe)
            else:
                msg = f"{replica.url}: circuit open (last error: {replica.error or 'none'})"
                out.retry = {i: msg for i in idxs}
            return out
        if breaker.state == "closed":
            return await self._send(replica, requests, idxs, tries)
        replica.probe = probe = asyncio.Event()
        try:
            return await self._send(replica, requests, idxs, tries)
        finally:
            if breaker.state == "half_open":  # cancelled before any outcome: unknown, so open
                breaker.trip()
            replica.probe = None
            probe.set()

    async def _send(self, replica: _Replica, requests: Sequence[GenRequest],
                    idxs: list[int], tries: list[int]) -> _Outcome:
        out = _Outcome()
        fits = []
        for i in idxs:
            why = length_error(requests[i], replica.context_length, replica.version)
            if why:
                out.final[i] = f"{replica.url}: {why}"
            else:
                fits.append(i)
        if fits:
            _merge(out, await self._post_batch(replica, requests, fits, tries))
        return out

    async def _post_batch(self, replica: _Replica, requests: Sequence[GenRequest],
                          idxs: list[int], tries: list[int]) -> _Outcome:
        out = _Outcome()
        batch = [requests[i] for i in idxs]
        self._warn_seeds(replica, batch)
        try:
            assert self._client is not None and replica.gate is not None
            async with replica.gate:
                response = await self._client.post_json(
                    replica.url + "/generate", self._payload(batch, replica.send_seed))
        except TransportError as e:
            self._record_failure(replica, str(e))
            out.retry = {i: f"{replica.url}: {e}" for i in idxs}
            return out
        except Exception as e:  # never let one replica's surprise sink the batch
            self._record_failure(replica, f"{type(e).__name__}: {e}")
            out.final = {i: f"{replica.url}: {type(e).__name__}: {e}" for i in idxs}
            return out
        status = response.status
        if status != 200:
            msg = f"{replica.url}: HTTP {status}: {error_message(response)}"
            if status == 400 and len(idxs) > 1:
                # SGLang fails the whole batch for one bad request: halve it
                # until the bad one stands alone and the rest go through.
                replica.breaker.success()
                half = len(idxs) // 2
                parts = await asyncio.gather(
                    self._post_batch(replica, requests, idxs[:half], tries),
                    self._post_batch(replica, requests, idxs[half:], tries))
                for part in parts:
                    _merge(out, part)
                return out
            if status >= 500 or status in BUSY_STATUSES:
                if status in BUSY_STATUSES:
                    replica.breaker.success()  # it answered: busy, not broken
                else:
                    self._record_failure(replica, msg)
                out.retry = {i: msg for i in idxs}
                out.retry_after = _retry_after(response)
            else:
                replica.breaker.success()
                out.final = {i: msg for i in idxs}
            return out
        try:
            data = response.json()
        except MalformedReply as e:
            self._record_failure(replica, str(e))
            out.retry = {i: f"{replica.url}: {e}" for i in idxs}
            return out
        if not isinstance(data, list) or len(data) != len(idxs):
            got = len(data) if isinstance(data, list) else type(data).__name__
            msg = f"{replica.url}: batch of {len(idxs)} answered with {got} results"
            self._record_failure(replica, msg)
            out.retry = {i: msg for i in idxs}
            return out
        replica.breaker.success()
        for i, req, item in zip(idxs, batch, data):
            try:
                out.results[i] = read_result(req, item, elapsed_s=response.elapsed_s,
                                             decode=self._decode)
            except BadItem as e:
                (out.retry if e.retry else out.final)[i] = f"{replica.url}: {e}"
        return out

    def _warn_seeds(self, replica: _Replica, batch: list[GenRequest]) -> None:
        if replica.seed_warning and any(r.params.seed is not None for r in batch):
            log.warning("sglang-http: %s: %s", replica.url, replica.seed_warning)
            replica.seed_warning = ""

    def _payload(self, batch: list[GenRequest], send_seed: bool) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "input_ids": [list(r.input_ids) for r in batch],
            "sampling_params": [sampling_params(r.params, send_seed) for r in batch],
            "rid": [new_rid() for _ in batch],
        }
        texts = [needs_piece_texts(r, self._decode) for r in batch]
        if any(texts):
            payload["return_logprob"] = texts
            payload["return_text_in_logprobs"] = True
        return payload


def _merge(into: _Outcome, part: _Outcome) -> None:
    into.results.update(part.results)
    into.retry.update(part.retry)
    into.final.update(part.final)
    into.deferred.update(part.deferred)
    into.probes += part.probes
    if part.retry_after is not None:
        into.retry_after = max(into.retry_after or 0.0, part.retry_after)


async def _first_set(events: list[asyncio.Event], timeout: float) -> None:
    """Wait until one of `events` is set (or `timeout` passes)."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    if not waiters:
        return
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def _retry_after(response: Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
