"""A small async HTTP/1.1 client on asyncio streams, with keep-alive pooling.

The HTTP backends need little from a client (JSON POST/GET, timeouts, a
connection pool) but must see transport faults precisely (reset, truncated
body, hang), so this stays on the standard library instead of adding a
dependency.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import msgspec

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode

MAX_HEADER_BYTES = 64 * 1024


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


@dataclass
class _Origin:
    scheme: str
    host: str
    port: int
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(default_factory=list)


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

def split_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, base path) of an http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")


class HTTPClient:
    """Pooled keep-alive connections per origin; one request per connection at a time."""

    def __init__(self, *, timeout: float = 600.0, connect_timeout: float = 10.0,
                 max_idle_per_origin: int = 32, headers: Mapping[str, str] | None = None) -> None:
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle_per_origin
        self.headers = dict(headers or {})
        self._origins: dict[tuple[str, str, int], _Origin] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

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
        scheme, host, port, path = _split_target(url)
        origin = self._origins.setdefault((scheme, host, port), _Origin(scheme, host, port))
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}",
                 "Accept: application/json", "Accept-Encoding: identity",
                 f"Content-Length: {len(body)}"]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        for name, value in {**self.headers, **(headers or {})}.items():
            lines.append(f"{name}: {value}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        limit = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            response = await asyncio.wait_for(self._exchange(origin, head + body), limit)
        except asyncio.TimeoutError:
            raise TransportError(f"{method} {url}: no complete reply within {limit:g}s") from None
        response.elapsed_s = loop.time() - started
        return response

    async def _exchange(self, origin: _Origin, data: bytes) -> Response:
        # A pooled connection may have been closed by the server while idle;
        # a failure before any reply byte on one is retried on a fresh connection.
        while origin.idle:
            reader, writer = origin.idle.pop()
            if reader.at_eof() or writer.is_closing():
                _close(writer)
                continue
            try:
                return await self._send(origin, reader, writer, data)
            except _StaleConnection:
                continue
        reader, writer = await self._connect(origin)
        try:
            return await self._send(origin, reader, writer, data)
        except _StaleConnection as e:
            raise TransportError(f"connection to {origin.host}:{origin.port} closed: {e}") from None

    async def _connect(self, origin: _Origin) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ctx = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ctx = self._ssl
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(origin.host, origin.port, ssl=ctx,
                                        limit=MAX_HEADER_BYTES),
                self.connect_timeout)
        except asyncio.TimeoutError:
            raise TransportError(
                f"connect to {origin.host}:{origin.port} timed out after {self.connect_timeout:g}s"
            ) from None
        except OSError as e:
            raise TransportError(f"connect to {origin.host}:{origin.port} failed: {e}") from None

    async def _send(self, origin: _Origin, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, data: bytes) -> Response:
        keep = False
        got_bytes = False
        try:
            writer.write(data)
            await writer.drain()
            status_line = await reader.readline()
            if not status_line:
                raise _StaleConnection("closed before the status line")
            got_bytes = True
            status = _parse_status(status_line)
            headers = await _read_headers(reader)
            body = await _read_body(reader, headers, status)
            keep = _keep_alive(status_line, headers)
            return Response(status, headers, body)
        except _StaleConnection:
            raise
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as e:
            if not got_bytes and isinstance(e, (ConnectionResetError, BrokenPipeError)):
                raise _StaleConnection(str(e)) from None
            raise TransportError(f"connection to {origin.host}:{origin.port} failed: "
                                 f"{type(e).__name__}: {e}") from None
        except ValueError as e:
            raise TransportError(f"bad HTTP framing from {origin.host}:{origin.port}: {e}") from None
        finally:
            if keep and not self._closed and len(origin.idle) < self.max_idle:
                origin.idle.append((reader, writer))
            else:
                _close(writer)

    async def close(self) -> None:
        self._closed = True
        writers = [w for o in self._origins.values() for _, w in o.idle]
        for origin in self._origins.values():
            origin.idle.clear()
        for writer in writers:
            _close(writer)
        for writer in writers:
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass


class _StaleConnection(Exception):
    pass


def _split_target(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme, parts.hostname, port, path


def _parse_status(line: bytes) -> int:
    parts = line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"bad status line {line[:80]!r}")
    return int(parts[1])


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    total = 0
    while True:
        line = await reader.readline()
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        total += len(line)
        if total > MAX_HEADER_BYTES:
            raise ValueError("headers too large")
        if line in (b"\r\n", b"\n"):
            return headers
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise ValueError(f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], status: int) -> bytes:
    if status in (204, 304) or 100 <= status < 200:
        return b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks: list[bytes] = []
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise asyncio.IncompleteReadError(b"", None)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = headers.get("content-length")
    if length is not None:
        return await reader.readexactly(int(length))
    return await reader.read()


def _keep_alive(status_line: bytes, headers: dict[str, str]) -> bool:
    connection = headers.get("connection", "").lower()
    if "close" in connection:
        return False
    if status_line.startswith(b"HTTP/1.0"):
        return "keep-alive" in connection
    return "content-length" in headers or "chunked" in headers.get("transfer-encoding", "")


def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
    except (ConnectionError, OSError, RuntimeError):
        pass


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
