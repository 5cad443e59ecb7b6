"""SGLang behaviours that differ by release, against the loopback server that
reproduces them (see turnloom.testing.sglang_server for the source of each):
request ids, prefix aborts, context-length refusals, seeds, busy replies and
the server-info shapes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Iterator

import pytest

from turnloom.backends._sglang_common import length_error, running_capacity, seed_support
from turnloom.backends.base import GenRequest, SamplingParams
from turnloom.backends.sglang_http import SGLangHTTPBackend, new_rid
from turnloom.testing.sglang_server import SGLangTestServer
from turnloom.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
FAST = dict(backoff=0.01, backoff_max=0.05, timeout=5.0)


def req(rid: str, text: str = "hello there", *, max_new_tokens: int = 8,
        seed: int | None = 7, affinity: int = 0) -> GenRequest:
    return GenRequest(rid=rid, input_ids=TOK.encode(text), affinity=affinity,
                      params=SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0,
                                            seed=seed))


@pytest.fixture
def make_server() -> Iterator[Any]:
    made: list[SGLangTestServer] = []

    def make(**kw: Any) -> SGLangTestServer:
        server = SGLangTestServer(**kw).start()
        made.append(server)
        return server

    yield make
    for s in made:
        s.stop()


async def post(url: str, path: str, body: Any) -> tuple[int, Any]:
    from turnloom.backends._http import HTTPClient

    client = HTTPClient(timeout=10.0, connect_timeout=5.0)
    try:
        r = await client.post_json(url + path, body)
        return r.status, (r.json() if r.body and r.status != 500 else None)
    finally:
        await client.close()


async def run_backend(backend: SGLangHTTPBackend, *batches: list[GenRequest]) -> list[Any]:
    await backend.start()
    try:
        return list(await asyncio.gather(*(backend.generate(b) for b in batches)))
    finally:
        await backend.close()


# -- the fake against SGLang's source -------------------------------------------


def test_fake_0523_refuses_a_live_rid_whole_batch(make_server: Any) -> None:
    old = make_server(version="0.5.6", latency=0.3)
    new = make_server(version="0.5.23", latency=0.3)

    async def two_posts(url: str) -> list[tuple[int, Any]]:
        first = asyncio.ensure_future(post(url, "/generate", {
            "input_ids": [[1, 2, 3]], "rid": ["7"], "sampling_params": [{}]}))
        await asyncio.sleep(0.1)
        second = await post(url, "/generate", {
            "input_ids": [[4, 5], [6, 7]], "rid": ["8", "7"], "sampling_params": [{}, {}]})
        return [await first, second]

    (ok, refused) = asyncio.run(two_posts(new.url))
    assert ok[0] == 200
    assert refused[0] == 400 and "Duplicate request ID detected: 7" in refused[1]["error"]["message"]
    assert old.version == "0.5.6"  # takes it, and mixes up the outputs (below)


async def post_or_timeout(url: str, body: Any, timeout: float) -> tuple[int, Any] | None:
    try:
        return await asyncio.wait_for(post(url, "/generate", body), timeout)
    except asyncio.TimeoutError:
        return None


@pytest.mark.parametrize("earlier_finishes_first", [True, False])
def test_fake_0_5_6_routes_a_repeated_rid_to_the_later_request(
        make_server: Any, earlier_finishes_first: bool) -> None:
    """SGLang before 0.5.23 keeps one output route per rid, and a later request
    with the same rid replaces it: the later request gets whichever output
    finishes first, and the earlier request is never answered."""
    server = make_server(version="0.5.6", per_token_latency=0.02)
    reference = make_server(version="0.5.23")
    slow, fast = 40, 2
    earlier = {"input_ids": [1, 2, 3], "rid": "7",
               "sampling_params": {"max_new_tokens": fast if earlier_finishes_first else slow,
                                   "temperature": 0, "ignore_eos": True}}
    later = {"input_ids": [4, 5, 6], "rid": "7",
             "sampling_params": {"max_new_tokens": slow if earlier_finishes_first else fast,
                                 "temperature": 0, "ignore_eos": True}}

    async def main() -> tuple[Any, Any, Any]:
        first = asyncio.ensure_future(post_or_timeout(server.url, earlier, 3.0))
        await asyncio.sleep(0.01)
        second = await post_or_timeout(server.url, later, 3.0)
        own = await post(reference.url, "/generate", {**earlier, "rid": "x"})
        return await first, second, own

    first, second, earlier_alone = asyncio.run(main())
    assert first is None  # never answered
    assert second is not None and second[0] == 200
    if earlier_finishes_first:
        assert second[1]["output_ids"] == earlier_alone[1]["output_ids"]  # the other's output
    else:
        assert len(second[1]["output_ids"]) == fast  # its own; the earlier output was dropped


def test_fake_aborts_by_rid_prefix(make_server: Any) -> None:
    server = make_server(latency=0.3)

    async def main() -> list[Any]:
        task = asyncio.ensure_future(post(server.url, "/generate", {
            "input_ids": [[1, 2], [3, 4], [5, 6], [7, 8]], "rid": ["1", "10", "1~1", "2"],
            "sampling_params": [{}] * 4}))
        await asyncio.sleep(0.1)
        assert (await post(server.url, "/abort_request", {"rid": "1"}))[0] == 200
        status, outs = await task
        assert status == 200
        return [o["meta_info"]["finish_reason"] for o in outs]

    reasons = asyncio.run(main())
    assert [r["type"] for r in reasons][:3] == ["abort"] * 3 and reasons[3]["type"] != "abort"
    assert reasons[0] == {"type": "abort", "message": "Aborted", "status_code": None,
                          "err_type": None}


def test_fake_info_shapes_by_version(make_server: Any) -> None:
    old = make_server(version="0.5.2")
    new = make_server(version="0.5.23")

    async def main() -> None:
        from turnloom.backends._http import HTTPClient

        client = HTTPClient(timeout=5.0, connect_timeout=5.0)
        try:
            assert (await client.get(old.url + "/server_info")).status == 404
            info = (await client.get(old.url + "/get_server_info")).json()
            assert info["version"] == "0.5.2" and "enable_deterministic_inference" not in info
            assert "effective_max_running_requests_per_dp" not in info["internal_states"][0]
            info = (await client.get(new.url + "/server_info")).json()
            assert info["enable_deterministic_inference"] is True
            assert info["internal_states"][0]["effective_max_running_requests_per_dp"] > 0
            assert (await client.get(new.url + "/model_info")).status == 200
        finally:
            await client.close()

    asyncio.run(main())


def test_fake_honours_seeds_only_in_deterministic_mode(make_server: Any) -> None:
    body = {"input_ids": [[9, 9, 9]] * 2, "rid": ["a", "b"],
            "sampling_params": [{"sampling_seed": 5, "max_new_tokens": 16}] * 2}
    det = make_server()
    free = make_server(enable_deterministic_inference=False)
    _, outs = asyncio.run(post(det.url, "/generate", body))
    assert outs[0]["output_ids"] == outs[1]["output_ids"]
    _, outs = asyncio.run(post(free.url, "/generate", body))
    assert outs[0]["output_ids"] != outs[1]["output_ids"]


def test_fake_0_5_2_fails_any_batch_with_a_seed(make_server: Any) -> None:
    server = make_server(version="0.5.2")
    status, _ = asyncio.run(post(server.url, "/generate", {
        "input_ids": [[1, 2], [3, 4]], "sampling_params": [{}, {"sampling_seed": 1}]}))
    assert status == 500 and "sampling_seed" in server.errors[-1]


def test_fake_queue_full_is_503(make_server: Any) -> None:
    server = make_server(max_running_requests=1, max_queued_requests=0, latency=0.3)

    async def main() -> tuple[int, Any]:
        first = asyncio.ensure_future(post(server.url, "/generate", {"input_ids": [1, 2]}))
        await asyncio.sleep(0.1)
        second = await post(server.url, "/generate", {"input_ids": [3, 4]})
        assert (await first)[0] == 200
        return second

    status, body = asyncio.run(main())
    assert status == 503 and body["message"] == "The request queue is full."


# -- the backend against it -------------------------------------------------------


def test_request_ids_are_random_fixed_length_and_prefix_free() -> None:
    ids = [new_rid() for _ in range(2000)]
    assert len(set(ids)) == 2000 and {len(i) for i in ids} == {32}
    ordered = sorted(ids)
    assert not any(b.startswith(a) for a, b in zip(ordered, ordered[1:]))


@pytest.mark.parametrize("version", ["0.5.23", "0.5.6"])
def test_two_processes_with_the_same_rids_share_a_server(make_server: Any, version: str) -> None:
    """Two engines (processes or hosts) number their requests alike; each backend
    must still send ids the other never sends (0.5.23 would refuse a repeat,
    0.5.6 would hand one the other's output and never answer the other)."""
    server = make_server(latency=0.2, version=version)
    a = SGLangHTTPBackend(server.url, **FAST)
    b = SGLangHTTPBackend(server.url, **FAST)

    async def main() -> list[Any]:
        batch = [req(f"r{i}", f"conversation {i}") for i in range(6)]
        return await asyncio.gather(run_backend(a, batch), run_backend(b, batch))

    (ra,), (rb,) = asyncio.run(main())
    assert all(r.error is None for r in ra + rb)
    assert [r.rid for r in ra] == [f"r{i}" for i in range(6)]
    sent = [rid for body in server.requests for rid in body["rid"]]
    assert len(set(sent)) == len(sent) == 12


def test_an_abort_reaches_only_the_request_it_names(make_server: Any) -> None:
    server = make_server(latency=0.3)
    backend = SGLangHTTPBackend(server.url, **FAST)
    batch = [req(f"{i}", f"prompt {i}") for i in range(12)]  # engine rids 1, 10, 11 ...

    async def main() -> list[Any]:
        await backend.start()
        try:
            task = asyncio.ensure_future(backend.generate(batch))
            while not server.requests:
                await asyncio.sleep(0.01)
            await post(server.url, "/abort_request", {"rid": server.requests[0]["rid"][1]})
            return await task
        finally:
            await backend.close()

    results = asyncio.run(main())
    assert all(r.error is None for r in results)
    retried = list(server.requests)[1:]
    assert [len(b["input_ids"]) for b in retried] == [1]  # only the one aborted


def test_too_long_request_fails_alone_before_sending(make_server: Any) -> None:
    server = make_server(context_length=64)
    backend = SGLangHTTPBackend(server.url, **FAST)
    batch = [req("a"), req("b", "x" * 41, max_new_tokens=24), req("c")]  # 41 + 24 > 64

    (results,) = asyncio.run(run_backend(backend, batch))
    assert [r.error is None for r in results] == [True, False, True]
    assert "does not fit the server's context length of 64" in (results[1].error or "")
    assert [len(b["input_ids"]) for b in server.requests] == [2]


def test_batch_refused_for_one_request_is_split(make_server: Any) -> None:
    """Where the context length is not known beforehand, the server's whole-batch
    400 is bisected until the bad request stands alone."""
    server = make_server(context_length=64)
    backend = SGLangHTTPBackend(server.url, **FAST)
    batch = [req(f"r{i}", f"prompt {i}") for i in range(8)]
    batch[5] = req("long", "y" * 70)

    async def main() -> list[Any]:
        await backend.start()
        backend._replicas[0].context_length = None  # as with a server that does not say
        try:
            return await backend.generate(batch)
        finally:
            await backend.close()

    results = asyncio.run(main())
    assert [r.error is None for r in results] == [True] * 5 + [False] + [True] * 2
    assert "HTTP 400" in (results[5].error or "") and "context length" in (results[5].error or "")
    sizes = [len(b["input_ids"]) for b in server.requests]
    assert sizes[0] == 8 and sum(sizes) == 8 + 8 + 4 + 2  # halves down to the bad one
    assert backend.breaker_states() == {server.url: "closed"}


@pytest.mark.parametrize("version,deterministic,seed_sent,warning", [
    ("0.5.2", True, False, "added in 0.5.3"),
    ("0.5.23", False, True, "--enable-deterministic-inference"),
    ("0.5.23", True, True, None),
])
def test_seeds_sent_where_taken_and_warned_where_ignored(
        make_server: Any, caplog: pytest.LogCaptureFixture, version: str,
        deterministic: bool, seed_sent: bool, warning: str | None) -> None:
    server = make_server(version=version, enable_deterministic_inference=deterministic)
    backend = SGLangHTTPBackend(server.url, **FAST)
    caplog.set_level(logging.WARNING, logger="turnloom.backends.sglang_http")

    results = asyncio.run(run_backend(backend, [req("a"), req("b", seed=None)], [req("c")]))
    assert all(r.error is None for batch in results for r in batch)
    sent = [("sampling_seed" in p) for body in server.requests for p in body["sampling_params"]]
    assert any(sent) == seed_sent
    messages = [r.getMessage() for r in caplog.records]
    if warning is None:
        assert messages == []
    else:
        assert len(messages) == 1 and warning in messages[0]


def test_503_is_busy_and_never_opens_the_breaker(make_server: Any) -> None:
    server = make_server()
    server.inject("status", times=4, status=503)
    # An open breaker would hold the request for the 30 s health interval.
    backend = SGLangHTTPBackend(server.url, retries=5, fail_threshold=2, health_interval=30.0,
                                **FAST)

    async def main() -> list[Any]:
        await backend.start()
        try:
            (r,) = await asyncio.wait_for(backend.generate([req("a")]), 10.0)
            assert backend.breaker_states() == {server.url: "closed"}
            return [r]
        finally:
            await backend.close()

    (result,) = asyncio.run(main())
    assert result.error is None
    assert server.faults.count("/generate") == 5


def test_queue_full_server_is_waited_for(make_server: Any) -> None:
    server = make_server(max_running_requests=2, max_queued_requests=0, latency=0.1)
    backend = SGLangHTTPBackend(server.url, retries=8, fail_threshold=1, max_batch=2,
                                health_interval=30.0, **FAST)
    batches = [[req(f"{k}-{i}", f"prompt {k} {i}") for i in range(2)] for k in range(3)]

    results = asyncio.run(asyncio.wait_for(run_backend(backend, *batches), 10.0))
    assert all(r.error is None for batch in results for r in batch)


# -- what the backend reads from the server info ------------------------------------


def test_effective_running_requests_win_over_the_arguments() -> None:
    info: dict[str, Any] = {"max_total_num_tokens": 1 << 20, "context_length": 4096,
                            "dp_size": 2}
    assert running_capacity(info) == 4096 * 2  # the KV-pool rule, capped by the pool
    info["internal_states"] = [{"effective_max_running_requests_per_dp": 192}] * 2
    assert running_capacity(info) == 384


def test_backend_reads_0523_effective_running(make_server: Any) -> None:
    server = make_server(max_running_requests=48)
    backend = SGLangHTTPBackend(server.url, **FAST)

    async def main() -> int:
        await backend.start()
        try:
            return backend.max_batch
        finally:
            await backend.close()

    assert asyncio.run(main()) == 48


@pytest.mark.parametrize("version,fits", [("0.5.6", False), ("0.5.23", True), (None, False)])
def test_total_length_rule_by_version(version: str | None, fits: bool) -> None:
    from turnloom.backends._sglang_common import parse_version

    edge = GenRequest(rid="e", input_ids=[1] * 60, params=SamplingParams(max_new_tokens=4))
    assert (length_error(edge, 64, parse_version(version)) == "") == fits
    assert length_error(edge, None, None) == ""


def test_seed_support_from_the_info() -> None:
    assert seed_support({"version": "0.5.2"})[0] is False
    assert seed_support({"version": "0.5.3.post1", "enable_deterministic_inference": True}) \
        == (True, "")
    assert seed_support({"version": "0.5.6"})[0] is True
    assert "enable-deterministic" in seed_support({"version": "0.5.6"})[1]
    assert seed_support({})[0] is False  # not SGLang as far as anyone can tell
