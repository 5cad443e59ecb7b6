"""turnloom: simulate multi-turn LLM dialogues at scale, with a Rust core."""

from turnloom.hookspecs import hookimpl

__all__ = ["hookimpl"]
