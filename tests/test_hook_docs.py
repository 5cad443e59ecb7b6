"""Every hook is documented and tested: the hookspecs are the plugin authors' documentation."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import pluggy
import pytest

from turnloom import hookspecs

TESTS = Path(__file__).parent


def _specs() -> dict[str, pluggy.HookCaller]:
    pm = pluggy.PluginManager("turnloom")
    pm.add_hookspecs(hookspecs)
    return {name: caller for name, caller in vars(pm.hook).items() if caller.has_spec()}


SPECS = _specs()


@functools.cache
def _other_test_sources() -> str:
    me = Path(__file__).name
    return "\n".join(path.read_text(encoding="utf-8") for path in sorted(TESTS.rglob("*.py"))
                     if path.name != me)


def test_there_are_hooks():
    assert "should_stop" in SPECS and len(SPECS) >= 10


@pytest.mark.parametrize("name", sorted(SPECS))
def test_hook_is_documented(name):
    doc = inspect.getdoc(SPECS[name].spec.function)
    assert doc and len(doc) > 20, f"hookspec {name} has no docstring"


@pytest.mark.parametrize("name", sorted(n for n, c in SPECS.items() if c.spec.opts["firstresult"]))
def test_firstresult_hook_says_so(name):
    doc = inspect.getdoc(SPECS[name].spec.function) or ""
    assert "Stops at the first non-None result" in doc, (
        f"firstresult hook {name} must say 'Stops at the first non-None result.'")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_hook_is_tested(name):
    assert name in _other_test_sources(), (
        f"hook {name} appears in no test under {TESTS} (besides {Path(__file__).name})")
