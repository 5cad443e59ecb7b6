"""The turnloom-scorers package as installed: entry point, registrations, documentation."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from turnloom.plugins import Registry, get_plugin_manager

README = Path(__file__).resolve().parent.parent / "plugins" / "turnloom-scorers" / "README.md"
COMPONENTS = {
    "scorers": {"ifeval", "multi-if", "sysbench", "diversity", "wilt"},
    "environments": {"multi-if-user", "sysbench-user", "wilt"},
    "agents": {"wilt-player", "sysbench-assistant"},
    "judges": {"single-score", "pairwise", "sysbench"},
}


@pytest.fixture
def registry(monkeypatch) -> Registry:
    try:
        importlib.metadata.distribution("turnloom-scorers")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("turnloom-scorers is not installed; run: uv pip install -p .venv/bin/python "
                    "-e plugins/turnloom-scorers (scripts/setup.sh does it)")
    monkeypatch.delenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("TURNLOOM_PLUGINS", "scorers")
    return Registry.from_plugin_manager(get_plugin_manager(default_plugins=()))


def test_entry_point_registers_every_component(registry: Registry) -> None:
    [ep] = [ep for ep in importlib.metadata.distribution("turnloom-scorers").entry_points
            if ep.group == "turnloom"]
    assert (ep.name, ep.value) == ("scorers", "turnloom_scorers.plugin")
    assert registry.errors == []
    for kind, names in COMPONENTS.items():
        for name in names:
            assert registry.owner(kind, name) == "scorers", (kind, name)


def test_readme_documents_every_component() -> None:
    text = README.read_text(encoding="utf-8")
    for names in COMPONENTS.values():
        for name in names:
            assert f"`{name}`" in text, name


def test_factories_reject_unknown_settings(registry: Registry) -> None:
    for kind, names in COMPONENTS.items():
        for name in names:
            with pytest.raises(ValueError, match="bogus"):
                registry.get(kind, name)({"bogus": 1})
