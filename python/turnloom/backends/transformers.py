"""Hugging Face transformers backend: batched generation with prefix KV reuse.

Runs any full-attention causal LM that transformers loads (by default the
embedded SmolLM2-135M-Instruct) on CPU or GPU, with its own decode loop:

- a batch is left-padded into one forward pass; each row's reused KV prefix
  sits right-aligned before the batch's new tokens, so a row's tokens are two
  runs with padding between them, all masked by the 2D attention mask and
  placed by explicit position ids;
- the KV cache is a preallocated slab (transformers' DynamicCache re-concatenates
  every layer on every step);
- each request samples from its own seeded generator (an exponential race over
  the vocabulary), so a seed gives the same tokens whatever else is in the batch;
- when a request finishes, the KV of its tokens is kept, keyed by its affinity
  (conversation), so the conversation's next turn prefills only its new tokens.
  The store is an LRU bounded in bytes.

torch and transformers are imported when the backend starts, so the package
imports without them.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import itertools
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Sequence

import msgspec

from turnloom.backends.base import Backend, BackendError, BackendInfo, GenRequest, GenResult, SamplingParams

if TYPE_CHECKING:
    import torch

    from turnloom.hf_tokenizer import HFTokenizer
    from turnloom.tokenizer import ChatFormat

NAME = "transformers"
# Prompt tokens per prefill forward pass, summed over the batch.
PREFILL_TOKENS = 4096


class TransformersSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of the transformers backend (a scenario's backend block)."""

    model: str = "smollm2-135m-instruct"
    """"smollm2-135m-instruct" (alias "default") or a local transformers model directory."""
    device: Annotated[str, msgspec.Meta(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")] = "auto"
    dtype: Annotated[str, msgspec.Meta(pattern=r"^(auto|float32|bfloat16|float16)$")] = "auto"
    """"auto": float32 on CPU, bfloat16 on GPU."""
    max_batch: Annotated[int, msgspec.Meta(ge=1)] = 16
    prefix_reuse: bool = True
    prefix_cache_mb: Annotated[int, msgspec.Meta(ge=1)] = 1024
    """Bound on the KV kept between turns."""
    min_reuse_tokens: Annotated[int, msgspec.Meta(ge=1)] = 8
    """Shared prefixes shorter than this are recomputed instead of copied in."""
    threads: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """torch intra-op threads on CPU; None keeps torch's default."""


class TransformersBackend(Backend):
    """Generation with Hugging Face transformers, in this process."""

    def __init__(self, settings: TransformersSettings | None = None) -> None:
        self.settings = settings or TransformersSettings()
        self._runner: _Runner | None = None
        self._chat_format: ChatFormat | None = None

    @property
    def chat_format(self) -> ChatFormat:
        """The model's own chat format: the engine renders this backend's prompts with
        it unless the scenario names another `tokenizer` (byte ids would be garbage here)."""
        if self._chat_format is None:
            from turnloom.models import load_chat_format

            self._chat_format = load_chat_format(self.settings.model)
        return self._chat_format

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> TransformersBackend:
        try:
            s = msgspec.convert(settings, TransformersSettings)
        except msgspec.ValidationError as e:
            raise BackendError(f"transformers backend settings: {e}") from e
        from turnloom.models import check_model_spec

        try:
            check_model_spec(s.model)  # a typo fails at validation, not after the run starts
        except BackendError as e:
            e.setting = "model"  # type: ignore[attr-defined]
            raise
        return cls(s)

    async def start(self) -> None:
        if self._runner is None:
            self._runner = await asyncio.to_thread(_Runner.load, self.settings)

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.store.clear()

    @property
    def tokenizer(self) -> HFTokenizer:
        return self._started().tokenizer

    @property
    def prefix_store(self) -> PrefixStore:
        return self._started().store

    def info(self) -> BackendInfo:
        capacity = None
        if self._runner is not None and self.settings.prefix_reuse:
            capacity = max(1, self._runner.store.capacity_tokens)
        return BackendInfo(name=NAME, model=self.settings.model, cache_capacity_tokens=capacity,
                           max_batch=self.settings.max_batch)

    async def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        if not requests:
            return []
        return await asyncio.to_thread(self._started().generate, list(requests))

    def _started(self) -> _Runner:
        if self._runner is None:
            raise BackendError("transformers backend used before start()")
        return self._runner


# -- prefix KV store ---------------------------------------------------------------------


@dataclass(eq=False)
class PrefixEntry:
    """The KV of `tokens`: one (keys, values) pair per layer, each [heads, len, head_dim]."""

    affinity: int
    tokens: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]
    nbytes: int
    key: int = field(default_factory=itertools.count().__next__)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixStore:
    """KV of finished requests by affinity, least recently used evicted first."""

    def __init__(self, capacity_bytes: int, bytes_per_token: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.bytes_per_token = max(1, bytes_per_token)
        self.nbytes = 0
        self._lru: collections.OrderedDict[int, PrefixEntry] = collections.OrderedDict()
        self._by_affinity: dict[int, list[PrefixEntry]] = {}

    @property
    def capacity_tokens(self) -> int:
        return self.capacity_bytes // self.bytes_per_token

    def __len__(self) -> int:
        return len(self._lru)

    def lookup(self, affinity: int, ids: Sequence[int]) -> tuple[PrefixEntry | None, int]:
        """The entry sharing the longest prefix with `ids`, and that length
        (at most len(ids) - 1: the last prompt token is always fed, for its logits)."""
        best, best_n = None, 0
        for entry in self._by_affinity.get(affinity, ()):
            n = common_prefix(entry.tokens, ids)
            if n > best_n:
                best, best_n = entry, n
        best_n = min(best_n, len(ids) - 1)
        if best is None or best_n <= 0:
            return None, 0
        self._lru.move_to_end(best.key)
        return best, best_n

    def put(self, entry: PrefixEntry) -> None:
        if entry.nbytes > self.capacity_bytes:
            return
        # An entry the new one extends is redundant: drop it.
        for old in list(self._by_affinity.get(entry.affinity, ())):
            if len(old.tokens) <= len(entry.tokens) and common_prefix(old.tokens, entry.tokens) == len(old.tokens):
                self.remove(old)
        self._lru[entry.key] = entry
        self._by_affinity.setdefault(entry.affinity, []).append(entry)
        self.nbytes += entry.nbytes
        while self.nbytes > self.capacity_bytes and self._lru:
            self.remove(next(iter(self._lru.values())))

    def remove(self, entry: PrefixEntry) -> None:
        if self._lru.pop(entry.key, None) is None:
            return
        self.nbytes -= entry.nbytes
        siblings = self._by_affinity[entry.affinity]
        siblings.remove(entry)
        if not siblings:
            del self._by_affinity[entry.affinity]

    def clear(self) -> None:
        self._lru.clear()
        self._by_affinity.clear()
        self.nbytes = 0


# -- the model runner ---------------------------------------------------------------------


@dataclass(eq=False)
class _Row:
    """One request while its batch runs."""

    index: int
    req: GenRequest
    stops: frozenset[int]
    reused: PrefixEntry | None = None
    cached: int = 0
    out: list[int] = field(default_factory=list)
    finish: str = ""
    cut: int | None = None  # output length after trimming a stop string
    done_at: float = 0.0

    @property
    def new_tokens(self) -> list[int]:
        return self.req.input_ids[self.cached:]


class _Runner:
    """A loaded model, its tokenizer and prefix store; generation is synchronous."""

    def __init__(self, settings: TransformersSettings, model: Any, tokenizer: HFTokenizer,
                 device: torch.device) -> None:
        import torch

        self.torch = torch
        # One batch at a time: the model is not re-entrant, and the cores are already busy.
        self.lock = threading.Lock()
        self.settings = settings
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        config = model.config.get_text_config(decoder=True)
        self.num_layers = config.num_hidden_layers
        self.vocab_size = model.get_input_embeddings().weight.shape[0]
        self.max_positions = getattr(config, "max_position_embeddings", None)
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.kv_shape = (heads, head_dim)
        itemsize = torch.empty((), dtype=model.dtype).element_size()
        bytes_per_token = 2 * self.num_layers * heads * head_dim * itemsize
        self.store = PrefixStore(settings.prefix_cache_mb * 2**20, bytes_per_token)
        eos = set(tokenizer.eos_token_ids)
        generation_eos = getattr(model.generation_config, "eos_token_id", None)
        eos.update([generation_eos] if isinstance(generation_eos, int) else generation_eos or ())
        self.eos = frozenset(eos)
        self.pad_id = next(iter(sorted(self.eos)), 0)
        from transformers.cache_utils import Cache

        self.Cache = Cache
        # transformers 5 renamed `past_key_values` to `cache`.
        forward_params = inspect.signature(model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in forward_params else "past_key_values"

    @classmethod
    def load(cls, settings: TransformersSettings) -> _Runner:
        from turnloom.hf_tokenizer import HFTokenizer
        from turnloom.models import resolve_model

        path = resolve_model(settings.model)
        try:
            import torch
            from transformers import AutoModelForCausalLM
        except ImportError as e:
            raise BackendError(f"the transformers backend needs the hf extra ({e}): pip install 'turnloom[hf]'") from e
        device = _pick_device(torch, settings.device)
        dtype = _pick_dtype(torch, settings.dtype, device)
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        model.to(device).eval()
        layer_types = getattr(model.config.get_text_config(decoder=True), "layer_types", None) or ()
        if any(t != "full_attention" for t in layer_types):
            raise BackendError(
                f"model {settings.model!r} has {sorted(set(layer_types))} layers; the transformers "
                f"backend runs full-attention models only"
            )
        tokenizer = HFTokenizer.from_dir(path, name=settings.model)
        runner = cls(settings, model, tokenizer, device)
        # Touch every weight once (they may be memory-mapped), so the first batch is not slow.
        with torch.inference_mode():
            model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device))
        return runner

    # -- one call ------------------------------------------------------------------

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        with self.lock:
            return self._generate(requests)

    def _generate(self, requests: list[GenRequest]) -> list[GenResult]:
        start = time.perf_counter()
        results: list[GenResult | None] = [None] * len(requests)
        rows: list[_Row] = []
        for i, req in enumerate(requests):
            problem = self._check(req)
            if problem is not None:
                results[i] = _error(req, problem)
                continue
            row = _Row(index=i, req=req, stops=self.eos | frozenset(req.params.stop_token_ids))
            if self.settings.prefix_reuse:
                entry, n = self.store.lookup(req.affinity, req.input_ids)
                if entry is not None and n >= self.settings.min_reuse_tokens:
                    row.reused, row.cached = entry, n
            rows.append(row)
        # Rows with similar amounts of new tokens together: prefill pads to the longest.
        rows.sort(key=lambda r: len(r.new_tokens))
        size = self.settings.max_batch
        for chunk in (rows[i:i + size] for i in range(0, len(rows), size)):
            try:
                with self.torch.inference_mode():
                    self._run(chunk)
            except Exception as e:  # a failed batch fails its requests, not the run
                for row in chunk:
                    results[row.index] = _error(row.req, f"{type(e).__name__}: {e}")
                continue
            for row in chunk:
                results[row.index] = self._result(row, row.done_at - start)
        return [r for r in results if r is not None]

    def _check(self, req: GenRequest) -> str | None:
        ids = req.input_ids
        if not ids:
            return "empty input_ids"
        if min(ids) < 0 or max(ids) >= self.vocab_size:
            return f"input_ids out of the vocabulary (size {self.vocab_size})"
        if req.params.max_new_tokens < 1:
            return "max_new_tokens must be at least 1"
        if self.max_positions and len(ids) + req.params.max_new_tokens > self.max_positions:
            return (f"prompt of {len(ids)} tokens + max_new_tokens {req.params.max_new_tokens} exceeds "
                    f"the model's {self.max_positions} positions")
        return None

    # -- the decode loop -------------------------------------------------------------

    def _run(self, rows: list[_Row]) -> None:
        torch = self.torch
        dev = self.device
        batch = len(rows)
        past = max(r.cached for r in rows)
        new = max(len(r.new_tokens) for r in rows)
        budget = max(r.req.params.max_new_tokens for r in rows)
        cache = self._slab_cache(rows, past, capacity=past + new + min(budget, 64))

        # Layout per row: [pad | reused prefix] [pad | new tokens]; positions count real tokens only.
        mask = torch.zeros((batch, past + new), dtype=torch.long)
        input_ids = torch.full((batch, new), self.pad_id, dtype=torch.long)
        positions = torch.zeros((batch, new), dtype=torch.long)
        for b, row in enumerate(rows):
            tokens = row.new_tokens
            mask[b, past - row.cached:past] = 1
            mask[b, past + new - len(tokens):] = 1
            input_ids[b, new - len(tokens):] = torch.tensor(tokens)
            positions[b, new - len(tokens):] = torch.arange(row.cached, row.cached + len(tokens))
        mask, input_ids, positions = mask.to(dev), input_ids.to(dev), positions.to(dev)
        next_pos = positions[:, -1:] + 1

        # Prefill in chunks, so attention scores stay small for long prompts.
        chunk = max(64, PREFILL_TOKENS // batch)
        for begin in range(0, new - 1, chunk):
            end = min(begin + chunk, new - 1)
            self._forward(input_ids[:, begin:end], mask[:, :past + end], positions[:, begin:end], cache)

        sampler = _Sampler(torch, [r.req.params for r in rows], [r.req.input_ids for r in rows], dev)
        active = list(range(batch))  # indices into rows, in cache order
        step_ids = input_ids[:, new - 1:]
        step_pos = positions[:, new - 1:]
        while True:
            logits = self._forward(step_ids, mask, step_pos, cache)
            tokens = sampler.sample(logits).tolist()
            now = time.perf_counter()
            keep = []
            for slot, (b, token) in enumerate(zip(active, tokens)):
                row = rows[b]
                row.out.append(token)
                sampler.append(slot, token)
                if self._finished(row):
                    row.done_at = now
                    if self.settings.prefix_reuse:
                        self._store(row, cache, mask[slot], slot)
                else:
                    keep.append(slot)
            if not keep:
                return
            if len(keep) < len(active):
                index = torch.tensor(keep, device=dev)
                cache.batch_select_indices(index)
                mask, next_pos = mask[index], next_pos[index]
                sampler.select(keep)
                active = [active[s] for s in keep]
                tokens = [tokens[s] for s in keep]
            step_ids = torch.tensor(tokens, device=dev).unsqueeze(1)
            step_pos = next_pos
            next_pos = next_pos + 1
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        """Feed `ids` after what `cache` holds; the logits of the last position."""
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, **{self.cache_kwarg: cache})
        return out.logits[:, -1, :]

    def _finished(self, row: _Row) -> bool:
        params = row.req.params
        if row.out[-1] in row.stops:
            row.finish = "stop"
            return True
        if params.stop:
            cut = _stop_string_cut(self.tokenizer, row.out, params.stop)
            if cut is not None:
                row.finish, row.cut = "stop", cut
                return True
        if len(row.out) >= params.max_new_tokens:
            row.finish = "length"
            return True
        return False

    def _slab_cache(self, rows: list[_Row], past: int, capacity: int) -> Any:
        torch = self.torch
        heads, head_dim = self.kv_shape
        shape = (len(rows), heads, capacity, head_dim)
        layers = []
        for layer in range(self.num_layers):
            keys = torch.zeros(shape, dtype=self.model.dtype, device=self.device)
            values = torch.zeros(shape, dtype=self.model.dtype, device=self.device)
            for b, row in enumerate(rows):
                if row.reused is not None:
                    k, v = row.reused.layers[layer]
                    keys[b, :, past - row.cached:past] = k[:, :row.cached]
                    values[b, :, past - row.cached:past] = v[:, :row.cached]
            layers.append(_slab_layer_class()(keys, values, past))
        return self.Cache(layers=layers)

    def _store(self, row: _Row, cache: Any, row_mask: torch.Tensor, slot: int) -> None:
        """Keep the KV of the tokens this row fed to the model (all but its last token)."""
        fed = row.req.input_ids + row.out[:-1]
        where = row_mask.nonzero().squeeze(1)
        if where.numel() != len(fed):
            return  # cannot happen with a consistent mask; never store a wrong cache
        layers = [(layer.keys[slot].index_select(1, where).contiguous(),
                   layer.values[slot].index_select(1, where).contiguous()) for layer in cache.layers]
        nbytes = len(fed) * self.store.bytes_per_token
        self.store.put(PrefixEntry(affinity=row.req.affinity, tokens=fed, layers=layers, nbytes=nbytes))

    def _result(self, row: _Row, latency: float) -> GenResult:
        out = row.out if row.cut is None else row.out[:row.cut]
        # `text` leaves out a final stop token (an EOS renders as e.g. "<|im_end|>").
        shown = out[:-1] if row.cut is None and row.finish == "stop" and out and out[-1] in row.stops else out
        return GenResult(
            rid=row.req.rid, output_ids=list(out), text=self.tokenizer.decode(shown),
            finish_reason=row.finish, prompt_tokens=len(row.req.input_ids),
            cached_tokens=row.cached, latency_s=max(0.0, latency),
        )


def _error(req: GenRequest, message: str) -> GenResult:
    return GenResult(rid=req.rid, output_ids=[], text="", finish_reason="error",
                     prompt_tokens=len(req.input_ids), error=message)


def _stop_string_cut(tokenizer: HFTokenizer, out: list[int], stops: Sequence[str]) -> int | None:
    """If the output's text contains a stop string, the longest output prefix whose
    text ends before the match; else None."""
    # Only a match that involves the newest token is new: look at a short tail first.
    longest = max(len(s) for s in stops)
    tail = tokenizer.decode(out[-(4 * longest + 4):])
    if not any(s in tail for s in stops):
        return None
    text = tokenizer.decode(out)
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    if not found:
        return None
    before = text[:min(found)]
    for cut in range(len(out) - 1, -1, -1):
        if before.startswith(tokenizer.decode(out[:cut])):
            return cut
    return 0


_SLAB_LAYER: type | None = None


def _slab_layer_class() -> type:
    """A DynamicLayer that writes into preallocated buffers instead of concatenating."""
    global _SLAB_LAYER
    if _SLAB_LAYER is not None:
        return _SLAB_LAYER
    import torch
    from transformers.cache_utils import DynamicLayer

    class SlabLayer(DynamicLayer):
        def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
            super().__init__()
            self._k, self._v, self.length = keys, values, length
            self.device = keys.device
            self.is_initialized = True
            self._view()

        def _view(self) -> tuple[torch.Tensor, torch.Tensor]:
            keys, values = self._k[:, :, :self.length], self._v[:, :, :self.length]
            self.keys, self.values = keys, values
            return keys, values

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            pass

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            end = self.length + key_states.shape[-2]
            if end > self._k.shape[2]:
                grow = max(end, 2 * self._k.shape[2])
                pad = (0, 0, 0, grow - self._k.shape[2])
                self._k = torch.nn.functional.pad(self._k, pad)
                self._v = torch.nn.functional.pad(self._v, pad)
            self._k[:, :, self.length:end] = key_states
            self._v[:, :, self.length:end] = value_states
            self.length = end
            return self._view()

        def get_seq_length(self) -> int:
            return self.length

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.length + query_length, 0

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self._k = self._k.index_select(0, indices)
            self._v = self._v.index_select(0, indices)
            self._view()

        def crop(self, tokens_to_remove: int) -> None:
            raise NotImplementedError("slab layers are never cropped")

    _SLAB_LAYER = SlabLayer
    return SlabLayer


class _Sampler:
    """Per-row logits processing and seeded sampling, batched.

    Sampling is an exponential race: a row draws one Exp(1) variate per
    vocabulary entry from its own generator and takes argmax(logit/T - log E),
    which is a draw from softmax(logit/T). A row's draws never depend on the
    other rows, and, unlike inverse-CDF sampling, the winner is stable under the
    tiny logit differences that batch shape and padding cause. Rows with
    top-k/top-p race among their top candidates only, so the vocabulary is never
    sorted.
    """

    def __init__(self, torch: Any, params: list[SamplingParams], prompts: list[list[int]], device: Any) -> None:
        self.torch = torch
        self.device = device
        self.params = params
        self.generators = []
        for p in params:
            g = torch.Generator()  # on the CPU: the same draws on any device
            g.manual_seed((p.seed if p.seed is not None else secrets.randbits(63)) & 0xFFFF_FFFF_FFFF_FFFF)
            self.generators.append(g)
        # Tokens seen per row, for the repetition penalty.
        self.seen = [list(dict.fromkeys(ids)) if p.repetition_penalty != 1.0 else [] for p, ids in zip(params, prompts)]
        self._plan: dict[str, Any] | None = None

    def append(self, slot: int, token: int) -> None:
        if self.params[slot].repetition_penalty != 1.0 and token not in self.seen[slot]:
            self.seen[slot].append(token)

    def select(self, keep: list[int]) -> None:
        self.params = [self.params[s] for s in keep]
        self.generators = [self.generators[s] for s in keep]
        self.seen = [self.seen[s] for s in keep]
        self._plan = None

    def _make_plan(self, vocab: int) -> dict[str, Any]:
        """Per-row settings as tensors, rebuilt only when the batch shrinks."""
        torch, dev = self.torch, self.device
        sampled = [b for b, p in enumerate(self.params) if p.temperature > 0]
        full = [b for b in sampled if not (0 < self.params[b].top_k < vocab) and self.params[b].top_p >= 1.0]
        cut = [b for b in sampled if b not in full]
        plan: dict[str, Any] = {"sampled": sampled, "full": full, "cut": cut}
        temps = [p.temperature if p.temperature > 0 else 1.0 for p in self.params]
        plan["temps"] = torch.tensor(temps, device=dev).unsqueeze(1)
        if full:
            plan["full_index"] = torch.tensor(full, device=dev)
        if cut:
            top_k = [self.params[b].top_k if 0 < self.params[b].top_k < vocab else 0 for b in cut]
            plan["cut_index"] = torch.tensor(cut, device=dev)
            plan["top_k"] = torch.tensor(top_k, device=dev).unsqueeze(1)
            plan["top_p"] = torch.tensor([self.params[b].top_p for b in cut], device=dev).unsqueeze(1)
            # Enough candidates for every top_k; rows with top_p only start from 256.
            plan["candidates"] = min(vocab, max(max(top_k), 256 if 0 in top_k else 1))
        return plan

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        torch = self.torch
        logits = logits.float()
        for b, p in enumerate(self.params):
            if p.repetition_penalty != 1.0 and self.seen[b]:
                ids = torch.tensor(self.seen[b], device=logits.device)
                score = logits[b].index_select(0, ids)
                score = torch.where(score < 0, score * p.repetition_penalty, score / p.repetition_penalty)
                logits[b].index_copy_(0, ids, score)
        chosen = logits.argmax(dim=-1)
        vocab = logits.shape[-1]
        if self._plan is None:
            self._plan = self._make_plan(vocab)
        plan = self._plan
        if not plan["sampled"]:
            return chosen
        # log E for E = -log U ~ Exp(1); U = 0 gives E = inf, a draw that never wins.
        uniform = torch.stack([torch.rand(vocab, generator=g) for g in self.generators]).to(logits.device)
        noise = uniform.log_().neg_().clamp_(min=torch.finfo(torch.float32).tiny).log_()
        scaled = logits / plan["temps"]
        if plan["full"]:
            index = plan["full_index"]
            race = scaled.index_select(0, index) - noise.index_select(0, index)
            chosen = chosen.index_copy(0, index, race.argmax(dim=-1))
        if plan["cut"]:
            index = plan["cut_index"]
            picked = self._sample_cut(scaled.index_select(0, index), noise.index_select(0, index), plan)
            chosen = chosen.index_copy(0, index, picked)
        return chosen

    def _sample_cut(self, x: torch.Tensor, log_noise: torch.Tensor, plan: dict[str, Any]) -> torch.Tensor:
        """Temperature, then top-k, then top-p (the order transformers applies them)."""
        torch = self.torch
        top_k, top_p = plan["top_k"], plan["top_p"]
        k = plan["candidates"]
        whole = torch.logsumexp(x, dim=-1, keepdim=True)
        while True:
            values, ids = x.topk(k, dim=-1)  # sorted, largest first
            rank = torch.arange(k, device=x.device).unsqueeze(0)
            in_k = (top_k == 0) | (rank < top_k)
            # Normalise over the whole vocabulary, or over the top-k set where there is one.
            within_k = torch.logsumexp(values.masked_fill(~in_k, -float("inf")), dim=-1, keepdim=True)
            probs = (values - torch.where(top_k == 0, whole, within_k)).exp().masked_fill(~in_k, 0.0)
            before = probs.cumsum(dim=-1) - probs
            covered = (top_k > 0) | (top_p >= 1.0) | (before[:, -1:] + probs[:, -1:] >= top_p)
            if bool(covered.all()) or k == x.shape[-1]:
                break
            k = x.shape[-1] if k >= 1024 else min(x.shape[-1], 4 * k)  # a flat distribution: widen
        # Keep a candidate while the ones before it have not reached top_p (the first always).
        keep = in_k & (before < top_p)
        race = (values - log_noise.gather(1, ids)).masked_fill(~keep, -float("inf"))
        return ids.gather(1, race.argmax(dim=-1, keepdim=True)).squeeze(1)


def _pick_device(torch: Any, setting: str) -> Any:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError(f"device {setting!r} asked for, but torch sees no CUDA device")
    return torch.device(setting)


def _pick_dtype(torch: Any, setting: str, device: Any) -> Any:
    if setting == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    return getattr(torch, setting)


__all__ = ["NAME", "PrefixStore", "TransformersBackend", "TransformersSettings"]
