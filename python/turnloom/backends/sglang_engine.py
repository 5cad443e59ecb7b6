"""SGLang in-process: ``sglang.Engine(...)`` driven with ``async_generate``.

One batch is one ``await engine.async_generate(input_ids=[...],
sampling_params=[...])``; SGLang answers a batch with a list of results in
request order, shaped like its HTTP replies (see `_sglang_common`). sglang
is imported only in `start()`; it needs a CUDA machine
(``pip install 'turnloom[sglang]'``).

Settings (``from_settings``): model_path, engine_args (passed to
``sglang.Engine``), max_batch, cache_capacity_tokens (overrides what the
engine reports). max_batch unset: the requests the engine's scheduler runs at
once (`running_capacity` of its server arguments and start-up info), or
DEFAULT_MAX_BATCH when they do not tell.
"""

from __future__ import annotations

import importlib
import time
from typing import Any, Callable, Mapping, Sequence

import msgspec

from turnloom.backends._sglang_common import (
    BadItem,
    error_result,
    read_result,
    running_capacity,
    sampling_params,
)
from turnloom.backends.base import Backend, BackendError, BackendInfo, GenRequest, GenResult

INSTALL_HINT = ("SGLang is not installed: pip install 'turnloom[sglang]' "
                "(it needs a machine with a CUDA GPU)")
DEFAULT_MAX_BATCH = 256


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

    async def _batch(self, batch: list[GenRequest]) -> list[GenResult]:
        started = time.monotonic()
        try:
            outs = await self.engine.async_generate(
                input_ids=[list(r.input_ids) for r in batch],
                sampling_params=[sampling_params(r.params) for r in batch])
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
    info: dict[str, Any] = {}
    args = getattr(engine, "server_args", None)
    if args is not None and hasattr(args, "__dict__"):
        info.update(vars(args))
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
