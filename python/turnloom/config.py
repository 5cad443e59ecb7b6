"""Scenario files: TOML decoded into frozen msgspec Structs, with errors that name the place.

A scenario says who talks (participants and the backends they speak through),
in which order, for how long, how conversations branch, and how they are scored
and exported. It can be read from a TOML file (`Scenario.from_toml`), built from
a dict (`Scenario.from_dict`) or constructed directly (`Scenario(...)`).

Every problem becomes a `ScenarioError` that names the file, the line (when the
scenario came from a file), the field path (``participants[1].sampling.temprature``)
and what would have been allowed, with the closest name suggested.
"""

from __future__ import annotations

import difflib
import re
import tomllib
import types
import typing
import weakref
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Sequence

import msgspec

from turnloom.backends.base import SamplingParams

_STRUCT = dict(frozen=True, kw_only=True, forbid_unknown_fields=True)

Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Name = Annotated[str, msgspec.Meta(min_length=1)]


class ScenarioError(ValueError):
    """A scenario is malformed or inconsistent. `str(err)` is one line:
    ``FILE:LINE: PATH: what is wrong (what is allowed)``."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 path: str | None = None) -> None:
        self.reason = message
        self.file = file
        self.line = line
        self.path = path
        super().__init__(message)

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        field = f"{self.path}: " if self.path else ""
        return f"{where}{field}{self.reason}"


# -- the scenario --------------------------------------------------------------------


class RunSettings(msgspec.Struct, **_STRUCT):
    """How much to simulate, with which seed, where to write it."""

    name: Name = "run"
    conversations: Positive = 1
    first_index: NonNegative = 0  # index of the first conversation (a shard of a larger run)
    # "ray": shards on a Ray cluster; "processes": shards in this machine's processes ([executor])
    executor: Literal["local", "ray", "processes"] = "local"
    # Messages per conversation, system prompts excluded; tool calls and tool results
    # are messages too, so a tool study sets it with its tool steps in mind.
    max_turns: Positive = 8
    # Tool-calling messages an agent may send in a row before it must reply in text
    # (tau-bench's step limit); past it the conversation stops with "max_tool_steps".
    max_tool_steps: Positive = 10
    # Tool calls per conversation (None: no limit); past it: stop "max_tool_calls".
    max_tool_calls: Positive | None = None
    seed: NonNegative = 0
    out: str | None = None  # run directory (the CLI's --out wins)
    batch_size: Positive | None = None  # requests per backend call (default: the backend's max_batch)
    # backend calls outstanding per backend (default: the backend's own, else 2)
    max_inflight: Positive | None = None
    max_active: Positive | None = None  # conversation trees in memory at once (None: derived)
    max_retries: NonNegative = 3  # per request whose result has finish_reason "error"
    retry_backoff_s: Annotated[float, msgspec.Meta(ge=0)] = 0.5
    wal_sync_s: Annotated[float, msgspec.Meta(ge=0)] = 0.2  # fsync the log at most this often
    # Conversations ended by an error are reported apart; with this they also count in
    # the score means of summary.json.
    score_failed: bool = False
    # Failed conversations a run may have and still succeed: a count, or "N%" of the
    # conversation records (the CLI's --max-failures wins).
    max_failures: NonNegative | str = 0


class BackendSpec(msgspec.Struct, **_STRUCT):
    """``[backends.NAME]``: `type` is a registered backend; keys that are not
    engine settings are passed to the backend's factory as `settings`."""

    type: Name
    tokenizer: str | None = None  # chat-format spec (default: the backend's own, else "bytes")
    max_inflight: Positive | None = None
    batch_size: Positive | None = None
    max_batch_tokens: Positive | None = None
    # Extra chat-template variables, as apply_chat_template's keyword arguments
    # (enable_thinking = false); a chat API gets them as `chat_template_kwargs`.
    chat_template_kwargs: dict[str, Any] = {}
    settings: dict[str, Any] = {}


class ParticipantSpec(msgspec.Struct, **_STRUCT):
    """``[[participants]]``: one party of every conversation."""

    name: Name
    agent: Name  # an agents or environments plugin name
    backend: str | None = None  # required for agents when several backends exist
    role: str | None = None  # canonical role of its messages (default: the agent's own)
    system_prompt: str | None = None  # may hold {profile} and {profile.FIELD}
    sampler: str | None = None
    sampler_settings: dict[str, Any] = {}
    sampling: SamplingParams = SamplingParams()
    settings: dict[str, Any] = {}


class TurnsSpec(msgspec.Struct, **_STRUCT):
    """Who speaks when: `order` is a round-robin of participant names
    (default: the participants as listed); `opener` rotates it to start there."""

    order: tuple[str, ...] = ()
    opener: str | None = None


class StopSpec(msgspec.Struct, **_STRUCT):
    """Extra stop conditions (besides run.max_turns and agents' own stops)."""

    phrases: tuple[str, ...] = ()  # a message containing one ends the conversation
    case_sensitive: bool = False
    max_tokens: Positive | None = None  # a view's prompt would exceed this many tokens


class BranchSpec(msgspec.Struct, **_STRUCT):
    """``[[branches]]``: at message `at_turn` the speaker answers `n` times;
    each answer continues as its own branch conversation (history shared).

    With `to_turn`, each conversation forks at one turn drawn (seeded) from
    at_turn, at_turn + k, ... <= to_turn, k being the number of speakers, so
    the same participant speaks at every candidate turn (REFUEL-style resets)."""

    at_turn: NonNegative
    n: Annotated[int, msgspec.Meta(ge=2)] = 2
    to_turn: NonNegative | None = None


class PluginSpec(msgspec.Struct, **_STRUCT):
    """A scorer or exporter by plugin name, with its settings."""

    name: Name
    settings: dict[str, Any] = {}


class ExecutorSpec(msgspec.Struct, **_STRUCT):
    """``[executor]``: how a run with ``run.executor = "ray"`` or ``"processes"`` is
    sharded (see `turnloom.distributed`; the CLI's --ray/--processes/--shards flags win)."""

    address: str | None = None  # Ray cluster; None: the connected one, RAY_ADDRESS, else local
    # Contiguous blocks of conversations, one Ray actor or process each (None: 2 on
    # Ray, one per CPU in processes).
    shards: Positive | None = None
    max_retries: NonNegative = 3  # restarts of a shard whose actor or process died
    actor_options: dict[str, Any] = {}  # Ray options of each shard's actor
    urls: dict[str, list[str]] = {}  # backend name -> replica urls dealt out between shards
    poll_s: Annotated[float, msgspec.Meta(gt=0)] = 0.5


class JudgeSpec(msgspec.Struct, **_STRUCT):
    """An LLM judge: a judges plugin asking a model about each finished conversation."""

    name: Name  # the score key
    judge: Name  # a judges plugin name
    backend: str | None = None  # required when several backends exist
    sampling: SamplingParams = SamplingParams(max_new_tokens=128, temperature=0.0)
    settings: dict[str, Any] = {}


class Scenario(msgspec.Struct, weakref=True, **_STRUCT):
    """A whole simulation: the root of a scenario file."""

    participants: tuple[ParticipantSpec, ...]
    run: RunSettings = RunSettings()
    backends: dict[str, BackendSpec] = {}
    turns: TurnsSpec = TurnsSpec()
    stop: StopSpec = StopSpec()
    branches: tuple[BranchSpec, ...] = ()
    scorers: tuple[PluginSpec, ...] = ()
    judges: tuple[JudgeSpec, ...] = ()
    executor: ExecutorSpec = ExecutorSpec()
    exporters: tuple[PluginSpec, ...] = (PluginSpec(name="openai-jsonl"),)
    # Installed plugins whose lifecycle hooks (on_conversation_start, on_turn_end,
    # should_stop, on_conversation_end) apply to this scenario, besides those whose
    # components it uses (`turnloom.plugins.hook_scope`).
    plugins: tuple[Name, ...] = ()

    # -- construction -------------------------------------------------------------

    @classmethod
    def from_toml(cls, path: str | Path) -> Scenario:
        """Read and check a scenario file (plugin names are checked by `validate`)."""
        path = Path(path)
        try:
            data_bytes = path.read_bytes()
        except OSError as exc:
            raise ScenarioError(f"cannot read scenario: {exc.strerror or exc}", file=str(path)) from None
        try:
            # Editors on Windows may save a byte-order mark; TOML has no place for it.
            text = data_bytes.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as exc:
            line = data_bytes[:exc.start].count(b"\n") + 1
            raise ScenarioError(f"not valid UTF-8 (byte 0x{data_bytes[exc.start]:02x} at offset "
                                f"{exc.start}); save the file as UTF-8", file=str(path),
                                line=line) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            msg = str(exc)
            m = re.search(r"\(at line (\d+), column \d+\)", msg)
            toml_line = int(m.group(1)) if m else None
            reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg) or "invalid TOML"
            raise ScenarioError(f"invalid TOML: {reason}", file=str(path), line=toml_line) from None
        return cls.from_dict(data, _source=(str(path), text))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, _source: tuple[str, str] | None = None) -> Scenario:
        """Decode and check a scenario given as plain data (e.g. parsed TOML)."""
        source = _Source(*_source) if _source else _Source(None, None)
        if not isinstance(data, dict):
            raise ScenarioError("a scenario must be a table/dict", file=source.file)
        data = _normalize(data, source)
        backends = data.get("backends")
        if isinstance(backends, dict):
            # Converted one by one: msgspec reports dict keys as `[...]`.
            converted = {}
            for name, table in backends.items():
                try:
                    converted[name] = msgspec.convert(table, BackendSpec)
                except msgspec.ValidationError as exc:
                    raise _from_validation(exc, source, prefix=("backends", name)) from None
            data["backends"] = converted
        try:
            scenario = msgspec.convert(data, cls)
        except msgspec.ValidationError as exc:
            raise _from_validation(exc, source) from None
        if source.file is not None:
            _SOURCES[id(scenario)] = source
            weakref.finalize(scenario, _SOURCES.pop, id(scenario), None)
        _check_static(scenario, source)
        return scenario

    def to_dict(self) -> dict[str, Any]:
        """Plain data that `from_dict` turns back into an equal scenario."""
        return msgspec.to_builtins(self)

    def validate(self, registry: Any | None = None) -> Scenario:
        """Check types and cross-references; with a plugin `registry`, also that every
        plugin name exists. Returns the scenario."""
        source = _SOURCES.get(id(self), _Source(None, None))
        # A scenario built in Python has had no type checks yet: round-trip it.
        try:
            msgspec.convert(msgspec.to_builtins(self), Scenario)
        except msgspec.ValidationError as exc:
            raise _from_validation(exc, source) from None
        _check_static(self, source)
        if registry is not None:
            _check_plugins(self, registry, source)
        return self

    # -- derived views ------------------------------------------------------------

    def participant_names(self) -> list[str]:
        return [p.name for p in self.participants]

    def turn_order(self) -> list[int]:
        """Participant indices in speaking order (one round)."""
        names = self.participant_names()
        order = [names.index(n) for n in self.turns.order] if self.turns.order else list(range(len(names)))
        if self.turns.opener is not None:
            first = order.index(names.index(self.turns.opener))
            order = order[first:] + order[:first]
        return order

    def backend_of(self, participant: ParticipantSpec | JudgeSpec) -> str | None:
        """The backend a participant or judge speaks through (the only one, when unnamed)."""
        if participant.backend is not None:
            return participant.backend
        if len(self.backends) == 1:
            return next(iter(self.backends))
        return None

    def with_run(self, **changes: Any) -> Scenario:
        """A copy with some run settings replaced (e.g. conversations, seed, out)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return self
        scenario = msgspec.structs.replace(self, run=msgspec.structs.replace(self.run, **changes))
        source = _SOURCES.get(id(self))
        if source is not None:
            _SOURCES[id(scenario)] = source
            weakref.finalize(scenario, _SOURCES.pop, id(scenario), None)
        return scenario.validate()


def error_at(scenario: Scenario, path: Sequence[Any], message: str,
             line_offset: int = 0) -> ScenarioError:
    """A ScenarioError about `path` of `scenario`, with its file and line when known;
    `line_offset` counts lines into the value (a multi-line string)."""
    source = _SOURCES.get(id(scenario), _Source(None, None))
    line = source.line(path)
    if line is not None and line_offset:
        line += line_offset + source.starts_below(line)
    return ScenarioError(message, file=source.file, line=line, path=_render(path))


class FailureBudget:
    """How many failed conversations a run may have and still succeed: `count`, or
    `percent` of its conversation records."""

    def __init__(self, count: int | None = None, percent: float | None = None) -> None:
        self.count = count
        self.percent = percent

    @classmethod
    def parse(cls, value: int | str) -> FailureBudget:
        """A count (``2``, ``"2"``) or a percentage (``"2%"``, ``"0.5%"``); ValueError else."""
        if isinstance(value, bool):
            raise ValueError(f"expected a count or a percentage like '2%', got {value!r}")
        if isinstance(value, int):
            if value < 0:
                raise ValueError(f"must not be negative, got {value}")
            return cls(count=value)
        text = str(value).strip()
        m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*%", text)
        if m:
            percent = float(m.group(1))
            if percent > 100:
                raise ValueError(f"a percentage is at most 100%, got {text!r}")
            return cls(percent=percent)
        if re.fullmatch(r"\d+", text):
            return cls(count=int(text))
        raise ValueError(f"expected a count or a percentage like '2%', got {value!r}")

    def allowed(self, records: int) -> int:
        """The most failed records allowed out of `records`."""
        if self.percent is not None:
            return int(records * self.percent / 100 + 1e-9)
        return self.count or 0

    def exceeded(self, failures: int, records: int) -> bool:
        return failures > self.allowed(records)

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count or 0)


def load_scenario(path: str | Path, registry: Any | None = None) -> Scenario:
    """Read a scenario file; with a plugin registry, also check plugin names."""
    scenario = Scenario.from_toml(path)
    if registry is not None:
        scenario.validate(registry)
    return scenario


# -- normalisation -------------------------------------------------------------------

_BACKEND_KEYS = {f.name for f in msgspec.structs.fields(BackendSpec)} - {"settings"}


def _normalize(data: dict[str, Any], source: _Source) -> dict[str, Any]:
    """File conveniences: backend tables hold their factory settings inline, and
    scorers/exporters may be plain names."""
    data = dict(data)
    backends = data.get("backends")
    if isinstance(backends, dict):
        out = {}
        for name, table in backends.items():
            if isinstance(table, dict):
                table = dict(table)
                settings = table.pop("settings", {})
                if not isinstance(settings, dict):
                    raise ScenarioError("must be a table", file=source.file,
                                        line=source.line(("backends", name, "settings")),
                                        path=f"backends.{name}.settings")
                extra = {k: table.pop(k) for k in list(table) if k not in _BACKEND_KEYS}
                table["settings"] = {**settings, **extra}
            out[name] = table
        data["backends"] = out
    judges = data.get("judges")
    if isinstance(judges, list):
        # A judge should be deterministic unless told otherwise, even when the file
        # sets only some sampling fields.
        data["judges"] = [
            {**j, "sampling": {"temperature": 0.0, **j["sampling"]}}
            if isinstance(j, dict) and isinstance(j.get("sampling"), dict) else j
            for j in judges]
    for key in ("scorers", "exporters"):
        items = data.get(key)
        if isinstance(items, str):
            items = [items]
        if isinstance(items, list):
            data[key] = [{"name": x} if isinstance(x, str) else x for x in items]
    return data


# -- checks ----------------------------------------------------------------------


def _check_static(s: Scenario, source: _Source) -> None:
    def fail(path: tuple[Any, ...], message: str) -> typing.NoReturn:
        raise ScenarioError(message, file=source.file, line=source.line(path), path=_render(path))

    if not s.participants:
        fail(("participants",), "at least one participant is needed")
    names = s.participant_names()
    seen: dict[str, int] = {}
    for i, p in enumerate(s.participants):
        if p.name in seen:
            fail(("participants", i, "name"),
                 f"duplicate participant name {p.name!r} (also participants[{seen[p.name]}])")
        seen[p.name] = i
        if p.backend is not None and p.backend not in s.backends:
            fail(("participants", i, "backend"), _unknown("backend", p.backend, s.backends))
        if p.sampling.seed is not None:
            fail(("participants", i, "sampling", "seed"),
                 "seeds are derived from run.seed per conversation and turn; remove this field")
        if p.role is not None:
            roles = _roles()
            if roles and p.role not in roles:
                fail(("participants", i, "role"), _unknown("role", p.role, roles))
    for j, name in enumerate(s.turns.order):
        if name not in seen:
            fail(("turns", "order", j), _unknown("participant", name, names))
    if s.turns.opener is not None:
        allowed = list(s.turns.order) or names
        if s.turns.opener not in allowed:
            fail(("turns", "opener"), _unknown("participant", s.turns.opener, allowed))
    at: dict[int, int] = {}
    for j, b in enumerate(s.branches):
        if b.at_turn >= s.run.max_turns:
            fail(("branches", j, "at_turn"),
                 f"turn {b.at_turn} is never reached (run.max_turns = {s.run.max_turns})")
        if b.to_turn is not None:
            if b.to_turn < b.at_turn or b.to_turn >= s.run.max_turns:
                fail(("branches", j, "to_turn"), f"must be in at_turn..run.max_turns-1 "
                     f"({b.at_turn}..{s.run.max_turns - 1})")
            if len(s.branches) > 1:
                fail(("branches", j, "to_turn"),
                     "a fork turn drawn per conversation needs to be the only [[branches]] entry")
        if b.at_turn in at:
            fail(("branches", j, "at_turn"), f"branches[{at[b.at_turn]}] already branches at turn {b.at_turn}")
        at[b.at_turn] = j
    try:
        FailureBudget.parse(s.run.max_failures)
    except ValueError as exc:
        fail(("run", "max_failures"), str(exc))
    for j, phrase in enumerate(s.stop.phrases):
        if not phrase:
            fail(("stop", "phrases", j), "an empty stop phrase would match every message")
    scored: dict[str, str] = {}
    named: tuple[tuple[str, Sequence[PluginSpec | JudgeSpec]], ...] = (
        ("scorers", s.scorers), ("judges", s.judges))
    for kind, specs in named:
        for j, spec in enumerate(specs):
            if spec.name in scored:
                fail((kind, j, "name"), f"two scores would be named {spec.name!r} "
                     f"(also {scored[spec.name]}); give this one another name")
            scored[spec.name] = f"{kind}[{j}]"
    for j, judge in enumerate(s.judges):
        if judge.backend is not None and judge.backend not in s.backends:
            fail(("judges", j, "backend"), _unknown("backend", judge.backend, s.backends))
        if judge.sampling.seed is not None:
            fail(("judges", j, "sampling", "seed"),
                 "seeds are derived from run.seed per conversation and call; remove this field")


def _check_plugins(s: Scenario, registry: Any, source: _Source) -> None:
    def fail(path: tuple[Any, ...], message: str) -> typing.NoReturn:
        raise ScenarioError(message, file=source.file, line=source.line(path), path=_render(path))

    agents = plugin_names(registry, "agents")
    environments = plugin_names(registry, "environments")
    for i, p in enumerate(s.participants):
        if p.agent in agents:
            if s.backend_of(p) is None:
                if not s.backends:
                    fail(("participants", i, "agent"),
                         f"agent {p.agent!r} needs a backend, and the scenario defines none ([backends.NAME])")
                fail(("participants", i, "backend"),
                     f"agent {p.agent!r} needs a backend; choose one of: {', '.join(sorted(s.backends))}")
        elif p.agent in environments:
            if p.backend is not None:
                fail(("participants", i, "backend"),
                     f"{p.agent!r} is an environment and speaks through no backend; remove this field")
        else:
            fail(("participants", i, "agent"), _unknown("agent", p.agent, sorted(agents | environments)))
        if p.sampler is not None:
            samplers = plugin_names(registry, "samplers")
            if p.sampler not in samplers:
                fail(("participants", i, "sampler"), _unknown("sampler", p.sampler, samplers))
    backends = plugin_names(registry, "backends")
    for name, b in s.backends.items():
        if b.type not in backends:
            fail(("backends", name, "type"), _unknown("backend type", b.type, backends))
    if s.judges:
        judges = plugin_names(registry, "judges")
        for j, judge in enumerate(s.judges):
            if judge.judge not in judges:
                fail(("judges", j, "judge"), _unknown("judge", judge.judge, judges))
            if s.backend_of(judge) is None:
                fail(("judges", j, "backend"), "a judge needs a backend; choose one of: "
                     + (", ".join(sorted(s.backends)) or "none defined ([backends.NAME])"))
    for kind, specs in (("scorers", s.scorers), ("exporters", s.exporters)):
        available = plugin_names(registry, kind)
        for j, spec in enumerate(specs):
            if spec.name not in available:
                fail((kind, j, "name"), _unknown(kind[:-1], spec.name, available))


def plugin_names(registry: Any, kind: str) -> set[str]:
    """Names registered for `kind` in a plugin registry."""
    for attr in ("names", "available", "list"):
        fn = getattr(registry, attr, None)
        if callable(fn):
            try:
                return set(fn(kind))
            except TypeError:
                continue
    table = getattr(registry, "factories", None) or getattr(registry, "_factories", None)
    if isinstance(table, dict):
        return set(table.get(kind, ()))
    raise TypeError(f"cannot list the {kind} of {registry!r}")


def _roles() -> tuple[str, ...]:
    try:
        from turnloom._core import ROLES
    except ImportError:
        return ()
    return tuple(ROLES)


def _unknown(what: str, name: str, allowed: Iterable[str]) -> str:
    allowed = sorted(allowed)
    hint = ""
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    if close:
        hint = f"; did you mean {close[0]!r}?"
    listing = ", ".join(allowed) if allowed else "none"
    return f"unknown {what} {name!r}{hint} (available: {listing})"


# -- msgspec errors -> ScenarioError ---------------------------------------------------

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _from_validation(exc: msgspec.ValidationError, source: _Source,
                     prefix: tuple[Any, ...] = ()) -> ScenarioError:
    m = _AT.match(str(exc))
    msg, raw = (m.group("msg"), m.group("path") or "") if m else (str(exc), "")
    path = prefix + _parse_path(raw)
    unknown = re.match(r"Object contains unknown field `(.+)`", msg)
    missing = re.match(r"Object missing required field `(.+)`", msg)
    if unknown:
        name = unknown.group(1)
        fields = _fields_at(path)
        close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        reason = f"unknown field {name!r}{hint} (allowed: {', '.join(fields)})"
        path = path + (name,)
    elif missing:
        reason = "required field is missing"
        line = source.line(path)
        path = path + (missing.group(1),)
        return ScenarioError(reason, file=source.file, line=line, path=_render(path))
    else:
        reason = msg[0].lower() + msg[1:] if msg else "invalid value"
        reason = reason.replace("`", "")
    return ScenarioError(reason, file=source.file, line=source.line(path), path=_render(path) or None)


def _parse_path(raw: str) -> tuple[Any, ...]:
    parts: list[Any] = []
    for m in re.finditer(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]", raw):
        if m.group(1) is not None:
            parts.append(m.group(1))
        elif m.group(2) == "...":
            parts.append("...")
        else:
            parts.append(int(m.group(2)))
    return tuple(parts)


def _render(path: Sequence[Any]) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


def _fields_at(path: Sequence[Any]) -> list[str]:
    """Field names of the Struct type found at `path` below Scenario."""
    tp: Any = Scenario
    for part in path:
        tp = _step(tp, part)
        if tp is None:
            return []
    tp = _struct_in(_unwrap(tp))
    return [f.name for f in msgspec.structs.fields(tp)] if tp is not None else []


def _unwrap(tp: Any) -> Any:
    """Strip Annotated and optional-None layers."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            rest = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp


def _struct_in(tp: Any) -> Any:
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    for arg in typing.get_args(tp):
        found = _struct_in(arg)
        if found is not None:
            return found
    return None


def _step(tp: Any, part: Any) -> Any:
    tp = _unwrap(tp)
    if isinstance(part, str) and part != "...":
        st = _struct_in(tp)
        return typing.get_type_hints(st, include_extras=True).get(part) if st is not None else None
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (tuple, list) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


# -- where a key sits in the TOML text ----------------------------------------------------

_SOURCES: dict[int, _Source] = {}


class _Source:
    """A scenario's file and text, for turning field paths into line numbers."""

    def __init__(self, file: str | None, text: str | None) -> None:
        self.file = file
        self.text = text
        self._index: dict[tuple[Any, ...], int] | None = None

    def starts_below(self, line: int) -> int:
        """1 if the value on `line` is a multi-line string whose text starts on the next
        line (TOML drops a newline right after the opening quotes), else 0."""
        if self.text is None:
            return 0
        lines = self.text.splitlines()
        raw = lines[line - 1].rstrip() if 0 < line <= len(lines) else ""
        return int(raw.endswith(('"""', "'''")))

    def line(self, path: Sequence[Any]) -> int | None:
        if self.text is None:
            return None
        if self._index is None:
            self._index = _line_index(self.text)
        path = tuple(path)
        while path:
            if "..." in path:
                path = path[: path.index("...")]
                continue
            found = self._index.get(path)
            if found is not None:
                return found
            path = path[:-1]
        return None


_HEADER_ARRAY = re.compile(r"^\[\[\s*(.+?)\s*\]\]\s*(#.*)?$")
_HEADER = re.compile(r"^\[\s*(.+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"""^((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")
_INLINE_KEY = re.compile(r"[{,]\s*([A-Za-z0-9_-]+)\s*=")


def _split_key(key: str) -> list[str]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", key)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def _line_index(text: str) -> dict[tuple[Any, ...], int]:
    """Map every table and key path in a TOML text to the line that defines it;
    arrays of tables get their element index, so `participants[1].sampling.x` resolves."""
    index: dict[tuple[Any, ...], int] = {}
    arrays: dict[tuple[Any, ...], int] = {}
    current: tuple[Any, ...] = ()
    in_multiline: str | None = None

    def resolve(keys: list[str]) -> tuple[Any, ...]:
        out: tuple[Any, ...] = ()
        for k in keys:
            out += (k,)
            if out in arrays:
                out += (arrays[out],)
        return out

    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if in_multiline is not None:
            if in_multiline in line:
                in_multiline = None
            continue
        if not line or line.startswith("#"):
            continue
        m = _HEADER_ARRAY.match(line)
        if m:
            keys = _split_key(m.group(1))
            base = resolve(keys[:-1]) + tuple(keys[-1:])
            n = arrays.get(base, -1) + 1
            arrays[base] = n
            current = base + (n,)
            index.setdefault(current, lineno)
            index.setdefault(base, lineno)
            continue
        m = _HEADER.match(line)
        if m:
            current = resolve(_split_key(m.group(1)))
            for i in range(1, len(current) + 1):
                index.setdefault(current[:i], lineno)
            continue
        m = _KEY.match(line)
        if m:
            full = current + tuple(_split_key(m.group(1)))
            for i in range(len(current) + 1, len(full) + 1):
                index.setdefault(full[:i], lineno)
            for km in _INLINE_KEY.finditer(line):
                index.setdefault(full + (km.group(1),), lineno)
            rest = line[m.end():]
            for quote in ('"""', "'''"):
                if rest.count(quote) == 1:
                    in_multiline = quote
    return index
