"""The typed stub of the native module matches the built module."""

import subprocess
import sys
from pathlib import Path

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


def test_package_and_benchmarks_type_check(tmp_path):
    """mypy finds nothing in the package or the benchmarks (the stub above types
    the native module for it)."""
    pytest.importorskip("mypy")
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"),
         "python/turnloom", "bench"],
        capture_output=True, text=True, timeout=600, cwd=root,
    )
    assert result.returncode == 0, result.stdout + result.stderr
