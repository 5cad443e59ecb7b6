"""The plugin system: load plugins, collect their components, call their hooks safely.

Built-in plugins are the modules in `DEFAULT_PLUGINS`; third-party packages expose a
module (or any object with `@turnloom.hookimpl` functions) in the ``turnloom``
entry-point group. Environment variables:

- ``TURNLOOM_DISABLE_PLUGIN_AUTOLOAD=1``: load no third-party plugins.
- ``TURNLOOM_PLUGINS=a,b``: load only these, by entry-point or distribution name
  (set but empty: load none).
- ``TURNLOOM_TRACE_HOOKS=1``: trace every hook call to stderr.

A third-party plugin never takes a run down with it:

- one that fails to import or to validate is skipped and kept in `load_errors(pm)`;
- one whose registration hook raises is skipped as a whole (nothing it registered in that
  hook is kept); a bad name or factory skips that one registration; two plugins
  registering one name make that name an error when it is looked up, not before.
  All of these are kept in `Registry.errors`;
- one that raises in a lifecycle hook is reported by `call_hook_safely` /
  `first_result_safely` into the caller's error list, with its traceback in the run's
  error log (`turnloom.errorlog`), and the other plugins still run.

Lifecycle hooks (`LIFECYCLE_HOOKS`) of an installed plugin apply to a run only where its
scenario asks for them: it names the plugin in `plugins`, or uses one of its components
(`hook_scope`). Built-in plugins and plugins the caller registers itself always apply.

Each of these is logged once as a warning. With ``strict=True`` the first two raise
instead (for plugin authors and CI). Built-in plugins failing to load is always an error.

Hooks are called one implementation at a time, so that a failure names its plugin;
pluggy hook wrappers are therefore not supported on turnloom's hooks.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata
import logging
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import pluggy

from turnloom import errorlog, hookspecs

ENTRY_POINT_GROUP = "turnloom"
DEFAULT_PLUGINS = (
    "turnloom.builtin.backends",
    "turnloom.builtin.agents",
    "turnloom.builtin.replay_user",
    "turnloom.builtin.scorers",
    "turnloom.builtin.exporters",
    "turnloom.tools.plugin",
)
KINDS = ("agents", "environments", "samplers", "scorers", "judges", "backends", "exporters",
         "tool_parsers")

ENV_DISABLE_AUTOLOAD = "TURNLOOM_DISABLE_PLUGIN_AUTOLOAD"
ENV_ALLOW = "TURNLOOM_PLUGINS"
ENV_TRACE = "TURNLOOM_TRACE_HOOKS"

log = logging.getLogger(__name__)

LIFECYCLE_HOOKS = ("on_conversation_start", "on_turn_end", "should_stop",
                   "on_conversation_end")

__all__ = [
    "DEFAULT_PLUGINS", "ENTRY_POINT_GROUP", "KINDS", "LIFECYCLE_HOOKS", "HookScope",
    "PluginError", "hook_scope", "PluginLoadError",
    "PluginManager", "Registry", "UnknownPluginError", "call_hook_safely", "describe_plugins",
    "first_result_safely", "get_plugin_manager", "load_errors",
]


# --- errors ---------------------------------------------------------------------------

class PluginError(Exception):
    """A plugin is broken or misused; the message names the plugin."""


class PluginLoadError(PluginError):
    """A third-party plugin failed to import or validate, and was not loaded."""

    def __init__(self, entry_point: str, value: str, distribution: str | None,
                 version: str | None, exception: BaseException) -> None:
        self.entry_point = entry_point
        self.value = value
        self.distribution = distribution
        self.version = version
        self.exception = exception
        source = " ".join(filter(None, (distribution, version))) or "an unknown distribution"
        super().__init__(
            f"plugin {entry_point!r} (entry point {entry_point} = {value} of {source}) "
            f"failed to load: {type(exception).__name__}: {exception}")

    def __reduce__(self) -> Any:
        return (type(self), (self.entry_point, self.value, self.distribution, self.version,
                             self.exception))


class UnknownPluginError(PluginError, LookupError):
    """No component of this kind has this name; the message lists those that exist."""

    def __init__(self, kind: str, name: str, available: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.available = sorted(available)
        matches = difflib.get_close_matches(name, self.available, n=1)
        self.suggestion = matches[0] if matches else None
        what = _singular(kind)
        if not self.available:
            message = f"unknown {what} {name!r}: no {kind} are registered"
        else:
            hint = f" (did you mean {self.suggestion!r}?)" if self.suggestion else ""
            message = f"unknown {what} {name!r}{hint}; available {kind}: " + ", ".join(
                self.available)
        super().__init__(message)

    def __reduce__(self) -> Any:
        return (type(self), (self.kind, self.name, self.available))


def _singular(kind: str) -> str:
    return kind[:-1]


# --- the manager ----------------------------------------------------------------------

class _Impl(NamedTuple):
    plugin: str
    function: Callable[..., Any]
    argnames: tuple[str, ...]


class PluginManager(pluggy.PluginManager):
    """pluggy's manager with turnloom's hookspecs, the record of plugins that failed to
    load, the distribution of each entry-point plugin, and a cache of each hook's
    implementations in call order (invalidated on every (un)registration)."""

    def __init__(self, strict: bool = False) -> None:
        super().__init__(hookspecs.hookspec.project_name)
        self.strict = strict
        self.load_errors: list[PluginLoadError] = []
        self.distributions: dict[str, tuple[str | None, str | None]] = {}
        self._safe_impls: dict[str, tuple[_Impl, ...]] = {}
        self._hooktrace: Any = None
        self.add_hookspecs(hookspecs)

    def register(self, plugin: object, name: str | None = None) -> str | None:
        self._safe_impls.clear()
        plugin_name = super().register(plugin, name)
        if plugin_name is not None:
            problem = self._unsupported_impl(plugin)
            if problem:
                super().unregister(plugin)
                raise pluggy.PluginValidationError(plugin, f"plugin {plugin_name!r}: {problem}")
        return plugin_name

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        self._safe_impls.clear()
        return super().unregister(plugin, name)

    def enable_hook_tracing(self) -> None:
        # Look stderr up at each write so that redirections (and test capture) apply.
        self.trace.root.setwriter(lambda text: sys.stderr.write(text))
        self.enable_tracing()
        self._hooktrace = self.trace.root.get("hook")
        self._safe_impls.clear()

    def _unsupported_impl(self, plugin: object) -> str | None:
        # pluggy accepts these silently; a typo'd hook name would then never be called.
        for caller in self.get_hookcallers(plugin) or ():
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                if not caller.has_spec() and not impl.optionalhook:
                    return f"unknown hook {caller.name!r}"
                if impl.wrapper or impl.hookwrapper:
                    return (f"hook wrappers are not supported ({caller.name}): turnloom calls "
                            "implementations one at a time")
        return None


def load_errors(pm: pluggy.PluginManager) -> list[PluginLoadError]:
    """The third-party plugins that failed to load into `pm`, in discovery order."""
    return getattr(pm, "load_errors", [])


def get_plugin_manager(default_plugins: Iterable[str | object] = DEFAULT_PLUGINS,
                       autoload: bool | None = None, *, strict: bool = False) -> PluginManager:
    """A plugin manager with the built-in plugins and, unless autoload is off, the
    third-party ones installed under the ``turnloom`` entry-point group.

    `default_plugins` are module names (or plugin objects); any of them failing to load
    raises `PluginError`. `autoload=None` follows ``TURNLOOM_DISABLE_PLUGIN_AUTOLOAD``;
    True or False overrides it. `strict` raises on a broken third-party plugin instead
    of recording it, and is the default for `Registry.from_plugin_manager(pm)`.
    """
    pm = PluginManager(strict=strict)
    if _env_flag(ENV_TRACE):
        pm.enable_hook_tracing()
    for plugin in default_plugins:
        _register_builtin(pm, plugin)
    if autoload is None:
        autoload = not _env_flag(ENV_DISABLE_AUTOLOAD)
    if autoload:
        _load_entry_points(pm, _allow_list())
    return pm


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _allow_list() -> set[str] | None:
    raw = os.environ.get(ENV_ALLOW)
    if raw is None:
        return None
    return {_normalize(part) for part in raw.split(",") if part.strip()}


def _normalize(name: str) -> str:
    # Distribution names compare after PEP 503 normalisation; entry-point names alike.
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _register_builtin(pm: PluginManager, plugin: str | object) -> None:
    name = plugin if isinstance(plugin, str) else None
    try:
        module = importlib.import_module(name) if name is not None else plugin
    except Exception as exc:
        raise PluginError(f"built-in plugin module {name!r} failed to import: "
                          f"{type(exc).__name__}: {exc}") from exc
    try:
        pm.register(module, name=name)
    except (ValueError, pluggy.PluginValidationError) as exc:
        raise PluginError(f"built-in plugin {name or module!r} is invalid: {exc}") from exc


def _load_entry_points(pm: PluginManager, allow: set[str] | None) -> None:
    matched: set[str] = set()
    # Through the module attribute, so that tests can substitute fake distributions.
    for dist in list(importlib.metadata.distributions()):
        entry_points = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
        if not entry_points:
            continue
        dist_name, version = _dist_name(dist), getattr(dist, "version", None)
        for ep in entry_points:
            if allow is not None:
                keys = {_normalize(ep.name), _normalize(dist_name or "")} & allow
                if not keys:
                    continue
                matched |= keys
            if pm.is_blocked(ep.name):
                continue
            if pm.has_plugin(ep.name):
                first = pm.distributions.get(ep.name, (None, None))[0]
                if first != dist_name:  # the same distribution seen twice on sys.path is fine
                    _load_failed(pm, ep, dist_name, version, ValueError(
                        f"the name {ep.name!r} is already taken by {first or 'a built-in'}"))
                continue
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as exc:
                _load_failed(pm, ep, dist_name, version, exc)
                continue
            pm.distributions[ep.name] = (dist_name, version)
    if allow:
        for name in sorted(allow - matched):
            log.warning("%s names %r, but no installed turnloom plugin has that entry-point "
                        "or distribution name", ENV_ALLOW, name)


def _dist_name(dist: Any) -> str | None:
    try:
        return dist.metadata["name"]
    except Exception:
        return None


def _load_failed(pm: PluginManager, ep: Any, dist_name: str | None, version: str | None,
                 exc: Exception) -> None:
    error = PluginLoadError(ep.name, getattr(ep, "value", "?"), dist_name, version, exc)
    if pm.strict:
        raise error from exc
    pm.load_errors.append(error)
    log.warning("%s; skipped", error)


def describe_plugins(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """One row per plugin, loaded or failed, for ``turnloom plugins``: its name, its
    distribution and version (if any), the hooks it implements, and its load error."""
    distributions = getattr(pm, "distributions", {})
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked
            continue
        dist, version = distributions.get(name, (None, None))
        module = getattr(plugin, "__name__", "") if isinstance(plugin, types.ModuleType) else ""
        if dist is None and (module == "turnloom" or module.startswith("turnloom.")):
            dist, version = "turnloom", _installed_version("turnloom")
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
        rows.append({"name": name, "distribution": dist, "version": version, "hooks": hooks,
                     "error": None})
    for error in load_errors(pm):
        rows.append({"name": error.entry_point, "distribution": error.distribution,
                     "version": error.version, "hooks": [],
                     "error": f"{type(error.exception).__name__}: {error.exception}"})
    return rows


def _installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- components -----------------------------------------------------------------------

class Registry:
    """The components (agents, environments, samplers, scorers, backends, exporters)
    that plugins registered, each with the plugin that owns it."""

    def __init__(self) -> None:
        self._factories: dict[str, dict[str, Callable[..., Any]]] = {k: {} for k in KINDS}
        self._owners: dict[str, dict[str, str]] = {k: {} for k in KINDS}
        self._conflicts: dict[tuple[str, str], list[str]] = {}
        self.errors: list[str] = []

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager,
                            strict: bool | None = None) -> Registry:
        """Call every ``register_<kind>`` hook, one plugin at a time. `strict` (default:
        the manager's) raises `PluginError` on the first problem instead of recording it."""
        if strict is None:
            strict = getattr(pm, "strict", False)
        registry = cls()
        for kind in KINDS:
            registry._call_register_hook(pm, kind, strict)
        for error in registry.errors:
            log.warning("%s", error)
        return registry

    def _call_register_hook(self, pm: pluggy.PluginManager, kind: str, strict: bool) -> None:
        hook_name = f"register_{kind}"
        for impl in _impls(pm, hook_name):
            # Buffered, so that a hook that raises half-way leaves nothing behind.
            pending: list[tuple[str, Callable[..., Any]]] = []
            register = self._registrar(kind, impl.plugin, strict, pending)
            try:
                impl.function(*_arguments(impl, {"register": register}))
            except Exception as exc:
                if isinstance(exc, PluginError) and strict:
                    raise
                message = _raised(impl.plugin, hook_name, exc)
                if strict:
                    raise PluginError(message) from exc
                self.errors.append(f"{message}; none of its {kind} from that hook are used")
                continue
            for name, factory in pending:
                self._add(kind, name, factory, impl.plugin, strict)

    def _registrar(self, kind: str, plugin: str, strict: bool,
                   pending: list[tuple[str, Callable[..., Any]]]) -> hookspecs.Register:
        """The `register` callable handed to one plugin's registration hook."""

        def register(name: str, factory: Callable[..., Any]) -> None:
            problem = _invalid(name, factory)
            if problem is None:
                pending.append((name, factory))
                return
            message = f"plugin {plugin!r} registered an invalid {_singular(kind)}: {problem}"
            if strict:
                raise PluginError(message)
            self.errors.append(message)

        return register

    def _add(self, kind: str, name: str, factory: Callable[..., Any], plugin: str,
             strict: bool) -> None:
        owner = self._owners[kind].get(name)
        if owner is None:
            self._factories[kind][name] = factory
            self._owners[kind][name] = plugin
            return
        if owner == plugin:
            message = f"plugin {plugin!r} registered {_singular(kind)} {name!r} twice"
        else:
            owners = self._conflicts.setdefault((kind, name), [owner])
            owners.append(plugin)
            message = _conflict_message(kind, name, owners)
        if strict:
            raise PluginError(message)
        self.errors.append(message)

    def get(self, kind: str, name: str) -> Callable[..., Any]:
        """The factory registered as `name`; `UnknownPluginError` if there is none."""
        return self._factories[kind][self._check(kind, name)]

    def owner(self, kind: str, name: str) -> str:
        """The name of the plugin that registered `name`."""
        return self._owners[kind][self._check(kind, name)]

    def names(self, kind: str) -> list[str]:
        """The registered names of one kind, sorted."""
        return sorted(self._table(kind))

    def _table(self, kind: str) -> dict[str, Callable[..., Any]]:
        try:
            return self._factories[kind]
        except KeyError:
            raise ValueError(f"unknown component kind {kind!r}; kinds: "
                             + ", ".join(KINDS)) from None

    def _check(self, kind: str, name: str) -> str:
        table = self._table(kind)
        if name not in table:
            raise UnknownPluginError(kind, name, table)
        owners = self._conflicts.get((kind, name))
        if owners:
            raise PluginError(_conflict_message(kind, name, owners))
        return name


def _invalid(name: object, factory: object) -> str | None:
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        return (f"name {name!r} is not a non-empty string without surrounding spaces")
    if not callable(factory):
        return f"{name!r}: factory {factory!r} is not callable"
    return None


def _conflict_message(kind: str, name: str, owners: list[str]) -> str:
    plugins = " and ".join(repr(owner) for owner in owners)
    return (f"{_singular(kind)} {name!r} is registered by several plugins: {plugins}; "
            f"uninstall one, or choose with {ENV_ALLOW}")


# --- calling hooks --------------------------------------------------------------------

def call_hook_safely(pm: pluggy.PluginManager, hook_name: str, errors: list[str],
                     **kwargs: Any) -> list[Any]:
    """Call every implementation of `hook_name`, in pluggy's order, and return their
    non-None results. An implementation that raises is reported into `errors` as
    "plugin 'NAME' raised in HOOK: ExcType: message", and the rest still run."""
    impls = _impls(pm, hook_name)
    if not impls:
        return []
    results = []
    for impl in impls:
        args = _arguments(impl, kwargs)
        try:
            result = impl.function(*args)
        except Exception as exc:
            _report(errors, impl.plugin, hook_name, exc, kwargs)
            continue
        if result is not None:
            results.append(result)
    return results


def first_result_safely(pm: pluggy.PluginManager, hook_name: str, errors: list[str],
                        **kwargs: Any) -> Any:
    """Like `call_hook_safely` for a ``firstresult`` hook: the first non-None result of
    the type the hookspec declares. A result of another type is reported and ignored."""
    impls = _impls(pm, hook_name)
    if not impls:
        return None
    for impl in impls:
        args = _arguments(impl, kwargs)
        try:
            result = impl.function(*args)
        except Exception as exc:
            _report(errors, impl.plugin, hook_name, exc, kwargs)
            continue
        if result is None:
            continue
        expected = _result_types(getattr(pm.hook, hook_name).spec.function)
        if expected is None or isinstance(result, expected):
            return result
        wanted = " or ".join(t.__name__ for t in expected)
        errors.append(f"plugin {impl.plugin!r} returned {type(result).__name__} from "
                      f"{hook_name}, expected {wanted} or None: {result!r:.80} (ignored)")
    return None


def _arguments(impl: _Impl, kwargs: dict[str, Any]) -> list[Any]:
    # An implementation may take any subset of the spec's arguments, as in pluggy.
    return [kwargs[name] for name in impl.argnames]


def _raised(plugin: str, hook_name: str, exc: BaseException) -> str:
    return f"plugin {plugin!r} raised in {hook_name}: {type(exc).__name__}: {exc}"


def _report(errors: list[str], plugin: str, hook_name: str, exc: Exception,
            kwargs: dict[str, Any]) -> None:
    message = _raised(plugin, hook_name, exc)
    errorlog.record(message, exc, errorlog.conversation_of(kwargs.get("conversation")))
    errors.append(message)
    log.debug("plugin %r raised in %s", plugin, hook_name, exc_info=exc)


def _impls(pm: pluggy.PluginManager | HookScope, hook_name: str) -> tuple[_Impl, ...]:
    cache = getattr(pm, "_safe_impls", None)
    if cache is not None:
        impls = cache.get(hook_name)
        if impls is not None:
            return impls
    impls = _collect_impls(pm, hook_name)
    if cache is not None:
        cache[hook_name] = impls
    return impls


def _collect_impls(pm: pluggy.PluginManager | HookScope, hook_name: str) -> tuple[_Impl, ...]:
    caller = getattr(pm.hook, hook_name, None)
    if caller is None or not caller.has_spec():
        raise ValueError(f"no hook named {hook_name!r}")
    trace = getattr(pm, "_hooktrace", None)
    impls = []
    for impl in reversed(caller.get_hookimpls()):  # pluggy calls the last registered first
        if impl.wrapper or impl.hookwrapper:
            raise PluginError(f"plugin {impl.plugin_name!r}: hook wrappers are not "
                              f"supported ({hook_name})")
        function = impl.function
        if trace is not None:
            function = _traced(trace, hook_name, impl.plugin_name, impl.argnames, function)
        impls.append(_Impl(impl.plugin_name, function, tuple(impl.argnames)))
    return tuple(impls)


def _traced(trace: Any, hook_name: str, plugin: str, argnames: Iterable[str],
            function: Callable[..., Any]) -> Callable[..., Any]:
    # The same lines as pluggy's own tracing, plus the plugin's name.
    argnames = tuple(argnames)

    def traced(*args: Any) -> Any:
        trace.root.indent += 1
        try:
            trace(hook_name, f"[{plugin}]", dict(zip(argnames, args)))
            result = function(*args)
            trace("finish", hook_name, f"[{plugin}]", "-->", result)
            return result
        finally:
            trace.root.indent -= 1

    return traced


@functools.cache
def _result_types(spec_function: Callable[..., Any]) -> tuple[type, ...] | None:
    """The classes a hook's non-None result must be an instance of, from its spec's
    return annotation; None where that annotation cannot be checked with isinstance."""
    annotation = spec_function.__annotations__.get("return")
    if isinstance(annotation, str):  # postponed annotations: evaluate as typing would
        try:
            annotation = eval(annotation, spec_function.__globals__)  # noqa: S307
        except Exception:
            return None
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
    else:
        members = (annotation,)
    classes = []
    for member in members:
        if member is None or member is type(None):
            continue
        member = typing.get_origin(member) or member
        if not isinstance(member, type):
            return None
        classes.append(member)
    return tuple(classes) or None


# --- which plugins' lifecycle hooks apply to a run -------------------------------------

class HookScope:
    """A plugin manager as one run sees it: the lifecycle hooks of `excluded` plugins are
    left out (through pluggy's `subset_hook_caller`); everything else is the manager's.
    `hooks` maps each lifecycle hook to the plugins whose implementation applies, in
    call order, and `ignored` each installed plugin left out to the hooks it has."""

    def __init__(self, pm: pluggy.PluginManager, excluded: Iterable[str]) -> None:
        self._pm = pm
        self.excluded = frozenset(excluded)
        plugins = [pm.get_plugin(name) for name in sorted(self.excluded)]
        removed = [p for p in plugins if p is not None]
        self.hook = _ScopedRelay(pm, {name: pm.subset_hook_caller(name, removed)
                                      for name in LIFECYCLE_HOOKS})
        self._safe_impls: dict[str, tuple[_Impl, ...]] = {}
        self._hooktrace = getattr(pm, "_hooktrace", None)
        self.hooks = {name: [impl.plugin for impl in _impls(self, name)]
                      for name in LIFECYCLE_HOOKS}
        implementers = {h: {impl.plugin_name for impl in getattr(pm.hook, h).get_hookimpls()}
                        for h in LIFECYCLE_HOOKS}
        ignored = {name: [h for h in LIFECYCLE_HOOKS if name in implementers[h]]
                   for name in sorted(self.excluded)}
        self.ignored = {name: hooks for name, hooks in ignored.items() if hooks}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pm, name)

    def describe(self) -> dict[str, Any]:
        """For the manifest: the hooks that apply, by plugin, and those left out."""
        return {"applied": {k: v for k, v in self.hooks.items() if v},
                "not_applied": self.ignored}


class _ScopedRelay:
    """`pm.hook` with the lifecycle hooks replaced by their subset callers."""

    def __init__(self, pm: pluggy.PluginManager, scoped: dict[str, Any]) -> None:
        self._pm = pm
        self._scoped = scoped

    def __getattr__(self, name: str) -> Any:
        scoped = self._scoped.get(name)
        return scoped if scoped is not None else getattr(self._pm.hook, name)


def hook_scope(pm: pluggy.PluginManager, registry: Registry, scenario: Any) -> HookScope:
    """The plugin manager view for a run of `scenario`: an installed (entry-point) plugin's
    lifecycle hooks apply only if the scenario lists it in `plugins` or uses a component
    it registered. A name in `plugins` that no loaded plugin has is a ScenarioError."""
    from turnloom.config import error_at

    installed = set(getattr(pm, "distributions", {}))
    loaded = {name for name, plugin in pm.list_name_plugin() if plugin is not None}
    for j, name in enumerate(scenario.plugins):
        if name not in loaded:
            candidates = sorted(installed) or sorted(loaded)
            close = difflib.get_close_matches(name, candidates, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise error_at(scenario, ("plugins", j), f"no plugin named {name!r} is loaded{hint} "
                           f"(installed: {', '.join(candidates) or 'none'})")
    wanted = set(scenario.plugins) | used_plugins(registry, scenario)
    return HookScope(pm, installed - wanted)


def used_plugins(registry: Registry, scenario: Any) -> set[str]:
    """The plugins owning a component `scenario` names (agents, environments, samplers,
    scorers, judges, backends, exporters)."""
    agents = set(registry.names("agents"))
    uses: list[tuple[str, str]] = []
    for p in scenario.participants:
        uses.append(("agents" if p.agent in agents else "environments", p.agent))
        if p.sampler is not None:
            uses.append(("samplers", p.sampler))
    uses += [("backends", b.type) for b in scenario.backends.values()]
    uses += [("judges", j.judge) for j in scenario.judges]
    uses += [("scorers", s.name) for s in scenario.scorers]
    uses += [("exporters", e.name) for e in scenario.exporters]
    owners = set()
    for kind, name in uses:
        try:
            owners.add(registry.owner(kind, name))
        except PluginError:
            continue  # reported by the scenario's validation
    return owners
