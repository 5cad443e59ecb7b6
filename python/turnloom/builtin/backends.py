"""Built-in generation backends, imported only when a scenario uses them."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from turnloom.hookspecs import Register, hookimpl

BACKENDS = {
    "scripted": ("turnloom.backends.scripted", "ScriptedBackend"),
    "transformers": ("turnloom.backends.transformers", "TransformersBackend"),
    "sglang": ("turnloom.backends.sglang_http", "SGLangHTTPBackend"),
    "sglang-engine": ("turnloom.backends.sglang_engine", "SGLangEngineBackend"),
    "openai": ("turnloom.backends.openai_compat", "OpenAIBackend"),
}


def _lazy(module: str, cls: str) -> Callable[[dict[str, Any]], Any]:
    # Heavy dependencies (torch, HTTP clients) load only when the backend is built.
    def factory(settings: dict[str, Any]) -> Any:
        return getattr(importlib.import_module(module), cls).from_settings(settings)

    factory.__qualname__ = f"{cls}.from_settings"
    return factory


@hookimpl
def register_backends(register: Register) -> None:
    for name, (module, cls) in BACKENDS.items():
        register(name, _lazy(module, cls))
