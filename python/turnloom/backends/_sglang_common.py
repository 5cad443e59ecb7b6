"""What the SGLang backends (HTTP and in-process) share: request mapping and
reading one generation result.

SGLang facts relied on (python/sglang/srt/sampling/sampling_params.py,
managers/tokenizer_manager.py, managers/detokenizer_manager.py,
managers/schedule_batch.py):

- sampling params are named max_new_tokens, temperature, top_p, top_k,
  repetition_penalty, stop, stop_token_ids; the per-request seed is
  `sampling_seed`, honoured when the server runs with
  --enable-deterministic-inference (some versions keep it as int32, so seeds
  are folded into 31 bits here);
- a result is {"text", "output_ids", "meta_info"}; meta_info holds
  prompt_tokens, completion_tokens, cached_tokens, e2e_latency and
  finish_reason = {"type": "stop", "matched": id|str} | {"type": "length",
  "length": n} | {"type": "abort", "message": ...};
- `output_ids` are not trimmed: they keep the matched stop token and the
  tokens of a matched stop string, while `text` has both trimmed;
- the server info (``/server_info``, or ``server_args`` plus the scheduler's
  start-up info in process) holds the server arguments, among them
  max_running_requests (None unless set), dp_size and enable_dp_attention,
  and the scheduler's max_total_num_tokens and max_req_input_len. The
  scheduler runs at most min(max_running_requests or max_total_num_tokens // 2,
  its request pool) requests at once, the pool being
  min(max(max_total_num_tokens * 512 // context_len, 2048), 4096)
  (managers/scheduler.py, model_executor/model_runner.py).

Version facts (read from each release's source):

- `sampling_seed` exists from 0.5.3; 0.5.2 and older build SamplingParams with
  the request's keys, so a request carrying it fails (a TypeError, HTTP 500)
  and so does its whole batch. From 0.5.3 the seed is honoured only with
  --enable-deterministic-inference (a server argument, in /server_info).
- A prompt of context_length tokens or more is refused in every version; the
  prompt plus max_new_tokens is refused when >= context_length up to 0.5.6 and
  when > context_length in 0.5.23 (tokenizer_manager._validate_one_request).
  Either refusal is a ValueError that fails the whole batch with HTTP 400.
  The model's context length is /v1/models' max_model_len in all of these
  versions; /server_info's context_length is the server argument (None
  unless set).
- /server_info and /model_info exist from 0.5.6 (0.5.2 and older have only
  /get_server_info and /get_model_info, which 0.5.6 keeps as aliases). In
  0.5.23 each entry of its internal_states reports
  effective_max_running_requests_per_dp: what the scheduler really runs.

turnloom's contract wants stop-string tokens out of `output_ids` too. With a
tokenizer, the ids are cut by decoding; without one, the per-token texts of
`return_text_in_logprobs` are used, so requests with stop strings ask for them.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

from turnloom.backends.base import GenRequest, GenResult, SamplingParams

SEED_MASK = 0x7FFFFFFF
# SGLang's request pool when its own rule cannot be worked out (the rule's floor).
DEFAULT_REQUEST_POOL = 2048
MAX_REQUEST_POOL = 4096
SEED_SINCE = (0, 5, 3)  # first release whose SamplingParams takes sampling_seed
TOTAL_LENGTH_INCLUSIVE_SINCE = (0, 5, 23)  # prompt + max_new_tokens == context_len accepted

Version = tuple[int, int, int]


def parse_version(value: Any) -> Version | None:
    """(major, minor, patch) of an SGLang version string ("0.5.3.post1" ->
    (0, 5, 3)); None when it is not one."""
    if not isinstance(value, str):
        return None
    m = re.match(r"v?(\d+)\.(\d+)\.(\d+)", value.strip())
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def seed_support(info: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether to send `sampling_seed` to this server, and why seeds will not
    be honoured ('' when they will)."""
    version = parse_version(info.get("version"))
    has_flag = "enable_deterministic_inference" in info
    if version is not None and version < SEED_SINCE:
        return False, (f"SGLang {info.get('version')} has no sampling_seed (added in 0.5.3): "
                       "seeds are not sent, so seeded requests do not reproduce")
    if version is None and not has_flag:
        return False, ("the server reports no SGLang version and no "
                       "enable_deterministic_inference setting: seeds are not sent, "
                       "so seeded requests do not reproduce")
    if not info.get("enable_deterministic_inference"):
        return True, ("the server was not started with --enable-deterministic-inference: "
                      "SGLang ignores sampling_seed, so seeded requests do not reproduce")
    return True, ""


def length_error(req: GenRequest, context_length: int | None,
                 version: Version | None) -> str:
    """Why SGLang would refuse this request for its length ('' when it fits);
    the rule of the server's version, the stricter one when it is unknown."""
    if context_length is None:
        return ""
    prompt = len(req.input_ids)
    if prompt >= context_length:
        return (f"the prompt has {prompt} tokens, the server's context length is "
                f"{context_length}: SGLang refuses prompts that long")
    total = prompt + req.params.max_new_tokens
    inclusive = version is not None and version >= TOTAL_LENGTH_INCLUSIVE_SINCE
    if total > context_length or (total == context_length and not inclusive):
        return (f"prompt ({prompt} tokens) + max_new_tokens ({req.params.max_new_tokens}) = "
                f"{total} does not fit the server's context length of {context_length} tokens")
    return ""


def context_length(info: Mapping[str, Any], models: Any = None) -> int | None:
    """The model's context length: /v1/models' max_model_len (the length SGLang
    checks against), else the context_length server argument when it was set."""
    data = models.get("data") if isinstance(models, dict) else None
    if isinstance(data, list):
        for card in data:
            if isinstance(card, dict) and _positive(card.get("max_model_len")):
                return int(card["max_model_len"])
    return _positive(info.get("context_length"))


def running_capacity(info: Mapping[str, Any]) -> int | None:
    """The most requests an SGLang server runs at once, from its server info:
    the scheduler's own report when there is one (0.5.23), else worked out
    from the server arguments; None when the info says too little (no
    max_running_requests and no max_total_num_tokens)."""
    effective = _effective_running(info)
    if effective is not None:
        return effective
    configured = _positive(info.get("max_running_requests"))
    tokens = _positive(info.get("max_total_num_tokens"))
    if configured is not None and info.get("enable_dp_attention"):
        return configured  # split across the data-parallel ranks: already the total
    limit = configured if configured is not None else (tokens // 2 if tokens else None)
    if not limit:
        return None
    context = _positive(info.get("context_length"))
    req_input = _positive(info.get("max_req_input_len"))
    if context is None and req_input is not None:
        context = req_input + 1
    pool = DEFAULT_REQUEST_POOL
    if tokens is not None and context is not None:
        pool = min(max(tokens * 512 // context, DEFAULT_REQUEST_POOL), MAX_REQUEST_POOL)
    return min(limit, pool) * (_positive(info.get("dp_size")) or 1)


def _effective_running(info: Mapping[str, Any]) -> int | None:
    """What the scheduler reports it runs (0.5.23's internal_states), times the
    data-parallel ranks; None when not reported."""
    states = info.get("internal_states")
    if not isinstance(states, list) or not states or not isinstance(states[0], dict):
        return None
    per_dp = _positive(states[0].get("effective_max_running_requests_per_dp"))
    if per_dp is None:
        return None
    return per_dp * (_positive(info.get("dp_size")) or 1)


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def sampling_params(p: SamplingParams, send_seed: bool = True) -> dict[str, Any]:
    """SGLang's sampling_params dict for one request; `send_seed` False leaves
    the seed out (servers older than 0.5.3 fail any request that has one)."""
    d: dict[str, Any] = {
        "max_new_tokens": p.max_new_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "top_k": p.top_k,
        "repetition_penalty": p.repetition_penalty,
    }
    if p.stop:
        d["stop"] = list(p.stop)
    if p.stop_token_ids:
        d["stop_token_ids"] = list(p.stop_token_ids)
    if p.seed is not None and send_seed:
        d["sampling_seed"] = p.seed & SEED_MASK
    return d


def needs_piece_texts(req: GenRequest, decode: Callable[[Sequence[int]], str] | None) -> bool:
    """Whether this request must ask SGLang for per-token texts to trim a stop string."""
    return bool(req.params.stop) and decode is None


class BadItem(Exception):
    """One result of a reply is not what SGLang sends; `retry` says whether to try again."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


def read_result(req: GenRequest, out: Any, *, elapsed_s: float,
                decode: Callable[[Sequence[int]], str] | None) -> GenResult:
    """Turn one SGLang result dict into a GenResult; raises BadItem."""
    if not isinstance(out, dict):
        raise BadItem(f"result is a {type(out).__name__}, not an object")
    meta = out.get("meta_info")
    ids = out.get("output_ids")
    if not isinstance(meta, dict):
        raise BadItem("result has no meta_info object")
    if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
        raise BadItem("result has no output_ids list of ints")
    finish = meta.get("finish_reason")
    kind = finish.get("type") if isinstance(finish, dict) else finish
    if kind == "abort":
        message = finish.get("message") if isinstance(finish, dict) else None
        raise BadItem(f"request aborted by the server: {message or 'no message'}")
    if kind not in ("stop", "length"):
        raise BadItem(f"unexpected finish_reason {finish!r}")
    text = out.get("text")
    text = text if isinstance(text, str) else ""
    matched = finish.get("matched") if isinstance(finish, dict) else None
    if kind == "stop" and isinstance(matched, str) and matched:
        ids, text = trim_stop_string(ids, matched, text, decode, meta.get("output_token_logprobs"))
    prompt_tokens = meta.get("prompt_tokens")
    if not isinstance(prompt_tokens, int):
        prompt_tokens = len(req.input_ids)
    cached = meta.get("cached_tokens")
    cached = min(max(cached, 0), prompt_tokens) if isinstance(cached, int) else 0
    latency = meta.get("e2e_latency")
    if not isinstance(latency, (int, float)) or latency < 0:
        latency = elapsed_s
    return GenResult(rid=req.rid, output_ids=ids, text=text, finish_reason=kind,
                     prompt_tokens=prompt_tokens, cached_tokens=cached,
                     latency_s=float(latency))


def trim_stop_string(ids: list[int], stop: str, text: str,
                     decode: Callable[[Sequence[int]], str] | None,
                     logprobs: Any) -> tuple[list[int], str]:
    """Drop the tokens from the one where `stop` starts; returns (ids, text)."""
    if decode is not None:
        return _trim_by_decode(ids, stop, decode, text)
    pieces = _piece_texts(logprobs, len(ids))
    if pieces is None:
        return ids, text  # nothing to cut by: keep SGLang's untrimmed ids
    acc = ""
    bounds = []
    for piece in pieces:
        acc += piece
        bounds.append(len(acc))
    pos = acc.find(stop)
    if pos == -1:
        return ids, text
    keep = sum(1 for b in bounds if b <= pos)
    return ids[:keep], acc[: bounds[keep - 1]] if keep else ""


def _trim_by_decode(ids: list[int], stop: str, decode: Callable[[Sequence[int]], str],
                    text: str) -> tuple[list[int], str]:
    n = len(ids)
    if stop not in decode(ids):
        return ids, text
    while n > 1 and stop in decode(ids[: n - 1]):
        n -= 1
    full = decode(ids[:n])
    pos = full.find(stop)
    m = n
    while m > 0:
        head = decode(ids[:m])
        if len(head) <= pos and full.startswith(head):
            return ids[:m], head
        m -= 1
    return [], ""


def _piece_texts(logprobs: Any, n: int) -> list[str] | None:
    if not isinstance(logprobs, list) or len(logprobs) != n:
        return None
    pieces = []
    for entry in logprobs:
        if not isinstance(entry, (list, tuple)) or len(entry) < 3 or not isinstance(entry[2], str):
            return None
        pieces.append(entry[2])
    return pieces


def error_result(req: GenRequest, message: str, latency_s: float = 0.0) -> GenResult:
    return GenResult(rid=req.rid, output_ids=[], text="", finish_reason="error",
                     prompt_tokens=len(req.input_ids), latency_s=latency_s, error=message)
