"""Load: peak memory against the number of conversations, and every conversation
reaches the output. (bench/bench_memory.py gives the figures up to 1,000,000.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_memory.py"
SMALL, LARGE, MAX_ACTIVE = 20_000, 200_000, 256


def bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_memory", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    b = bench()
    work = tmp_path_factory.mktemp("memory")
    small, large = b.measure(SMALL, MAX_ACTIVE, work), b.measure(LARGE, MAX_ACTIVE, work)
    print(f"\npeak RSS: {SMALL:,} {small.peak_rss_mib:.1f} MiB, "
          f"{LARGE:,} {large.peak_rss_mib:.1f} MiB")
    return small, large


def test_every_conversation_is_exported_and_memory_stays_small(measured: tuple[Any, Any]) -> None:
    small, large = measured
    assert (small.lines, large.lines) == (SMALL, LARGE)
    # Keeping finished conversations would cost kilobytes each (hundreds of MiB here).
    assert large.peak_rss_mib - small.peak_rss_mib < 16.0
    assert large.peak_rss_mib < 1.5 * small.peak_rss_mib


def test_peak_is_the_runs_own_not_its_parents(tmp_path: Path) -> None:
    """A large parent (a test runner) must not show in the child's peak: Linux keeps a
    process's high-water mark across exec, so wait4's ru_maxrss would report it."""
    ballast = bytearray(400 << 20)
    ballast[::4096] = b"\x01" * len(range(0, len(ballast), 4096))  # touch every page
    m = bench().measure(2_000, MAX_ACTIVE, tmp_path)
    assert m.lines == 2_000
    assert m.peak_rss_mib < 200, f"{m.peak_rss_mib:.0f} MiB: the parent's 400 MiB leaked in"
    del ballast


def test_engine_state_does_not_grow_with_the_number_of_conversations(tmp_path: Path) -> None:
    """Exact where RSS is noisy: what the engine allocates before the first turn
    (a list of every index to start cost 36 bytes per conversation)."""
    import tracemalloc

    import turnloom
    from turnloom.engine import Engine
    from turnloom.plugins import Registry, get_plugin_manager

    pm = get_plugin_manager(autoload=False)
    registry = Registry.from_plugin_manager(pm)

    def traced_peak(conversations: int) -> int:
        text = bench().SCENARIO.format(conversations=conversations, max_active=MAX_ACTIVE)
        path = tmp_path / f"s{conversations}.toml"
        path.write_text(text)
        scenario = turnloom.load_scenario(path, registry)
        tracemalloc.start()
        try:
            Engine(scenario, tmp_path / f"run{conversations}", pm, registry)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = traced_peak(SMALL), traced_peak(LARGE)
    assert large - small < 8 * (LARGE - SMALL), f"{(large - small) / (LARGE - SMALL):.1f} B each"


@pytest.mark.soak
def test_a_million_conversations_complete(tmp_path: Path) -> None:
    huge = bench().measure(1_000_000, MAX_ACTIVE, tmp_path)
    assert huge.lines == 1_000_000
    assert huge.peak_rss_mib < 64
