"""Backend faults: the circuit breaker, whole runs under injected faults, and a
replica lost mid-run. Runs use the real engine and HTTP backend against the
loopback SGLang server, whose model is deterministic, so a run that survived
faults must export exactly what a fault-free run exports."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from turnloom.backends._http import CircuitBreaker
from turnloom.backends.base import GenRequest, SamplingParams
from turnloom.backends.openai_compat import OpenAIBackend
from turnloom.backends.sglang_http import SGLangHTTPBackend
from turnloom.testing.chaos import DEFAULT_MIX, fault_mix_run, reference_run, replica_loss_run
from turnloom.testing.faults import Fault, FaultSchedule
from turnloom.testing.openai_server import OpenAITestServer
from turnloom.testing.sglang_server import SGLangTestServer
from turnloom.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
FAST = dict(timeout=2.0, connect_timeout=0.5, backoff=0.005, backoff_max=0.02)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def req(rid: str, affinity: int = 0) -> GenRequest:
    return GenRequest(rid=rid, input_ids=TOK.encode(f"prompt {rid}"),
                      params=SamplingParams(max_new_tokens=6, seed=1), affinity=affinity)


# -- the breaker itself ---------------------------------------------------------------


def test_breaker_opens_after_k_consecutive_failures_only() -> None:
    b = CircuitBreaker(3, 10.0, clock=Clock())
    b.failure(), b.failure(), b.success(), b.failure(), b.failure()
    assert b.state == "closed" and b.allow()
    b.failure()
    assert b.state == "open" and not b.allow() and b.opened == 1


def test_breaker_half_open_admits_one_probe_after_cooldown() -> None:
    clock = Clock()
    b = CircuitBreaker(1, 5.0, clock=clock)
    b.failure()
    assert b.retry_in() == 5.0
    clock.now += 4.9
    assert not b.allow() and not b.due()
    clock.now += 0.1
    assert b.due() and b.retry_in() == 0.0
    assert b.allow(), "the first request after the cooldown is the probe"
    assert b.state == "half_open" and not b.allow(), "only one probe at a time"
    b.success()
    assert b.state == "closed" and b.allow() and b.allow()


def test_breaker_failed_probe_reopens_for_a_full_cooldown() -> None:
    clock = Clock()
    b = CircuitBreaker(5, 2.0, clock=clock)
    b.trip()
    clock.now += 2.0
    assert b.allow()
    b.failure()  # one failure in half-open is enough, whatever the threshold
    assert b.state == "open" and b.retry_in() == 2.0 and b.opened == 2


def test_breaker_health_check_moves_to_half_open() -> None:
    b = CircuitBreaker(1, 60.0, clock=Clock())
    b.failure()
    b.half_open()
    assert b.state == "half_open" and b.allow() and not b.allow()


@pytest.mark.parametrize("threshold, cooldown", [(0, 1.0), (1, -1.0)])
def test_breaker_rejects_bad_settings(threshold: int, cooldown: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(threshold, cooldown)


# -- the breaker in the HTTP backends ---------------------------------------------------


def test_sglang_open_breaker_sends_nothing_until_the_cooldown() -> None:
    with SGLangTestServer() as server:
        server.inject("status", times=3, status=502)

        async def main() -> None:
            backend = SGLangHTTPBackend(server.url, fail_threshold=3, health_interval=0.4,
                                        retries=0, **FAST)
            await backend.start()
            try:
                for k in range(3):
                    (r,) = await backend.generate([req(f"a{k}")])
                    assert r.finish_reason == "error" and "HTTP 502" in (r.error or "")
                assert backend.breaker_states() == {server.url: "open"}
                seen = server.faults.count("/generate")
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                # Every replica is open: the next call waits out the cooldown,
                # health-probes, and sends the batch as the half-open probe.
                (r,) = await backend.generate([req("b")])
                assert r.error is None
                assert loop.time() - t0 >= 0.35
                assert server.faults.count("/generate") == seen + 1
                assert backend.breaker_states() == {server.url: "closed"}
            finally:
                await backend.close()

        asyncio.run(main())


def test_sglang_failed_probe_reopens_and_moves_conversations() -> None:
    with SGLangTestServer() as good, SGLangTestServer() as bad:
        async def main() -> None:
            backend = SGLangHTTPBackend([good.url, bad.url], fail_threshold=2,
                                        health_interval=0.1, retries=3, **FAST)
            await backend.start()
            try:
                mine = [a for a in range(200) if backend.replica_for(a) == 1][:6]
                bad.faults.push(Fault("status", status=502), times=1000)
                results = await backend.generate([req(f"r{a}", a) for a in mine])
                assert all(r.error is None for r in results), "moved to the good replica"
                assert backend.breaker_states()[bad.url] == "open"
                sent = bad.faults.count("/generate")
                await asyncio.sleep(0.15)
                # The health probe passes (only /generate fails), the half-open
                # probe batch fails, the breaker re-opens at once.
                new = next(a for a in range(1000, 2000) if backend._rendezvous(a, range(2)) == 1)
                (r,) = await backend.generate([req("new", new)])
                assert r.error is None
                assert bad.faults.count("/generate") == sent + 1
                assert backend.breaker_states()[bad.url] == "open"
                assert backend._replicas[1].breaker.opened == 2
            finally:
                await backend.close()

        asyncio.run(main())


def test_sglang_batches_wait_for_the_half_open_probe_without_spending_attempts() -> None:
    with SGLangTestServer() as server:
        async def main() -> None:
            backend = SGLangHTTPBackend(server.url, fail_threshold=1, health_interval=0.1,
                                        retries=0, **FAST)
            await backend.start()
            try:
                server.inject("status", status=500)
                (r,) = await backend.generate([req("a")])
                assert r.error is not None and backend.breaker_states()[server.url] == "open"
                server.inject("slow", delay=0.3)  # the probe takes a while
                await asyncio.sleep(0.15)
                probe, waiter = await asyncio.gather(backend.generate([req("p")]),
                                                     backend.generate([req("w")]))
                # With retries=0 the second batch had one attempt: it was spent only
                # after the probe had closed the breaker.
                assert probe[0].error is None and waiter[0].error is None
                assert backend.breaker_states()[server.url] == "closed"
                # Request ids are fresh per attempt: tell the batches by their prompts.
                sent = [TOK.decode(ids) for body in server.requests for ids in body["input_ids"]]
                assert sent[-2:] == ["prompt p", "prompt w"], \
                    "the waiting batch went out after the probe"
            finally:
                await backend.close()

        asyncio.run(main())


def test_openai_breaker_fails_fast_then_probes() -> None:
    with OpenAITestServer() as server:
        server.inject("status", times=4, status=500)

        async def main() -> None:
            backend = OpenAIBackend(server.url + "/v1", "m", retries=1, breaker_threshold=4,
                                    breaker_cooldown=0.3, **FAST)
            await backend.start()
            try:
                results = await backend.generate([req(f"a{k}") for k in range(2)])
                assert all(r.finish_reason == "error" for r in results)
                assert backend.breaker.state == "open"
                sent = server.faults.count("/v1/completions")
                (r,) = await backend.generate([req("b")])
                # retries=1: both attempts fall in the cooldown (fail fast, nothing sent)
                # or the second is the probe and succeeds.
                assert server.faults.count("/v1/completions") - sent <= 1
                if r.error is not None:
                    assert "circuit open" in r.error
                await asyncio.sleep(0.35)
                (r,) = await backend.generate([req("c")])
                assert r.error is None and backend.breaker.state == "closed"
            finally:
                await backend.close()

        asyncio.run(main())


def test_openai_errors_after_the_breaker_opens_name_the_real_cause() -> None:
    """Requests refused by an open breaker never sent anything themselves: their
    error must still carry the failure that opened it, not "none"."""
    with OpenAITestServer() as server:
        server.inject("status", times=10_000, status=500)

        async def main() -> None:
            backend = OpenAIBackend(server.url + "/v1", "m", retries=2, breaker_threshold=2,
                                    breaker_cooldown=1.0, **FAST)
            await backend.start()
            try:
                results = await backend.generate([req(f"a{k}") for k in range(8)])
                assert backend.breaker.state == "open"
                errors = [r.error or "" for r in results]
                assert all(r.finish_reason == "error" for r in results)
                assert all("HTTP 500" in e for e in errors), errors
                assert not any("none" in e for e in errors), errors
                backend.retries = 0  # one attempt, refused by the open breaker
                (late,) = await backend.generate([req("late")])
                assert "circuit open" in (late.error or "") and "HTTP 500" in (late.error or "")
            finally:
                await backend.close()

        asyncio.run(main())


def test_openai_busy_replies_do_not_open_the_breaker() -> None:
    with OpenAITestServer() as server:
        server.inject("status", times=6, status=429)

        async def main() -> None:
            backend = OpenAIBackend(server.url + "/v1", "m", retries=8, breaker_threshold=2,
                                    **FAST)
            await backend.start()
            try:
                (r,) = await backend.generate([req("a")])
                assert r.error is None and backend.breaker.state == "closed"
            finally:
                await backend.close()

        asyncio.run(main())


# -- whole runs under faults ---------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return reference_run(tmp_path_factory.mktemp("ref") / "run", conversations=40)


@pytest.mark.parametrize("kind", ["status", "hang", "reset", "malformed", "wrong_batch",
                                  "truncate", "slow"])
def test_each_fault_kind_leaves_the_output_unchanged(kind: str, reference: Any,
                                                     tmp_path: Path) -> None:
    report = fault_mix_run(tmp_path / "run", conversations=40, replicas=2, mix={kind: 0.3},
                           seed=11)
    assert report.injected.get(kind, 0) >= 5, report.injected
    assert report.failed == 0, report.failure_causes
    assert report.records == reference.records


def test_fault_mix_completion_bound(tmp_path: Path) -> None:
    report = fault_mix_run(tmp_path / "run", conversations=150, replicas=2, mix=DEFAULT_MIX,
                           seed=5)
    total_injected = sum(report.injected.values())
    print(f"\nfault mix {dict(DEFAULT_MIX)}: {report.completed}/{report.conversations} completed, "
          f"{total_injected} faults in {report.requests} requests, {report.wall_s:.1f}s")
    assert report.conversations == 150, "every conversation is exported, failed or not"
    assert total_injected >= 0.1 * report.requests
    assert report.completion_rate >= 0.98
    for cause in report.failure_causes:
        assert "gave up" in cause or "circuit" in cause, cause


@pytest.mark.soak
def test_fault_mix_completion_bound_long(tmp_path: Path) -> None:
    report = fault_mix_run(tmp_path / "run", conversations=3000, replicas=2, mix=DEFAULT_MIX,
                           seed=9)
    assert report.conversations == 3000 and report.completion_rate >= 0.99


def test_unrecoverable_faults_are_recorded_with_their_cause(tmp_path: Path) -> None:
    # Every request fails: the run still completes, each conversation says why.
    report = fault_mix_run(tmp_path / "run", conversations=6, replicas=1,
                           mix={"status": 1.0}, max_turns=4)
    assert report.conversations == 6 and report.completed == 0
    assert all("HTTP 500" in cause or "circuit open" in cause
               for cause in report.failure_causes), report.failure_causes


def test_replica_killed_mid_run_moves_its_conversations(reference: Any, tmp_path: Path) -> None:
    report = replica_loss_run(tmp_path / "run", conversations=40, replicas=3,
                              kill_after_requests=5)
    assert report.killed
    assert report.served[0] >= 5 and all(n > 0 for n in report.served[1:])
    assert report.failed == 0, report.failure_causes
    assert report.records == reference.records


def test_fault_schedule_mix_draws_each_kind_at_its_rate() -> None:
    faults = FaultSchedule(mix={"status": 0.2, "reset": 0.1}, seed=1)
    for _ in range(5000):
        faults.draw("/generate")
    tally = faults.tally()
    assert 900 <= tally["status"] <= 1100 and 400 <= tally["reset"] <= 600
    with pytest.raises(ValueError, match="more than 1"):
        FaultSchedule(mix={"status": 0.7, "reset": 0.5})
    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultSchedule(mix={"explode": 0.1})
