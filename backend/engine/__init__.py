"""The engine: one interface for every kind of generation, with a diffusers implementation.

`create_engine(model, ...)` builds the engine for a model id. Nothing here imports torch until an
engine is built.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from .models import DEFAULT_MODEL
from .request import GeneratedImage, GenerationRequest, Progress

__all__ = ["DEFAULT_MODEL", "Engine", "GeneratedImage", "GenerationRequest", "Progress", "create_engine"]


class Engine(Protocol):
    """What the CLI, the server and the add-on's in-process mode rely on."""

    model_id: str

    def info(self) -> dict[str, Any]: ...

    def modes(self) -> list[str]: ...

    def generate(
        self,
        request: GenerationRequest,
        progress: Callable[[Progress], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> list[GeneratedImage]: ...


def create_engine(model: str = DEFAULT_MODEL, **options: Any) -> Engine:
    """Build the engine for `model` (a repo id, a local folder or file, or a testing/ id)."""
    from .pattern import PATTERN, PatternEngine

    if model == PATTERN:
        return PatternEngine()
    from .diffusers_engine import DiffusersEngine

    return DiffusersEngine(model, **options)
