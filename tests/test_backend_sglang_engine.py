"""In-process SGLang backend, with a fake `sglang` module in sys.modules.

The fake's `Engine.async_generate` answers like SGLang's (0.5.6 unless a
test says otherwise): a list of {"text", "output_ids", "meta_info"} dicts for
a batch of input_ids, output ids untrimmed (stop token and stop-string tokens
kept), text trimmed; one prompt too long for the context fails the whole
batch with ValueError (tokenizer_manager._validate_one_request); the seed is
honoured only with enable_deterministic_inference. `Engine0523` has 0.5.23's
ServerArgs (a msgspec Struct read through resolved_dict) and its scheduler
reports effective_max_running_requests_per_dp.
"""

from __future__ import annotations

import asyncio
import sys
import types
from typing import Any, Iterator

import msgspec
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
    total_may_fill_context = False  # 0.5.6 refuses prompt + max_new_tokens == context_len

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("model_path") == "missing/model":
            raise OSError("model not found")
        self.kwargs = kwargs
        # sglang.Engine keeps its ServerArgs; unset fields are None, as there.
        self.server_args = types.SimpleNamespace(
            model_path=kwargs["model_path"], context_length=kwargs.get("context_length"),
            max_running_requests=kwargs.get("max_running_requests"),
            dp_size=kwargs.get("dp_size", 1), enable_dp_attention=False,
            enable_deterministic_inference=kwargs.get("enable_deterministic_inference", False))
        self.deterministic = self.server_args.enable_deterministic_inference
        self.calls: list[dict[str, Any]] = []
        self.cache = RadixCache(4096)
        self.model = HashModel(eos_token_id=TOK.eos_token_ids[0])
        self.detok = Detokenizer.bytes()
        self.tokenizer_manager = types.SimpleNamespace(
            tokenizer=_HFLike(), context_len=kwargs.get("context_length") or 3000)
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
        context = self.tokenizer_manager.context_len
        for p, sp in zip(prompts, params):
            if len(p) >= context:
                raise ValueError(f"The input ({len(p)} tokens) is longer than the model's "
                                 f"context length ({context} tokens).")
            total = len(p) + sp.get("max_new_tokens", 128)
            if total > context or (total == context and not self.total_may_fill_context):
                raise ValueError("Requested token count exceeds the model's maximum context "
                                 f"length of {context} tokens.")
        outs = []
        for ids, sp in zip(prompts, params):
            if not self.deterministic:  # SGLang samples without the seed
                sp = {k: v for k, v in sp.items() if k != "sampling_seed"}
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


class ServerArgs0523(msgspec.Struct, dict=True, kw_only=True):
    """0.5.23's ServerArgs shape: a Struct with a __dict__ of bookkeeping only;
    unset fields are resolved (max_running_requests stays None here, as a
    user who did not set it would see)."""

    model_path: str
    max_running_requests: int | None = None
    dp_size: int = 1
    enable_dp_attention: bool = False
    enable_deterministic_inference: bool = False

    def resolved_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__struct_fields__}


class Engine0523(FakeEngine):
    """sglang.Engine of 0.5.23: the scheduler runs `effective` requests per DP
    rank, which only its internal state tells."""

    effective = 192
    total_may_fill_context = True  # 0.5.23 refuses only prompt + max_new_tokens > context_len

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.server_args = ServerArgs0523(
            model_path=kwargs["model_path"], dp_size=kwargs.get("dp_size", 1),
            enable_deterministic_inference=kwargs.get("enable_deterministic_inference", False))
        self.server_args._resolution_finished = True  # the bookkeeping vars() would see
        self.tokenizer_manager.get_internal_state = self._internal_state
        self._scheduler_init_result = types.SimpleNamespace(
            scheduler_infos=[{"status": "ready", "max_total_num_tokens": 1 << 20,
                              "max_req_input_len": 4095}])

    async def _internal_state(self) -> list[dict[str, Any]]:
        await asyncio.sleep(0)
        return [{"effective_max_running_requests_per_dp": self.effective,
                 "last_gen_throughput": 0.0}
                for _ in range(self.server_args.dp_size)]


@pytest.fixture
def fake_sglang(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    module = types.ModuleType("sglang")
    module.Engine = FakeEngine  # type: ignore[attr-defined]
    module.__version__ = "0.5.6"  # type: ignore[attr-defined]
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
            module.__version__ = "0.5.6"  # type: ignore[attr-defined]
            mp.setitem(sys.modules, "sglang", module)
            b = SGLangEngineBackend("org/model", engine_args={
                "mem_fraction_static": 0.5, "enable_deterministic_inference": True})
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
            # The long prompt fails alone; SGLang would have failed both.
            assert [r.finish_reason for r in results] == ["length", "error"]
            assert "context length" in (results[1].error or "")
            assert len(FakeEngine.instances[-1].calls[-1]["input_ids"]) == 1
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
    b = SGLangEngineBackend("org/m", engine_args={"enable_deterministic_inference": True})

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


def test_reads_0523_server_args_and_effective_running(fake_sglang: Any) -> None:
    """0.5.23: vars(server_args) holds no fields; the scheduler reports 192 running
    requests per DP rank, which the KV pool rule would put at 2048."""
    fake_sglang.Engine = Engine0523
    fake_sglang.__version__ = "0.5.23"

    async def main(engine_args: dict[str, Any]) -> tuple[int, Any]:
        b = SGLangEngineBackend("org/m", engine_args=engine_args)
        await b.start()
        try:
            return b.info().max_batch, b._send_seed
        finally:
            await b.close()

    assert asyncio.run(main({})) == (192, True)
    assert asyncio.run(main({"dp_size": 2})) == (384, True)
    assert FakeEngine.instances[-1].server_args.dp_size == 2


def test_0523_without_internal_state_falls_back_to_server_args(fake_sglang: Any) -> None:
    fake_sglang.Engine = Engine0523
    fake_sglang.__version__ = "0.5.23"

    async def main() -> int:
        b = SGLangEngineBackend("org/m")
        real = Engine0523.__init__

        def no_state(self: Engine0523, **kw: Any) -> None:
            real(self, **kw)
            self.server_args.max_running_requests = 64
            del self.tokenizer_manager.get_internal_state

        Engine0523.__init__ = no_state  # type: ignore[method-assign]
        try:
            await b.start()
        finally:
            Engine0523.__init__ = real  # type: ignore[method-assign]
        try:
            return b.info().max_batch
        finally:
            await b.close()

    assert asyncio.run(main()) == 64


@pytest.mark.parametrize("version,deterministic,sent,warned", [
    ("0.5.2", True, False, "added in 0.5.3"),
    ("0.5.6", False, True, "--enable-deterministic-inference"),
    ("0.5.6", True, True, ""),
])
def test_seed_sent_only_where_taken_and_warned_when_ignored(
        fake_sglang: Any, caplog: pytest.LogCaptureFixture, version: str,
        deterministic: bool, sent: bool, warned: str) -> None:
    fake_sglang.__version__ = version
    b = SGLangEngineBackend("org/m", engine_args={"enable_deterministic_inference": deterministic})
    req = GenRequest(rid="s", input_ids=[3, 4], params=SamplingParams(max_new_tokens=3, seed=8))

    async def main() -> None:
        await b.start()
        try:
            await b.generate([req])
            await b.generate([req])
        finally:
            await b.close()

    asyncio.run(main())
    params = FakeEngine.instances[-1].calls[0]["sampling_params"][0]
    assert ("sampling_seed" in params) == sent
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if warned:
        assert len(warnings) == 1 and warned in warnings[0]  # once, not per batch
    else:
        assert warnings == []


def test_total_length_rule_follows_the_version(fake_sglang: Any) -> None:
    """prompt + max_new_tokens == context length: refused up to 0.5.6, taken by 0.5.23."""
    req = GenRequest(rid="edge", input_ids=[1] * 2990, params=SamplingParams(max_new_tokens=10))

    async def main() -> str:
        b = SGLangEngineBackend("org/m")
        await b.start()
        try:
            (res,) = await b.generate([req])
            return res.finish_reason
        finally:
            await b.close()

    assert asyncio.run(main()) == "error"
    assert FakeEngine.instances[-1].calls == []  # refused before the engine saw it
    fake_sglang.__version__ = "0.5.23"
    fake_sglang.Engine = Engine0523
    assert asyncio.run(main()) != "error"
