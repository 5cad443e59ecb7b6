"""The scripted backend keeps the Backend contract and is deterministic."""

from __future__ import annotations

import asyncio

import pytest

from turnloom.backends.base import BackendError, GenRequest, SamplingParams
from turnloom.backends.scripted import ScriptedBackend
from turnloom.testing.conformance import BackendConformance


class TestScriptedConformance(BackendConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls, arun):  # type: ignore[no-untyped-def]
        b = ScriptedBackend()
        arun(b.start())
        yield b
        arun(b.close())


def request(ids: list[int], seed: int, **params: object) -> GenRequest:
    return GenRequest(rid=str(seed), input_ids=ids, params=SamplingParams(seed=seed, **params))


def test_same_prompt_and_seed_same_reply_across_instances() -> None:
    a = asyncio.run(ScriptedBackend().generate([request([1, 2, 3], 5)]))[0]
    b = asyncio.run(ScriptedBackend().generate([request([1, 2, 3], 5)]))[0]
    assert a.output_ids == b.output_ids and a.text == b.text
    assert a.output_ids[-1] == ScriptedBackend().chat_format.end_id  # EOS appended


def test_settings_and_errors() -> None:
    b = ScriptedBackend.from_settings({"lines": ["only line"], "latency_s": 0.0})
    r = asyncio.run(b.generate([request([7], 1)]))[0]
    assert r.text == "only line" and r.finish_reason == "stop"
    with pytest.raises(BackendError, match="invalid scripted backend settings"):
        ScriptedBackend.from_settings({"linez": []})
    with pytest.raises(BackendError, match="must not be empty"):
        ScriptedBackend.from_settings({"lines": []})


def test_failures_and_cache_model() -> None:
    b = ScriptedBackend(fail_every=2, cache_capacity_tokens=1000)
    asyncio.run(b.start())
    rs = asyncio.run(b.generate([request([1, 2, 3], s) for s in range(4)]))
    assert [r.finish_reason for r in rs] == ["stop", "error", "stop", "error"]
    assert rs[1].error
    again = asyncio.run(b.generate([request([1, 2, 3], 9)]))[0]
    assert again.cached_tokens == 3
