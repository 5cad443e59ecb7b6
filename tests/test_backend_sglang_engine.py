"""In-process SGLang backend, with a fake `sglang` module in sys.modules.

The fake's `Engine.async_generate` answers like SGLang's: a list of
{"text", "output_ids", "meta_info"} dicts for a batch of input_ids, output ids
untrimmed (stop token and stop-string tokens kept), text trimmed.
"""

from __future__ import annotations

import asyncio
import sys
import types
from typing import Any, Iterator

import pytest

from turnloom._core import RadixCache
from turnloom.backends.base import BackendError, GenRequest, SamplingParams
from turnloom.backends.sglang_engine import SGLangEngineBackend
from turnloom.testing.conformance import BackendConformance
from turnloom.testing.fake_model import Detokenizer, HashModel, decode_loop, output_text
from turnloom.tokenizer import ByteTokenizer

TOK = ByteTokenizer()


class _HFLike:
    """What SGLang keeps as tokenizer_manager.tokenizer (decode is all we use)."""

    def decode(self, ids: Any) -> str:
        return TOK.decode(ids)


class FakeEngine:
    instances: list["FakeEngine"] = []

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("model_path") == "missing/model":
            raise OSError("model not found")
        self.kwargs = kwargs
        # sglang.Engine keeps its ServerArgs; unset fields are None, as there.
        self.server_args = types.SimpleNamespace(
            model_path=kwargs["model_path"], context_length=kwargs.get("context_length"),
            max_running_requests=kwargs.get("max_running_requests"),
            dp_size=kwargs.get("dp_size", 1), enable_dp_attention=False)
        self.calls: list[dict[str, Any]] = []
        self.cache = RadixCache(4096)
        self.model = HashModel(eos_token_id=TOK.eos_token_ids[0])
        self.detok = Detokenizer.bytes()
        self.tokenizer_manager = types.SimpleNamespace(tokenizer=_HFLike())
        self._scheduler_init_result = types.SimpleNamespace(
            scheduler_infos=[{"status": "ready", "max_total_num_tokens": 4096,
                              "max_req_input_len": 4095}])
        self.shut = False
        FakeEngine.instances.append(self)

    async def async_generate(self, prompt: Any = None, sampling_params: Any = None,
                             input_ids: Any = None, **kw: Any) -> Any:
        self.calls.append({"input_ids": input_ids, "sampling_params": sampling_params, **kw})
        single = isinstance(input_ids[0], int)
        prompts = [input_ids] if single else input_ids
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        if any(len(p) > 3000 for p in prompts):
            raise ValueError("The input is longer than the model's context length")
        outs = []
        for ids, sp in zip(prompts, params):
            cached = self.cache.match_len(ids[:-1])
            gen = decode_loop(self.model, ids, sp, self.detok, TOK.eos_token_ids)
            self.cache.insert(ids + gen.output_ids[:-1])
            outs.append({"text": output_text(gen, self.detok), "output_ids": gen.output_ids,
                         "meta_info": {"id": "x", "finish_reason": gen.finish,
                                       "prompt_tokens": len(ids),
                                       "completion_tokens": len(gen.output_ids),
                                       "cached_tokens": cached, "e2e_latency": 0.001}})
        await asyncio.sleep(0)
        return outs[0] if single else outs

    def shutdown(self) -> None:
        self.shut = True


@pytest.fixture
def fake_sglang(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    module = types.ModuleType("sglang")
    module.Engine = FakeEngine  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sglang", module)
    FakeEngine.instances.clear()
    yield module


class TestEngineConformance(BackendConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls, arun: Any) -> Iterator[SGLangEngineBackend]:
        with pytest.MonkeyPatch.context() as mp:
            module = types.ModuleType("sglang")
            module.Engine = FakeEngine  # type: ignore[attr-defined]
            mp.setitem(sys.modules, "sglang", module)
            b = SGLangEngineBackend("org/model", engine_args={"mem_fraction_static": 0.5})
            arun(b.start())
            yield b
            arun(b.close())


def test_missing_sglang_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sglang", None)  # import raises ImportError
    backend = SGLangEngineBackend("org/model")
    with pytest.raises(BackendError, match=r"pip install 'turnloom\[sglang\]'.*CUDA"):
        asyncio.run(backend.start())


def test_engine_failure_is_a_backend_error(fake_sglang: Any) -> None:
    with pytest.raises(BackendError, match="model not found"):
        asyncio.run(SGLangEngineBackend("missing/model").start())


def test_settings(fake_sglang: Any) -> None:
    with pytest.raises(BackendError, match="engine_argz"):
        SGLangEngineBackend.from_settings({"model_path": "m", "engine_argz": {}})
    with pytest.raises(BackendError, match="model_path"):
        SGLangEngineBackend.from_settings({"model_path": "m", "engine_args": {"model_path": "n"}})
    b = SGLangEngineBackend.from_settings({"model_path": "org/m", "max_batch": 2,
                                           "engine_args": {"tp_size": 1}})

    async def main() -> None:
        await b.start()
        try:
            info = b.info()
            assert (info.name, info.model, info.max_batch) == ("sglang-engine", "org/m", 2)
            assert info.cache_capacity_tokens == 4096
            assert FakeEngine.instances[-1].kwargs == {"model_path": "org/m", "tp_size": 1}
        finally:
            await b.close()
        assert FakeEngine.instances[-1].shut

    asyncio.run(main())


@pytest.mark.parametrize("engine_args,max_batch", [
    ({"max_running_requests": 96}, 96),
    ({"max_running_requests": 96, "dp_size": 2}, 192),
    # Unset: SGLang's default, half the KV pool (4096 tokens) within its request pool.
    ({}, 2048),
])
def test_batch_size_is_the_engines_running_capacity(fake_sglang: Any, engine_args: Any,
                                                    max_batch: int) -> None:
    b = SGLangEngineBackend("org/m", engine_args=engine_args)

    async def main() -> None:
        await b.start()
        try:
            assert b.info().max_batch == max_batch
        finally:
            await b.close()

    asyncio.run(main())


def test_request_mapping_and_batches(fake_sglang: Any) -> None:
    b = SGLangEngineBackend("org/m", max_batch=2)
    requests = [GenRequest(rid=f"r{i}", input_ids=TOK.encode(f"prompt {i}"),
                           params=SamplingParams(max_new_tokens=5, seed=i, stop=("q",),
                                                 stop_token_ids=(9,), top_k=3))
                for i in range(3)]

    async def main() -> None:
        await b.start()
        try:
            results = await b.generate(requests)
            assert [r.rid for r in results] == ["r0", "r1", "r2"]
            assert all(r.error is None for r in results)
        finally:
            await b.close()

    asyncio.run(main())
    calls = FakeEngine.instances[-1].calls
    assert [len(c["input_ids"]) for c in calls] == [2, 1]
    assert calls[0]["input_ids"] == [requests[0].input_ids, requests[1].input_ids]
    assert calls[0]["sampling_params"][1] == {
        "max_new_tokens": 5, "temperature": 0.7, "top_p": 1.0, "top_k": 3,
        "repetition_penalty": 1.0, "stop": ["q"], "stop_token_ids": [9], "sampling_seed": 1}


def test_engine_errors_become_error_results(fake_sglang: Any) -> None:
    b = SGLangEngineBackend("org/m")
    ok = GenRequest(rid="ok", input_ids=[1, 2, 3], params=SamplingParams(max_new_tokens=3))
    huge = GenRequest(rid="huge", input_ids=[1] * 4000, params=SamplingParams())

    async def main() -> None:
        await b.start()
        try:
            results = await b.generate([ok, huge])
            assert [r.finish_reason for r in results] == ["error", "error"]
            assert "context length" in (results[1].error or "")
            (alone,) = await b.generate([ok])
            assert alone.error is None
        finally:
            await b.close()

    asyncio.run(main())


def test_abort_and_bad_items(fake_sglang: Any) -> None:
    b = SGLangEngineBackend("org/m")
    reqs = [GenRequest(rid=f"r{i}", input_ids=[5, 6, i], params=SamplingParams(max_new_tokens=3))
            for i in range(3)]

    async def main() -> None:
        await b.start()
        engine = FakeEngine.instances[-1]
        real = engine.async_generate

        async def mangled(**kw: Any) -> Any:
            outs = await real(**kw)
            outs[0]["meta_info"]["finish_reason"] = {"type": "abort", "message": "OOM"}
            del outs[1]["output_ids"]
            return outs

        engine.async_generate = mangled  # type: ignore[method-assign]
        try:
            results = await b.generate(reqs)
            assert [r.finish_reason for r in results] == ["error", "error", "length"]
            assert "OOM" in (results[0].error or "")
            assert "output_ids" in (results[1].error or "")

            async def short(**kw: Any) -> Any:
                return (await real(**kw))[:-1]

            engine.async_generate = short  # type: ignore[method-assign]
            results = await b.generate(reqs)
            assert all(r.finish_reason == "error" and "2 results" in (r.error or "")
                       for r in results)
        finally:
            await b.close()

    asyncio.run(main())


def test_stop_string_cut_uses_engine_tokenizer(fake_sglang: Any) -> None:
    b = SGLangEngineBackend("org/m")

    async def main() -> None:
        await b.start()
        try:
            (free,) = await b.generate([GenRequest(rid="f", input_ids=[7, 8, 9],
                                                   params=SamplingParams(max_new_tokens=20, seed=4))])
            text = TOK.decode([t for t in free.output_ids if t < 256])
            stop = text[6:8]
            (cut,) = await b.generate([GenRequest(
                rid="c", input_ids=[7, 8, 9],
                params=SamplingParams(max_new_tokens=20, seed=4, stop=(stop,)))])
            assert cut.finish_reason == "stop" and stop not in TOK.decode(cut.output_ids)
            assert cut.output_ids == free.output_ids[: len(cut.output_ids)]
        finally:
            await b.close()

    asyncio.run(main())
