"""TemplateChatFormat: append-only detection and incremental == full rendering."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnloom.chat_template import TemplateChatFormat, read_chat_template
from turnloom.hf_tokenizer import HFTokenizer
from turnloom.tokenizer import ByteTokenizer, ChatMLFormat

# SmolLM2-135M-Instruct's template, verbatim: a default system prompt when the
# conversation does not open with one.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Drops the reasoning of assistant turns before the last user message (as Qwen3 does).
DROPS_REASONING = (
    "{%- set ns = namespace(last_user=-1) %}"
    "{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- for m in messages %}{%- set content = m.content %}"
    "{%- if m.role == 'assistant' and loop.index0 < ns.last_user and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\n') %}{%- endif %}"
    "{{ '<|im_start|>' + m.role + '\n' + content + '<|im_end|>\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"
)

# Opens every generation with an empty reasoning block that full renders do not have.
EMPTY_THINK_PROMPT = (
    "{%- for m in messages %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n' }}{%- endif %}"
)

# Trims content, so segments are rendered by Jinja instead of by a fixed wrapping.
TRIMS = (
    "{%- for m in messages %}{{ '<|im_start|>' + m.role + '\n' + m.content | trim + '<|im_end|>\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"
)

# Refuses anything but system? (user assistant)*, as many templates do.
STRICT_ALTERNATION = (
    "{%- for m in messages %}"
    "{%- if (m.role == 'user') != (loop.index0 % 2 == (1 if messages[0].role == 'system' else 0)) and m.role != 'system' %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant') }}{%- endif %}"
    "{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"
)

# Free text mixed with pieces that stress tokenization at segment edges.
PIECES = ["<|im_end|>", "<|im_start|>", "<|endoftext|>", "\n", " ", "  ", "assistant", "</think>", "é", "🙂"]
texts = st.lists(st.one_of(st.text(max_size=12), st.sampled_from(PIECES)), max_size=6).map("".join)
turns = st.lists(st.tuples(st.sampled_from(["user", "assistant"]), texts), min_size=1, max_size=6)


def incremental(fmt: TemplateChatFormat, messages: list[tuple[str, str]]) -> list[int]:
    return [i for k, (role, text) in enumerate(messages) for i in fmt.segment(role, text, first=k == 0)]


def check_incremental_equals_full(fmt: TemplateChatFormat, messages: list[tuple[str, str]]) -> None:
    assert incremental(fmt, messages) == fmt.render_full(messages)
    assert incremental(fmt, messages) + fmt.generation_prefix() == fmt.render_full(messages, True)


@pytest.fixture(scope="module")
def smol_bytes() -> TemplateChatFormat:
    return TemplateChatFormat(ByteTokenizer(), SMOLLM2)


def test_smollm2_template_is_append_only(smol_bytes: TemplateChatFormat) -> None:
    assert smol_bytes.append_only, smol_bytes.reason
    assert smol_bytes.reason is None


@settings(max_examples=200, deadline=None)
@given(system=st.one_of(st.none(), texts), conversation=turns)
def test_smollm2_incremental_equals_full_bytes(smol_bytes: TemplateChatFormat, system: str | None,
                                               conversation: list[tuple[str, str]]) -> None:
    messages = ([("system", system)] if system is not None else []) + conversation
    check_incremental_equals_full(smol_bytes, messages)


def test_default_system_prompt_only_on_a_non_system_opening(smol_bytes: TemplateChatFormat) -> None:
    opening = smol_bytes.segment_text("user", "hi", first=True)
    assert opening.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert smol_bytes.segment_text("user", "hi") == "<|im_start|>user\nhi<|im_end|>\n"
    assert smol_bytes.segment_text("system", "", first=True) == "<|im_start|>system\n<|im_end|>\n"


def test_segments_batch_matches_segment(smol_bytes: TemplateChatFormat) -> None:
    roles, contents = ["user", "assistant", "system"], ["a", "b\nc", ""]
    assert smol_bytes.segments(roles, contents) == [smol_bytes.segment(r, t) for r, t in zip(roles, contents)]


def test_close_generated_matches_full_render(smol_bytes: TemplateChatFormat) -> None:
    tok = smol_bytes.tokenizer
    messages = [("system", "s"), ("user", "q")]
    reply = tok.encode("an answer")
    end = tok.encode("<|im_end|>")
    expected = smol_bytes.render_full([*messages, ("assistant", "an answer")])
    prompt = smol_bytes.render_full(messages, add_generation_prompt=True)
    for generated, finish in ((reply + end, "stop"), (reply, "length"), (reply + tok.encode("<|endoftext|>"), "stop")):
        assert prompt + smol_bytes.close_generated(generated, finish) == expected


def test_chatml_close_generated_matches_full_render() -> None:
    """Whether the model wrote the end token itself, stopped at the length limit or
    ended with another EOS, the closed reply is what a full render writes."""
    fmt = ChatMLFormat(ByteTokenizer())
    tok = fmt.tokenizer
    reply = tok.encode("an answer")
    end = tok.encode("<|im_end|>")
    expected = fmt.segment("assistant", "an answer")
    prefix = fmt.generation_prefix()
    for generated, finish in ((reply + end, "stop"), (reply, "length"),
                              (reply + tok.encode("<|endoftext|>"), "stop")):
        assert prefix + fmt.close_generated(generated, finish) == expected


def test_dropping_reasoning_is_not_append_only() -> None:
    fmt = TemplateChatFormat(ByteTokenizer(), DROPS_REASONING)
    assert not fmt.append_only
    assert "differs" in (fmt.reason or "")
    # The full render is still available, and drops the earlier reasoning.
    messages = [("user", "q1"), ("assistant", "<think>\nhmm\n</think>\n\nA1"), ("user", "q2")]
    text = fmt.tokenizer.decode(fmt.render_full(messages, add_generation_prompt=True))
    assert "hmm" not in text and text.endswith("<|im_start|>assistant\n")


def test_generation_prompt_the_message_does_not_extend_is_not_append_only() -> None:
    fmt = TemplateChatFormat(ByteTokenizer(), EMPTY_THINK_PROMPT)
    assert not fmt.append_only
    assert "generation prompt" in (fmt.reason or "")


@settings(max_examples=100, deadline=None)
@given(conversation=turns)
def test_content_rewriting_template_renders_by_jinja(conversation: list[tuple[str, str]]) -> None:
    fmt = TemplateChatFormat(ByteTokenizer(), TRIMS)
    assert fmt.append_only, fmt.reason
    assert fmt.segment_text("user", "  padded \n") == "<|im_start|>user\npadded<|im_end|>\n"
    check_incremental_equals_full(fmt, [("system", "s"), *conversation])


def test_template_that_rejects_some_orders_still_loads() -> None:
    fmt = TemplateChatFormat(ByteTokenizer(), STRICT_ALTERNATION)
    assert fmt.append_only, fmt.reason
    messages = [("system", "s"), ("user", "u1"), ("assistant", "a1"), ("user", "u2")]
    check_incremental_equals_full(fmt, messages)


def test_read_chat_template_sources(tmp_path: Path) -> None:
    # transformers' order: chat_template.jinja wins over the config's entry.
    assert read_chat_template(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(
        '{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}',
        encoding="utf-8")
    assert read_chat_template(tmp_path) == "D"
    (tmp_path / "tokenizer_config.json").write_text('{"chat_template": "C"}', encoding="utf-8")
    assert read_chat_template(tmp_path) == "C"
    (tmp_path / "chat_template.jinja").write_text("J", encoding="utf-8")
    assert read_chat_template(tmp_path) == "J"


def test_template_runs_sandboxed() -> None:
    import jinja2

    escape = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    fmt_source = escape + "{% for m in messages %}{{ m.content }}{% endfor %}"
    with pytest.raises(jinja2.exceptions.SecurityError):
        TemplateChatFormat(ByteTokenizer(), fmt_source)


# -- the real SmolLM2 tokenizer and template -------------------------------------------------


@pytest.fixture(scope="module")
def smol_real() -> TemplateChatFormat:
    from turnloom import models

    try:
        path = models.default_model_dir()
    except models.ModelNotFoundError as e:
        pytest.skip(str(e))
    template = read_chat_template(path)
    assert template is not None
    return TemplateChatFormat(HFTokenizer.from_dir(path), template)


@pytest.mark.model
def test_real_smollm2_template_is_append_only(smol_real: TemplateChatFormat) -> None:
    assert smol_real.append_only, smol_real.reason
    assert smol_real.generation_prefix() == smol_real.tokenizer.encode("<|im_start|>assistant\n")


@pytest.mark.model
@settings(max_examples=500, deadline=None)
@given(system=st.one_of(st.none(), texts), conversation=turns)
def test_real_smollm2_incremental_equals_full(smol_real: TemplateChatFormat, system: str | None,
                                              conversation: list[tuple[str, str]]) -> None:
    messages = ([("system", system)] if system is not None else []) + conversation
    check_incremental_equals_full(smol_real, messages)


@pytest.mark.model
def test_real_smollm2_matches_transformers_apply_chat_template(smol_real: TemplateChatFormat) -> None:
    transformers = pytest.importorskip("transformers")
    from turnloom import models

    hf = transformers.AutoTokenizer.from_pretrained(models.default_model_dir())
    for messages in (
        [("user", "Hello!")],
        [("system", "Be brief."), ("user", "2+2?"), ("assistant", "4"), ("user", "  and 3+3?\n")],
    ):
        dicts = [{"role": r, "content": c} for r, c in messages]
        for gen in (False, True):
            expected = hf.apply_chat_template(dicts, add_generation_prompt=gen, tokenize=True, return_dict=False)
            assert smol_real.render_full(messages, gen) == list(expected)
