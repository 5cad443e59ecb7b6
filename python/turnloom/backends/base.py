"""The one async contract every generation backend implements.

Two kinds of backend. A token backend (`takes = "tokens"`) gets token ids in and
gives token ids out: the engine owns tokenization and chat templates, so the
backend never re-renders history. A message backend (`takes = "messages"`, a
chat API) gets the speaker's view as OpenAI-format messages plus its tool
schemas, and returns text, structured tool calls and the server's own usage.
"""

from __future__ import annotations

import abc
from typing import Annotated, Any, Sequence

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
    """One generation job. `affinity` names the conversation tree (replica pinning).

    Token backends read `input_ids` (the rendered prompt, generation prefix
    included). Message backends read `messages` (the speaker's view in OpenAI
    chat format: role, content, optional name, tool_calls, tool_call_id) and
    `tools` (OpenAI tool schemas, `{"type": "function", "function": {...}}`);
    `input_ids` is then the locally rendered prompt when a tokenizer is known,
    else empty.
    """

    rid: str
    input_ids: list[int]
    params: SamplingParams
    affinity: int = 0
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None


class GenResult(msgspec.Struct, kw_only=True):
    """What came back for one request.

    `finish_reason` is "stop" (EOS, stop token or stop string), "length"
    (max_new_tokens) or "error"; `error` says why when it is "error".
    `output_ids` exclude any stop string match (`text` matches `output_ids`).
    Message backends may return no `output_ids`; they return the reply's
    structured `tool_calls` (OpenAI format: id, type "function", function
    name and JSON-string arguments) and `reasoning` text when the server
    separates it. `prompt_tokens`/`cached_tokens` are the server's own usage
    where it reports one.
    """

    rid: str
    output_ids: list[int]
    text: str
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    reasoning: str | None = None


class BackendInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a backend tells the scheduler about itself."""

    name: str
    model: str
    cache_capacity_tokens: int | None = None
    max_batch: int = 64
    replicas: int = 1
    #: Calls to keep outstanding (None: the run's default). A backend whose calls
    #: are single requests to a server that schedules each on its own (an HTTP
    #: API) sets max_batch 1 and this to its concurrency, so every conversation
    #: moves on as soon as its own reply is back, not when a batch's slowest is.
    max_inflight: int | None = None


class BackendError(Exception):
    """A backend failed in a way that retrying will not fix (bad config, missing model)."""


class Backend(abc.ABC):
    """Async generation backend. Results come back in request order."""

    #: Whether prompt ids reach a model as they are, so they must come from that
    #: model's own tokenizer (False for a backend that decodes prompts back to text).
    reads_token_ids: bool = True
    #: "tokens": generate from `GenRequest.input_ids`; "messages": from
    #: `GenRequest.messages` and `tools` (a chat API).
    takes: str = "tokens"

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
