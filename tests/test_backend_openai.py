"""OpenAI-compatible backend against the loopback OpenAI test server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, AsyncIterator, Iterator

import pytest

from turnloom.backends.base import BackendError, GenRequest, SamplingParams
from turnloom.backends.openai_compat import OpenAIBackend, chatml_messages
from turnloom.testing.conformance import BackendConformance
from turnloom.testing.faults import Fault
from turnloom.testing.openai_server import OpenAITestServer
from turnloom.tokenizer import ByteTokenizer, ChatMLFormat

TOK = ByteTokenizer()
FAST = dict(backoff=0.01, backoff_max=0.05, timeout=5.0)


@contextlib.asynccontextmanager
async def started(backend: OpenAIBackend) -> AsyncIterator[OpenAIBackend]:
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


def req(rid: str, text: str = "hello there", **params: Any) -> GenRequest:
    params.setdefault("max_new_tokens", 8)
    params.setdefault("temperature", 1.0)
    params.setdefault("seed", 7)
    return GenRequest(rid=rid, input_ids=TOK.encode(text), params=SamplingParams(**params))


@pytest.fixture
def server() -> Iterator[OpenAITestServer]:
    with OpenAITestServer() as s:
        yield s


def _conformance_backend(arun: Any, **kw: Any) -> Iterator[OpenAIBackend]:
    with OpenAITestServer() as s:
        b = OpenAIBackend(s.url + "/v1", "turnloom/hash-model", tokenizer=TOK, **kw)
        arun(b.start())
        yield b
        arun(b.close())


class TestCompletionsWithTokenIds(BackendConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls, arun: Any) -> Iterator[OpenAIBackend]:
        yield from _conformance_backend(arun, return_token_ids=True)


class TestCompletionsReencoded(BackendConformance):
    exact_token_ids = False

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls, arun: Any) -> Iterator[OpenAIBackend]:
        yield from _conformance_backend(arun)


class TestChatCompletions(BackendConformance):
    exact_token_ids = False  # reply text is re-encoded

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls, arun: Any) -> Iterator[OpenAIBackend]:
        yield from _conformance_backend(arun, endpoint="chat")


def test_settings_errors_name_the_field() -> None:
    with pytest.raises(BackendError, match="temprature"):
        OpenAIBackend.from_settings({"model": "m", "temprature": 1})
    with pytest.raises(BackendError, match="requests_per_minute"):
        OpenAIBackend.from_settings({"model": "m", "requests_per_minute": 0})
    with pytest.raises(BackendError, match="model"):
        OpenAIBackend.from_settings({"base_url": "http://127.0.0.1:1/v1"})
    chat = OpenAIBackend.from_settings({"model": "m", "endpoint": "chat"})
    with pytest.raises(BackendError, match="tokenizer"):
        asyncio.run(chat.start())
    chat.use_chat_format(ChatMLFormat(TOK))
    assert chat.messages_from_ids(TOK.encode("hi")) == [{"role": "user", "content": "hi"}]


def test_request_body_mapping(server: OpenAITestServer) -> None:
    async def main() -> None:
        b = OpenAIBackend(server.url + "/v1", "my-model", extra_body={"user": "sim"}, **FAST)
        async with started(b) as backend:
            await backend.generate([
                req("a", stop=("zz",), seed=11, top_p=0.9),
                req("b", top_k=4, repetition_penalty=1.2, stop_token_ids=(300,))])

    asyncio.run(main())
    a, b = sorted(server.requests, key=lambda body: "top_k" in body)
    assert a == {"model": "my-model", "prompt": TOK.encode("hello there"), "max_tokens": 8,
                 "temperature": 1.0, "top_p": 0.9, "n": 1, "stream": False, "stop": ["zz"],
                 "seed": 11, "user": "sim"}
    assert b["top_k"] == 4 and b["repetition_penalty"] == 1.2 and b["stop_token_ids"] == [300]


def test_cached_tokens_from_usage(server: OpenAITestServer) -> None:
    async def main() -> None:
        async with started(OpenAIBackend(server.url + "/v1", "m", **FAST)) as backend:
            first, = await backend.generate([req("a", "a long shared prompt " * 4)])
            again, = await backend.generate([req("b", "a long shared prompt " * 4)])
            assert first.cached_tokens == 0
            assert again.cached_tokens == again.prompt_tokens - 1

    asyncio.run(main())


def test_chat_sends_messages_from_chatml(server: OpenAITestServer) -> None:
    fmt = ChatMLFormat(TOK)
    prompt = fmt.segment("system", "be brief") + fmt.segment("user", "hi") + fmt.generation_prefix()

    async def main() -> None:
        b = OpenAIBackend(server.url + "/v1", "m", endpoint="chat", tokenizer=TOK, **FAST)
        async with started(b) as backend:
            (r,) = await backend.generate([GenRequest(rid="c", input_ids=prompt,
                                                      params=SamplingParams(seed=1))])
            assert r.error is None and r.prompt_tokens == len(prompt)

    asyncio.run(main())
    assert server.requests[-1]["messages"] == [{"role": "system", "content": "be brief"},
                                               {"role": "user", "content": "hi"}]


def test_chatml_messages() -> None:
    assert chatml_messages("plain text") == [{"role": "user", "content": "plain text"}]
    text = "<|im_start|>user\nA\nB<|im_end|>\n<|im_start|>assistant\nC<|im_end|>\n" \
           "<|im_start|>user\nD<|im_end|>\n<|im_start|>assistant\n"
    assert chatml_messages(text) == [{"role": "user", "content": "A\nB"},
                                     {"role": "assistant", "content": "C"},
                                     {"role": "user", "content": "D"}]
    with pytest.raises(ValueError, match="inside a assistant"):
        chatml_messages("<|im_start|>user\nA<|im_end|>\n<|im_start|>assistant\nhalf")
    with pytest.raises(ValueError):
        chatml_messages("junk<|im_start|>user\nA<|im_end|>\n")


def test_429_honours_retry_after(server: OpenAITestServer) -> None:
    server.inject("status", status=429, retry_after=0.3)

    async def main() -> float:
        async with started(OpenAIBackend(server.url + "/v1", "m", **FAST)) as backend:
            t = time.monotonic()
            (r,) = await backend.generate([req("a")])
            assert r.error is None
            return time.monotonic() - t

    assert asyncio.run(main()) >= 0.3
    assert server.faults.count("/v1/completions") == 2


@pytest.mark.parametrize("kind", ["reset", "malformed", "truncate", "hang"])
def test_transient_faults_are_retried(server: OpenAITestServer, kind: str) -> None:
    server.inject(kind)

    async def main() -> None:
        b = OpenAIBackend(server.url + "/v1", "m", backoff=0.01, timeout=0.5)
        async with started(b) as backend:
            results = await backend.generate([req("a"), req("b", "other")])
            assert [r.error for r in results] == [None, None]

    asyncio.run(main())


def test_persistent_5xx_gives_error_results(server: OpenAITestServer) -> None:
    server.inject("status", times=100, status=502)

    async def main() -> None:
        async with started(OpenAIBackend(server.url + "/v1", "m", retries=2, **FAST)) as backend:
            results = await backend.generate([req("a"), req("b")])
            assert [r.finish_reason for r in results] == ["error", "error"]
            assert all(r.error and "HTTP 502" in r.error and "3 attempts" in r.error
                       for r in results)

    asyncio.run(main())
    assert server.faults.count("/v1/completions") == 6


def test_bad_request_is_not_retried(server: OpenAITestServer) -> None:
    async def main() -> None:
        b = OpenAIBackend(server.url + "/v1", "m", extra_body={"n": 3}, **FAST)
        async with started(b) as backend:
            (r,) = await backend.generate([req("a")])
            assert r.finish_reason == "error" and r.error and "HTTP 400" in r.error
            assert "n must be 1" in r.error

    asyncio.run(main())
    assert server.faults.count("/v1/completions") == 1


def test_api_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with OpenAITestServer(api_key="sk-test") as s:
        monkeypatch.setenv("MY_KEY", "sk-test")

        async def main(settings: dict[str, Any]) -> Any:
            async with started(OpenAIBackend.from_settings(settings)) as backend:
                (r,) = await backend.generate([req("a")])
                return r

        base = {"model": "m", "base_url": s.url + "/v1", "backoff": 0.01}
        assert asyncio.run(main({**base, "api_key_env": "MY_KEY"})).error is None
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        denied = asyncio.run(main(base))
        assert denied.finish_reason == "error" and "HTTP 401" in denied.error


def test_requests_per_minute_limit(server: OpenAITestServer) -> None:
    async def main() -> float:
        b = OpenAIBackend(server.url + "/v1", "m", requests_per_minute=1200, **FAST)
        async with started(b) as backend:
            t = time.monotonic()
            results = await backend.generate([req(f"r{i}", f"p{i}") for i in range(26)])
            assert all(r.error is None for r in results)
            return time.monotonic() - t

    # 20 per second with a one-second burst of 20: the last 6 wait ~0.3s.
    assert asyncio.run(main()) >= 0.25


def test_tokens_per_minute_limit(server: OpenAITestServer) -> None:
    async def main() -> float:
        # 380 tokens/s with a one-second bucket; each request costs 11 + 8 = 19.
        b = OpenAIBackend(server.url + "/v1", "m", tokens_per_minute=19 * 20 * 60, **FAST)
        async with started(b) as backend:
            t = time.monotonic()
            results = await backend.generate([req(f"r{i}") for i in range(30)])
            assert all(r.error is None for r in results)
            return time.monotonic() - t

    # 570 tokens against a 380 bucket: the rest waits about 0.5s.
    assert 0.4 <= asyncio.run(main()) < 3.0
