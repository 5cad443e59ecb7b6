"""Built-in exporters: conversations as OpenAI-format JSON lines, and the
dataset exporters of `turnloom.exporters` (SFT, ShareGPT, tokens, DPO, REFUEL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import msgspec

from turnloom.export import AtomicFile
from turnloom.hookspecs import Register, hookimpl
from turnloom.records import ConversationRecord


class OpenAIJsonl:
    """One JSON object per conversation branch: `messages` in OpenAI chat format,
    then participants (with profiles and system prompts), per-turn metadata,
    token counts, stop reason, scores and errors."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        unknown = set(settings) - {"file"}
        if unknown:
            raise ValueError(f"unknown openai-jsonl settings: {sorted(unknown)} (allowed: file)")
        self.file = str(settings.get("file", "conversations.jsonl"))
        self._out: AtomicFile | None = None
        self._encode = msgspec.json.Encoder().encode

    def open(self, run_dir: Path) -> None:
        self._out = AtomicFile(Path(run_dir) / self.file)

    def write(self, record: ConversationRecord) -> None:
        assert self._out is not None
        self._out.write(self._encode(record) + b"\n")

    def close(self) -> None:
        if self._out is not None:
            self._out.commit()

    def abort(self) -> None:
        if self._out is not None:
            self._out.abort()


@hookimpl
def register_exporters(register: Register) -> None:
    register("openai-jsonl", OpenAIJsonl)
    from turnloom.exporters import DATASET_EXPORTERS

    for exporter in DATASET_EXPORTERS:
        register(exporter.name, exporter)
