"""The `/v1` wire protocol. These models are the API's documentation (served as OpenAPI)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

API_VERSION = "v1"


class JobIn(BaseModel):
    """A generation job. Images are base64 PNG or JPEG (a `data:` prefix is accepted).

    The mode follows from the images given: depths -> depth-conditioned (with init and masks when given),
    masks -> inpainting, init images -> image-to-image, none -> text-to-image. Each image list holds
    nothing, one image for the whole batch, or one per batch item (views of a texture).
    """

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(max_length=10_000)
    negative_prompt: str = Field("", max_length=10_000)
    model: str | None = Field(None, description="must be one of GET /v1/models; default: the server's model")
    width: int = 512
    height: int = 512
    steps: int = 25
    guidance: float = 7.0
    seed: int | None = Field(None, description="null or -1: the server picks one and reports it")
    count: int = Field(1, description="images per batch item, consecutive seeds")
    strength: float = 0.75
    sampler: str = ""
    seamless: Literal["", "x", "y", "xy"] = ""
    controlnet_scale: float = 1.0
    init_images: list[str] = Field(default_factory=list)
    masks: list[str] = Field(default_factory=list)
    depths: list[str] = Field(default_factory=list)


JobState = Literal["queued", "running", "done", "failed", "cancelled"]


class JobOut(BaseModel):
    id: str
    state: JobState
    mode: str
    step: int = Field(description="denoising steps done")
    total: int = Field(description="denoising steps in all (0 until the job starts)")
    queue_position: int = Field(description="1 = next to run; 0 when running or finished")
    preview: str | None = Field(None, description="base64 PNG of the latest step, 1/8 of the output size")
    error: str | None = None
    images: int = Field(description="number of result images, fetched from /v1/jobs/{id}/images/{k}")
    seeds: list[int] = Field(default_factory=list)
    expired: bool = Field(False, description="the results were dropped to keep within the server's bounds")


class JobAccepted(BaseModel):
    id: str
    state: JobState
    queue_position: int


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    api: str = API_VERSION
    version: str
    model: str
    family: str
    device: str
    dtype: str
    modes: list[str]
    queued: int
    limits: dict[str, int]


class ModelInfo(BaseModel):
    id: str
    family: str
    modes: list[str]
    default: bool = True


class Error(BaseModel):
    detail: str
