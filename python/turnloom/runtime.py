"""Live objects of a run, built from a scenario and the plugin registry:
backends with their chat formats and schedulers, participants with their
agents or environments, judges, scorers and exporters.

Every component may check its references to other participants: one with a
``check_participants(names)`` method is called with the scenario's participant names
once built, and raises ValueError (optionally with a ``setting`` attribute naming the
offending setting) for a name that is not among them. `turnloom validate` builds every
component through these same functions (`build_all`), so what fails at run fails there.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from turnloom import errorlog
from turnloom.agents import Agent, Environment, Sampler
from turnloom.backends.base import Backend, BackendInfo, SamplingParams
from turnloom.config import (
    JudgeSpec,
    ParticipantSpec,
    Scenario,
    ScenarioError,
    error_at,
)
from turnloom.judging import Judge
from turnloom.placeholders import unknown_placeholders
from turnloom.scoring import CheckedScorer, checked_score
from turnloom.tokenizer import ChatFormat, chatml_bytes

log = logging.getLogger(__name__)


class Usage:
    """Token, latency and request counters of one participant or backend."""

    __slots__ = ("requests", "turns", "prompt_tokens", "completion_tokens", "cached_tokens",
                 "latency_s", "errors", "retries")

    def __init__(self) -> None:
        self.requests = self.turns = self.prompt_tokens = self.completion_tokens = 0
        self.cached_tokens = self.errors = self.retries = 0
        self.latency_s = 0.0

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__slots__}
        d["latency_s"] = round(self.latency_s, 6)
        d["mean_latency_s"] = round(self.latency_s / self.requests, 6) if self.requests else 0.0
        d["cache_hit_rate"] = (round(self.cached_tokens / self.prompt_tokens, 6)
                               if self.prompt_tokens else 0.0)
        return d


class BackendRT:
    """A backend as the engine drives it."""

    __slots__ = ("name", "spec", "backend", "fmt", "plugin", "info", "sched", "batch_size",
                 "max_inflight", "max_batch_tokens", "inflight", "cache", "reports_cached",
                 "tree_size", "usage", "prompt_check")

    def __init__(self, name: str, spec: Any, backend: Backend, fmt: ChatFormat,
                 plugin: str) -> None:
        self.name = name
        self.spec = spec
        self.backend = backend
        self.fmt = fmt
        self.plugin = plugin
        self.info: BackendInfo | None = None
        self.sched: Any = None
        self.batch_size = 1
        self.max_inflight = 1
        self.max_batch_tokens = 1 << 40
        self.inflight = 0
        self.cache: Any = None  # RadixCache model, when the backend has a cache capacity
        self.reports_cached = False  # seen a result with cached_tokens > 0
        self.tree_size: Any = None  # TreeSizeEstimator, when the backend has a cache capacity
        self.usage = Usage()
        # A chat API's prompt-token counts against turnloom's own render of the same
        # view (message backends with a known tokenizer): a mismatch means the server
        # renders the conversation differently from the model's template.
        self.prompt_check: PromptCheck | None = (
            PromptCheck() if getattr(backend, "takes", "tokens") == "messages" else None)


class PromptCheck:
    """Counts of compared and mismatched prompt-token counts, with a few examples."""

    __slots__ = ("compared", "mismatched", "examples")

    def __init__(self) -> None:
        self.compared = self.mismatched = 0
        self.examples: list[dict[str, int]] = []

    def observe(self, local: int, server: int) -> bool:
        """Record one request; True when the counts differ."""
        self.compared += 1
        if local == server:
            return False
        self.mismatched += 1
        if len(self.examples) < 5:
            self.examples.append({"local": local, "server": server})
        return True

    def as_dict(self) -> dict[str, Any]:
        return {"compared": self.compared, "mismatched": self.mismatched,
                "examples": self.examples}


class ParticipantRT:
    """A participant as the engine drives it. Its index is also its view id."""

    __slots__ = ("index", "name", "spec", "obj", "plugin", "is_agent", "role", "backend", "fmt",
                 "prefix", "params", "sampler", "usage")

    obj: Any

    def __init__(self, index: int, spec: ParticipantSpec, obj: Any, plugin: str,
                 is_agent: bool) -> None:
        self.index = index
        self.name = spec.name
        self.spec = spec
        self.obj = obj
        self.plugin = plugin
        self.is_agent = is_agent
        self.role = spec.role or getattr(obj, "role", None) or ("assistant" if is_agent else "user")
        self.backend: BackendRT | None = None
        self.fmt: Any = None  # the backend's ChatFormat, for agents
        self.prefix: list[int] = []
        self.params: SamplingParams = spec.sampling
        self.sampler: Sampler | None = None
        self.usage = Usage()


class JudgeRT:
    """A judge as the engine drives it: the plugin object and the backend it asks."""

    __slots__ = ("index", "name", "spec", "obj", "plugin", "backend", "prefix", "params", "usage")

    def __init__(self, index: int, spec: JudgeSpec, obj: Judge, plugin: str,
                 backend: BackendRT) -> None:
        self.index = index
        self.name = spec.name
        self.spec = spec
        self.obj = obj
        self.plugin = plugin
        self.backend = backend
        self.prefix = list(backend.fmt.generation_prefix("assistant"))
        self.params: SamplingParams = spec.sampling
        self.usage = Usage()


def load_chat_format(spec: str) -> ChatFormat:
    if spec == "bytes":  # no model files, and no need to import the model machinery
        return chatml_bytes()
    from turnloom.models import load_chat_format as load

    return load(spec)


def build_backends(scenario: Scenario, registry: Any) -> dict[str, BackendRT]:
    """Construct the backends that some participant speaks through."""
    speakers: list[ParticipantSpec | JudgeSpec] = [*scenario.participants, *scenario.judges]
    used = {scenario.backend_of(p) for p in speakers} - {None}
    out: dict[str, BackendRT] = {}
    for name, spec in scenario.backends.items():
        if name not in used:
            continue
        factory = registry.get("backends", spec.type)
        try:
            backend = factory(dict(spec.settings))
        except Exception as exc:
            # A backend may name the offending setting, for the error's line.
            setting = getattr(exc, "setting", None)
            path = ("backends", name) + ((setting,) if isinstance(setting, str) else ())
            raise error_at(scenario, path,
                           f"backend {spec.type!r} rejected its settings: {_brief(exc)}") from exc
        if not isinstance(backend, Backend):
            raise error_at(scenario, ("backends", name, "type"),
                           f"backend plugin {spec.type!r} built {type(backend).__name__}, "
                           "not a turnloom Backend")
        own = getattr(backend, "chat_format", None) if spec.tokenizer is None else None
        if own is not None:
            fmt: ChatFormat = own
        else:
            if spec.tokenizer is None and backend.reads_token_ids:
                # A model server reads these ids with its own vocabulary: byte ids are
                # garbage to it, and nothing downstream would say so.
                log.warning("backend %r (%s) names no `tokenizer` and has no chat format of its "
                            "own: prompts go out as byte-level ChatML ids; set `tokenizer` to "
                            "the served model's spec unless that is intended", name, spec.type)
            try:
                fmt = load_chat_format(spec.tokenizer or "bytes")
            except Exception as exc:
                raise error_at(scenario, ("backends", name, "tokenizer"),
                               f"cannot load chat format {spec.tokenizer!r}: {_brief(exc)}") from exc
        if spec.chat_template_kwargs:
            fmt = _with_template_kwargs(scenario, name, backend, fmt, spec.chat_template_kwargs)
        if fmt is not own:  # the backend renders or decodes with the format the engine uses
            use = getattr(backend, "use_chat_format", None)
            if callable(use):
                use(fmt)
        out[name] = BackendRT(name, spec, backend, fmt, registry.owner("backends", spec.type))
    return out


def _with_template_kwargs(scenario: Scenario, name: str, backend: Backend, fmt: ChatFormat,
                          kwargs: dict[str, Any]) -> ChatFormat:
    """The chat format rendering with `kwargs`, and a backend that can pass them on
    (a chat API, whose server renders the template) told of them."""
    where = ("backends", name, "chat_template_kwargs")
    with_variables = getattr(fmt, "with_variables", None)
    if not callable(with_variables):
        raise error_at(scenario, where, f"the chat format of backend {name!r} is not a chat "
                                        "template: it takes no template variables")
    try:
        fmt = with_variables(kwargs)
    except ValueError as exc:
        raise error_at(scenario, where, str(exc)) from exc
    pass_on = getattr(backend, "use_chat_template_kwargs", None)
    if callable(pass_on):
        pass_on(dict(kwargs))
    elif backend.takes == "messages":
        raise error_at(scenario, where, f"backend {name!r} renders no template itself and "
                                        "cannot pass chat_template_kwargs to its server")
    return fmt


def build_participants(scenario: Scenario, registry: Any,
                       backends: dict[str, BackendRT]) -> list[ParticipantRT]:
    agents = set(registry.names("agents"))
    out = []
    for i, spec in enumerate(scenario.participants):
        is_agent = spec.agent in agents
        kind = "agents" if is_agent else "environments"
        settings = dict(spec.settings)
        if spec.system_prompt is not None:
            if "system_prompt" in settings:
                raise error_at(scenario, ("participants", i, "settings", "system_prompt"),
                               "system_prompt is given twice (also on the participant)")
            settings["system_prompt"] = spec.system_prompt
        if registry.owner(kind, spec.agent).startswith("turnloom.builtin."):
            _check_placeholders(scenario, i)
        try:
            obj = registry.get(kind, spec.agent)(settings)
        except Exception as exc:
            raise error_at(scenario, _setting_path(("participants", i, "settings"), exc),
                           f"{spec.agent!r} rejected its settings: {_brief(exc)}") from exc
        _check_references(scenario, ("participants", i, "settings"), spec.agent, obj)
        protocol: type = Agent if is_agent else Environment
        if not isinstance(obj, protocol):
            raise error_at(scenario, ("participants", i, "agent"),
                           f"plugin {spec.agent!r} built {type(obj).__name__}, which lacks the "
                           f"{protocol.__name__} methods")
        p = ParticipantRT(i, spec, obj, registry.owner(kind, spec.agent), is_agent)
        if is_agent:
            be = backends[scenario.backend_of(spec)]  # type: ignore[index]
            p.backend = be
            p.fmt = be.fmt
            p.prefix = list(be.fmt.generation_prefix(p.obj.role_in_view(spec.name, spec.name)))
        if spec.sampler is not None:
            try:
                p.sampler = registry.get("samplers", spec.sampler)(dict(spec.sampler_settings))
            except Exception as exc:
                raise error_at(scenario, _setting_path(("participants", i, "sampler_settings"), exc),
                               f"sampler {spec.sampler!r} rejected its settings: {_brief(exc)}") from exc
            _check_references(scenario, ("participants", i, "sampler_settings"), spec.sampler,
                              p.sampler)
        out.append(p)
    return out


def build_judges(scenario: Scenario, registry: Any,
                 backends: dict[str, BackendRT]) -> list[JudgeRT]:
    out = []
    for j, spec in enumerate(scenario.judges):
        try:
            obj = registry.get("judges", spec.judge)(dict(spec.settings))
        except ScenarioError:
            raise
        except Exception as exc:
            raise error_at(scenario, _setting_path(("judges", j, "settings"), exc),
                           f"judge {spec.judge!r} rejected its settings: {_brief(exc)}") from exc
        if not isinstance(obj, Judge):
            raise error_at(scenario, ("judges", j, "judge"),
                           f"plugin {spec.judge!r} built {type(obj).__name__}, which lacks the "
                           "Judge methods (calls, parse, score)")
        _check_references(scenario, ("judges", j, "settings"), spec.judge, obj)
        be = backends[scenario.backend_of(spec)]  # type: ignore[index]
        out.append(JudgeRT(j, spec, CheckedJudge(spec.name, obj),
                           registry.owner("judges", spec.judge), be))
    return out


def build_plugins(scenario: Scenario, registry: Any, kind: str,
                  specs: Sequence[Any]) -> list[tuple[str, Any]]:
    out = []
    for j, spec in enumerate(specs):
        try:
            obj = registry.get(kind, spec.name)(dict(spec.settings))
        except ScenarioError:
            raise
        except Exception as exc:
            raise error_at(scenario, _setting_path((kind, j, "settings"), exc),
                           f"{kind[:-1]} {spec.name!r} rejected its settings: {_brief(exc)}") from exc
        _check_references(scenario, (kind, j, "settings"), spec.name, obj)
        out.append((spec.name, CheckedScorer(spec.name, obj) if kind == "scorers" else obj))
    return out


def build_all(scenario: Scenario, registry: Any) -> dict[str, int]:
    """Build every component of `scenario` as a run would, without starting backends
    (no model is loaded, no server contacted); raises the run's ScenarioError. Returns
    how many of each kind were built."""
    backends = build_backends(scenario, registry)
    participants = build_participants(scenario, registry, backends)
    judges = build_judges(scenario, registry, backends)
    scorers = build_plugins(scenario, registry, "scorers", scenario.scorers)
    exporters = build_plugins(scenario, registry, "exporters", scenario.exporters)
    return {"backends": len(backends), "participants": len(participants),
            "judges": len(judges), "scorers": len(scorers), "exporters": len(exporters)}


class CheckedJudge:
    """A judge whose scores pass `checked_score` (strings and lists of strings kept as
    labels) and whose faults go to the run's error log; everything else is the judge's
    own."""

    def __init__(self, name: str, judge: Judge) -> None:
        self._name = name
        self._judge = judge

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._judge, attr)

    def calls(self, conversation: Any) -> Any:
        return self._guard("calls", self._judge.calls, conversation)

    def parse(self, call: Any, text: str) -> Any:
        return self._guard("parse", self._judge.parse, call, text)

    def score(self, conversation: Any, verdicts: Any) -> Any:
        return self._guard("score", lambda c, v: checked_score(
            self._name, self._judge.score(c, v), labels=True), conversation, verdicts)

    def _guard(self, method: str, call: Any, conversation: Any, *args: Any) -> Any:
        try:
            return call(conversation, *args)
        except Exception as exc:
            state = conversation if hasattr(conversation, "conversation_id") else None
            errorlog.record(f"judge {self._name!r} failed in {method}: "
                            f"{type(exc).__name__}: {exc}", exc, errorlog.conversation_of(state))
            raise


def _check_placeholders(scenario: Scenario, i: int) -> None:
    """Refuse unknown placeholders in a built-in agent's system prompt, at the line of
    the placeholder."""
    spec = scenario.participants[i]
    for path, template in ((("participants", i, "system_prompt"), spec.system_prompt),
                           (("participants", i, "settings", "system_prompt"),
                            spec.settings.get("system_prompt"))):
        if not isinstance(template, str):
            continue
        bad = unknown_placeholders(template)
        if bad:
            raise error_at(scenario, path, bad[0].message, line_offset=bad[0].line)


def _check_references(scenario: Scenario, path: tuple[Any, ...], name: str, obj: Any) -> None:
    check = getattr(obj, "check_participants", None)
    if not callable(check):
        return
    try:
        check(tuple(scenario.participant_names()))
    except Exception as exc:
        raise error_at(scenario, _setting_path(path, exc),
                       f"{name!r}: {_brief(exc)}") from exc


def _setting_path(path: tuple[Any, ...], exc: BaseException) -> tuple[Any, ...]:
    # A component may name the offending setting, for the error's line.
    setting = getattr(exc, "setting", None)
    return path + ((setting,) if isinstance(setting, str) else ())


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
