"""The one async contract every generation backend implements.

Token ids in, token ids out: the engine owns tokenization and chat templates,
so a backend never re-renders history.
"""

from __future__ import annotations

import abc
from typing import Annotated, Sequence

import msgspec


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Sampling settings of one request. `seed` makes sampling reproducible."""

    # Ranges are checked when settings are decoded (scenario files), which
    # then name the file, line and field; every backend accepts these ranges.
    max_new_tokens: Annotated[int, msgspec.Meta(ge=1)] = 128
    temperature: Annotated[float, msgspec.Meta(ge=0)] = 0.7
    top_p: Annotated[float, msgspec.Meta(gt=0, le=1)] = 1.0
    top_k: Annotated[int, msgspec.Meta(ge=-1)] = -1  # -1: off
    repetition_penalty: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None


class GenRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One generation job. `affinity` names the conversation tree (replica pinning)."""

    rid: str
    input_ids: list[int]
    params: SamplingParams
    affinity: int = 0


class GenResult(msgspec.Struct, kw_only=True):
    """What came back for one request.

    `finish_reason` is "stop" (EOS, stop token or stop string), "length"
    (max_new_tokens) or "error"; `error` says why when it is "error".
    `output_ids` exclude any stop string match (`text` matches `output_ids`).
    """

    rid: str
    output_ids: list[int]
    text: str
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None


class BackendInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a backend tells the scheduler about itself."""

    name: str
    model: str
    cache_capacity_tokens: int | None = None
    max_batch: int = 64
    replicas: int = 1


class BackendError(Exception):
    """A backend failed in a way that retrying will not fix (bad config, missing model)."""


class Backend(abc.ABC):
    """Async generation backend. Results come back in request order."""

    #: Whether prompt ids reach a model as they are, so they must come from that
    #: model's own tokenizer (False for a backend that decodes prompts back to text).
    reads_token_ids: bool = True

    @abc.abstractmethod
    async def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """Run a batch; one result per request, same order. A failed request is a
        result with finish_reason "error", never a missing entry."""

    @abc.abstractmethod
    def info(self) -> BackendInfo: ...

    async def start(self) -> None:
        """Connect, load weights, check health. Called once before the first batch."""

    async def close(self) -> None:
        """Release connections and memory."""
