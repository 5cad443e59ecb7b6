"""The plugin system: discovery, switches, broken plugins, registration, safe hook calls."""

from __future__ import annotations

import importlib.metadata
import logging
import pickle
import sys
import types

import pluggy
import pytest

from turnloom import hookimpl
from turnloom.plugins import (
    PluginError,
    PluginLoadError,
    PluginManager,
    Registry,
    UnknownPluginError,
    call_hook_safely,
    describe_plugins,
    first_result_safely,
    get_plugin_manager,
    load_errors,
)
from turnloom.records import ConversationState, TurnRecord


# --- fakes: installed distributions without installing anything ------------------------

class FakeEntryPoint:
    def __init__(self, name: str, target: object, group: str = "turnloom") -> None:
        self.name = name
        self.value = f"fake_{name}"
        self.group = group
        self._target = target

    def load(self) -> object:
        if isinstance(self._target, BaseException):
            raise self._target
        return self._target


class FakeDistribution:
    def __init__(self, name: str, version: str, *entry_points: FakeEntryPoint) -> None:
        self.metadata = {"name": name}
        self.version = version
        self.entry_points = entry_points


def plugin_module(name: str, **hooks) -> types.ModuleType:
    """A module object whose attributes are the given functions, marked as hookimpls."""
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, hookimpl(function))
    return module


def scorers(*names):
    def register_scorers(register):
        for name in names:
            register(name, dict)
    return register_scorers


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", "TURNLOOM_PLUGINS", "TURNLOOM_TRACE_HOOKS"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def installed(monkeypatch):
    """The list of installed distributions that discovery sees; append FakeDistributions."""
    dists: list[FakeDistribution] = []
    monkeypatch.setattr(importlib.metadata, "distributions", lambda **kw: list(dists))
    return dists


@pytest.fixture
def pm():
    return get_plugin_manager(default_plugins=(), autoload=False)


def conversation() -> tuple[ConversationState, TurnRecord]:
    conv = ConversationState("c0", index=0, seed=1)
    turn = TurnRecord(conversation_id="c0", branch=0, turn=0, participant="user",
                      role="user", text="hello?", node=1)
    conv.messages.append(("user", "user", turn.text))
    conv.turns.append(turn)
    return conv, turn


# --- discovery ------------------------------------------------------------------------

def test_entry_point_plugin_is_discovered_with_its_distribution(installed):
    module = plugin_module("fake_scorers", register_scorers=scorers("fake-scorer"))
    installed.append(FakeDistribution("turnloom-fake", "1.2", FakeEntryPoint("fake", module)))
    installed.append(FakeDistribution("unrelated", "9", FakeEntryPoint("x", module, "pytest11")))

    pm = get_plugin_manager(default_plugins=())

    assert pm.get_plugin("fake") is module
    registry = Registry.from_plugin_manager(pm)
    assert registry.get("scorers", "fake-scorer") is dict
    assert registry.owner("scorers", "fake-scorer") == "fake"
    assert describe_plugins(pm) == [{"name": "fake", "distribution": "turnloom-fake",
                                     "version": "1.2", "hooks": ["register_scorers"],
                                     "error": None}]


def test_builtins_load_by_module_name_before_third_party(installed, monkeypatch):
    builtin = plugin_module("fake_builtin_mod", register_scorers=scorers("builtin"))
    monkeypatch.setitem(sys.modules, "fake_builtin_mod", builtin)
    third = plugin_module("third", register_agents=lambda register: None)
    installed.append(FakeDistribution("turnloom-third", "0.1", FakeEntryPoint("third", third)))

    pm = get_plugin_manager(default_plugins=("fake_builtin_mod",))

    assert [name for name, _ in pm.list_name_plugin()] == ["fake_builtin_mod", "third"]
    assert Registry.from_plugin_manager(pm).owner("scorers", "builtin") == "fake_builtin_mod"


def test_same_distribution_twice_on_path_loads_once(installed):
    module = plugin_module("twice", register_scorers=scorers("s"))
    dist = FakeDistribution("turnloom-twice", "1", FakeEntryPoint("twice", module))
    installed.extend([dist, dist])
    pm = get_plugin_manager(default_plugins=())
    assert pm.get_plugin("twice") is module
    assert load_errors(pm) == []


def test_entry_point_name_taken_by_another_distribution_is_recorded(installed):
    first = plugin_module("a", register_scorers=scorers("a"))
    second = plugin_module("b", register_scorers=scorers("b"))
    installed.append(FakeDistribution("turnloom-a", "1", FakeEntryPoint("same", first)))
    installed.append(FakeDistribution("turnloom-b", "1", FakeEntryPoint("same", second)))
    pm = get_plugin_manager(default_plugins=())
    assert pm.get_plugin("same") is first
    [error] = load_errors(pm)
    assert error.distribution == "turnloom-b" and "turnloom-a" in str(error)


# --- switches -------------------------------------------------------------------------

@pytest.fixture
def two_plugins(installed):
    installed.append(FakeDistribution("turnloom-alpha", "1", FakeEntryPoint(
        "alpha", plugin_module("alpha", register_scorers=scorers("a")))))
    installed.append(FakeDistribution("Turnloom_Beta", "1", FakeEntryPoint(
        "beta", plugin_module("beta", register_scorers=scorers("b")))))
    return installed


def loaded(pm) -> set[str]:
    return {name for name, _ in pm.list_name_plugin()}


@pytest.mark.parametrize("value, expected", [
    (None, {"alpha", "beta"}), ("1", set()), ("true", set()), ("0", {"alpha", "beta"}),
    ("", {"alpha", "beta"}),
])
def test_disable_autoload_env(two_plugins, monkeypatch, value, expected):
    if value is not None:
        monkeypatch.setenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", value)
    assert loaded(get_plugin_manager(default_plugins=())) == expected


def test_autoload_argument_overrides_env(two_plugins, monkeypatch):
    assert loaded(get_plugin_manager(default_plugins=(), autoload=False)) == set()
    monkeypatch.setenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert loaded(get_plugin_manager(default_plugins=(), autoload=True)) == {"alpha", "beta"}


@pytest.mark.parametrize("allow, expected", [
    ("alpha", {"alpha"}),
    ("turnloom-beta", {"beta"}),  # distribution name, normalised
    (" beta , turnloom_alpha", {"alpha", "beta"}),
    ("", set()),  # set but empty: none
])
def test_allow_list_env(two_plugins, monkeypatch, allow, expected):
    monkeypatch.setenv("TURNLOOM_PLUGINS", allow)
    assert loaded(get_plugin_manager(default_plugins=())) == expected


def test_allow_list_warns_about_names_that_match_nothing(two_plugins, monkeypatch, caplog):
    monkeypatch.setenv("TURNLOOM_PLUGINS", "alpha,gamma")
    with caplog.at_level(logging.WARNING, logger="turnloom.plugins"):
        pm = get_plugin_manager(default_plugins=())
    assert loaded(pm) == {"alpha"}
    assert "'gamma'" in caplog.text and "'alpha'" not in caplog.text


def test_trace_env_writes_hook_calls_to_stderr(monkeypatch, capsys):
    monkeypatch.setenv("TURNLOOM_TRACE_HOOKS", "1")
    pm = get_plugin_manager(default_plugins=(), autoload=False)

    class Watcher:
        @hookimpl
        def on_turn_end(self, conversation, turn):
            return "seen"

    pm.register(Watcher(), name="watcher")
    try:
        conv, turn = conversation()
        pm.hook.on_turn_end(conversation=conv, turn=turn)
        assert call_hook_safely(pm, "on_turn_end", [], conversation=conv, turn=turn) == ["seen"]
    finally:
        pm.unregister(name="watcher")
    err = capsys.readouterr().err
    assert "on_turn_end [hook]" in err  # pluggy's own tracing of a direct call
    assert "on_turn_end [watcher] [hook]" in err  # a safe call names the plugin
    assert "finish on_turn_end [watcher] --> seen" in err


def test_no_trace_by_default(pm, capsys):
    conv, turn = conversation()
    call_hook_safely(pm, "on_turn_end", [], conversation=conv, turn=turn)
    pm.hook.on_conversation_start(conversation=conv)
    assert capsys.readouterr().err == ""


# --- broken plugins -------------------------------------------------------------------

def test_plugin_that_fails_to_import_is_recorded_and_skipped(installed, caplog):
    good = plugin_module("good", register_scorers=scorers("ok"))
    installed.append(FakeDistribution("turnloom-broken", "0.3", FakeEntryPoint(
        "broken", ImportError("No module named 'missing_dep'"))))
    installed.append(FakeDistribution("turnloom-good", "1", FakeEntryPoint("good", good)))

    with caplog.at_level(logging.WARNING, logger="turnloom.plugins"):
        pm = get_plugin_manager(default_plugins=())

    [error] = load_errors(pm)
    assert isinstance(error, PluginLoadError)
    assert (error.entry_point, error.distribution, error.version) == (
        "broken", "turnloom-broken", "0.3")
    assert isinstance(error.exception, ImportError)
    assert "missing_dep" in str(error) and "turnloom-broken" in str(error)
    assert caplog.text.count("'broken'") == 1  # warned once
    assert pm.get_plugin("good") is good
    assert describe_plugins(pm)[-1]["error"] == "ImportError: No module named 'missing_dep'"
    assert pickle.loads(pickle.dumps(error)).entry_point == "broken"


def test_strict_mode_raises_on_a_broken_plugin(installed):
    installed.append(FakeDistribution("turnloom-broken", "0.3", FakeEntryPoint(
        "broken", RuntimeError("boom"))))
    with pytest.raises(PluginLoadError, match="'broken'.*RuntimeError: boom"):
        get_plugin_manager(default_plugins=(), strict=True)


def bad_args(conversation, nonsense):  # an argument the hookspec does not have
    return None


def wrapper(conversation, turn):
    yield


def misspelled(conversation, turn):
    return None


@pytest.mark.parametrize("hooks, reason", [
    ({"on_turn_end": bad_args}, "nonsense"),
    ({"on_turn_endd": misspelled}, "unknown hook 'on_turn_endd'"),
])
def test_plugin_that_fails_validation_is_recorded(installed, hooks, reason):
    installed.append(FakeDistribution("turnloom-bad", "1", FakeEntryPoint(
        "bad", plugin_module("bad", **hooks))))
    pm = get_plugin_manager(default_plugins=())
    [error] = load_errors(pm)
    assert error.entry_point == "bad" and reason in str(error)
    assert not pm.has_plugin("bad")


def test_hook_wrappers_are_rejected(pm):
    class Wrapper:
        @hookimpl(wrapper=True)
        def on_turn_end(self, conversation, turn):
            return (yield)

    with pytest.raises(pluggy.PluginValidationError, match="wrappers are not supported"):
        pm.register(Wrapper(), name="wrapper")
    assert not pm.has_plugin("wrapper")


def test_builtin_that_fails_to_import_is_fatal():
    with pytest.raises(PluginError, match="built-in plugin module 'turnloom_no_such_mod'"):
        get_plugin_manager(default_plugins=("turnloom_no_such_mod",), autoload=False)


def test_invalid_builtin_is_fatal(monkeypatch):
    monkeypatch.setitem(sys.modules, "bad_builtin", plugin_module("bad_builtin",
                                                                  on_turn_endd=misspelled))
    with pytest.raises(PluginError, match="bad_builtin.*unknown hook"):
        get_plugin_manager(default_plugins=("bad_builtin",), autoload=False)


# --- registration ---------------------------------------------------------------------

class Registers:
    """A plugin that registers the given (name, factory) pairs as scorers."""

    def __init__(self, *entries, then_raise: bool = False) -> None:
        self.entries = entries
        self.then_raise = then_raise

    @hookimpl
    def register_scorers(self, register):
        for name, factory in self.entries:
            register(name, factory)
        if self.then_raise:
            raise RuntimeError("register bug")


def registry_with(pm, strict=False, **plugins) -> Registry:
    for name, plugin in plugins.items():
        pm.register(plugin, name=name)
    try:
        return Registry.from_plugin_manager(pm, strict=strict)
    finally:
        for name in plugins:
            pm.unregister(name=name)


def test_every_kind_is_collected_with_its_owner(pm):
    class All:
        @hookimpl
        def register_agents(self, register):
            register("agent", dict)

        @hookimpl
        def register_environments(self, register):
            register("environment", dict)

        @hookimpl
        def register_samplers(self, register):
            register("sampler", dict)

        @hookimpl
        def register_scorers(self, register):
            register("scorer", dict)

        @hookimpl
        def register_backends(self, register):
            register("backend", dict)

        @hookimpl
        def register_exporters(self, register):
            register("exporter", dict)

    registry = registry_with(pm, all=All())
    for kind in ("agents", "environments", "samplers", "scorers", "backends", "exporters"):
        assert registry.names(kind) == [kind[:-1]]
        assert registry.get(kind, kind[:-1]) is dict
        assert registry.owner(kind, kind[:-1]) == "all"
    assert registry.errors == []


@pytest.mark.parametrize("name, factory, reason", [
    ("", dict, "name ''"),
    (" padded", dict, "name ' padded'"),
    (3, dict, "name 3"),
    ("fine", "not callable", "'not callable' is not callable"),
])
def test_invalid_registration_is_recorded_naming_the_plugin(pm, name, factory, reason):
    registry = registry_with(pm, sloppy=Registers((name, factory), ("ok", dict)))
    [error] = registry.errors
    assert "plugin 'sloppy'" in error and reason in error
    assert registry.names("scorers") == ["ok"]  # the plugin's valid registrations stay
    with pytest.raises(PluginError, match=f"plugin 'sloppy'.*{reason}"):
        registry_with(pm, strict=True, sloppy=Registers((name, factory)))


def test_duplicate_names_name_both_plugins(pm):
    registry = registry_with(pm, first=Registers(("dup", dict), ("a", dict)),
                             second=Registers(("dup", list)))
    [error] = registry.errors
    assert "'dup'" in error and "'first'" in error and "'second'" in error
    assert registry.get("scorers", "a") is dict  # unrelated names are unaffected
    with pytest.raises(PluginError, match="'dup'.*'second' and 'first'"):
        registry.get("scorers", "dup")
    with pytest.raises(PluginError, match="'second' and 'first'"):
        registry.owner("scorers", "dup")
    with pytest.raises(PluginError, match="'second' and 'first'"):
        registry_with(pm, strict=True, first=Registers(("dup", dict)),
                      second=Registers(("dup", list)))


def test_same_plugin_registering_a_name_twice(pm):
    registry = registry_with(pm, twice=Registers(("x", dict), ("x", list)))
    assert registry.errors == ["plugin 'twice' registered scorer 'x' twice"]
    assert registry.get("scorers", "x") is dict


def test_raising_register_hook_is_recorded_and_skipped(pm, caplog):
    with caplog.at_level(logging.WARNING, logger="turnloom.plugins"):
        registry = registry_with(pm, buggy=Registers(("half", dict), then_raise=True),
                                 fine=Registers(("ok", dict)))
    [error] = registry.errors
    assert error.startswith("plugin 'buggy' raised in register_scorers: RuntimeError: register bug")
    assert "register bug" in caplog.text
    assert registry.names("scorers") == ["ok"]  # nothing half-registered
    with pytest.raises(PluginError, match="plugin 'buggy' raised in register_scorers"):
        registry_with(pm, strict=True, buggy=Registers(then_raise=True))


def test_strict_defaults_to_the_managers(installed):
    pm = get_plugin_manager(default_plugins=(), strict=True)
    pm.register(Registers(then_raise=True), name="buggy")
    try:
        with pytest.raises(PluginError, match="buggy"):
            Registry.from_plugin_manager(pm)
    finally:
        pm.unregister(name="buggy")


def test_unknown_name_lists_available_and_suggests(pm):
    registry = registry_with(pm, p=Registers(("question-rate", dict), ("distinct-n", dict)))
    with pytest.raises(UnknownPluginError) as info:
        registry.get("scorers", "questoin-rate")
    message = str(info.value)
    assert "unknown scorer 'questoin-rate'" in message
    assert "did you mean 'question-rate'?" in message
    assert "distinct-n, question-rate" in message
    assert info.value.suggestion == "question-rate"
    assert isinstance(info.value, LookupError)
    assert str(pickle.loads(pickle.dumps(info.value))) == message

    with pytest.raises(UnknownPluginError, match="did you") as info:
        registry.owner("scorers", "distinct_n")
    with pytest.raises(UnknownPluginError) as info:
        registry.get("scorers", "zzz")
    assert "did you mean" not in str(info.value)
    with pytest.raises(UnknownPluginError, match="no exporters are registered"):
        registry.get("exporters", "jsonl")
    with pytest.raises(ValueError, match="unknown component kind 'scorer'"):
        registry.names("scorer")


# --- safe hook calls ------------------------------------------------------------------

class Observer:
    def __init__(self, log: list, name: str, fail: bool = False) -> None:
        self.log, self.name, self.fail = log, name, fail

    @hookimpl
    def on_turn_end(self, conversation, turn):
        self.log.append(self.name)
        if self.fail:
            raise ValueError(f"{self.name} broke")
        return self.name


def test_call_hook_safely_attributes_exceptions_and_continues(pm):
    calls: list[str] = []
    pm.register(Observer(calls, "a"), name="a")
    pm.register(Observer(calls, "b", fail=True), name="b")
    pm.register(Observer(calls, "c"), name="c")
    try:
        conv, turn = conversation()
        errors: list[str] = []
        results = call_hook_safely(pm, "on_turn_end", errors, conversation=conv, turn=turn)
    finally:
        for name in "abc":
            pm.unregister(name=name)
    assert calls == ["c", "b", "a"]  # pluggy's order: the last registered first
    assert results == ["c", "a"]
    assert errors == ["plugin 'b' raised in on_turn_end: ValueError: b broke"]


def test_call_hook_safely_sees_registration_changes(pm):
    conv, turn = conversation()
    assert call_hook_safely(pm, "on_turn_end", [], conversation=conv, turn=turn) == []
    pm.register(Observer([], "late"), name="late")
    try:
        assert call_hook_safely(pm, "on_turn_end", [], conversation=conv, turn=turn) == ["late"]
    finally:
        pm.unregister(name="late")
    assert call_hook_safely(pm, "on_turn_end", [], conversation=conv, turn=turn) == []


def test_call_hook_safely_passes_only_the_arguments_an_impl_takes(pm):
    class Partial:
        @hookimpl
        def on_turn_end(self, turn):
            return turn.text

    pm.register(Partial(), name="partial")
    try:
        conv, turn = conversation()
        assert call_hook_safely(pm, "on_turn_end", [], conversation=conv, turn=turn) == ["hello?"]
    finally:
        pm.unregister(name="partial")


def test_unknown_hook_name_is_a_caller_error(pm):
    with pytest.raises(ValueError, match="no hook named 'on_turn_endd'"):
        call_hook_safely(pm, "on_turn_endd", [])


def test_lifecycle_hooks_all_run_through_safe_calls(pm):
    seen: list[str] = []

    class Lifecycle:
        @hookimpl
        def on_conversation_start(self, conversation):
            conversation.meta["started"] = True
            seen.append("on_conversation_start")

        @hookimpl
        def on_turn_end(self, conversation, turn):
            seen.append("on_turn_end")

        @hookimpl
        def should_stop(self, conversation, turn):
            seen.append("should_stop")
            return "done" if turn.text.endswith("?") else None

        @hookimpl
        def on_conversation_end(self, conversation):
            seen.append("on_conversation_end")

    pm.register(Lifecycle(), name="lifecycle")
    try:
        conv, turn = conversation()
        errors: list[str] = []
        call_hook_safely(pm, "on_conversation_start", errors, conversation=conv)
        call_hook_safely(pm, "on_turn_end", errors, conversation=conv, turn=turn)
        stop = first_result_safely(pm, "should_stop", errors, conversation=conv, turn=turn)
        call_hook_safely(pm, "on_conversation_end", errors, conversation=conv)
    finally:
        pm.unregister(name="lifecycle")
    assert stop == "done" and errors == [] and conv.meta == {"started": True}
    assert seen == ["on_conversation_start", "on_turn_end", "should_stop",
                    "on_conversation_end"]


class Stopper:
    def __init__(self, result, log: list | None = None, name: str = "") -> None:
        self.result, self.log, self.name = result, log, name

    @hookimpl
    def should_stop(self, conversation, turn):
        if self.log is not None:
            self.log.append(self.name)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def stop_with(pm, *plugins, errors=None):
    for i, plugin in enumerate(plugins):
        pm.register(plugin, name=f"s{i}")
    try:
        conv, turn = conversation()
        return first_result_safely(pm, "should_stop", errors if errors is not None else [],
                                   conversation=conv, turn=turn)
    finally:
        for i in range(len(plugins)):
            pm.unregister(name=f"s{i}")


def test_first_result_safely_order_and_short_circuit(pm):
    calls: list[str] = []
    result = stop_with(pm, Stopper("first-registered", calls, "s0"), Stopper(None, calls, "s1"),
                       Stopper("last-registered", calls, "s2"))
    assert result == "last-registered"
    assert calls == ["s2"]  # stops at the first non-None result
    assert stop_with(pm, Stopper(None), Stopper(None)) is None
    assert stop_with(pm) is None

    class Early:
        @hookimpl(tryfirst=True)
        def should_stop(self, conversation, turn):
            return "early"

    pm.register(Early(), name="early")
    try:
        assert stop_with(pm, Stopper("late")) == "early"
    finally:
        pm.unregister(name="early")


def test_first_result_safely_skips_raising_and_wrong_type(pm):
    errors: list[str] = []
    result = stop_with(pm, Stopper("fallback"), Stopper(7), Stopper(RuntimeError("bad")),
                       errors=errors)
    assert result == "fallback"
    assert errors == [
        "plugin 's2' raised in should_stop: RuntimeError: bad",
        "plugin 's1' returned int from should_stop, expected str or None: 7 (ignored)",
    ]


def test_describe_plugins_lists_hooks(pm):
    class Two:
        @hookimpl
        def should_stop(self, conversation, turn):
            return None

        @hookimpl
        def on_conversation_end(self, conversation):
            return None

    pm.register(Two(), name="two")
    try:
        [row] = describe_plugins(pm)
    finally:
        pm.unregister(name="two")
    assert row == {"name": "two", "distribution": None, "version": None,
                   "hooks": ["on_conversation_end", "should_stop"], "error": None}


def test_plain_pluggy_manager_works_uncached():
    from turnloom import hookspecs

    plain = pluggy.PluginManager("turnloom")
    plain.add_hookspecs(hookspecs)
    plain.register(Observer([], "x", fail=True), name="x")
    conv, turn = conversation()
    errors: list[str] = []
    assert call_hook_safely(plain, "on_turn_end", errors, conversation=conv, turn=turn) == []
    assert errors == ["plugin 'x' raised in on_turn_end: ValueError: x broke"]
    assert load_errors(plain) == [] and not isinstance(plain, PluginManager)
