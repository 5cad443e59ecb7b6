"""Extra chat-template variables (`chat_template_kwargs`), rendered as
transformers' `apply_chat_template(..., **kwargs)` renders them, and passed on
to a chat API that renders the template itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import turnloom
from turnloom import Scenario
from turnloom.chat_template import TemplateChatFormat, read_chat_template
from turnloom.cli import main
from turnloom.models import default_model_dir, load_chat_format, load_tokenizer
from turnloom.config import load_scenario
from turnloom.plugins import Registry, get_plugin_manager
from turnloom.runtime import build_backends
from turnloom.testing.openai_server import OpenAITestServer

# A Qwen3-style switch (an empty thought when thinking is off) and a Llama-3.1-style
# date with a default: both read variables only the caller's keyword arguments set.
THINKING = (
    "{%- if date_string is not defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "<|im_start|>system\nToday is {{ date_string }}.<|im_end|>\n"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{%- endif %}{%- endif %}"
)
MESSAGES = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "What is 2+2?"}]


def model_with_template(tmp_path: Path, template: str) -> Path:
    src, dst = default_model_dir(), tmp_path / "model"
    dst.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(src / name, dst / name)
    config = json.loads((src / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("kwargs", [{}, {"enable_thinking": False}, {"enable_thinking": True},
                                    {"date_string": "8 Dec 2026", "enable_thinking": False}])
def test_variables_render_as_apply_chat_template_renders_them(tmp_path: Path,
                                                              kwargs: dict[str, Any]) -> None:
    transformers = pytest.importorskip("transformers")
    folder = model_with_template(tmp_path, THINKING)
    reference = transformers.AutoTokenizer.from_pretrained(str(folder))
    expected = reference.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True,
                                             **kwargs)
    if not isinstance(expected, list):  # a BatchEncoding in newer transformers
        expected = expected["input_ids"]
    fmt = TemplateChatFormat(load_tokenizer(str(folder)), THINKING).with_variables(kwargs)
    assert fmt.render_ids(MESSAGES, add_generation_prompt=True) == expected
    assert fmt.prompt_ids(MESSAGES) == expected


def test_a_thinking_switch_changes_the_prompt_and_keeps_the_format_whole(tmp_path: Path) -> None:
    folder = model_with_template(tmp_path, THINKING)
    plain = TemplateChatFormat(load_tokenizer(str(folder)), THINKING)
    off = plain.with_variables({"enable_thinking": False})
    assert plain.variables == {} and off.variables == {"enable_thinking": False}
    text = off.tokenizer.decode(off.prompt_ids(MESSAGES))
    # ({%- trims the newlines the text has: the reference test above renders the same.)
    assert text.endswith("<|im_start|>assistant<think>\n\n</think>")
    assert plain.tokenizer.decode(plain.prompt_ids(MESSAGES)).endswith("<|im_start|>assistant")
    with pytest.raises(ValueError, match="add_generation_prompt"):
        plain.with_variables({"add_generation_prompt": False})


def scenario(url: str, tokenizer: str, kwargs: str) -> str:
    return f"""
[run]
name = "kwargs"
conversations = 2
max_turns = 2

[backends.users]
type = "scripted"
lines = ["What is 2+2?"]

[backends.api]
type = "openai"
tokenizer = "{tokenizer}"
chat_template_kwargs = {kwargs}
settings = {{ base_url = "{url}", model = "turnloom/hash-model", endpoint = "chat" }}

[[participants]]
name = "user"
agent = "user-simulator"
backend = "users"

[[participants]]
name = "assistant"
agent = "assistant"
backend = "api"
sampling = {{ max_new_tokens = 4 }}
"""


def test_a_chat_api_gets_the_variables_with_each_request(tmp_path: Path) -> None:
    with OpenAITestServer() as server:
        path = tmp_path / "s.toml"
        path.write_text(scenario(server.url + "/v1", "bytes", "{ enable_thinking = false }"))
        result = turnloom.run(Scenario.from_toml(path), out=tmp_path / "run", progress=False,
                              plugin_manager=get_plugin_manager(autoload=False))
        bodies = [b for b in server.requests if "messages" in b]
    assert result.summary["turns"] == 4 and bodies
    assert all(b["chat_template_kwargs"] == {"enable_thinking": False} for b in bodies)


def test_a_reserved_variable_is_an_error_at_its_line(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.toml"
    path.write_text(scenario("http://127.0.0.1:9/v1", "bytes", "{ add_generation_prompt = false }"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "s.toml:14" in err and "add_generation_prompt" in err, err


def test_a_token_backend_renders_its_prompts_with_the_variables(tmp_path: Path) -> None:
    folder = model_with_template(tmp_path, THINKING)
    path = tmp_path / "s.toml"
    path.write_text(scenario("http://127.0.0.1:9/v1", str(folder),
                             '{ enable_thinking = false, date_string = "8 Dec 2026" }')
                    .replace('type = "openai"', 'type = "scripted"')
                    .replace('settings = { base_url', '# settings = { base_url'))
    registry = Registry.from_plugin_manager(get_plugin_manager(autoload=False))
    backends = build_backends(load_scenario(path, registry), registry)
    fmt = backends["api"].fmt
    text = fmt.tokenizer.decode(fmt.prompt_ids(MESSAGES))
    assert "Today is 8 Dec 2026." in text and text.endswith("<think>\n\n</think>")


def test_a_template_file_wins_over_the_config_entry_as_in_transformers(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    folder = model_with_template(tmp_path, THINKING)  # the config's entry
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}")
    reference = transformers.AutoTokenizer.from_pretrained(str(folder))
    expected = reference.apply_chat_template(MESSAGES, tokenize=False)
    assert read_chat_template(folder) == reference.chat_template
    assert load_chat_format(str(folder)).render_text(MESSAGES) == expected
