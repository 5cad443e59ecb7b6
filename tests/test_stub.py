"""The typed stub of the native module matches the built module."""

import subprocess
import sys

import pytest


def test_core_stub_matches_the_built_module():
    pytest.importorskip("mypy")
    # PyO3 classes are disjoint bases, which the stub cannot mark on Python 3.10.
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "turnloom._core", "--ignore-disjoint-bases"],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_package_ships_its_type_marker():
    from importlib.resources import files

    assert files("turnloom").joinpath("py.typed").is_file()
    assert files("turnloom").joinpath("_core.pyi").is_file()
