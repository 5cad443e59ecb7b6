"""Loopback HTTP/1.1 server on asyncio streams, run in a background thread.

The protocol servers in this package subclass `LoopbackServer` and answer
`handle(request)` with a `Reply`. A reply can also misbehave on purpose
(reset the connection, hang, cut the body short), which a framework server
would not let a test do.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import msgspec

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON; raises msgspec.DecodeError."""
        return _decode(self.body)


@dataclass
class Reply:
    """What to send back. `reset` aborts the connection (RST) instead of
    answering; `hang` never answers; `truncate` sends only that many body
    bytes after promising the full length, then closes."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset: bool = False
    hang: bool = False
    truncate: int | None = None
    close: bool = False

    @classmethod
    def json(cls, payload: Any, status: int = 200, **kw: Any) -> "Reply":
        return cls(status=status, body=_encode(payload), **kw)

    @classmethod
    def text(cls, text: str, status: int = 200, **kw: Any) -> "Reply":
        return cls(status=status, body=text.encode(), content_type="text/plain; charset=utf-8", **kw)


class LoopbackServer:
    """Base server: start() binds 127.0.0.1 (port 0 picks a free one) in a thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self.errors: list[str] = []
        """Exceptions raised by handle(), answered with HTTP 500."""
        self.connections = 0
        """TCP connections accepted so far (tests check client pooling with it)."""

    # -- lifecycle ----------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "LoopbackServer":
        if self._thread is not None:
            raise RuntimeError("server already started")
        self._thread = threading.Thread(target=self._thread_main, name=type(self).__name__, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError(f"server failed to start: {self._error}") from self._error
        if not self._ready.is_set():
            raise RuntimeError("server did not start within 10s")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None

    def __enter__(self) -> "LoopbackServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Run in the calling thread until interrupted (the command-line entry)."""
        self._thread_main(announce=True)

    def _thread_main(self, announce: bool = False) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._serve_connection, self.host, self.port))
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as e:  # reported to start()
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        if announce:
            print(f"listening on {self.url}", flush=True)
        try:
            loop.run_forever()
        except KeyboardInterrupt:
            loop.run_until_complete(self._shutdown())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _shutdown(self) -> None:
        self._closing = True
        if self._server is not None:
            # Stop accepting first and let connections already accepted reach
            # their handler (which aborts them): asyncio finishes an accept a few
            # loop steps later, and one finished after Server.close() fails and
            # leaks its socket.
            loop = asyncio.get_running_loop()
            for sock in self._server.sockets:
                loop.remove_reader(sock.fileno())
            me = asyncio.current_task()
            for _ in range(100):
                if all(t is me or t in self._tasks or t.done() for t in asyncio.all_tasks()):
                    break
                await asyncio.sleep(0)
            self._server.close()
        for writer in list(self._writers):
            # abort, not close: close() waits for unsent bytes, which a client that
            # stopped reading never takes, and the loop ends before they go.
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0)  # the aborted transports' close callbacks

    def call(self, fn: Any, *args: Any) -> Any:
        """Run fn(*args) on the server's loop thread and return its result."""
        if self._loop is None or not self._loop.is_running():
            return fn(*args)

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # -- protocol -----------------------------------------------------------

    async def handle(self, request: Request) -> Reply:
        return Reply.json({"detail": "Not Found"}, status=404)

    async def _serve_connection(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        if self._closing:  # accepted while shutting down
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                try:
                    reply = await self.handle(request)
                except Exception as e:  # a server bug: answer as a framework would
                    self.errors.append(f"{type(e).__name__}: {e}")
                    reply = Reply.text("Internal Server Error", status=500)
                if not await self._send(writer, reply):
                    return
                if request.headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        except asyncio.CancelledError:
            return
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, reply: Reply) -> bool:
        """Write the reply; False when the connection must end."""
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.hang:
            await asyncio.Event().wait()
        if reply.reset:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                # Linger 0 makes close() send RST instead of FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        phrase = HTTPStatus(reply.status).phrase if reply.status in HTTPStatus._value2member_map_ else ""
        head = [f"HTTP/1.1 {reply.status} {phrase}",
                f"Content-Type: {reply.content_type}",
                f"Content-Length: {len(reply.body)}"]
        head += [f"{k}: {v}" for k, v in reply.headers.items()]
        if reply.close or reply.truncate is not None:
            head.append("Connection: close")
        body = reply.body if reply.truncate is None else reply.body[: reply.truncate]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        return not (reply.close or reply.truncate is not None)


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    line = await reader.readline()
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3:
        raise ValueError("bad request line")
    method, target, _ = parts
    headers: dict[str, str] = {}
    while True:
        h = await reader.readline()
        if not h:
            return None
        if h in (b"\r\n", b"\n"):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    body = await reader.readexactly(length) if length else b""
    split = urlsplit(target)
    return Request(method.upper(), split.path or "/", split.query, headers, body)
