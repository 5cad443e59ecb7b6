"""CPU per request of HTTP clients against one fast loopback server.

The server (turnloom's OpenAI test server) runs in its own process, so the
figure is the client process's CPU time (user + system) divided by the number
of requests: what the client library costs, not the server. Each candidate
sends the same chat-completion body at the same concurrency over a pool of
that many keep-alive connections:

- ``turnloom``: turnloom's own `HTTPClient` (the one the backends use);
- ``aiohttp``: a raw `aiohttp.ClientSession.post`;
- ``httpx``: a raw `httpx.AsyncClient.post` (HTTP/1.1);
- ``openai``: the official SDK's `AsyncOpenAI().chat.completions.create`, the
  way a plain asyncio loop would call it.

Usage: python bench/bench_http_client.py [--requests 3000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from typing import Any, Awaitable, Callable, Coroutine, Iterator

BODY = {"model": "turnloom/hash-model", "max_tokens": 4, "temperature": 1.0, "seed": 1,
        "messages": [{"role": "user", "content": "Say something short."}]}


@contextlib.contextmanager
def loopback_server() -> Iterator[str]:
    """The OpenAI test server in a child process; yields its base URL (…/v1)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "turnloom.testing.openai_server",
                             "--port", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening" not in line:
            raise RuntimeError(f"test server did not start: {line!r}")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(10)


async def _drive(send: Callable[[], Awaitable[Any]], requests: int, concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            await send()

    await asyncio.gather(*(one() for _ in range(requests)))


async def run_turnloom(url: str, requests: int, concurrency: int) -> None:
    from turnloom.backends._http import HTTPClient

    client = HTTPClient(max_connections=concurrency)
    target = url + "/chat/completions"

    async def send() -> None:
        r = await client.post_json(target, BODY)
        assert r.status == 200, r.status
        r.json()

    try:
        await _drive(send, requests, concurrency)
    finally:
        await client.close()


async def run_aiohttp(url: str, requests: int, concurrency: int) -> None:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        target = url + "/chat/completions"
        payload = json.dumps(BODY).encode()

        async def send() -> None:
            async with session.post(target, data=payload,
                                    headers={"Content-Type": "application/json"}) as r:
                assert r.status == 200, r.status
                json.loads(await r.read())

        await _drive(send, requests, concurrency)


async def run_httpx(url: str, requests: int, concurrency: int) -> None:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:
        target = url + "/chat/completions"

        async def send() -> None:
            r = await client.post(target, json=BODY)
            assert r.status_code == 200, r.status_code
            r.json()

        await _drive(send, requests, concurrency)


async def run_openai(url: str, requests: int, concurrency: int) -> None:
    import openai

    # The SDK's own HTTP library (httpx, or its successor in newer SDKs).
    base = openai.DefaultAsyncHttpxClient.__mro__[1]
    http_lib: Any = sys.modules[base.__module__.split(".")[0]]
    limits = http_lib.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0,
                                http_client=openai.DefaultAsyncHttpxClient(limits=limits))

    async def send() -> None:
        await client.chat.completions.create(  # type: ignore[call-overload]
            model=BODY["model"], messages=BODY["messages"], max_tokens=4,
            temperature=1.0, seed=1)

    try:
        await _drive(send, requests, concurrency)
    finally:
        await client.close()


CANDIDATES: dict[str, Callable[[str, int, int], Coroutine[Any, Any, None]]] = {
    "turnloom": run_turnloom, "aiohttp": run_aiohttp, "httpx": run_httpx, "openai": run_openai}


def measure(name: str, url: str, requests: int, concurrency: int) -> dict[str, float]:
    run = CANDIDATES[name]
    asyncio.run(run(url, min(200, requests), concurrency))  # warm-up: imports, connections
    cpu0, wall0 = time.process_time(), time.perf_counter()
    asyncio.run(run(url, requests, concurrency))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"cpu_ms_per_request": 1000 * cpu / requests, "requests_per_s": requests / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--only", nargs="*", choices=sorted(CANDIDATES), default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    names = args.only or list(CANDIDATES)
    results: dict[str, dict[str, float]] = {}
    with loopback_server() as url:
        for name in names:
            results[name] = measure(name, url, args.requests, args.concurrency)
    if args.json:
        print(json.dumps(results))
        return
    print(f"{args.requests} chat requests, concurrency {args.concurrency}, "
          f"{os.cpu_count()} CPUs; client process CPU only")
    print(f"{'client':10} {'CPU ms/request':>15} {'requests/s':>11}")
    for name, r in results.items():
        print(f"{name:10} {r['cpu_ms_per_request']:15.3f} {r['requests_per_s']:11.0f}")


if __name__ == "__main__":
    main()
