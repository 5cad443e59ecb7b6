"""The run directory: its files, its manifest, and creating it safely."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any, Callable

from turnloom.export import atomic_write

MANIFEST = "manifest.json"
WAL = "turns.wal"
CONVERSATIONS = "conversations.jsonl"
SCORES = "scores.jsonl"
SUMMARY = "summary.json"
ERRORS = "errors.log"  # plugin faults with their tracebacks (turnloom.errorlog)
FORMAT = 1


class RunDirError(Exception):
    """The run directory cannot be used (exists, is not a run, is incomplete)."""


def prepare(path: Path, overwrite: bool) -> Path:
    """Create an empty run directory. An existing non-empty one is replaced only
    with `overwrite`, and only if it is a turnloom run directory."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise RunDirError(f"{path} exists and is not a directory")
        # A run killed before its manifest was in place left at most temp files: empty.
        leftovers = [p for p in path.iterdir() if _is_temp(p.name)]
        if len(leftovers) == sum(1 for _ in path.iterdir()):
            for p in leftovers:
                p.unlink()
        if any(path.iterdir()):
            if not overwrite:
                raise RunDirError(f"{path} already exists; pass --overwrite to replace it, "
                                  f"or `turnloom resume {path}` to continue it")
            if not (path / MANIFEST).is_file():
                raise RunDirError(f"refusing to overwrite {path}: it is not a turnloom run "
                                  f"directory (no {MANIFEST})")
            shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def versions() -> dict[str, str | None]:
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    core: str | None
    try:
        from turnloom._core import __version__ as core
    except ImportError:
        core = None
    return {"turnloom": version("turnloom"), "core": core, "python": platform.python_version(),
            "msgspec": version("msgspec"), "pluggy": version("pluggy")}


# Backend settings never written to a run directory (`api_key_env` names a variable: kept).
SECRET_SETTINGS = frozenset({"api_key", "token", "password", "secret", "authorization"})
REDACTED = "<redacted>"


def _with_backend_settings(scenario: dict[str, Any],
                           change: Callable[[str, dict[str, Any]], dict[str, Any]]
                           ) -> dict[str, Any]:
    """The scenario with each backend's settings replaced by `change(name, settings)`."""
    backends = scenario.get("backends")
    if not isinstance(backends, dict):
        return scenario
    out = {}
    for name, spec in backends.items():
        settings = spec.get("settings") if isinstance(spec, dict) else None
        if isinstance(settings, dict):
            spec = {**spec, "settings": change(name, settings)}
        out[name] = spec
    return {**scenario, "backends": out}


def redact_secrets(scenario: dict[str, Any]) -> dict[str, Any]:
    """The scenario with every secret backend setting replaced by REDACTED."""
    return _with_backend_settings(scenario, lambda name, settings: {
        k: REDACTED if k in SECRET_SETTINGS and v is not None else v
        for k, v in settings.items()})


def secret_env_var(backend: str, setting: str) -> str:
    """Where `turnloom resume` reads a redacted secret from."""
    return "TURNLOOM_SECRET_" + "_".join(
        "".join(c if c.isalnum() else "_" for c in part).upper() for part in (backend, setting))


def restore_secrets(scenario: dict[str, Any], manifest_file: Path) -> dict[str, Any]:
    """Fill redacted secrets back in from the environment (see `secret_env_var`)."""

    def restore(name: str, settings: dict[str, Any]) -> dict[str, Any]:
        out = dict(settings)
        for key, value in settings.items():
            if value != REDACTED:
                continue
            var = secret_env_var(name, key)
            if var not in os.environ:
                raise RunDirError(f"{manifest_file}: backends.{name}.{key} was not saved with "
                                  f"the run; set {var} to resume it (or give the backend "
                                  "`api_key_env` in the scenario)")
            out[key] = os.environ[var]
        return out

    return _with_backend_settings(scenario, restore)


def write_manifest(path: Path, scenario: dict[str, Any], *, scenario_file: str | None,
                   plugins: list[dict[str, Any]],
                   hooks: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the manifest; `hooks` says which plugins' lifecycle hooks apply to the run
    and which installed ones were left out (`turnloom.plugins.HookScope.describe`)."""
    scenario = redact_secrets(scenario)
    manifest = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "scenario_file": scenario_file,
        "scenario": scenario,
        "seeds": {
            "run": scenario.get("run", {}).get("seed", 0),
            "conversation": "blake2b-64('{run}/conversation/{index}') & (2**63-1)",
            "turn": "splitmix64(conversation + 0x9E3779B97F4A7C15 * (1 + (branch << 32) + turn))"
                    " & (2**31-1)",
        },
        "versions": versions(),
        "plugins": plugins,
    }
    if hooks is not None:
        manifest["hooks"] = hooks
    atomic_write(Path(path) / MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")
    return manifest


def read_manifest(path: Path) -> dict[str, Any]:
    file = Path(path) / MANIFEST
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path} is not a turnloom run directory (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise RunDirError(f"cannot read {file}: {exc}") from None


def write_json(path: Path, obj: Any) -> None:
    atomic_write(Path(path), json.dumps(obj, indent=2, sort_keys=False).encode() + b"\n")
