"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def embedded_model() -> None:
    """Skip unless torch, transformers and the converted SmolLM2 are all here
    (the README's set-up prepares them; `-ra` lists any skip with its reason)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from turnloom import models

    if not models.is_prepared():
        pytest.skip("the embedded model is not prepared (python -m turnloom.models prepare)")
