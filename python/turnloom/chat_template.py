"""Any Jinja chat template (tokenizer_config's `chat_template`) as a ChatFormat.

`render_ids` is the reference: token for token what transformers'
`apply_chat_template(messages, tools=..., add_generation_prompt=...)` gives,
except that special-token strings inside contents stay plain text (see
markup.py). The engine grows most prompts faster, by concatenating
per-message segments, which is only right when the template is
*append-only*: rendering a conversation one message at a time gives the same
tokens as rendering it whole, and the generation prompt is a pure suffix that
the assistant's message then extends. `TemplateChatFormat` checks that at
construction on probe conversations and sets `append_only`; where it is False
(e.g. templates that drop earlier reasoning blocks) the engine renders each
prompt in full with `render_ids`.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from turnloom.hf_tokenizer import read_json
from turnloom.markup import MarkupEncoder

if TYPE_CHECKING:
    from turnloom.tokenizer import Tokenizer

Message = Mapping[str, Any] | tuple[str, str]

# Two contents that no template mangles the same way: the second catches
# templates that trim or otherwise rewrite the content.
_SENTINELS = ("TURNLOOMPROBEA", "  turnloom probe\nB \n")

# Probe conversations, covering a missing and an empty system prompt, repeated
# turns and an assistant reasoning block (which some templates drop later on).
_PROBES: tuple[tuple[tuple[str, str], ...], ...] = (
    (
        ("system", "You are a probe."),
        ("user", "Hello there, how are you?"),
        ("assistant", "<think>\nThe user greets me.\n</think>\n\nFine, thanks!"),
        ("user", " Two lines\nof text "),
        ("assistant", "Sure: 1 + 1 = 2."),
        ("user", "Bye ✓"),
    ),
    (
        ("user", "No system prompt here."),
        ("assistant", "Then I answer anyway."),
        ("user", "Again?"),
        ("assistant", "Again."),
    ),
    (
        ("system", ""),
        ("user", "Empty system prompt."),
        ("assistant", "Noted."),
    ),
    (
        ("assistant", "I open the conversation."),
        ("user", "Fine."),
    ),
)


def read_chat_template(path: str | Path) -> str | None:
    """The chat template of a model directory, where transformers looks for it:
    `chat_template.jinja` first (it takes priority over the config's entry),
    then `tokenizer_config.json`'s `chat_template` (the "default" entry if it
    holds several), then a processor's `chat_template.json`."""
    path = Path(path)
    jinja_file = path / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = read_json(path / "tokenizer_config.json").get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if isinstance(template, str):
        return template
    template = read_json(path / "chat_template.json").get("chat_template")
    return template if isinstance(template, str) else None


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Unlike Jinja's own tojson, no HTML escaping: the same filter transformers uses.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def compile_template(source: str) -> jinja2.Template:
    """Compile a chat template in a sandbox, with the globals transformers gives templates."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def _as_dict(message: Message) -> dict[str, Any]:
    if isinstance(message, tuple):
        return {"role": message[0], "content": message[1]}
    return dict(message)


# The names a message's reasoning goes by; templates read the first (gpt-oss's read "thinking").
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


def _template_message(message: Message) -> dict[str, Any]:
    """A message as transformers hands it to a template: keys whose value is None
    dropped (APIs send `tool_calls: null`, templates test for the key), and
    reasoning given under any of its names also under `reasoning_content` and
    `thinking`."""
    out = {k: v for k, v in _as_dict(message).items() if v is not None}
    reasoning = next((out[k] for k in _REASONING_KEYS if k in out), None)
    if reasoning is not None:
        out = {"thinking": reasoning, **out, "reasoning_content": reasoning}
    return out


_RESERVED_VARIABLES = frozenset({"messages", "tools", "documents", "add_generation_prompt"})


class TemplateChatFormat:
    """ChatFormat over a Jinja chat template.

    When the template wraps every message's content in fixed text (checked
    with sentinel contents) a segment is that wrapping plus the text, with no
    Jinja call; otherwise it is the difference of two renders.
    `segment(role, text, first=True)` renders the conversation's opening
    message, which may carry text the template adds only there (SmolLM2 adds a
    default system prompt when the conversation does not start with one).
    Contents are always encoded as plain text; only the wrapping's special
    tokens are special.
    """

    def __init__(self, tokenizer: Tokenizer, template: str, special_tokens: Mapping[str, str] | None = None,
                 variables: Mapping[str, Any] | None = None) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self._compiled = compile_template(template)
        if special_tokens is None:
            special_tokens = getattr(tokenizer, "special_tokens", {})
        self._specials = dict(special_tokens)
        self.markup = MarkupEncoder(tokenizer)
        self._set_variables(variables or {})
        self._analyse()

    def with_variables(self, variables: Mapping[str, Any]) -> "TemplateChatFormat":
        """This format with extra template variables, as `apply_chat_template`'s
        keyword arguments (`enable_thinking=False`, `date_string=...`) give them."""
        new = copy.copy(self)
        new._set_variables({**self.variables, **variables})
        new._analyse()
        return new

    def _set_variables(self, variables: Mapping[str, Any]) -> None:
        reserved = sorted(set(variables) & _RESERVED_VARIABLES)
        if reserved:
            raise ValueError(f"template variables {reserved} are set by the renderer itself")
        self.variables = dict(variables)
        # The keyword arguments of apply_chat_template override the special tokens.
        self._extra = {**self._specials, **self.variables}

    def _analyse(self) -> None:
        """What the template does with each role's messages, found by rendering
        (the variables can change it: a thinking switch changes the wrapping)."""
        # (role, first) -> (context messages, (before, after) or None for content-dependent)
        self._wraps: dict[tuple[str, bool], tuple[list[dict[str, Any]], tuple[str, str] | None]] = {}
        # (role, first) -> (ids before the text's chunk, chunk head, chunk tail, ids after)
        self._wrap_ids: dict[tuple[str, bool], tuple[list[int], str, str, list[int]] | None] = {}
        self._prefix_cache: dict[str, list[int]] = {}
        self.opens_with_assistant = True
        self.append_only, self.reason = self._check_append_only()
        close = self._wrap("assistant", False)[1]
        self._close_ids = self.markup.encode(close[1]) if close else []

    # -- rendering ---------------------------------------------------------------

    def render_text(self, messages: Sequence[Message], add_generation_prompt: bool = False,
                    tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        # The variables apply_chat_template passes: an empty tool list stays a list,
        # and `documents` is defined (None) for templates that test it.
        return self._compiled.render(
            messages=[_template_message(m) for m in messages],
            tools=list(tools) if tools is not None else None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **self._extra,
        )

    def render_ids(self, messages: Sequence[Message], add_generation_prompt: bool = False,
                   tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
        """Token ids of the whole conversation, as `apply_chat_template` gives them,
        with special-token strings in contents encoded as plain text."""
        escaped = [self.markup.escape_message(_as_dict(m)) for m in messages]
        if tools:
            tools = self.markup.escape_data(list(tools))
        return self.markup.encode(self.render_text(escaped, add_generation_prompt, tools))

    def render_full(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> list[int]:
        return self.render_ids(messages, add_generation_prompt)

    def prompt_ids(self, messages: Sequence[Message], role: str = "assistant",
                   tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
        """The prompt that opens a `role` message after `messages`, rendered whole:
        the template's generation prompt for "assistant", else the role's opening."""
        if role == "assistant":
            return self.render_ids(messages, True, tools)
        return self.render_ids(messages, False, tools) + self.generation_prefix(role)

    # -- ChatFormat ----------------------------------------------------------------

    def segment_text(self, role: str, text: str, first: bool = False) -> str:
        context, wrap = self._wrap(role, first)
        if wrap is not None:
            return wrap[0] + text + wrap[1]
        base = self.render_text(context)
        full = self.render_text([*context, {"role": role, "content": text}])
        if not full.startswith(base):
            raise ValueError(f"template is not append-only for a {role!r} message")
        return full[len(base):]

    def segment(self, role: str, text: str, first: bool = False) -> list[int]:
        return self.segments([role], [text], first)[0]

    def segments(self, roles: Sequence[str], texts: Sequence[str], first: bool = False) -> list[list[int]]:
        wraps = [self._wrap_split(r, first) for r in roles]
        if all(w is not None for w in wraps):
            chunks = self.tokenizer.encode_text_batch(
                [w[1] + t + w[2] for w, t in zip(wraps, texts)])  # type: ignore[index]
            return [[*w[0], *c, *w[3]] for w, c in zip(wraps, chunks)]  # type: ignore[index]
        escaped = [self.segment_text(r, self.markup.escape(t), first) for r, t in zip(roles, texts)]
        return self.markup.encode_many(escaped)

    def generation_prefix(self, role: str = "assistant") -> list[int]:
        cached = self._prefix_cache.get(role)
        if cached is None:
            cached = self._prefix_cache[role] = self.markup.encode(self._prefix_text(role))
        return list(cached)

    def first_extra(self, role: str = "assistant") -> list[int] | None:
        """What a render puts before the generation prefix when a `role` message
        opens the conversation (a default system prompt), or None when the opening
        message is not the generation prefix plus more."""
        if not self.opens_with_assistant and role == "assistant":
            return None
        prefix = self._prefix_text(role)
        opened = self.segment_text(role, _SENTINELS[0], first=True)
        at = opened.find(prefix + _SENTINELS[0])
        if at < 0:
            return None
        return self.markup.encode(opened[:at])

    def close_generated(self, output_ids: Sequence[int], finish_reason: str) -> list[int]:
        """The generated ids plus what closes the assistant message in a full render.

        An EOS the model emitted is kept when it is the template's closing token
        (token-in/token-out), and dropped when the template does not write it.
        """
        close = self._close_ids
        end_id = close[0] if close else None
        if output_ids and output_ids[-1] == end_id:  # the model closed the message itself
            return [*output_ids, *close[1:]]
        ids = list(output_ids)
        while ids and ids[-1] in self.tokenizer.eos_token_ids and ids[-1] != end_id:
            ids.pop()
        if close and ids and ids[-1] == end_id:
            ids.extend(close[1:])
        else:
            ids.extend(close)
        return ids

    def _wrap_split(self, role: str, first: bool) -> tuple[list[int], str, str, list[int]] | None:
        """A fixed wrapping as ids before the text's chunk, the chunk's markup head
        and tail, and ids after it; None when the wrapping depends on the content."""
        key = (role, first)
        if key in self._wrap_ids:
            return self._wrap_ids[key]
        wrap = self._wrap(role, first)[1]
        split = None
        if wrap is not None:
            b_head, b_ids, b_tail = self.markup.split_markup(wrap[0])
            a_head, a_ids, a_tail = self.markup.split_markup(wrap[1])
            before = (self.tokenizer.encode_text(b_head) + b_ids) if b_ids else []
            head = b_tail if b_ids else b_head
            after = (a_ids + (self.tokenizer.encode_text(a_tail) if a_tail else [])) if a_ids else []
            split = (before, head, a_head, after)
        self._wrap_ids[key] = split
        return split

    # -- template analysis ---------------------------------------------------------

    def _prefix_text(self, role: str) -> str:
        if role == "assistant":
            base = self.render_text([("user", "x")])
            with_prompt = self.render_text([("user", "x")], add_generation_prompt=True)
            if with_prompt.startswith(base):
                return with_prompt[len(base):]
        # Templates have no generation prompt for other roles: open the message the way a render does.
        wrap = self._wrap(role, False)[1]
        if wrap is None:
            raise ValueError(f"cannot open a {role!r} message with this template")
        return wrap[0]

    def _contexts(self, role: str, first: bool) -> list[list[dict[str, Any]]]:
        if first:
            return [[]]
        s = {"role": "system", "content": "S"}
        u = {"role": "user", "content": "U"}
        a = {"role": "assistant", "content": "A"}
        if role == "assistant":
            return [[s, u], [u]]
        return [[s, u, a], [u, a], [s], []]

    def _wrap(self, role: str, first: bool) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
        key = (role, first)
        cached = self._wraps.get(key)
        if cached is not None:
            return cached
        errors = []
        for context in self._contexts(role, first):
            try:
                base = self._render_context(context)
                renders = [self.render_text([*context, {"role": role, "content": s}]) for s in _SENTINELS]
            except jinja2.exceptions.SecurityError:
                raise
            except jinja2.exceptions.TemplateError as e:
                errors.append(str(e))
                continue
            wrap = None
            if all(r.startswith(base) for r in renders):
                parts = [r[len(base):].split(s) for s, r in zip(_SENTINELS, renders)]
                if all(len(p) == 2 for p in parts) and all(p == parts[0] for p in parts):
                    wrap = (parts[0][0], parts[0][1])
            self._wraps[key] = (context, wrap)
            return self._wraps[key]
        raise ValueError(f"the chat template cannot render a {role!r} message: {'; '.join(errors)}")

    def _render_context(self, messages: Sequence[Message]) -> str:
        """A render of the messages before another; templates that cannot render an
        empty conversation (Qwen2.5's reads messages[0]) render nothing for it."""
        if not messages:
            try:
                return self.render_text(messages)
            except jinja2.exceptions.SecurityError:
                raise
            except jinja2.exceptions.TemplateError:
                return ""
        return self.render_text(messages)

    def _check_append_only(self) -> tuple[bool, str | None]:
        """Render each probe whole and message by message; compare texts and tokens."""
        try:
            for probe in _PROBES[:-1]:
                reason = self._check_probe(probe)
                if reason is not None:
                    return False, reason
        except jinja2.exceptions.SecurityError:
            raise
        except (jinja2.exceptions.TemplateError, ValueError) as e:
            return False, f"probe failed to render: {e}"
        try:
            reason = self._check_probe(_PROBES[-1])
        except (jinja2.exceptions.TemplateError, ValueError):
            # The template refuses a conversation that an assistant opens: views that
            # open so are rendered whole (and fail there, naming the template's error).
            self.opens_with_assistant = False
            return True, None
        if reason is not None:
            return False, reason
        return True, None

    def _check_probe(self, probe: Sequence[tuple[str, str]]) -> str | None:
        pieces: list[str] = []
        for k, (role, text) in enumerate(probe):
            prefix_text = self._render_context(probe[:k])
            if "".join(pieces) != prefix_text:
                return f"rendering {k} messages one at a time differs from rendering them whole"
            if role == "assistant" and k == 0:
                # Opening the conversation: the prompt was the bare generation prefix,
                # the render puts the template's opening text (if any) before it.
                if self.first_extra(role) is None:
                    return "an opening assistant message is not the generation prefix plus its content"
            elif role == "assistant":
                prompt = self.render_text(probe[:k], add_generation_prompt=True)
                if not prompt.startswith(prefix_text):
                    return "the generation prompt is not a pure suffix of the conversation"
                opened = self.segment_text(role, text, first=k == 0)
                if not opened.startswith(prompt[len(prefix_text):] + text):
                    return "an assistant message does not extend the generation prompt with its content"
            pieces.append(self.segment_text(role, text, first=k == 0))
        if "".join(pieces) != self.render_text(probe):
            return "rendering the probe one message at a time differs from rendering it whole"
        segment_ids = [i for k, (role, text) in enumerate(probe)
                       for i in self.segment(role, text, first=k == 0)]
        if segment_ids != self.render_ids(probe):
            return "segments tokenize differently from the whole render (tokens merge across messages)"
        prompt_ids = segment_ids + self.generation_prefix()
        if prompt_ids != self.render_ids(probe, add_generation_prompt=True):
            return "the generation prompt tokenizes differently after the conversation"
        return None


def chatml_template(end_token: str = "<|im_end|>") -> str:
    """ChatML as a Jinja chat template: no default system prompt."""
    return ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
            f"message['content'] + '{end_token}' + '\\n' }}}}{{% endfor %}}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


class ChatMLFormat(TemplateChatFormat):
    """ChatML (`<|im_start|>role\\ntext<|im_end|>\\n`), the format of the byte tokenizer
    and the scripted backend; models ship their own templates (SmolLM2's adds a
    default system prompt)."""

    def __init__(self, tokenizer: Tokenizer, end_token: str = "<|im_end|>") -> None:
        end_ids = tokenizer.encode(end_token)
        if len(end_ids) != 1:
            raise ValueError(f"{end_token!r} is not a single special token in {tokenizer.name}")
        self.end_token = end_token
        self.end_id = end_ids[0]
        super().__init__(tokenizer, chatml_template(end_token), {})
