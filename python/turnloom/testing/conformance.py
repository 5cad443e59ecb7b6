"""Contract tests every `Backend` must pass, as a pytest mixin.

A backend's test module subclasses `BackendConformance` and supplies a
`backend` fixture (a started backend); it may override `tokenizer` (the
tokenizer whose ids the backend's model speaks; `ByteTokenizer` by default)::

    class TestMyBackendConformance(BackendConformance):
        @pytest.fixture(scope="class")
        @classmethod
        def backend(cls, arun):
            b = MyBackend(...)
            arun(b.start())
            yield b
            arun(b.close())

Class-scoped fixtures on a class must be classmethods (pytest deprecates
instance-method ones); a function-scoped `backend` may be a plain method.

`arun(coro)` runs a coroutine on one event loop kept for the whole test class,
so a backend's connections stay on the loop that opened them; no pytest
async plugin is needed.

The tests ask for few tokens so that a small CPU model passes them quickly,
and check behaviour (shapes, determinism under a seed, stop handling), never
wording. Sampling is at temperature 1 with explicit seeds.

A message backend (`takes = "messages"`, a chat API) gets each prompt as one
user message; its `prompt_tokens` are the server's count (its chat template
included), so they are checked for order, not equality with local ids.
`supports_stop_token_ids = False` skips that test for a server that ignores
them (llama.cpp's Python server).
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Iterator, Sequence, TypeVar

import pytest

from turnloom.backends.base import Backend, BackendInfo, GenRequest, GenResult, SamplingParams
from turnloom.tokenizer import ByteTokenizer, Tokenizer

T = TypeVar("T")

FINISHED = ("stop", "length")
PROMPTS = (
    "Hi",
    "The sky is",
    "Once upon a time, there",
    "Write one short sentence about the sea:",
    "List three colours, separated by commas, and then say why you chose them:",
)


class LoopRunner:
    """Runs coroutines to completion on one private event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def __call__(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        loop = self.loop
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


def check_result(result: Any, request: GenRequest, exact_ids: bool = True) -> GenResult:
    """The per-result invariants every backend keeps; returns the result.
    `exact_ids` is False for backends that re-encode reply text (chat APIs):
    their ids can be fewer than were generated. A request with `messages`
    has the server's prompt count, which includes its chat template."""
    assert isinstance(result, GenResult), f"expected GenResult, got {type(result).__name__}"
    assert result.rid == request.rid
    assert result.finish_reason in FINISHED, (result.finish_reason, result.error)
    assert result.error is None
    if request.messages is None:
        assert result.prompt_tokens == len(request.input_ids)
    else:
        assert result.prompt_tokens >= 1
    assert 0 <= result.cached_tokens <= result.prompt_tokens
    assert result.latency_s >= 0.0
    assert isinstance(result.text, str)
    assert all(isinstance(t, int) for t in result.output_ids)
    assert len(result.output_ids) <= request.params.max_new_tokens
    if result.finish_reason == "length" and exact_ids:
        assert len(result.output_ids) == request.params.max_new_tokens
    return result


class BackendConformance:
    """Mixin of contract tests; subclasses provide the `backend` fixture."""

    max_new_tokens = 8
    exact_token_ids = True
    """Set False for a backend whose output ids come from re-encoding text."""
    supports_stop_token_ids = True
    seeds_reproduce = True
    """False skips the same-seed test for a server known not to reproduce."""
    seeds: Sequence[int] = (11, 23, 37, 41, 53, 67)

    # -- fixtures ---------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def arun(cls) -> Iterator[Callable[[Awaitable[Any]], Any]]:
        runner = LoopRunner()
        try:
            yield runner
        finally:
            runner.close()

    @pytest.fixture(scope="class")
    @classmethod
    def tokenizer(cls) -> Tokenizer:
        tok: Tokenizer = ByteTokenizer()  # type: ignore[assignment]
        return tok

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls) -> Backend:
        raise NotImplementedError("a BackendConformance subclass must define the `backend` fixture")

    # -- helpers ----------------------------------------------------------

    def request(self, tokenizer: Tokenizer, rid: str, text: str = PROMPTS[2],
                **params: Any) -> GenRequest:
        params.setdefault("max_new_tokens", self.max_new_tokens)
        params.setdefault("temperature", 1.0)
        messages = [{"role": "user", "content": text}] if self.takes_messages else None
        return GenRequest(rid=rid, input_ids=tokenizer.encode(text),
                          params=SamplingParams(**params), messages=messages)

    takes_messages = False
    """Set by the `_kind` fixture from the backend's `takes`."""

    @pytest.fixture(autouse=True)
    def _kind(self, backend: Backend) -> None:
        self.takes_messages = getattr(backend, "takes", "tokens") == "messages"

    def generate(self, arun: Callable[[Awaitable[Any]], Any], backend: Backend,
                 requests: Sequence[GenRequest]) -> list[GenResult]:
        results = arun(backend.generate(list(requests)))
        assert isinstance(results, list)
        assert len(results) == len(requests)
        return [check_result(r, q, self.exact_token_ids) for r, q in zip(results, requests)]

    def one(self, arun: Callable[[Awaitable[Any]], Any], backend: Backend,
            request: GenRequest) -> GenResult:
        return self.generate(arun, backend, [request])[0]

    # -- tests ------------------------------------------------------------

    def test_info_well_formed(self, backend: Backend) -> None:
        info = backend.info()
        assert isinstance(info, BackendInfo)
        assert isinstance(info.name, str) and info.name
        assert isinstance(info.model, str)
        assert info.cache_capacity_tokens is None or info.cache_capacity_tokens > 0
        assert info.max_batch >= 1
        assert info.replicas >= 1

    def test_empty_batch(self, arun: Any, backend: Backend) -> None:
        assert arun(backend.generate([])) == []

    def test_results_in_request_order(self, arun: Any, backend: Backend,
                                      tokenizer: Tokenizer) -> None:
        # Distinct prompt lengths make any reordering visible in prompt_tokens.
        requests = [self.request(tokenizer, f"order-{i}", text, seed=100 + i)
                    for i, text in enumerate(PROMPTS)]
        assert len({len(r.input_ids) for r in requests}) == len(requests)
        forward = self.generate(arun, backend, requests)
        reversed_requests = [
            GenRequest(rid=r.rid + "-rev", input_ids=r.input_ids, params=r.params,
                       messages=r.messages)
            for r in reversed(requests)
        ]
        backward = self.generate(arun, backend, reversed_requests)
        if self.takes_messages:
            # The server counts its template too, but longer prompts still count more.
            counts = [r.prompt_tokens for r in forward]
            assert counts == sorted(counts) and len(set(counts)) == len(counts), counts
            assert [r.prompt_tokens for r in backward] == counts[::-1]

    def test_max_new_tokens_gives_length(self, arun: Any, backend: Backend,
                                         tokenizer: Tokenizer) -> None:
        requests = [self.request(tokenizer, f"len-{s}", PROMPTS[3], max_new_tokens=3, seed=s)
                    for s in self.seeds[:4]]
        results = self.generate(arun, backend, requests)
        assert any(r.finish_reason == "length" for r in results), [r.output_ids for r in results]

    def test_same_seed_same_output(self, arun: Any, backend: Backend,
                                   tokenizer: Tokenizer) -> None:
        if not self.seeds_reproduce:
            pytest.skip("this server does not reproduce seeded requests")
        first = self.one(arun, backend, self.request(tokenizer, "seed-a", seed=1234))
        second = self.one(arun, backend, self.request(tokenizer, "seed-b", seed=1234))
        assert (first.output_ids, first.text) == (second.output_ids, second.text)

    def test_different_seeds_usually_differ(self, arun: Any, backend: Backend,
                                            tokenizer: Tokenizer) -> None:
        requests = [self.request(tokenizer, f"div-{s}", seed=s) for s in self.seeds[:4]]
        outputs = {(tuple(r.output_ids), r.text)
                   for r in self.generate(arun, backend, requests)}
        assert len(outputs) >= 2

    def test_stop_token_ids(self, arun: Any, backend: Backend, tokenizer: Tokenizer) -> None:
        if not self.supports_stop_token_ids:
            pytest.skip("this server ignores stop_token_ids")
        eos = set(tokenizer.eos_token_ids)
        for seed in self.seeds:
            free = self.one(arun, backend, self.request(
                tokenizer, f"stoptok-free-{seed}", max_new_tokens=12, seed=seed))
            ids = free.output_ids
            if not ids:
                pytest.skip("the backend returns no output ids (no tokenizer for a chat API)")
            # A token first seen past the start and before the length limit, so
            # the stop is visible and not reported as "length".
            j = next((j for j in range(1, min(len(ids), 11))
                      if ids[j] not in eos and ids[j] not in ids[:j]), None)
            if j is None:
                continue
            stopped = self.one(arun, backend, self.request(
                tokenizer, f"stoptok-{seed}", max_new_tokens=12, seed=seed,
                stop_token_ids=(ids[j],)))
            assert stopped.finish_reason == "stop"
            assert stopped.output_ids in (ids[:j], ids[: j + 1])
            return
        pytest.fail("no seed produced an output long enough to test stop_token_ids")

    def test_stop_strings(self, arun: Any, backend: Backend, tokenizer: Tokenizer) -> None:
        if not self.seeds_reproduce:
            pytest.skip("compares two seeded requests: this server does not reproduce them")
        eos = set(tokenizer.eos_token_ids)
        for seed in self.seeds:
            free = self.one(arun, backend, self.request(
                tokenizer, f"stopstr-free-{seed}", max_new_tokens=16, seed=seed))
            ids = [t for t in free.output_ids if t not in eos]
            full = tokenizer.decode(ids) if self.exact_token_ids else free.text
            stop = _pick_stop_string(full)
            if stop is None:
                continue
            pos = full.find(stop)
            stopped = self.one(arun, backend, self.request(
                tokenizer, f"stopstr-{seed}", max_new_tokens=16, seed=seed, stop=(stop,)))
            assert stopped.finish_reason == "stop"
            assert stop not in stopped.text
            assert stop not in tokenizer.decode(stopped.output_ids)
            if self.exact_token_ids:
                assert stopped.output_ids == free.output_ids[: len(stopped.output_ids)]
            # Re-encoded ids of a cut reply need not prefix the full reply's (a
            # real tokenizer merges differently at the cut): compare text.
            assert full[:pos].startswith(stopped.text)
            return
        pytest.fail("no seed produced text usable as a stop string")


def _pick_stop_string(text: str) -> str | None:
    """A two-character piece from past the start of `text`, clean enough to match on."""
    for start in range(max(1, len(text) // 3), len(text) - 1):
        piece = text[start:start + 2]
        if piece.strip() == piece and piece.isprintable() and "\ufffd" not in piece:
            return piece
    return None
