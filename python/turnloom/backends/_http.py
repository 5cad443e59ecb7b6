"""The HTTP client of the HTTP backends (aiohttp), plus their shared retry rules.

Chosen by measurement (bench/bench_http_client.py): against one loopback
server at concurrency 64, a raw aiohttp POST costs ~0.25 ms of client CPU per
request, httpx ~5 ms and the official `openai` SDK (on httpx) ~3.5 ms. aiohttp
gives proxies (`proxy`, or HTTP(S)_PROXY / NO_PROXY with `trust_env`), TLS
settings and connection pooling; it does not speak HTTP/2, which no
OpenAI-compatible server needs to be useful and which would cost the 20x
above.

Every failure below HTTP becomes `TransportError` with its real cause in the
message (connect refused, reset, truncated body, timeout), so a backend that
gives up can say why.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import aiohttp
import msgspec
import yarl

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode

#: Replies that mean "busy, try again later": the endpoint works, so they back
#: off without counting against its circuit breaker. 503 is SGLang's and
#: vLLM's "overloaded" as well as a proxy's "no upstream right now".
BUSY_STATUSES = frozenset({408, 409, 429, 503})
#: Kept idle below the usual server keep-alive timeout (uvicorn's 5 s), so a
#: pooled connection is not reused just as the server closes it.
KEEPALIVE_S = 4.0


class TransportError(Exception):
    """The exchange failed below HTTP: connect, reset, timeout, bad framing."""


class MalformedReply(Exception):
    """The server answered, but not with what the protocol promises."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed_s: float = 0.0

    def json(self) -> Any:
        try:
            return _json_decode(self.body)
        except msgspec.DecodeError as e:
            snippet = self.body[:120].decode("utf-8", errors="replace")
            raise MalformedReply(f"invalid JSON in HTTP {self.status} reply: {e} ({snippet!r})") from e

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def error_message(response: Response) -> str:
    """The error text of a JSON error reply (OpenAI or SGLang shape), else the body's start."""
    try:
        data = response.json()
    except MalformedReply:
        return response.text()[:300].strip() or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        for key in ("message", "detail"):
            if data.get(key):
                return str(data[key])
    return str(data)[:300]


def retryable(status: int) -> bool:
    """Whether a non-200 reply is worth another attempt (busy or a server fault)."""
    return status in BUSY_STATUSES or status >= 500


def busy(status: int) -> bool:
    """A reply that says the server is overloaded, not broken (no breaker failure)."""
    return status in BUSY_STATUSES


def retry_after(response: Response) -> float | None:
    """Seconds the server asked to wait (retry-after-ms, then Retry-After), if any."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = response.headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) / scale)
            except ValueError:
                continue
    return None


def split_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, base path) of an http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")


class HTTPClient:
    """A pooled keep-alive client: at most `max_connections` open connections
    (size it to the requests in flight, or connections churn), JSON in and out.

    `proxy` sends every request through that proxy; `trust_env` reads
    HTTP(S)_PROXY / NO_PROXY as curl and requests do (once per host: aiohttp's
    own lookup runs in a thread on every request, which doubled the cost).
    `verify` False skips certificate checks; `ca_bundle` names a CA file.
    The session opens on first use, on the running event loop.
    """

    def __init__(self, *, timeout: float = 600.0, connect_timeout: float = 10.0,
                 max_connections: int = 100, headers: Mapping[str, str] | None = None,
                 proxy: str | None = None, trust_env: bool = True, verify: bool = True,
                 ca_bundle: str | None = None) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.headers = {"Accept": "application/json", **(headers or {})}
        self.proxy = proxy
        self.trust_env = trust_env
        self._ssl: ssl.SSLContext | bool = True
        if ca_bundle is not None:
            self._ssl = ssl.create_default_context(cafile=ca_bundle)
        elif not verify:
            self._ssl = False
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._proxies: dict[tuple[str, str], str | None] = {}
        self._urls: dict[str, yarl.URL] = {}  # parsed once: a few routes, many requests
        self._closed = False

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0,
                                         keepalive_timeout=KEEPALIVE_S, ssl=self._ssl)
        self._session = aiohttp.ClientSession(
            connector=connector, headers=self.headers, trust_env=False,
            # No cookies and no per-request tracing: model APIs use neither,
            # and each costs CPU on every request.
            cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent",),
            raise_for_status=False)
        return self._session

    def _proxy_for(self, url: str) -> str | None:
        if self.proxy is not None or not self.trust_env:
            return self.proxy
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname or "")
        if key not in self._proxies:
            proxy = None
            if not urllib.request.proxy_bypass(key[1]):
                proxy = urllib.request.getproxies().get(key[0])
            self._proxies[key] = proxy
        return self._proxies[key]

    def _timeout(self, total: float) -> aiohttp.ClientTimeout:
        t = self._timeouts.get(total)
        if t is None:
            t = self._timeouts[total] = aiohttp.ClientTimeout(
                total=total, sock_connect=self.connect_timeout)
        return t

    async def get(self, url: str, *, timeout: float | None = None,
                  headers: Mapping[str, str] | None = None) -> Response:
        return await self.request("GET", url, timeout=timeout, headers=headers)

    async def post_json(self, url: str, payload: Any, *, timeout: float | None = None,
                        headers: Mapping[str, str] | None = None) -> Response:
        return await self.request("POST", url, body=_json_encode(payload),
                                  content_type="application/json",
                                  timeout=timeout, headers=headers)

    async def request(self, method: str, url: str, *, body: bytes = b"",
                      content_type: str | None = None, timeout: float | None = None,
                      headers: Mapping[str, str] | None = None) -> Response:
        if self._closed:
            raise TransportError("client is closed")
        session = self._session or self._open()
        extra = dict(headers or {})
        if content_type:
            extra["Content-Type"] = content_type
        limit = self.timeout if timeout is None else timeout
        started = time.perf_counter()
        try:
            target = self._urls.get(url)
            if target is None:
                if len(self._urls) > 1024:
                    self._urls.clear()
                target = self._urls[url] = yarl.URL(url)
            async with session.request(method, target, data=body or None, headers=extra,
                                       proxy=self._proxy_for(url),
                                       timeout=self._timeout(limit)) as r:
                data = await r.read()
                response = Response(r.status, {k.lower(): v for k, v in r.headers.items()},
                                    data)
        except asyncio.TimeoutError:
            raise TransportError(f"{method} {url}: no complete reply within {limit:g}s") from None
        except aiohttp.ClientConnectorError as e:
            raise TransportError(f"connect to {e.host}:{e.port} failed: {e.os_error}") from None
        except aiohttp.ServerDisconnectedError:
            raise TransportError(f"{method} {url}: the server closed the connection "
                                 "before a complete reply") from None
        except aiohttp.ClientPayloadError as e:
            raise TransportError(f"{method} {url}: incomplete reply body: {e}") from None
        except aiohttp.ClientResponseError as e:
            raise TransportError(f"{method} {url}: bad HTTP framing: {e.message}") from None
        except (aiohttp.ClientError, OSError) as e:
            raise TransportError(f"{method} {url}: {type(e).__name__}: {e}") from None
        response.elapsed_s = time.perf_counter() - started
        return response

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


class CircuitBreaker:
    """Stops sending to an endpoint that keeps failing, and lets it back in gradually.

    closed: requests flow; `threshold` consecutive failures open it.
    open: requests are refused at once (callers fail fast or go elsewhere)
      until `cooldown_s` has passed.
    half-open: after the cooldown, `allow` admits one probe request; its
      success closes the breaker, its failure re-opens it for another cooldown.
    `half_open` moves an open breaker there early, when an out-of-band health
    check has passed. Not thread-safe: it lives on one event loop.
    """

    def __init__(self, threshold: int, cooldown_s: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if threshold < 1:
            raise ValueError("threshold must be >= 1")
        if cooldown_s < 0:
            raise ValueError("cooldown_s must be >= 0")
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.state = "closed"
        self.failures = 0
        self.reopen_at = 0.0
        self.opened = 0
        self._probing = False

    def allow(self) -> bool:
        """Whether a request may go out now; in half-open, only the first may."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if self._clock() < self.reopen_at:
                return False
            self.state = "half_open"
            self._probing = False
        if self._probing:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self.state, self.failures, self._probing = "closed", 0, False

    def failure(self) -> None:
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.threshold:
            self.trip()

    def trip(self) -> None:
        """Open (again) for a full cooldown."""
        if self.state != "open":
            self.opened += 1
        self.state, self._probing = "open", False
        self.reopen_at = self._clock() + self.cooldown_s

    def half_open(self) -> None:
        if self.state == "open":
            self.state, self._probing = "half_open", False

    def due(self) -> bool:
        """Open with its cooldown over: time for a probe."""
        return self.state == "open" and self._clock() >= self.reopen_at

    def retry_in(self) -> float:
        """Seconds until `allow` can admit a request (0 when it can now)."""
        if self.state == "open":
            return max(0.0, self.reopen_at - self._clock())
        return 0.0
