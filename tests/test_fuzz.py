"""Fuzzing the three places that read untrusted bytes or arguments: the scenario
loader, the write-ahead log reader, and the native core's Python API.

- scenario: any dict or text gives a Scenario or a ScenarioError, nothing else;
- log: any corruption or truncation of a valid log reads back as a prefix of
  its events (a torn or corrupt tail dropped), or "not a log" — never a crash;
- core: random calls with negative, huge and stale ids raise ordinary Python
  exceptions. They run in a subprocess, so a Rust abort shows as its exit status.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from turnloom.config import Scenario, ScenarioError
from turnloom.plugins import Registry, get_plugin_manager
from turnloom.wal import MAGIC, EndEvent, TurnEvent, WalWriter, read_events

FIELDS = ["run", "name", "conversations", "max_turns", "seed", "batch_size", "max_active",
          "backends", "sim", "type", "scripted", "lines", "tokenizer", "participants", "agent",
          "assistant", "user-simulator", "backend", "role", "system_prompt", "sampler",
          "sampler_settings", "profiles", "sampling", "temperature", "top_p", "max_new_tokens",
          "stop", "phrases", "scorers", "exporters", "branches", "at_turn", "n", "turns",
          "opener", "order", "settings", "judges", "first_index", "wal_sync_s"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True), st.text(max_size=12),
                    st.sampled_from(FIELDS))
keys = st.one_of(st.sampled_from(FIELDS), st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)), max_leaves=25)

VALID: dict[str, Any] = {
    "run": {"name": "f", "conversations": 2, "max_turns": 4, "seed": 1},
    "backends": {"sim": {"type": "scripted", "lines": ["a", "b"]}},
    "participants": [
        {"name": "user", "agent": "user-simulator", "system_prompt": "{profile}",
         "sampler": "inline", "sampler_settings": {"profiles": [{"name": "A"}]}},
        {"name": "assistant", "agent": "assistant", "sampling": {"temperature": 0.5}},
    ],
    "scorers": ["length"],
    "branches": [{"at_turn": 1, "n": 2}],
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_plugin_manager(get_plugin_manager(autoload=False))


def load(data: Any, registry: Registry) -> None:
    try:
        Scenario.from_dict(data).validate(registry)
    except ScenarioError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.dictionaries(keys, values, max_size=6))
def test_random_scenario_dicts_give_only_scenario_errors(data: dict[str, Any],
                                                         registry: Registry) -> None:
    load(data, registry)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_one_bad_value_in_a_valid_scenario_gives_only_scenario_errors(
        data: st.DataObject, registry: Registry) -> None:
    import copy

    scenario = copy.deepcopy(VALID)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(scenario)))
        parent = scenario
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(values)
        if not _paths(scenario):
            break
    load(scenario, registry)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list('[]{}=."\'#\n ,01-+eE_abcxyzrun')),
                    max_size=120))
def test_random_toml_text_gives_only_scenario_errors(text: str, tmp_path_factory: Any,
                                                     registry: Registry) -> None:
    path = tmp_path_factory.mktemp("toml") / "s.toml"
    path.write_text("[run]\n" + text)
    try:
        Scenario.from_toml(path).validate(registry)
    except ScenarioError as exc:
        assert str(exc).startswith(str(path))


# -- the write-ahead log reader -----------------------------------------------------------


def _events() -> list[Any]:
    out: list[Any] = []
    for i in range(6):
        for t in range(3):
            out.append(TurnEvent(i, 0, -1 if t == 0 else 0, t, t % 2, "user", f"text {i}/{t}",
                                 [1, 2, t], "stop", 7, 3, 3, 0, 0.0, None, None, None, None,
                                 None))
        out.append(EndEvent(index=i, branch=0, tree_done=True, stop_reason="max_turns",
                            scores={}, errors=[], meta={}))
    return out


@pytest.fixture(scope="module")
def good_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[Any]]:
    path = tmp_path_factory.mktemp("wal") / "turns.wal"
    events = _events()
    w = WalWriter(path, sync_s=0)
    for k, ev in enumerate(events):
        w.append(ev)
        if k % 3 == 2:
            w.flush()
    w.close()
    return path.read_bytes(), events


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_corrupt_or_truncated_log_reads_a_prefix_or_fails_cleanly(
        data: st.DataObject, good_log: tuple[bytes, list[Any]], tmp_path_factory: Any) -> None:
    raw, events = good_log
    blob = bytearray(raw)
    for _ in range(data.draw(st.integers(0, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "zero"]))
        if not blob:
            break
        at = data.draw(st.integers(0, len(blob) - 1))
        if kind == "flip":
            blob[at] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del blob[at:]
        elif kind == "insert":
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        else:
            blob[at:at + 8] = bytes(len(blob[at:at + 8]))
    path = tmp_path_factory.mktemp("bad") / "turns.wal"
    path.write_bytes(bytes(blob))
    try:
        got = list(read_events(path))
    except ValueError as exc:
        assert "not a turnloom write-ahead log" in str(exc)
        assert bytes(blob[:len(MAGIC)]) != MAGIC
        return
    assert got == events[:len(got)], "only whole, checked records are returned"
    # The file was cut to its good records: reading again gives the same and leaves it be.
    size = path.stat().st_size
    assert list(read_events(path)) == got and path.stat().st_size == size


# -- the native core, in a subprocess ------------------------------------------------------

CORE_FUZZ = textwrap.dedent("""
    import sys
    from hypothesis import given, settings, strategies as st, HealthCheck
    from turnloom import _core

    ALLOWED = (_core.TurnloomError, TypeError, ValueError, OverflowError, KeyError,
               IndexError, BufferError)
    panics = []

    ints = st.one_of(st.integers(-5, 40), st.sampled_from([-1, -2**31, 2**31, 2**32 - 1, 2**32,
                     2**63 - 1, 2**63, -2**63, 2**64, 2**64 + 7, -2**64, 10**30]))
    tokens = st.lists(ints, max_size=6)
    roles = st.one_of(st.sampled_from(list(_core.ROLES)), st.text(max_size=4))
    finishes = st.one_of(st.sampled_from(list(_core.FINISH_REASONS)), st.text(max_size=4))

    def call(fn, *args):
        try:
            return fn(*args)
        except ALLOWED:
            return None
        except BaseException as exc:
            if type(exc).__name__ == "PanicException":
                panics.append(f"{fn.__name__}{args!r:.200}: {exc}")
                return None
            raise

    def node_id(d, live):
        if live and d.draw(st.booleans()):
            return d.draw(st.sampled_from(live))
        return d.draw(ints)

    @settings(max_examples=int(sys.argv[1]), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def forest(d):
        f = _core.Forest()
        live = []
        for _ in range(d.draw(st.integers(1, 25))):
            op = d.draw(st.sampled_from(["root", "append", "many", "packed", "free", "query",
                                         "segment", "lanes"]))
            n = node_id(d, live)
            if op == "root":
                r = call(f.add_root, d.draw(ints), d.draw(roles), d.draw(st.text(max_size=5)),
                         d.draw(st.none() | st.dictionaries(ints, tokens, max_size=2)),
                         d.draw(finishes))
                live += [r] if r is not None else []
            elif op == "append":
                r = call(f.append, n, d.draw(ints), d.draw(roles), "t",
                         d.draw(st.none() | st.dictionaries(ints, tokens, max_size=2)))
                live += [r] if r is not None else []
            elif op == "many":
                k = d.draw(st.integers(0, 3))
                call(f.append_many, [node_id(d, live) for _ in range(k)],
                     d.draw(st.lists(ints, max_size=3)), d.draw(st.lists(roles, max_size=3)),
                     d.draw(st.lists(st.text(max_size=3), max_size=3)))
            elif op == "packed":
                k = d.draw(st.integers(0, 2))
                call(f.append_packed, [d.draw(st.none()) if d.draw(st.booleans())
                                       else node_id(d, live) for _ in range(k)],
                     d.draw(st.lists(ints, max_size=2)), d.draw(st.lists(roles, max_size=2)),
                     d.draw(st.lists(st.text(max_size=2), max_size=2)),
                     d.draw(st.lists(ints, max_size=2)), d.draw(st.binary(max_size=24)),
                     d.draw(st.lists(ints, max_size=5)))
            elif op == "free":
                call(f.free_subtree, n)
            elif op == "segment":
                call(f.set_segment, n, d.draw(ints), d.draw(tokens))
            elif op == "lanes":
                call(f.lanes_for, [node_id(d, live) for _ in range(2)], d.draw(tokens))
                call(f.lanes_packed, [node_id(d, live) for _ in range(2)], d.draw(ints))
            else:
                for fn in (f.path, f.messages, f.node, f.parent, f.children, f.depth, f.root,
                           f.is_live):
                    call(fn, n)
                call(f.lane, n, d.draw(ints))
                call(f.subtree_tokens, n, d.draw(st.none() | st.lists(ints, max_size=2)))
                call(f.segment, n, d.draw(ints))
                call(f.shared_prefix_len, n, node_id(d, live))
                call(f.set_meta, n, d.draw(st.text(max_size=4)))
                call(f.set_finish, n, d.draw(finishes))
        f.stats()

    @settings(max_examples=int(sys.argv[1]), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def radix(d):
        c = call(_core.RadixCache, d.draw(ints))
        if c is None:
            return
        for _ in range(d.draw(st.integers(1, 20))):
            op = d.draw(st.sampled_from(["insert", "match", "pin", "unpin", "evict", "clear",
                                         "many"]))
            t = d.draw(tokens)
            if op == "insert":
                call(c.insert, t)
            elif op == "match":
                call(c.match_len, t)
            elif op == "pin":
                call(c.pin, t)
            elif op == "unpin":
                call(c.unpin, t)
            elif op == "evict":
                call(c.evict, d.draw(ints))
            elif op == "clear":
                call(c.clear)
            else:
                call(c.insert_many, d.draw(st.lists(tokens, max_size=3)))
                call(c.match_many, d.draw(st.lists(tokens, max_size=3)))
        c.stats()

    @settings(max_examples=int(sys.argv[1]), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def scheduler(d):
        s = call(_core.Scheduler, d.draw(st.none() | ints), d.draw(ints), d.draw(ints),
                 d.draw(ints), d.draw(ints))
        if s is None:
            return
        for _ in range(d.draw(st.integers(1, 20))):
            op = d.draw(st.sampled_from(["push", "pop", "complete", "update", "finish",
                                         "reserve"]))
            ids = d.draw(st.lists(ints, max_size=3))
            if op == "push":
                call(s.push_many, ids, d.draw(st.lists(ints, max_size=3)),
                     d.draw(st.lists(ints, max_size=3)),
                     d.draw(st.none() | st.lists(ints, max_size=3)),
                     d.draw(st.none() | st.lists(ints, max_size=3)))
            elif op == "pop":
                call(s.pop_batch, d.draw(ints), d.draw(ints))
            elif op == "complete":
                call(s.complete_many, ids)
            elif op == "update":
                call(s.update_cached, ids, d.draw(st.lists(ints, max_size=3)))
            elif op == "reserve":
                call(s.set_tree_reserve, d.draw(ints))
            else:
                call(s.finish_tree, d.draw(ints))
        s.stats()
        len(s)

    forest()
    radix()
    scheduler()
    print(f"panics: {len(panics)}")
    for p in panics[:20]:
        print(p)
""")


def run_core_fuzz(examples: int, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "core_fuzz.py"
    script.write_text(CORE_FUZZ)
    return subprocess.run([sys.executable, str(script), str(examples)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "RUST_BACKTRACE": "0"})


def test_native_core_survives_random_arguments(tmp_path: Path) -> None:
    done = run_core_fuzz(100, tmp_path)
    assert done.returncode == 0, (
        f"the fuzz process died (exit {done.returncode}: a negative status is a signal, "
        f"e.g. -6 for an abort)\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    assert "panics: 0" in done.stdout, done.stdout


@pytest.mark.soak
def test_native_core_survives_random_arguments_long(tmp_path: Path) -> None:
    done = run_core_fuzz(1500, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "panics: 0" in done.stdout, done.stdout
