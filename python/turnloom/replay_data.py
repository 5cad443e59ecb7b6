"""Per-conversation user turns read from a file, for replaying a dataset.

The native shape is one JSON object per line (or per Parquet row)::

    {"id": "case-1",
     "history": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}],
     "turns": ["first replayed user message", "second ..."],
     "meta": {...}}

`turns` (required, non-empty) are the user messages played one per user turn;
`history` (optional) is gold history that precedes them: alternating user and
assistant messages, starting with a user message and ending with an assistant
one, that the model under test did not write; `meta` (optional) is kept with
the conversation. In Parquet, `history` and `meta` may also be JSON strings.

Loaders for public formats map their documented fields onto this shape:

- ``multi-if`` (facebook/Multi-IF): `turn_1_prompt` .. `turn_3_prompt` are JSON
  strings of a user message (an empty string ends the dialogue early); the
  `turn_N_instruction_id_list` and `turn_N_kwargs` fields, `key` and
  `language` go to `meta`.
- ``mt-eval`` (MT-Eval): `conv` is a list of {"user", "sys", "do_inference"};
  the leading turns with `do_inference` false are gold history (their "sys" is
  the gold answer), the rest are replayed. A gold turn after a replayed one
  cannot be represented and is an error.
- ``mt-bench-101`` (MT-Bench-101, as OpenCompass loads it): `history` is a list
  of {"user", "bot"}; every turn is evaluated with the gold dialogue before it
  (golden context), so a dialogue of k turns becomes k items (k - 1 for the
  tasks whose first turn is not evaluated), each replaying one user turn after
  the gold history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

FORMATS = ("turnloom", "multi-if", "mt-eval", "mt-bench-101")
# MT-Bench-101 tasks whose first turn is context only (OpenCompass's list).
MTBENCH101_SKIP_FIRST = frozenset({"FR", "CR", "AR", "SA", "SC", "CM"})


class ReplayDataError(ValueError):
    """A replay file or one of its records is malformed (the message names where)."""


@dataclass(frozen=True)
class ReplayItem:
    id: str
    turns: tuple[str, ...]
    history: tuple[tuple[str, str], ...] = ()  # (role, text), user first, assistant last
    meta: dict[str, Any] = field(default_factory=dict)


def read_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for each JSON line or Parquet row of the file."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ReplayDataError(f"{path}: reading Parquet needs pyarrow "
                                  "(pip install 'turnloom[data]')") from exc
        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}: row {i}", row
        return
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ReplayDataError(f"{where}: not JSON: {exc}") from None
            if not isinstance(row, dict):
                raise ReplayDataError(f"{where}: expected a JSON object")
            yield where, row


def _json_field(row: dict[str, Any], key: str, where: str, default: Any = None) -> Any:
    value = row.get(key, default)
    if isinstance(value, str) and key != "content":
        if not value.strip():
            return default
        try:
            return json.loads(value)
        except ValueError:
            raise ReplayDataError(f"{where}: `{key}` is a string that is not JSON") from None
    return value


def _text(value: Any, where: str) -> str:
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str) or not value:
        raise ReplayDataError(f"{where}: expected a non-empty message text")
    return value


def _checked_history(pairs: list[tuple[str, str]], where: str) -> tuple[tuple[str, str], ...]:
    for i, (role, _) in enumerate(pairs):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise ReplayDataError(f"{where}: history[{i}] has role {role!r}; the gold history "
                                  "alternates user and assistant, starting with user")
    if len(pairs) % 2:
        raise ReplayDataError(f"{where}: the gold history must end with an assistant message")
    return tuple(pairs)


def _native(where: str, row: dict[str, Any]) -> Iterator[ReplayItem]:
    turns = row.get("turns")
    if not isinstance(turns, list) or not turns:
        raise ReplayDataError(f"{where}: `turns` must be a non-empty list of user messages")
    history = _json_field(row, "history", where, []) or []
    if not isinstance(history, list):
        raise ReplayDataError(f"{where}: `history` must be a list of messages")
    pairs = []
    for i, m in enumerate(history):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ReplayDataError(f"{where}: history[{i}] must be {{\"role\", \"content\"}}")
        pairs.append((m["role"], _text(m, f"{where}: history[{i}]")))
    meta = _json_field(row, "meta", where, {}) or {}
    if not isinstance(meta, dict):
        raise ReplayDataError(f"{where}: `meta` must be an object")
    yield ReplayItem(str(row.get("id", where)),
                     tuple(_text(t, f"{where}: turns[{i}]") for i, t in enumerate(turns)),
                     _checked_history(pairs, where), meta)


def _multi_if(where: str, row: dict[str, Any]) -> Iterator[ReplayItem]:
    turns = []
    meta: dict[str, Any] = {"key": row.get("key"), "language": row.get("language"),
                            "instruction_id_list": [], "kwargs": []}
    for n in range(1, 10):
        key = f"turn_{n}_prompt"
        if key not in row:
            break
        prompt = _json_field(row, key, where)
        if not prompt:
            break  # an empty later turn: the dialogue has fewer turns
        turns.append(_text(prompt, f"{where}: {key}"))
        ids = _json_field(row, f"turn_{n}_instruction_id_list", where, []) or []
        kwargs = _json_field(row, f"turn_{n}_kwargs", where, []) or []
        meta["instruction_id_list"].append(ids)
        meta["kwargs"].append([json.loads(k) if isinstance(k, str) else k for k in kwargs])
    if not turns:
        raise ReplayDataError(f"{where}: no `turn_1_prompt`: not a Multi-IF record")
    yield ReplayItem(str(row.get("key", where)), tuple(turns), (), meta)


def _mt_eval(where: str, row: dict[str, Any]) -> Iterator[ReplayItem]:
    conv = row.get("conv")
    if not isinstance(conv, list) or not conv:
        raise ReplayDataError(f"{where}: `conv` must be a non-empty list: not an MT-Eval record")
    history: list[tuple[str, str]] = []
    turns: list[str] = []
    ids = []
    for i, t in enumerate(conv):
        if not isinstance(t, dict):
            raise ReplayDataError(f"{where}: conv[{i}] must be an object")
        user = _text(t.get("user"), f"{where}: conv[{i}].user")
        if t.get("do_inference", True):
            turns.append(user)
            ids.append(t.get("id"))
        elif turns:
            raise ReplayDataError(f"{where}: conv[{i}] is a gold turn after a replayed one; "
                                  "only leading gold turns can be prefilled")
        else:
            history += [("user", user), ("assistant", _text(t.get("sys"), f"{where}: conv[{i}].sys"))]
    if not turns:
        raise ReplayDataError(f"{where}: no turn has do_inference true")
    yield ReplayItem(str(row.get("id", where)), tuple(turns), tuple(history),
                     {"turn_ids": ids, "reference": [t.get("sys") for t in conv
                                                     if t.get("do_inference", True)]})


def _mt_bench_101(where: str, row: dict[str, Any]) -> Iterator[ReplayItem]:
    hist = row.get("history")
    if not isinstance(hist, list) or not hist:
        raise ReplayDataError(f"{where}: `history` must be a non-empty list: not an "
                              "MT-Bench-101 record")
    task = str(row.get("task", ""))
    pairs = [(_text(t.get("user") if isinstance(t, dict) else None, f"{where}: history[{i}].user"),
              _text(t.get("bot") if isinstance(t, dict) else None, f"{where}: history[{i}].bot"))
             for i, t in enumerate(hist)]
    first = 1 if task in MTBENCH101_SKIP_FIRST else 0
    for k in range(first, len(pairs)):
        gold = [m for u, b in pairs[:k] for m in (("user", u), ("assistant", b))]
        yield ReplayItem(f"{row.get('id', where)}#{k + 1}", (pairs[k][0],), tuple(gold),
                         {"task": task, "dialogue_id": row.get("id"), "turn_id": k + 1,
                          "reference": pairs[k][1]})


_LOADERS: dict[str, Callable[[str, dict[str, Any]], Iterator[ReplayItem]]] = {
    "turnloom": _native, "multi-if": _multi_if, "mt-eval": _mt_eval,
    "mt-bench-101": _mt_bench_101}


def load_replay(path: str | Path, fmt: str = "turnloom") -> list[ReplayItem]:
    """Every item of a replay file, in file order (item i is conversation index i)."""
    if fmt not in _LOADERS:
        raise ReplayDataError(f"unknown replay format {fmt!r} (known: {', '.join(FORMATS)})")
    path = Path(path)
    if not path.is_file():
        raise ReplayDataError(f"replay file {path} does not exist")
    loader = _LOADERS[fmt]
    items = [item for where, row in read_rows(path) for item in loader(where, row)]
    if not items:
        raise ReplayDataError(f"{path}: no records")
    return items
