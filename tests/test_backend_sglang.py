"""SGLang HTTP backend and the loopback server that speaks SGLang's protocol.

By default everything runs against `SGLangTestServer` on 127.0.0.1. To run
the backend-contract tests (and the protocol-shape tests marked below)
against a real SGLang server instead:

    TURNLOOM_SGLANG_URL=http://host:port \\
    TURNLOOM_SGLANG_TOKENIZER=/path/to/tokenizer.json \\
    pytest tests/test_backend_sglang.py

TURNLOOM_SGLANG_TOKENIZER is the served model's Hugging Face tokenizer (a
model directory, or its tokenizer.json); it turns test prompts into the
model's ids. TURNLOOM_SGLANG_EOS may list EOS ids ("151645,151643") when
the ones found there are wrong. Start the
server with `--enable-deterministic-inference`: SGLang only honours
`sampling_seed` in that mode, and the seed tests depend on it. Fault and
replica tests always use loopback servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from typing import Any, AsyncIterator, Iterator

import msgspec
import pytest
import tokenizers

import turnloom
from turnloom.backends._http import HTTPClient
from turnloom.backends._sglang_common import running_capacity
from turnloom.backends.base import BackendError, GenRequest, SamplingParams
from turnloom.backends.sglang_http import SGLangHTTPBackend
from turnloom.hf_tokenizer import HFTokenizer
from turnloom.plugins import get_plugin_manager
from turnloom.testing.conformance import BackendConformance
from turnloom.testing.faults import Fault, FaultSchedule
from turnloom.testing.sglang_server import SGLangTestServer
from turnloom.tokenizer import ByteTokenizer, ChatMLFormat

REAL_URL = os.environ.get("TURNLOOM_SGLANG_URL")
FAST = dict(backoff=0.01, backoff_max=0.05, timeout=5.0)
TOK = ByteTokenizer()


def _real_tokenizer() -> HFTokenizer:
    """The served model's tokenizer, from a directory or a tokenizer.json file."""
    path = os.environ.get("TURNLOOM_SGLANG_TOKENIZER")
    if not path:
        pytest.skip("TURNLOOM_SGLANG_URL is set but TURNLOOM_SGLANG_TOKENIZER is not")
    if os.path.isdir(path):
        tok = HFTokenizer.from_dir(path)
    else:
        tok = HFTokenizer(tokenizers.Tokenizer.from_file(path), name=path)
    env = os.environ.get("TURNLOOM_SGLANG_EOS")
    if env:
        tok.eos_token_ids = tuple(int(x) for x in env.split(","))
    return tok


@contextlib.contextmanager
def _target_url() -> Iterator[str]:
    if REAL_URL:
        yield REAL_URL.rstrip("/")
        return
    with SGLangTestServer() as server:
        yield server.url


@contextlib.asynccontextmanager
async def started(backend: SGLangHTTPBackend) -> AsyncIterator[SGLangHTTPBackend]:
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


def req(rid: str, text: str = "hello there", affinity: int = 0, **params: Any) -> GenRequest:
    params.setdefault("max_new_tokens", 8)
    params.setdefault("temperature", 1.0)
    params.setdefault("seed", 7)
    return GenRequest(rid=rid, input_ids=TOK.encode(text), params=SamplingParams(**params),
                      affinity=affinity)


def batch(n: int, affinity: int | None = None) -> list[GenRequest]:
    return [req(f"r{i}", f"prompt number {i} " * (i + 1),
                affinity=i if affinity is None else affinity) for i in range(n)]


@pytest.fixture
def server() -> Iterator[SGLangTestServer]:
    with SGLangTestServer() as s:
        yield s


@pytest.fixture
def make_servers() -> Iterator[Any]:
    made: list[SGLangTestServer] = []

    def make(n: int = 1, **kw: Any) -> list[SGLangTestServer]:
        new = [SGLangTestServer(**kw).start() for _ in range(n)]
        made.extend(new)
        return new

    yield make
    for s in made:
        s.stop()


# -- the backend contract ------------------------------------------------------


class TestSGLangHTTPConformance(BackendConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def tokenizer(cls) -> Any:
        return _real_tokenizer() if REAL_URL else ByteTokenizer()

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls, arun: Any) -> Iterator[SGLangHTTPBackend]:
        with _target_url() as url:
            b = SGLangHTTPBackend(url, timeout=120.0)
            arun(b.start())
            yield b
            arun(b.close())


class TestSGLangHTTPConformanceLocalTrim(BackendConformance):
    """Same contract when stop strings are cut with a local tokenizer."""

    @pytest.fixture(scope="class")
    @classmethod
    def tokenizer(cls) -> Any:
        return _real_tokenizer() if REAL_URL else ByteTokenizer()

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls, arun: Any, tokenizer: Any) -> Iterator[SGLangHTTPBackend]:
        with _target_url() as url:
            b = SGLangHTTPBackend(url, timeout=120.0, tokenizer=tokenizer)
            arun(b.start())
            yield b
            arun(b.close())


# -- settings ------------------------------------------------------------------


def test_settings_unknown_field_is_named() -> None:
    with pytest.raises(BackendError, match="timeoutt"):
        SGLangHTTPBackend.from_settings({"urls": "http://127.0.0.1:1", "timeoutt": 3})


@pytest.mark.parametrize("field,value", [("retries", -1), ("max_batch", 0), ("timeout", 0),
                                         ("urls", []), ("urls", "ftp://x")])
def test_settings_bad_value_is_named(field: str, value: Any) -> None:
    settings: dict[str, Any] = {"urls": "http://127.0.0.1:1", field: value}
    with pytest.raises(BackendError, match=field if field != "urls" else "url"):
        SGLangHTTPBackend.from_settings(settings)


def test_settings_build_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGL_KEY", "secret")
    b = SGLangHTTPBackend.from_settings({
        "urls": ["http://127.0.0.1:1/", "http://127.0.0.1:2"], "max_batch": 7,
        "api_key_env": "SGL_KEY", "retries": 0})
    assert b.api_key == "secret"
    assert b.info().replicas == 2 and b.info().max_batch == 7
    monkeypatch.delenv("SGL_KEY")
    with pytest.raises(BackendError, match="SGL_KEY"):
        SGLangHTTPBackend.from_settings({"urls": "http://127.0.0.1:1", "api_key_env": "SGL_KEY"})


# -- start and info --------------------------------------------------------------


def test_start_reads_capacity_and_model(make_servers: Any) -> None:
    a, b = make_servers(2, cache_capacity=5000, model_path="org/tiny")

    async def main() -> None:
        async with started(SGLangHTTPBackend([a.url, b.url], **FAST)) as backend:
            info = backend.info()
            assert info.model == "org/tiny"
            assert info.cache_capacity_tokens == 10000
            assert info.replicas == 2 and info.name == "sglang-http"

    asyncio.run(main())


def test_start_fails_clearly_when_nothing_answers() -> None:
    async def main() -> None:
        backend = SGLangHTTPBackend("http://127.0.0.1:9", connect_timeout=1.0, **FAST)
        with pytest.raises(BackendError, match="no SGLang replica is reachable"):
            await backend.start()

    asyncio.run(main())


def test_start_rejects_replicas_of_different_models(make_servers: Any) -> None:
    a = make_servers(1, model_path="m1")[0]
    b = make_servers(1, model_path="m2")[0]

    async def main() -> None:
        with pytest.raises(BackendError, match="different models"):
            await SGLangHTTPBackend([a.url, b.url], **FAST).start()

    asyncio.run(main())


def test_api_key_is_sent(make_servers: Any) -> None:
    s = make_servers(1, api_key="k1")[0]

    async def main() -> None:
        async with started(SGLangHTTPBackend(s.url, api_key="k1", **FAST)) as backend:
            (r,) = await backend.generate([req("a")])
            assert r.finish_reason in ("stop", "length")
        with pytest.raises(BackendError, match="401"):
            await SGLangHTTPBackend(s.url, **FAST).start()

    asyncio.run(main())


# -- batch size from the servers' running capacity ---------------------------------


@pytest.mark.parametrize("info,expected", [
    ({"max_running_requests": 200, "max_total_num_tokens": 100_000}, 200),
    # Unset: max_total_num_tokens // 2, within the request pool (2,048 to 4,096).
    ({"max_running_requests": None, "max_total_num_tokens": 1000, "context_length": 8192}, 500),
    ({"max_total_num_tokens": 100_000, "context_length": 32768}, 2048),
    ({"max_total_num_tokens": 200_000, "context_length": 32768}, 3125),
    ({"max_total_num_tokens": 10_000_000, "context_length": 4096}, 4096),
    # No context length: it is one more than max_req_input_len; neither: the pool's floor.
    ({"max_total_num_tokens": 1_000_000, "max_req_input_len": 8191}, 4096),
    ({"max_total_num_tokens": 1_000_000}, 2048),
    # Data parallel: one scheduler per rank, unless DP attention splits the configured total.
    ({"max_running_requests": 100, "dp_size": 2}, 200),
    ({"max_running_requests": 100, "dp_size": 2, "enable_dp_attention": True}, 100),
    # Too little said, or nonsense.
    ({}, None),
    ({"max_running_requests": True, "max_total_num_tokens": -5}, None),
    ({"max_running_requests": "64", "max_total_num_tokens": 300}, 150),
])
def test_running_capacity_follows_sglang_rules(info: dict[str, Any], expected: int | None) -> None:
    assert running_capacity(info) == expected


def test_batch_sizes_follow_each_servers_running_capacity(make_servers: Any) -> None:
    a = make_servers(1, max_running_requests=48)[0]
    b = make_servers(1, max_running_requests=16)[0]

    async def main() -> None:
        async with started(SGLangHTTPBackend([a.url, b.url], **FAST)) as backend:
            assert backend.info().max_batch == 64  # what both run at once
            on_a = [q for q in batch(400) if backend.replica_for(q.affinity) == 0][:100]
            results = await backend.generate(on_a)
            assert all(r.error is None for r in results)
        async with started(SGLangHTTPBackend([a.url, b.url], max_batch=7, **FAST)) as backend:
            assert backend.info().max_batch == 7

    asyncio.run(main())
    # 100 requests for a server that runs 48: POSTs of 48, 48 and 4.
    assert sorted(len(body["input_ids"]) for body in a.requests) == [4, 48, 48]
    assert a.peak_running <= 48


def test_server_runs_at_most_its_running_batch(make_servers: Any) -> None:
    s = make_servers(1, max_running_requests=3, per_token_latency=0.002)[0]

    async def main() -> None:
        async with started(SGLangHTTPBackend(s.url, max_batch=5, **FAST)) as backend:
            results = await backend.generate(batch(10, affinity=1))
            assert len(results) == 10 and all(r.error is None for r in results)

    asyncio.run(main())
    assert s.peak_running == 3 and s.running == 0


def _fill_scenario(url: str, **settings: Any) -> turnloom.Scenario:
    return turnloom.Scenario.from_dict({
        "run": {"name": "fill", "conversations": 400, "max_turns": 2, "seed": 1},
        "backends": {"sg": {"type": "sglang", "tokenizer": "bytes", "urls": [url],
                            "backoff": 0.01, **settings}},
        "participants": [{"name": "user", "agent": "user-simulator", "system_prompt": "Ask."},
                         {"name": "assistant", "agent": "assistant", "system_prompt": "Help."}],
    })


@pytest.mark.parametrize("max_batch,peak", [(None, 160), (32, 64)])
def test_engine_fills_the_servers_running_batch(make_servers: Any, tmp_path: Any,
                                                max_batch: int | None, peak: int) -> None:
    s = make_servers(1, max_running_requests=160, latency=0.01)[0]
    settings = {} if max_batch is None else {"max_batch": max_batch}
    result = turnloom.run(_fill_scenario(s.url, **settings), out=tmp_path / "run",
                          progress=False, plugin_manager=get_plugin_manager(autoload=False))
    assert result.summary["turns"] == 800
    # Two calls in flight: the default fills all 160 slots; 32 per call, 64 at most.
    assert s.peak_running == peak
    assert result.summary["backends"]["sg"]["batch_size"] == (max_batch or 160)


# -- request shape -----------------------------------------------------------------


def test_batch_is_one_post_with_lists(server: SGLangTestServer) -> None:
    requests = batch(5, affinity=1)
    requests[0] = req("r0", stop=("xy",), stop_token_ids=(300, 301), top_k=5, top_p=0.9,
                      repetition_penalty=1.1, seed=2**40 + 5)

    async def main() -> None:
        async with started(SGLangHTTPBackend(server.url, **FAST)) as backend:
            results = await backend.generate(requests)
            assert [r.rid for r in results] == [q.rid for q in requests]

    asyncio.run(main())
    (body,) = list(server.requests)
    assert body["input_ids"] == [q.input_ids for q in requests]
    # Fresh 128-bit hex ids, not the engine's rids (see test_request_ids_*).
    assert len(set(body["rid"])) == 5
    assert all(len(r) == 32 and int(r, 16) >= 0 for r in body["rid"])
    sp = body["sampling_params"]
    assert len(sp) == 5
    assert sp[0] == {"max_new_tokens": 8, "temperature": 1.0, "top_p": 0.9, "top_k": 5,
                     "repetition_penalty": 1.1, "stop": ["xy"], "stop_token_ids": [300, 301],
                     "sampling_seed": (2**40 + 5) & 0x7FFFFFFF}
    assert "stop" not in sp[1] and sp[1]["sampling_seed"] == 7
    assert body["return_logprob"] == [True, False, False, False, False]
    assert body["return_text_in_logprobs"] is True


def test_max_batch_splits_posts(server: SGLangTestServer) -> None:
    async def main() -> None:
        async with started(SGLangHTTPBackend(server.url, max_batch=2, **FAST)) as backend:
            results = await backend.generate(batch(5, affinity=3))
            assert len(results) == 5 and all(r.error is None for r in results)

    asyncio.run(main())
    assert sorted(len(b["input_ids"]) for b in server.requests) == [1, 2, 2]


def test_cached_tokens_grow_over_turns() -> None:
    """A conversation's prompt grows by appending; each turn re-uses the last."""
    tok = _real_tokenizer() if REAL_URL else TOK
    chat = ChatMLFormat(tok) if not REAL_URL else None

    def seg(role: str, text: str) -> list[int]:
        if chat is not None:
            return chat.segment(role, text)
        return tok.encode(f"<|im_start|>{role}\n{text}<|im_end|>\n")

    def open_turn() -> list[int]:
        return chat.generation_prefix() if chat is not None else tok.encode("<|im_start|>assistant\n")

    async def main() -> None:
        with _target_url() as url:
            async with started(SGLangHTTPBackend(url, timeout=60.0)) as backend:
                lane = seg("system", "You are terse. " * 8)
                cached, prompts = [], []
                for turn in range(3):
                    lane = lane + seg("user", f"Question {turn}: what is {turn} plus {turn}?")
                    prompt = lane + open_turn()
                    (r,) = await backend.generate([GenRequest(
                        rid=f"turn{turn}", input_ids=prompt, affinity=42,
                        params=SamplingParams(max_new_tokens=6, temperature=1.0, seed=turn))])
                    assert r.error is None
                    cached.append(r.cached_tokens)
                    prompts.append(len(prompt))
                    ids = list(r.output_ids)
                    if not ids or ids[-1] not in tok.eos_token_ids:
                        ids += tok.encode("<|im_end|>")
                    lane = prompt + ids + tok.encode("\n")
                assert cached[1] > cached[0] and cached[2] > cached[1], cached
                assert cached[1] >= prompts[0] // 2 and cached[2] >= prompts[1] // 2, (cached, prompts)

    asyncio.run(main())


def test_stop_string_cut_matches_with_and_without_tokenizer(server: SGLangTestServer) -> None:
    async def run(tokenizer: Any) -> Any:
        async with started(SGLangHTTPBackend(server.url, tokenizer=tokenizer, **FAST)) as b:
            (free,) = await b.generate([req("f", max_new_tokens=20, seed=3)])
            text = TOK.decode([t for t in free.output_ids if t < 256])
            stop = text[5:7]
            (cut,) = await b.generate([req("c", max_new_tokens=20, seed=3, stop=(stop,))])
            return free, cut, stop

    free_a, cut_a, stop = asyncio.run(run(None))
    free_b, cut_b, _ = asyncio.run(run(TOK))
    assert free_a.output_ids == free_b.output_ids
    assert cut_a.output_ids == cut_b.output_ids
    assert cut_a.text == cut_b.text == TOK.decode(cut_a.output_ids)
    assert stop not in cut_a.text and cut_a.finish_reason == "stop"


# -- faults ---------------------------------------------------------------------


@pytest.mark.parametrize("fault", [
    Fault("status", status=500),
    Fault("status", status=503, retry_after=0.05),
    Fault("status", status=429),
    Fault("reset"),
    Fault("hang"),
    Fault("malformed"),
    Fault("truncate"),
    Fault("wrong_batch"),
], ids=lambda f: f"{f.kind}-{f.status}")
def test_transient_fault_is_retried(server: SGLangTestServer, fault: Fault) -> None:
    server.faults.push(fault)

    async def main() -> None:
        b = SGLangHTTPBackend(server.url, retries=2, backoff=0.01, backoff_max=0.05, timeout=0.5)
        async with started(b) as backend:
            results = await backend.generate(batch(3, affinity=1))
            assert [r.error for r in results] == [None] * 3
            assert all(r.finish_reason in ("stop", "length") for r in results)

    asyncio.run(main())
    assert server.faults.count("/generate") >= 2
    assert not server.errors


def test_persistent_fault_gives_error_results(server: SGLangTestServer) -> None:
    server.faults.push(Fault("status", status=503), times=10)

    async def main() -> None:
        async with started(SGLangHTTPBackend(server.url, retries=2, **FAST)) as backend:
            results = await backend.generate(batch(3, affinity=1))
            assert [r.finish_reason for r in results] == ["error"] * 3
            assert [r.rid for r in results] == ["r0", "r1", "r2"]
            for r in results:
                assert r.error and "HTTP 503" in r.error and "3 attempts" in r.error
                assert r.output_ids == [] and r.prompt_tokens > 0

    asyncio.run(main())
    assert server.faults.count("/generate") == 3


def test_client_error_is_not_retried(server: SGLangTestServer) -> None:
    server.inject("status", status=400)

    async def main() -> None:
        async with started(SGLangHTTPBackend(server.url, retries=3, **FAST)) as backend:
            (r,) = await backend.generate([req("one")])
            assert r.finish_reason == "error"
            assert r.error is not None and "HTTP 400" in r.error

    asyncio.run(main())
    assert server.faults.count("/generate") == 1


def test_abort_in_one_item_retries_only_that_item(make_servers: Any) -> None:
    """SGLang answers an aborted request with finish_reason type "abort" in a
    200 reply: that request is retried (with a new id), not taken as a stop."""
    (server,) = make_servers(1, latency=0.3)

    async def main() -> None:
        async with started(SGLangHTTPBackend(server.url, **FAST)) as backend:
            task = asyncio.ensure_future(backend.generate(batch(3, affinity=1)))
            while not server.requests:
                await asyncio.sleep(0.01)
            victim = server.requests[0]["rid"][1]
            status, _, _ = await asyncio.to_thread(
                call, server.url, "POST", "/abort_request", {"rid": victim})
            assert status == 200
            results = await task
            assert [r.error for r in results] == [None] * 3
            assert [r.finish_reason for r in results] != ["abort"] * 3

    asyncio.run(main())
    bodies = list(server.requests)
    assert [len(b["input_ids"]) for b in bodies] == [3, 1]
    assert bodies[1]["input_ids"] == [bodies[0]["input_ids"][1]]
    assert bodies[1]["rid"][0] not in bodies[0]["rid"]


# -- replicas ---------------------------------------------------------------------


def _served_rids(servers: list[SGLangTestServer]) -> list[set[str]]:
    """The conversations each server saw, by their prompts' first word pair
    ("conversation 3", "conv 5"): request ids are fresh on every POST."""
    return [{" ".join(TOK.decode(ids).split()[:2]) for b in s.requests for ids in b["input_ids"]}
            for s in servers]


def test_conversations_stick_to_one_replica(make_servers: Any) -> None:
    servers = make_servers(3)

    async def main() -> None:
        async with started(SGLangHTTPBackend([s.url for s in servers], **FAST)) as backend:
            for turn in range(3):
                requests = [req(f"c{a}", f"conversation {a} turn {turn}", affinity=a)
                            for a in range(24)]
                results = await backend.generate(requests)
                assert all(r.error is None for r in results)

    asyncio.run(main())
    served = _served_rids(servers)
    assert all(served), "every replica gets some conversations"
    assert sum(len(s) for s in served) == 24, "no conversation is served by two replicas"


def test_failed_replica_conversations_move_and_stay(make_servers: Any) -> None:
    servers = make_servers(3)
    urls = [s.url for s in servers]

    async def main() -> None:
        b = SGLangHTTPBackend(urls, fail_threshold=1, health_interval=0.05, **FAST)
        async with started(b) as backend:
            homes = {a: backend.replica_for(a) for a in range(30)}
            victim = homes[0]
            servers[victim].faults.push(Fault("status", status=500), times=1000)
            results = await backend.generate([req(f"c{a}", affinity=a) for a in range(30)])
            assert all(r.error is None for r in results)
            moved = {a: backend.replica_for(a) for a in range(30)}
            for a in range(30):
                if homes[a] == victim:
                    assert moved[a] != victim
                else:
                    assert moved[a] == homes[a]
            # The replica recovers and passes its health probe: moved
            # conversations stay put, new ones may land on it again.
            servers[victim].faults.clear()
            await asyncio.sleep(0.1)
            await backend.generate([req("new", affinity=1000)])
            assert backend._replicas[victim].healthy
            assert {a: backend.replica_for(a) for a in range(30)} == moved
            new_homes = [backend.replica_for(a) for a in range(1000, 1060)]
            assert victim in new_homes

    asyncio.run(main())


def test_unreachable_replica_at_start_is_skipped(make_servers: Any) -> None:
    (s,) = make_servers(1)

    async def main() -> None:
        b = SGLangHTTPBackend([s.url, "http://127.0.0.1:9"], connect_timeout=1.0, **FAST)
        async with started(b) as backend:
            results = await backend.generate([req(f"c{a}", affinity=a) for a in range(8)])
            assert all(r.error is None for r in results)
            assert backend.info().cache_capacity_tokens is None

    asyncio.run(main())
    assert sum(len(b["input_ids"]) for b in s.requests) == 8


# -- the test server's protocol ---------------------------------------------------


async def _call(url: str, method: str, path: str, payload: Any = None,
                raw: bytes | None = None) -> tuple[int, Any, str]:
    client = HTTPClient(timeout=5.0)
    try:
        if raw is not None:
            r = await client.request(method, url + path, body=raw, content_type="application/json")
        elif payload is not None:
            r = await client.post_json(url + path, payload)
        else:
            r = await client.request(method, url + path)
        try:
            data = msgspec.json.decode(r.body) if r.body else None
        except msgspec.DecodeError:
            data = None
        return r.status, data, r.headers.get("content-type", "")
    finally:
        await client.close()


def call(url: str, method: str, path: str, payload: Any = None,
         raw: bytes | None = None) -> tuple[int, Any, str]:
    return asyncio.run(_call(url, method, path, payload, raw))


def test_protocol_batch_shapes() -> None:
    with _target_url() as url:
        ids = (_real_tokenizer() if REAL_URL else TOK).encode("Tell me a joke")
        sp = {"max_new_tokens": 4, "temperature": 0}
        status, single, _ = call(url, "POST", "/generate", {"input_ids": ids, "sampling_params": sp})
        assert status == 200 and isinstance(single, dict)
        assert set(single) >= {"text", "output_ids", "meta_info"}
        meta = single["meta_info"]
        assert meta["prompt_tokens"] == len(ids)
        assert meta["completion_tokens"] == len(single["output_ids"]) <= 4
        assert {"cached_tokens", "e2e_latency", "finish_reason", "id"} <= set(meta)
        assert meta["finish_reason"]["type"] in ("stop", "length")
        status, many, _ = call(url, "POST", "/generate",
                               {"input_ids": [ids, ids[:3]], "sampling_params": sp,
                                "rid": ["x1", "x2"]})
        assert status == 200 and isinstance(many, list) and len(many) == 2
        assert [m["meta_info"]["id"] for m in many] == ["x1", "x2"]
        assert [m["meta_info"]["prompt_tokens"] for m in many] == [len(ids), 3]
        status, one, _ = call(url, "POST", "/generate", {"input_ids": [ids], "sampling_params": sp})
        assert status == 200 and isinstance(one, list) and len(one) == 1
        status, by_text, _ = call(url, "POST", "/generate",
                                  {"text": ["a", "bb"], "sampling_params": [sp, sp]})
        assert status == 200 and isinstance(by_text, list) and len(by_text) == 2


def test_protocol_errors() -> None:
    with _target_url() as url:
        def post(payload: Any) -> tuple[int, Any]:
            status, data, _ = call(url, "POST", "/generate", payload)
            return status, data

        status, data = post({"input_ids": []})
        assert status == 400 and "input_ids cannot be empty" in data["error"]["message"]
        status, data = post({"sampling_params": {}})
        assert status == 400 and "should be provided" in data["error"]["message"]
        status, data = post({"input_ids": [[1, 2], [3]], "rid": ["a", "a"]})
        assert status == 400 and "Duplicate" in data["error"]["message"]
        status, data = post({"input_ids": [[1, 2], [3]], "rid": ["a"]})
        assert status == 400 and "mismatch" in data["error"]["message"]
        status, data = post({"input_ids": [1, 2], "sampling_params": {"top_p": 0}})
        assert status == 400 and "top_p" in data["error"]["message"]
        status, data, _ = call(url, "POST", "/generate", raw=b"{nope")
        assert status == 400 and data["object"] == "error" and data["code"] == 400
        status, _, _ = call(url, "GET", "/no_such_route")
        assert status == 404


def test_protocol_info_routes() -> None:
    with _target_url() as url:
        status, _, _ = call(url, "GET", "/health")
        assert status == 200
        status, info, _ = call(url, "GET", "/get_model_info")
        assert status == 200 and info["is_generation"] is True and info["model_path"]
        status, info, _ = call(url, "GET", "/get_server_info")
        assert status == 200
        assert info["max_total_num_tokens"] > 0 and info["model_path"]
        assert "max_req_input_len" in info and "context_length" in info
        status, models, _ = call(url, "GET", "/v1/models")
        assert status == 200 and models["data"][0]["id"]


def test_server_info_alias_and_method_check(server: SGLangTestServer) -> None:
    status, info, _ = call(server.url, "GET", "/server_info")
    assert status == 200 and info["max_total_num_tokens"] == server.cache.capacity
    status, _, _ = call(server.url, "GET", "/generate")
    assert status == 405
    # An unknown sampling key is a TypeError in SGLang, which its handler lets through.
    status, _, _ = call(server.url, "POST", "/generate",
                        {"input_ids": [1, 2], "sampling_params": {"seed": 3}})
    assert status == 500 and "'seed'" in server.errors[-1]


def test_finish_reason_shapes(server: SGLangTestServer) -> None:
    ids = TOK.encode("finish shapes")
    base = {"temperature": 1.0, "sampling_seed": 5}
    _, free, _ = call(server.url, "POST", "/generate",
                      {"input_ids": ids, "sampling_params": {**base, "max_new_tokens": 30}})
    out = free["output_ids"]
    assert free["meta_info"]["finish_reason"] == {"type": "stop", "matched": 257}
    assert out[-1] == 257 and free["text"] == TOK.decode(out[:-1])
    _, short, _ = call(server.url, "POST", "/generate",
                       {"input_ids": ids, "sampling_params": {**base, "max_new_tokens": 2}})
    assert short["meta_info"]["finish_reason"] == {"type": "length", "length": 2}
    assert short["output_ids"] == out[:2]
    tok = out[3]
    _, by_tok, _ = call(server.url, "POST", "/generate", {
        "input_ids": ids, "sampling_params": {**base, "max_new_tokens": 30,
                                              "stop_token_ids": [tok]}})
    k = out.index(tok)
    assert by_tok["meta_info"]["finish_reason"] == {"type": "stop", "matched": tok}
    assert by_tok["output_ids"] == out[: k + 1] and by_tok["text"] == TOK.decode(out[:k])
    stop = TOK.decode(out[4:6])
    _, by_str, _ = call(server.url, "POST", "/generate", {
        "input_ids": ids, "sampling_params": {**base, "max_new_tokens": 30, "stop": [stop]}})
    text = TOK.decode(out[:-1])
    assert by_str["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert by_str["text"] == text[: text.find(stop)]
    assert stop in TOK.decode(by_str["output_ids"]), "SGLang keeps stop-string tokens in output_ids"


def test_logprobs_and_stream(server: SGLangTestServer) -> None:
    ids = TOK.encode("logprobs please")
    sp = {"max_new_tokens": 5, "sampling_seed": 1}
    _, data, _ = call(server.url, "POST", "/generate", {
        "input_ids": ids, "sampling_params": sp, "return_logprob": True,
        "return_text_in_logprobs": True})
    lps = data["meta_info"]["output_token_logprobs"]
    assert len(lps) == len(data["output_ids"])
    assert all(isinstance(lp, float) and t == o and isinstance(s, str)
               for (lp, t, s), o in zip(lps, data["output_ids"]))

    async def stream() -> bytes:
        client = HTTPClient(timeout=5.0)
        try:
            r = await client.post_json(server.url + "/generate",
                                       {"input_ids": ids, "sampling_params": sp, "stream": True})
            assert r.headers["content-type"] == "text/event-stream"
            return r.body
        finally:
            await client.close()

    body = asyncio.run(stream())
    chunks = [c for c in body.split(b"\n\n") if c]
    assert chunks[-1] == b"data: [DONE]"
    last = msgspec.json.decode(chunks[-2][len(b"data: "):])
    assert last["output_ids"] == data["output_ids"]


def test_flush_cache_refused_while_busy(make_servers: Any) -> None:
    (s,) = make_servers(1, latency=0.6)
    ids = TOK.encode("cache me " * 10)

    async def main() -> None:
        client = HTTPClient(timeout=5.0)
        try:
            payload = {"input_ids": ids, "sampling_params": {"max_new_tokens": 3}}
            first = await client.post_json(s.url + "/generate", payload)
            assert first.status == 200
            busy = asyncio.ensure_future(client.post_json(s.url + "/generate", payload))
            await asyncio.sleep(0.2)
            refused = await client.post_json(s.url + "/flush_cache", {})
            assert refused.status == 400
            hit = (await busy).json()
            assert hit["meta_info"]["cached_tokens"] == len(ids) - 1
            flushed = await client.get(s.url + "/flush_cache")
            assert flushed.status == 200
            s.latency = 0.0
            after = (await client.post_json(s.url + "/generate", payload)).json()
            assert after["meta_info"]["cached_tokens"] == 0
        finally:
            await client.close()

    asyncio.run(main())


def test_cached_tokens_respect_capacity(make_servers: Any) -> None:
    (s,) = make_servers(1, cache_capacity=64)
    with HTTPServerCalls(s.url) as post:
        a = TOK.encode("a" * 50)
        b = TOK.encode("b" * 50)
        sp = {"max_new_tokens": 2, "sampling_seed": 1}
        post({"input_ids": a, "sampling_params": sp})
        assert post({"input_ids": a, "sampling_params": sp})["meta_info"]["cached_tokens"] == 49
        post({"input_ids": b, "sampling_params": sp})  # evicts a
        assert post({"input_ids": a, "sampling_params": sp})["meta_info"]["cached_tokens"] == 0
    assert s.cache_stats()["size"] <= 64


class HTTPServerCalls:
    """Synchronous POST /generate helper for short protocol checks."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> Any:
        def post(payload: Any) -> Any:
            status, data, _ = call(self.url, "POST", "/generate", payload)
            assert status == 200, data
            return data

        return post

    def __exit__(self, *exc: Any) -> None:
        pass


def test_fault_schedule_plan_rate_and_queue() -> None:
    def kinds(schedule: FaultSchedule) -> list[str | None]:
        return [getattr(schedule.draw("/generate"), "kind", None) for _ in range(40)]

    first = kinds(FaultSchedule({1: Fault("reset")}, rate=0.5, kinds=("status", "hang"), seed=3))
    again = kinds(FaultSchedule({1: Fault("reset")}, rate=0.5, kinds=("status", "hang"), seed=3))
    assert first == again, "a seeded schedule is reproducible"
    assert first[1] == "reset"
    assert set(first) <= {"status", "hang", "reset", None} and first.count(None) < 35
    assert FaultSchedule(rate=1.0).draw("/health") is None, "random faults stay on their routes"
    q = FaultSchedule()
    q.push(Fault("status", status=503), times=2)
    assert [getattr(q.draw("/generate"), "status", None) for _ in range(3)] == [503, 503, None]
    with pytest.raises(ValueError):
        Fault("explode")


def test_command_line_server() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "turnloom.testing.sglang_server", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        status, _, _ = call(url, "GET", "/health")
        assert status == 200
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
