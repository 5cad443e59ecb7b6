"""Ask an OpenAI-compatible server what it is and what it supports.

`identify` (GET requests only, so cheap enough for every backend start) names
the server kind from ``GET /v1/models`` (``owned_by``: vLLM "vllm", SGLang
"sglang", llama.cpp's C++ server "llamacpp", llama-cpp-python "me") and its
context length where the server reports one. The kind picks a `Dialect`:
which sampling fields the server takes and under which names, what it samples
with when a field is left out, whether it takes token-id prompts and honours
seeds.

`probe` adds generation requests that test what the dialect only assumes:
token-id prompts, two identical seeded requests, cached-token reporting,
tool calling, and the context length from an over-long prompt's error where
the server does not report it. `turnloom probe URL` prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

from turnloom.backends._http import (
    HTTPClient,
    MalformedReply,
    Response,
    TransportError,
    error_message,
    split_url,
)


@dataclass(frozen=True)
class Dialect:
    """How one kind of server speaks the OpenAI API."""

    kind: str
    #: Takes top_k, min_p and a repetition penalty beyond OpenAI's fields.
    extra_sampling: bool
    #: The repetition penalty's field name.
    penalty_name: str = "repetition_penalty"
    #: The top_k value that turns top-k off.
    top_k_off: int = -1
    #: Takes ``"prompt": [token ids]`` on /completions (None: not known).
    token_id_prompts: bool | None = None
    stop_token_ids: bool = False
    #: "honoured", "deterministic mode only" or "best effort".
    seeds: str = "honoured"
    #: What the server samples with when a field is absent, and from where.
    defaults: dict[str, float] = field(default_factory=dict)
    defaults_source: str = ""


OPENAI_DEFAULTS = {"temperature": 1.0, "top_p": 1.0}
VLLM_STYLE_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0,
                       "repetition_penalty": 1.0}

DIALECTS: dict[str, Dialect] = {
    "vllm": Dialect(
        "vllm", True, token_id_prompts=True, stop_token_ids=True,
        defaults=VLLM_STYLE_DEFAULTS,
        defaults_source="vLLM's, overridden by the model's generation_config.json "
                        "(--generation-config auto)"),
    "sglang": Dialect(
        "sglang", True, token_id_prompts=True, stop_token_ids=True,
        seeds="deterministic mode only", defaults=VLLM_STYLE_DEFAULTS,
        defaults_source="SGLang's, or the model's generation_config.json "
                        "(--sampling-defaults model)"),
    "llama-cpp-python": Dialect(
        "llama-cpp-python", True, penalty_name="repeat_penalty", top_k_off=0,
        token_id_prompts=False,
        # Measured on 0.3.36: a request whose whole prompt is still in the KV
        # cache (the same prompt again) samples differently under the same seed.
        seeds="only when the prompt is not the one just served",
        defaults={"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05,
                  "repeat_penalty": 1.1},
        defaults_source="llama_cpp/server/types.py request fields"),
    "llama.cpp": Dialect(
        "llama.cpp", True, penalty_name="repeat_penalty", top_k_off=0, token_id_prompts=True,
        defaults={"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05,
                  "repeat_penalty": 1.0},
        defaults_source="llama.cpp server defaults (GET /props reports the live ones)"),
    "openai": Dialect("openai", False, token_id_prompts=False, seeds="best effort",
                      defaults=OPENAI_DEFAULTS, defaults_source="OpenAI API reference"),
}
"""Per server kind; "openai" also stands for any server not recognised."""

_OWNED_BY = {"vllm": "vllm", "sglang": "sglang", "llamacpp": "llama.cpp",
             "me": "llama-cpp-python"}
_CONTEXT_IN_ERROR = re.compile(
    r"(?:context window of|maximum context length is|context length of|n_ctx[^0-9]{0,20})\s*(\d+)",
    re.I)


@dataclass
class ServerInfo:
    """What a server said about itself; None where it was not asked or did not say."""

    url: str
    kind: str = "openai"
    model: str | None = None
    context_length: int | None = None
    token_id_prompts: bool | None = None
    token_id_note: str = ""
    seeds_reproduce: bool | None = None
    seed_note: str = ""
    cached_tokens: bool | None = None
    tool_calling: str | None = None
    defaults: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def dialect(self) -> Dialect:
        return DIALECTS.get(self.kind, DIALECTS["openai"])

    def rows(self) -> list[tuple[str, str]]:
        d = self.dialect
        defaults = ", ".join(f"{k} {v:g}" for k, v in self.defaults.items()) or "unknown"
        penalty = d.penalty_name if d.extra_sampling else "not sent (OpenAI fields only)"
        return [
            ("server", f"{self.kind} at {self.url}"),
            ("model", self.model or "unknown"),
            ("context length", str(self.context_length) if self.context_length else "unknown"),
            ("token-id prompts", _yes_no(self.token_id_prompts, self.token_id_note)),
            ("seeds reproduce", _yes_no(self.seeds_reproduce, self.seed_note or d.seeds)),
            ("cached tokens reported", _yes_no(self.cached_tokens, "")),
            ("tool calling", self.tool_calling or "not probed"),
            ("sampling defaults", f"{defaults} ({d.defaults_source})"),
            ("repetition penalty field", penalty),
            ("stop_token_ids", "taken" if d.stop_token_ids else "ignored or refused"),
        ]

    def table(self) -> str:
        rows = self.rows()
        width = max(len(k) for k, _ in rows)
        # Server error texts can span lines: one row each, whitespace collapsed.
        lines = [f"{k:<{width}}  {' '.join(v.split())}" for k, v in rows]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _yes_no(value: bool | None, note: str) -> str:
    word = {True: "yes", False: "no", None: "not probed"}[value]
    return f"{word} ({note})" if note else word


def server_root(base_url: str) -> str:
    """The server's root: routes such as /props and /tokenize live beside /v1."""
    base = base_url.rstrip("/")
    return base[:-3] if base.endswith("/v1") else base


async def identify(client: HTTPClient, base_url: str, *, timeout: float = 10.0) -> ServerInfo:
    """Kind, model and context length from GET requests only."""
    base = base_url.rstrip("/")
    info = ServerInfo(url=base)
    try:
        r = await client.get(base + "/models", timeout=timeout)
    except TransportError as e:
        info.notes.append(f"GET /models failed: {e}")
        info.defaults = dict(info.dialect.defaults)
        return info
    data = _json_or_none(r) if r.status == 200 else None
    models = data.get("data") if isinstance(data, dict) else None
    if not isinstance(models, list) or not models or not isinstance(models[0], dict):
        info.notes.append(f"GET /models answered HTTP {r.status}: {error_message(r)[:120]}")
        info.defaults = dict(info.dialect.defaults)
        return info
    first = models[0]
    info.model = str(first.get("id")) if first.get("id") is not None else None
    info.kind = _OWNED_BY.get(str(first.get("owned_by", "")), "openai")
    length = first.get("max_model_len")
    meta = first.get("meta")
    if not isinstance(length, int) and isinstance(meta, dict):
        length = meta.get("n_ctx_train")
    info.context_length = length if isinstance(length, int) and length > 0 else None
    info.defaults = dict(info.dialect.defaults)
    if info.kind == "llama.cpp":
        await _llama_cpp_props(client, base, info, timeout)
    return info


async def _llama_cpp_props(client: HTTPClient, base: str, info: ServerInfo,
                           timeout: float) -> None:
    try:
        r = await client.get(server_root(base) + "/props", timeout=timeout)
    except TransportError:
        return
    props = _json_or_none(r) if r.status == 200 else None
    settings = props.get("default_generation_settings") if isinstance(props, dict) else None
    if not isinstance(settings, dict):
        return
    nested = settings.get("params")
    params: dict[str, Any] = nested if isinstance(nested, dict) else settings
    for key in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty"):
        if isinstance(params.get(key), (int, float)):
            info.defaults[key] = float(params[key])
    if isinstance(settings.get("n_ctx"), int):
        info.context_length = settings["n_ctx"]


async def probe(client: HTTPClient, base_url: str, *, model: str | None = None,
                timeout: float = 120.0) -> ServerInfo:
    """`identify`, then the generation requests that test each capability."""
    base = base_url.rstrip("/")
    info = await identify(client, base, timeout=min(timeout, 30.0))
    model = model or info.model or "default"
    await _probe_token_ids(client, base, model, info, timeout)
    await _probe_seeds_and_cache(client, base, model, info, timeout)
    await _probe_tools(client, base, model, info, timeout)
    if info.context_length is None:
        await _probe_context(client, base, model, info, timeout)
    return info


def sampling_fields(info: ServerInfo) -> dict[str, Any]:
    """Explicit values of the fields a server would otherwise fill with its own
    defaults: off / neutral, so that it samples what the request says."""
    d = info.dialect
    if not d.extra_sampling:
        return {}
    return {"top_k": d.top_k_off, "min_p": 0.0, d.penalty_name: 1.0}


async def _post(client: HTTPClient, url: str, body: dict[str, Any],
                timeout: float) -> tuple[Response | None, str]:
    try:
        return await client.post_json(url, body, timeout=timeout), ""
    except TransportError as e:
        return None, str(e)


async def _server_ids(client: HTTPClient, base: str, model: str, text: str,
                      timeout: float) -> list[int] | None:
    root = server_root(base)
    attempts = ((root + "/tokenize", {"model": model, "prompt": text}),  # vLLM, SGLang
                (root + "/tokenize", {"content": text}),  # llama.cpp
                (root + "/extras/tokenize", {"input": text}))  # llama-cpp-python
    for url, body in attempts:
        r, _ = await _post(client, url, body, timeout)
        data = _json_or_none(r) if r is not None and r.status == 200 else None
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if isinstance(tokens, list) and tokens and all(isinstance(t, int) for t in tokens):
            return tokens
    return None


async def _probe_token_ids(client: HTTPClient, base: str, model: str, info: ServerInfo,
                           timeout: float) -> None:
    ids = await _server_ids(client, base, model, "Hello, how are you?", timeout)
    note = "the server's own tokenization" if ids else "ids 100-104: no tokenize route"
    r, err = await _post(client, base + "/completions",
                         {"model": model, "prompt": ids or [100, 101, 102, 103, 104],
                          "max_tokens": 1, "temperature": 0.0}, timeout)
    if r is None:
        info.token_id_prompts, info.token_id_note = False, err
    elif r.status == 200:
        info.token_id_prompts, info.token_id_note = True, note
    else:
        info.token_id_prompts = False
        info.token_id_note = f"HTTP {r.status}: {error_message(r)[:100]}"


_LONG_SYSTEM = ("You are a careful assistant in a simulated user study. " * 12).strip()


def _chat(model: str, seed: int) -> dict[str, Any]:
    return {"model": model, "max_tokens": 24, "temperature": 1.0, "top_p": 1.0, "seed": seed,
            "messages": [{"role": "system", "content": _LONG_SYSTEM},
                         {"role": "user", "content": "Write one sentence about the sea."}]}


async def _probe_seeds_and_cache(client: HTTPClient, base: str, model: str, info: ServerInfo,
                                 timeout: float) -> None:
    url = base + "/chat/completions"
    replies = []
    for seed in (1234, 1234, 4321):
        r, err = await _post(client, url, {**_chat(model, seed), **sampling_fields(info)},
                             timeout)
        data = _json_or_none(r) if r is not None and r.status == 200 else None
        if not isinstance(data, dict):
            info.seed_note = err or (f"HTTP {r.status}: {error_message(r)[:100]}" if r else "")
            return
        replies.append(data)
    texts = [_reply_text(d) for d in replies]
    info.seeds_reproduce = texts[0] == texts[1]
    if info.seeds_reproduce and texts[2] == texts[0]:
        info.seed_note = "another seed gave the same text too: the seed may be ignored"
    elif info.seeds_reproduce:
        info.seed_note = "same seed same text, another seed another text"
    else:
        info.seed_note = "two identical seeded requests differed"
    details = (replies[1].get("usage") or {}).get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    info.cached_tokens = isinstance(cached, int) and cached > 0


async def _probe_tools(client: HTTPClient, base: str, model: str, info: ServerInfo,
                       timeout: float) -> None:
    tool = {"type": "function", "function": {
        "name": "get_weather", "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}
    body = {"model": model, "max_tokens": 64, "temperature": 0.0, "tools": [tool],
            "tool_choice": "auto",
            "messages": [{"role": "user", "content": "What is the weather in Paris? "
                                                     "Use the get_weather tool."}]}
    r, err = await _post(client, base + "/chat/completions", body, timeout)
    if r is None:
        info.tool_calling = f"failed: {err}"
        return
    if r.status != 200:
        info.tool_calling = f"refused: HTTP {r.status}: {error_message(r)[:100]}"
        return
    data = _json_or_none(r)
    try:
        calls = data["choices"][0]["message"].get("tool_calls") if isinstance(data, dict) else None
    except (KeyError, IndexError, TypeError, AttributeError):
        calls = None
    info.tool_calling = ("tools accepted; structured tool_calls returned" if calls
                         else "tools accepted; the reply had no tool_calls")


async def _probe_context(client: HTTPClient, base: str, model: str, info: ServerInfo,
                         timeout: float) -> None:
    # Far over any small model's window: servers refuse it before generating and
    # name their context length in the error.
    r, _ = await _post(client, base + "/completions",
                       {"model": model, "prompt": "hi " * 40000, "max_tokens": 1}, timeout)
    if r is None or r.status == 200:
        return
    m = _CONTEXT_IN_ERROR.search(error_message(r))
    if m:
        info.context_length = int(m.group(1))
        info.notes.append("context length read from the error of an over-long prompt")


def _reply_text(data: dict[str, Any]) -> str:
    try:
        return str(data["choices"][0]["message"].get("content") or "")
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""


def _json_or_none(r: Response | None) -> Any:
    if r is None:
        return None
    try:
        return r.json()
    except MalformedReply:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="turnloom probe", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="the API's base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default=None, help="model name (default: the server's first)")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY",
                        help="environment variable holding the API key")
    parser.add_argument("--timeout", type=float, default=120.0)


def run(args: argparse.Namespace) -> int:
    import os

    try:
        split_url(args.url)
    except ValueError as e:
        print(f"turnloom probe: error: {e}", file=sys.stderr)
        return 2
    key = os.environ.get(args.api_key_env)
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def go() -> ServerInfo:
        client = HTTPClient(timeout=args.timeout, headers=headers, max_connections=4)
        try:
            return await probe(client, args.url, model=args.model, timeout=args.timeout)
        finally:
            await client.close()

    info = asyncio.run(go())
    print(info.table())
    return 0 if info.model is not None else 1


if __name__ == "__main__":
    sys.exit(main())
