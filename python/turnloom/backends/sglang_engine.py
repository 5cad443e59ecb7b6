"""SGLang in-process: ``sglang.Engine(...)`` driven with ``async_generate``.

One batch is one ``await engine.async_generate(input_ids=[...],
sampling_params=[...])``; SGLang answers a batch with a list of results in
request order, shaped like its HTTP replies (see `_sglang_common`). sglang
is imported only in `start()`; it needs a CUDA machine
(``pip install 'turnloom[sglang]'``).

Settings (``from_settings``): model_path, engine_args (passed to
``sglang.Engine``), max_batch, cache_capacity_tokens (overrides what the
engine reports). max_batch unset: the requests the engine's scheduler runs at
once (`running_capacity`: the scheduler's own report,
``effective_max_running_requests_per_dp`` of its internal state, where the
version has it (0.5.23); else worked out from the server arguments and
start-up info), or DEFAULT_MAX_BATCH when they do not tell.

Server arguments across versions: up to 0.5.6 ``engine.server_args`` is a
dataclass whose fields are its ``__dict__``; in 0.5.23 it is a msgspec Struct
(``dict=True``, so it has a ``__dict__``, but that holds only resolution
bookkeeping) whose resolved values come from ``resolved_dict()``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import time
from typing import Any, Callable, Mapping, Sequence

import msgspec

from turnloom.backends._sglang_common import (
    BadItem,
    Version,
    error_result,
    length_error,
    parse_version,
    read_result,
    running_capacity,
    sampling_params,
    seed_support,
)
from turnloom.backends.base import Backend, BackendError, BackendInfo, GenRequest, GenResult

INSTALL_HINT = ("SGLang is not installed: pip install 'turnloom[sglang]' "
                "(it needs a machine with a CUDA GPU)")
DEFAULT_MAX_BATCH = 256

log = logging.getLogger(__name__)


class SGLangEngineSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    model_path: str
    engine_args: dict[str, Any] = {}
    max_batch: int | None = None
    cache_capacity_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if "model_path" in self.engine_args:
            raise ValueError("engine_args: give model_path once, outside engine_args")


class SGLangEngineBackend(Backend):
    """`sglang.Engine` in this process. `tokenizer` (optional, with ``decode``)
    cuts stop-string matches from output ids; by default the engine's own
    tokenizer does."""

    def __init__(self, model_path: str, *, engine_args: Mapping[str, Any] | None = None,
                 max_batch: int | None = None, cache_capacity_tokens: int | None = None,
                 tokenizer: Any = None) -> None:
        self.model_path = model_path
        self.engine_args = dict(engine_args or {})
        self.max_batch_setting = max_batch
        self.max_batch = max_batch or DEFAULT_MAX_BATCH
        self._capacity = cache_capacity_tokens
        self._decode: Callable[[Sequence[int]], str] | None = (
            tokenizer.decode if tokenizer is not None else None)
        self.engine: Any = None
        self._version: Version | None = None
        self._context_length: int | None = None
        self._send_seed = True
        self._seed_warning = ""

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | SGLangEngineSettings,
                      **kwargs: Any) -> "SGLangEngineBackend":
        """Build from a settings table; an unknown or bad field raises BackendError naming it."""
        if not isinstance(settings, SGLangEngineSettings):
            try:
                settings = msgspec.convert(dict(settings), SGLangEngineSettings)
            except msgspec.ValidationError as e:
                raise BackendError(f"invalid sglang-engine backend settings: {e}") from None
        return cls(settings.model_path, engine_args=settings.engine_args,
                   max_batch=settings.max_batch,
                   cache_capacity_tokens=settings.cache_capacity_tokens, **kwargs)

    def use_chat_format(self, fmt: Any) -> None:
        """The engine's chat format: its tokenizer decodes for stop-string cuts."""
        self._decode = fmt.tokenizer.decode

    async def start(self) -> None:
        try:
            sglang = importlib.import_module("sglang")
        except ImportError as e:
            raise BackendError(f"{INSTALL_HINT} ({e})") from None
        try:
            self.engine = sglang.Engine(model_path=self.model_path, **self.engine_args)
        except Exception as e:
            raise BackendError(f"sglang.Engine({self.model_path!r}) failed: "
                               f"{type(e).__name__}: {e}") from e
        info = _server_info(self.engine)
        info.setdefault("version", getattr(sglang, "__version__", None))
        self._version = parse_version(info.get("version"))
        self._send_seed, self._seed_warning = seed_support(info)
        context = getattr(getattr(self.engine, "tokenizer_manager", None), "context_len", None)
        self._context_length = context if isinstance(context, int) and context > 0 else None
        states = await _internal_states(self.engine)
        if states:
            info["internal_states"] = states
        if self._capacity is None:
            capacity = info.get("max_total_num_tokens")
            self._capacity = capacity if isinstance(capacity, int) else None
        if self.max_batch_setting is None:
            self.max_batch = running_capacity(info) or DEFAULT_MAX_BATCH
        if self._decode is None:
            hf = getattr(getattr(self.engine, "tokenizer_manager", None), "tokenizer", None)
            if hf is not None and hasattr(hf, "decode"):
                self._decode = hf.decode

    async def close(self) -> None:
        if self.engine is not None:
            engine, self.engine = self.engine, None
            engine.shutdown()

    def info(self) -> BackendInfo:
        return BackendInfo(name="sglang-engine", model=self.model_path,
                           cache_capacity_tokens=self._capacity, max_batch=self.max_batch)

    async def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        if not requests:
            return []
        if self.engine is None:
            raise BackendError("SGLangEngineBackend.generate called before start()")
        results: list[GenResult] = []
        for k in range(0, len(requests), self.max_batch):
            results.extend(await self._batch(list(requests[k:k + self.max_batch])))
        return results

    async def _batch(self, requests: list[GenRequest]) -> list[GenResult]:
        # SGLang fails the whole batch when one prompt is too long: those fail alone.
        refused = {i: length_error(r, self._context_length, self._version)
                   for i, r in enumerate(requests)}
        batch = [r for i, r in enumerate(requests) if not refused[i]]
        ran = iter(await self._run(batch) if batch else [])
        return [error_result(r, f"sglang engine: {refused[i]}") if refused[i] else next(ran)
                for i, r in enumerate(requests)]

    async def _run(self, batch: list[GenRequest]) -> list[GenResult]:
        started = time.monotonic()
        if self._seed_warning and any(r.params.seed is not None for r in batch):
            log.warning("sglang-engine: %s", self._seed_warning)
            self._seed_warning = ""
        try:
            outs = await self.engine.async_generate(
                input_ids=[list(r.input_ids) for r in batch],
                sampling_params=[sampling_params(r.params, self._send_seed) for r in batch])
        except Exception as e:  # a bad request or a dead engine: report, never raise
            msg = f"sglang engine: {type(e).__name__}: {e}"
            return [error_result(r, msg, time.monotonic() - started) for r in batch]
        elapsed = time.monotonic() - started
        if isinstance(outs, dict):
            outs = [outs]
        if not isinstance(outs, list) or len(outs) != len(batch):
            got = len(outs) if isinstance(outs, list) else type(outs).__name__
            msg = f"sglang engine: batch of {len(batch)} answered with {got} results"
            return [error_result(r, msg, elapsed) for r in batch]
        results = []
        for r, out in zip(batch, outs):
            try:
                results.append(read_result(r, out, elapsed_s=elapsed, decode=self._decode))
            except BadItem as e:
                results.append(error_result(r, f"sglang engine: {e}", elapsed))
        return results


def _server_info(engine: Any) -> dict[str, Any]:
    """What /server_info would say: the engine's server arguments and its
    scheduler's start-up info, across SGLang versions. (`Engine.get_server_info`
    runs an event loop of its own, so it cannot be called from this one.)"""
    info: dict[str, Any] = dict(server_args_dict(getattr(engine, "server_args", None)))
    candidates = [getattr(engine, "scheduler_info", None)]
    init = getattr(engine, "_scheduler_init_result", None)
    infos = getattr(init, "scheduler_infos", None)
    if isinstance(infos, list) and infos:
        candidates.append(infos[0])
    for scheduler in candidates:
        if isinstance(scheduler, dict) and isinstance(scheduler.get("max_total_num_tokens"), int):
            info.update(scheduler)
            break
    return info


def server_args_dict(args: Any) -> dict[str, Any]:
    """The fields of an SGLang ServerArgs of any version as a dict."""
    if args is None:
        return {}
    resolved = getattr(args, "resolved_dict", None)
    if callable(resolved):  # 0.5.23: resolved values of the Struct's fields
        try:
            values = resolved()
        except Exception:  # an unresolved record: fall back to the raw fields
            values = None
        if isinstance(values, dict):
            return values
    fields = getattr(type(args), "__struct_fields__", None)
    if isinstance(fields, tuple):  # a msgspec Struct: its __dict__ is not its fields
        return {name: getattr(args, name, None) for name in fields}
    if dataclasses.is_dataclass(args) and not isinstance(args, type):
        return {f.name: getattr(args, f.name) for f in dataclasses.fields(args)}
    return dict(vars(args)) if hasattr(args, "__dict__") else {}


async def _internal_states(engine: Any, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The scheduler's internal state per data-parallel rank (what /server_info
    reports as internal_states), asked in this event loop as ``async_generate``
    is; [] where the version or the engine cannot tell."""
    manager = getattr(engine, "tokenizer_manager", None)
    ask = getattr(manager, "get_internal_state", None)
    if ask is None or not asyncio.iscoroutinefunction(ask):
        return []
    try:
        states = await asyncio.wait_for(ask(), timeout)
    except Exception:  # an older or busy scheduler: fall back to the arguments
        return []
    if not isinstance(states, list):
        return []
    return [s for s in states if isinstance(s, dict)]
