"""The `/v1` wire protocol as the add-on sees it: frozen dataclasses mirroring the server's pydantic
schemas (backend/server/schemas.py). A contract test over shared JSON fixtures keeps the two identical.
"""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass, field
from typing import Any

JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")


@dataclass(frozen=True)
class JobIn:
    """A generation job. Images are PNG bytes here and base64 on the wire."""

    prompt: str
    negative_prompt: str = ""
    model: str | None = None
    width: int = 512
    height: int = 512
    steps: int = 25
    guidance: float = 7.0
    seed: int | None = None
    count: int = 1
    strength: float = 0.75
    sampler: str = ""
    seamless: str = ""
    controlnet_scale: float = 1.0
    init_images: tuple[bytes, ...] = ()
    masks: tuple[bytes, ...] = ()
    depths: tuple[bytes, ...] = ()

    @property
    def mode(self) -> str:
        if self.depths:
            return "depth"
        if self.masks:
            return "inpaint"
        if self.init_images:
            return "img2img"
        return "txt2img"

    def to_json(self) -> dict[str, Any]:
        body = dataclasses.asdict(self)
        for name in ("init_images", "masks", "depths"):
            body[name] = [base64.b64encode(png).decode("ascii") for png in getattr(self, name)]
        if body["model"] is None:
            del body["model"]
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> JobIn:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in body.items() if k in known}
        for name in ("init_images", "masks", "depths"):
            values[name] = tuple(base64.b64decode(v.partition(",")[2] if v.startswith("data:") else v)
                                 for v in values.get(name, ()))
        return cls(**values)


@dataclass(frozen=True)
class JobOut:
    """A job's state as GET /v1/jobs/{id} reports it."""

    id: str
    state: str
    mode: str
    step: int
    total: int
    queue_position: int
    images: int
    preview: bytes | None = None  # PNG
    error: str | None = None
    seeds: tuple[int, ...] = ()
    expired: bool = False

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> JobOut:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in body.items() if k in known}
        values["preview"] = base64.b64decode(body["preview"]) if body.get("preview") else None
        values["seeds"] = tuple(body.get("seeds") or ())
        return cls(**values)


@dataclass(frozen=True)
class Health:
    """GET /v1/health: what the backend is and can do."""

    version: str
    model: str
    family: str
    device: str
    dtype: str
    modes: tuple[str, ...]
    queued: int = 0
    limits: dict[str, int] = field(default_factory=dict)
    api: str = "v1"
    status: str = "ok"

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Health:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in body.items() if k in known}
        values["modes"] = tuple(values.get("modes") or ())
        return cls(**values)
