"""A loopback server for the OpenAI-compatible API (as vLLM and SGLang serve it).

- ``POST /v1/completions``: ``prompt`` as a string, a list of token ids, or a
  list of either (one choice per prompt); ``max_tokens``, ``temperature``,
  ``top_p``, ``stop``, ``seed``, plus vLLM's ``top_k``, ``repetition_penalty``,
  ``stop_token_ids``, ``ignore_eos`` and ``return_token_ids`` (which adds
  ``token_ids`` to each choice and ``prompt_token_ids``).
- ``POST /v1/chat/completions``: ``messages`` (with ``tool_calls`` and
  ``tool`` results) and ``tools`` rendered as ChatML with the server's
  tokenizer, then generated the same way. With ``tools`` given, a last user
  message ``CALL name {json}`` is answered with that structured tool call
  (the hash model cannot choose tools; tests need a reply they can predict).
- ``GET /v1/models`` (vLLM's ``max_model_len``), ``POST /tokenize`` (vLLM) or
  ``POST /extras/tokenize`` (llama-cpp-python).

Replies carry ``usage``; ``prompt_tokens_details.cached_tokens`` (from the
same radix-cache model as the SGLang test server) only with
`report_cached_tokens`, as vLLM does with ``--enable-prompt-tokens-details``.
A prompt plus ``max_tokens`` over `context_length` is a 400 naming the length.

``flavor="llama-cpp-python"`` reproduces llama.cpp's Python server: string
prompts only (token ids are an HTTP 500), its sampling defaults for absent
fields (temperature 0.8, top_p 0.95, top_k 40, min_p 0.05, repeat_penalty
1.1), ``repeat_penalty`` as the penalty's name (``repetition_penalty`` and
``stop_token_ids`` are ignored), no cached-token reporting, ``owned_by: "me"``.
`sampling` records what each request was sampled with, after defaults.
A seeded request whose prompt is the one just served samples differently, as
llama-cpp-python 0.3.36 does (its KV cache still holds that prompt).
`honour_seed=False` makes seeds ignored (each request draws its own), as
SGLang does outside its deterministic mode. Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``. Rate limiting: a
`requests_per_minute` limit answers 429 with Retry-After when exceeded, and
`FaultSchedule` faults (route "/v1/completions" or "/v1/chat/completions")
inject 429s, 5xx, resets, hangs and malformed bodies.

Run standalone: ``python -m turnloom.testing.openai_server --port 8000``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
import json
import random
import re
from collections import deque
from typing import Any, Literal, Sequence

import msgspec

from turnloom.testing._httpserver import LoopbackServer, Reply, Request
from turnloom.testing.fake_model import (
    Detokenizer,
    Generation,
    HashModel,
    TokenModel,
    decode_loop,
    output_text,
)
from turnloom.testing.faults import Fault, FaultSchedule
from turnloom.tokenizer import ByteTokenizer

ROUTES = ("/v1/completions", "/v1/chat/completions")
LLAMA_CPP_DEFAULTS = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05,
                      "repeat_penalty": 1.1}
VLLM_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0,
                 "repetition_penalty": 1.0}
_CALL = re.compile(r"CALL (\w+) (\{.*\})\s*$", re.S)


class InvalidRequest(ValueError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ServerFault(Exception):
    """Answered with HTTP 500 and an ``internal_server_error`` body, as
    llama-cpp-python answers any exception in a route."""


class OpenAITestServer(LoopbackServer):
    """OpenAI-style completions over loopback, from a deterministic model."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 model_name: str = "turnloom/hash-model", model: TokenModel | None = None,
                 tokenizer: Any = None, detokenizer: Detokenizer | None = None,
                 cache_capacity: int = 1 << 16, cache: Any = None,
                 faults: FaultSchedule | None = None, api_key: str | None = None,
                 requests_per_minute: float | None = None, latency: float = 0.0,
                 flavor: Literal["vllm", "llama-cpp-python"] = "vllm",
                 context_length: int = 32768, report_cached_tokens: bool = True,
                 honour_seed: bool = True) -> None:
        super().__init__(host, port)
        if flavor not in ("vllm", "llama-cpp-python"):
            raise ValueError(f"flavor must be 'vllm' or 'llama-cpp-python', not {flavor!r}")
        self.flavor = flavor
        self.llama = flavor == "llama-cpp-python"
        self.context_length = context_length
        self.report_cached_tokens = report_cached_tokens and not self.llama
        self.honour_seed = honour_seed
        self._seeds = random.Random()
        self._last_prompt: str | None = None
        self.prompt_tokens: deque[int] = deque(maxlen=10_000)
        """The rendered prompt length of each generation request."""
        self.sampling: deque[dict[str, Any]] = deque(maxlen=10_000)
        """The sampling values of each generation request, server defaults filled in."""
        self.model_name = model_name
        self.tokenizer = tokenizer or ByteTokenizer()
        self.detok = detokenizer or (Detokenizer.bytes() if tokenizer is None
                                     else Detokenizer(self.tokenizer.decode))
        self.eos_token_ids = tuple(self.tokenizer.eos_token_ids)
        self.model: TokenModel = model or HashModel(
            eos_token_id=self.eos_token_ids[0] if self.eos_token_ids else None)
        if cache is None:
            from turnloom._core import RadixCache

            cache = RadixCache(cache_capacity)
        self.cache = cache
        self.faults = faults or FaultSchedule(routes=ROUTES)
        self.api_key = api_key
        self.requests_per_minute = requests_per_minute
        self.latency = latency
        self._window: deque[float] = deque()
        self.requests: deque[dict[str, Any]] = deque(maxlen=10_000)
        """Bodies of the latest completion requests (for tests to inspect)."""

    def inject(self, kind: str, times: int = 1, route: str = "/v1/completions", **kw: Any) -> None:
        self.faults.push(Fault(kind, route=route, **kw), times)

    async def handle(self, request: Request) -> Reply:
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_request_error",
                          code="invalid_api_key")
        if request.path == "/v1/models":
            model: dict[str, Any] = {"id": self.model_name, "object": "model",
                                     "created": int(time.time()),
                                     "owned_by": "me" if self.llama else "vllm"}
            if not self.llama:
                model["max_model_len"] = self.context_length
            return Reply.json({"object": "list", "data": [model]})
        if request.path == ("/extras/tokenize" if self.llama else "/tokenize"):
            return self._tokenize(request)
        if request.path not in ROUTES:
            return _error(404, f"Unknown route {request.path}", "invalid_request_error")
        if request.method != "POST":
            return _error(405, "Method Not Allowed", "invalid_request_error")
        fault = self.faults.draw(request.path)
        if fault is not None:
            if fault.kind == "reset":
                return Reply(reset=True)
            if fault.kind == "hang":
                return Reply(hang=True)
            if fault.kind == "status":
                return self._fault_status(fault)
            if fault.kind == "slow":
                await asyncio.sleep(fault.delay)
        if self._rate_limited():
            return _error(429, "Rate limit reached for requests.", "requests",
                          code="rate_limit_exceeded", headers={"Retry-After": "1"})
        try:
            body = request.json()
            if not isinstance(body, dict):
                raise InvalidRequest("The request body must be a JSON object.")
            self.requests.append(body)
            chat = request.path == "/v1/chat/completions"
            reply = await (self._chat(body) if chat else self._completions(body))
        except ServerFault as e:
            return _error(500, str(e), "internal_server_error")
        except msgspec.DecodeError as e:
            return _error(400, f"We could not parse the JSON body of your request: {e}",
                          "invalid_request_error")
        except InvalidRequest as e:
            return _error(400, str(e), "invalid_request_error", param=e.param)
        if fault is not None and fault.kind == "malformed":
            return Reply(status=200, body=b'{"id": "cmpl-x", "choices": [')
        if fault is not None and fault.kind == "truncate":
            return Reply(status=200, body=reply.body, truncate=max(1, len(reply.body) // 2))
        return reply

    def _tokenize(self, request: Request) -> Reply:
        try:
            body = request.json()
            text = body["input" if self.llama else "prompt"]
        except (msgspec.DecodeError, KeyError, TypeError):
            return _error(400, "a JSON body with the text to tokenize is required",
                          "invalid_request_error")
        if not isinstance(text, str):
            return _error(400, "the text to tokenize must be a string", "invalid_request_error")
        tokens = self.tokenizer.encode(text)
        if self.llama:
            return Reply.json({"tokens": tokens})
        return Reply.json({"tokens": tokens, "count": len(tokens),
                           "max_model_len": self.context_length})

    def _fault_status(self, fault: Fault) -> Reply:
        headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
        if fault.status == 429:
            return _error(429, "Rate limit reached for tokens per min.", "tokens",
                          code="rate_limit_exceeded", headers=headers)
        return _error(fault.status, "The server had an error while processing your request.",
                      "server_error", headers=headers)

    def _rate_limited(self) -> bool:
        if self.requests_per_minute is None:
            return False
        now = time.monotonic()
        while self._window and now - self._window[0] > 60.0:
            self._window.popleft()
        if len(self._window) >= self.requests_per_minute:
            return True
        self._window.append(now)
        return False

    # -- endpoints --------------------------------------------------------------

    async def _completions(self, body: dict[str, Any]) -> Reply:
        prompt = body.get("prompt")
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt
                                       and isinstance(prompt[0], int)):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt:
            prompts = prompt
        else:
            raise InvalidRequest("prompt must be a string, a list of token ids, or a list of those",
                                 "prompt")
        ids_list = []
        for p in prompts:
            if self.llama and not isinstance(p, str):
                # llama-cpp-python's request model takes strings only, and its
                # route handler turns the validation error into a 500.
                raise ServerFault("1 validation error for CreateCompletionRequest\nprompt\n"
                                  "  Input should be a valid string")
            if isinstance(p, str):
                ids_list.append(self.tokenizer.encode(p))
            elif isinstance(p, list) and p and all(isinstance(t, int) for t in p):
                ids_list.append(list(p))
            else:
                raise InvalidRequest("each prompt must be a non-empty string or list of token ids",
                                     "prompt")
        params = self._params(body)
        for ids in ids_list:
            self._check_context(ids, params, chat=False)
        gens, cached = await self._generate_all(ids_list, params)
        choices = []
        for i, gen in enumerate(gens):
            choice: dict[str, Any] = {"index": i, "text": self._text(gen, params),
                                      "logprobs": None, "finish_reason": _finish(gen)}
            if body.get("return_token_ids"):
                choice["token_ids"] = list(gen.output_ids)
                choice["prompt_token_ids"] = ids_list[i]
            choices.append(choice)
        return Reply.json({
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
            "created": int(time.time()), "model": self.model_name, "choices": choices,
            "usage": self._usage(ids_list, gens, cached)})

    async def _chat(self, body: dict[str, Any]) -> Reply:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages must be a non-empty list", "messages")
        tools = body.get("tools")
        if tools is not None and not (isinstance(tools, list)
                                      and all(isinstance(t, dict) for t in tools)):
            raise InvalidRequest("tools must be a list of objects", "tools")
        ids = self.tokenizer.encode(_render(messages, tools) + "<|im_start|>assistant\n")
        params = self._params(body)
        self._check_context(ids, params)
        call = _requested_call(messages, tools)
        (gen,), cached = await self._generate_all([ids], params)
        message: dict[str, Any] = {"role": "assistant", "content": self._text(gen, params)}
        finish = _finish(gen)
        if call is not None:
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            finish = "tool_calls"
        return Reply.json({
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": self.model_name,
            "choices": [{"index": 0, "finish_reason": finish, "message": message}],
            "usage": self._usage([ids], [gen], cached)})

    def _check_context(self, ids: list[int], params: dict[str, Any], chat: bool = True) -> None:
        wanted = len(ids) + params["max_new_tokens"]
        if self.llama:
            # llama-cpp-python refuses only a prompt that fills the window (it cuts
            # max_tokens to fit), in the wording of its error formatter.
            if len(ids) < self.context_length:
                return
            if chat:
                msg = (f"This model's maximum context length is {self.context_length} tokens. "
                       f"However, you requested {wanted} tokens ({len(ids)} in the messages, "
                       f"{params['max_new_tokens']} in the completion). Please reduce the "
                       f"length of the messages or completion.")
            else:
                msg = (f"This model's maximum context length is {self.context_length} tokens, "
                       f"however you requested {wanted} tokens ({len(ids)} in your prompt; "
                       f"{params['max_new_tokens']} for the completion). Please reduce your "
                       f"prompt; or completion length.")
            raise InvalidRequest(msg, "messages")
        if wanted <= self.context_length:
            return
        raise InvalidRequest(
            f"This model's maximum context length is {self.context_length} tokens. However, "
            f"you requested {wanted} tokens ({len(ids)} in the messages, "
            f"{params['max_new_tokens']} in the completion).", "max_tokens")

    def _usage(self, prompts: list[list[int]], gens: list[Generation],
               cached: list[int]) -> dict[str, Any]:
        usage = _usage(prompts, gens, cached)
        if not self.report_cached_tokens:
            del usage["prompt_tokens_details"]
        return usage

    def _params(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("stream"):
            raise InvalidRequest("stream is not supported by this test server", "stream")
        if (body.get("n") or 1) != 1:
            raise InvalidRequest("n must be 1 on this test server", "n")
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 16))
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise InvalidRequest("max_tokens must be a positive integer", "max_tokens")
        temperature = body.get("temperature", 1.0)
        if temperature is not None and not 0 <= temperature <= 2:
            raise InvalidRequest("temperature must be between 0 and 2", "temperature")
        stop = body.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        defaults = LLAMA_CPP_DEFAULTS if self.llama else VLLM_DEFAULTS
        # Fields the flavor does not know are ignored, as a pydantic model does.
        sampled = {k: body[k] if body.get(k) is not None else v for k, v in defaults.items()}
        self.sampling.append(sampled)
        temperature = sampled["temperature"]
        seed = body.get("seed") if self.honour_seed else self._seeds.getrandbits(32)
        if self.llama and seed is not None:
            # llama-cpp-python samples differently when the whole prompt is the
            # one it just served (still in its KV cache), whatever the seed.
            prompt = _prompt_key(body)
            if prompt == self._last_prompt:
                seed = self._seeds.getrandbits(32)
            self._last_prompt = prompt
        return {
            "max_new_tokens": 16 if max_tokens is None else max_tokens,
            "temperature": temperature,
            "seed": seed,
            "stop": stop or [],
            "stop_token_ids": [] if self.llama else body.get("stop_token_ids") or [],
            "ignore_eos": bool(body.get("ignore_eos", False)),
        }

    async def _generate_all(self, prompts: list[list[int]],
                   params: dict[str, Any]) -> tuple[list[Generation], list[int]]:
        self.prompt_tokens.extend(len(p) for p in prompts)
        cached = [self.cache.match_len(p[:-1]) for p in prompts]
        gens = [decode_loop(self.model, p, params, self.detok, self.eos_token_ids)
                for p in prompts]
        if self.latency:
            await asyncio.sleep(self.latency)
        for p, g in zip(prompts, gens):
            self.cache.insert(p + g.output_ids[:-1])
        return gens, cached

    def _text(self, gen: Generation, params: dict[str, Any]) -> str:
        return output_text(gen, self.detok)


def _prompt_key(body: dict[str, Any]) -> str:
    return json.dumps([body.get("messages"), body.get("prompt"), body.get("tools")],
                      sort_keys=True)


def _render(messages: list[Any], tools: list[dict[str, Any]] | None) -> str:
    """ChatML, as SmolLM2's template renders it (tools as a system preamble)."""
    out = ""
    if tools:
        out += "<|im_start|>system\nTools: " + json.dumps(tools, sort_keys=True) + "<|im_end|>\n"
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidRequest("each message needs a string role", "messages")
        content = m.get("content")
        calls = m.get("tool_calls")
        if content is None and not calls:
            raise InvalidRequest("a message needs content or tool_calls", "messages")
        if content is not None and not isinstance(content, str):
            raise InvalidRequest("message content must be a string", "messages")
        if m["role"] == "tool" and not isinstance(m.get("tool_call_id"), str):
            raise InvalidRequest("a tool message needs its tool_call_id", "messages")
        text = content or ""
        if calls:
            text += json.dumps(calls, sort_keys=True)
        out += f"<|im_start|>{m['role']}\n{text}<|im_end|>\n"
    return out


def _requested_call(messages: list[Any], tools: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The tool call a last user message `CALL name {json}` asks for, when that tool exists."""
    if not tools or messages[-1].get("role") != "user":
        return None
    m = _CALL.match(messages[-1].get("content") or "")
    names = {t.get("function", {}).get("name") for t in tools}
    if m is None or m.group(1) not in names:
        return None
    return {"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
            "function": {"name": m.group(1), "arguments": m.group(2)}}


def _finish(gen: Generation) -> str:
    return "length" if gen.finish["type"] == "length" else "stop"


def _usage(prompts: list[list[int]], gens: list[Generation], cached: list[int]) -> dict[str, Any]:
    prompt_tokens = sum(len(p) for p in prompts)
    completion = sum(len(g.output_ids) for g in gens)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": sum(cached)}}


def _error(status: int, message: str, kind: str, *, param: str | None = None,
           code: str | None = None, headers: dict[str, str] | None = None) -> Reply:
    return Reply.json({"error": {"message": message, "type": kind, "param": param, "code": code}},
                      status=status, headers=headers or {})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m turnloom.testing.openai_server",
        description="Serve an OpenAI-compatible API from a deterministic hash model.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-name", default="turnloom/hash-model")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--requests-per-minute", type=float, default=None)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--fault-status", type=int, default=429)
    parser.add_argument("--flavor", choices=("vllm", "llama-cpp-python"), default="vllm")
    args = parser.parse_args(argv)
    faults = FaultSchedule(rate=args.fault_rate, routes=ROUTES, status=args.fault_status)
    OpenAITestServer(host=args.host, port=args.port, model_name=args.model_name,
                     api_key=args.api_key, requests_per_minute=args.requests_per_minute,
                     faults=faults, flavor=args.flavor).serve_forever()


if __name__ == "__main__":
    main()
