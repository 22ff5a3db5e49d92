"""Automatic1111/Forge-compatible endpoints: `/sdapi/v1/*` and the ControlNet extension's `/controlnet/*`.

Many tools (Krita and Photoshop plug-ins, chat bots, scripts) speak only the A1111 web API. This router
lets them use this server unchanged: the request shapes are those of A1111's documented schema
(`StableDiffusionTxt2ImgProcessingAPI`, `StableDiffusionImg2ImgProcessingAPI`, `ProgressResponse`, ...),
reimplemented here on top of the job queue.

What is kept of A1111's behaviour, and why:
- txt2img/img2img are synchronous (the response carries the images), because that is what clients
  expect; the call waits on the queue like any other job, so `/sdapi/v1/progress` and `/interrupt` work
  on it from another connection.
- Unknown fields are ignored, since clients send the whole A1111 schema (`restore_faces`, `script_args`,
  `override_settings`, ...) whether or not a server uses it.
- Masks and depth maps of another size than the output are resized rather than refused: A1111 resizes
  them, and its clients rely on that.
- ControlNet is offered only as what this engine has, a depth ControlNet fed a ready depth map (module
  "none"); a unit asking for a preprocessor is refused rather than silently used as if it were a depth map.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..engine.request import GenerationRequest
from ..engine.samplers import SAMPLERS, canonical, label
from ..errors import InvalidRequest
from ..metadata import format_a1111
from .app import decode_image, encode_png_b64
from .jobs import Job, JobQueue

CONTROLNET_DEPTH_MODEL = "control_depth [scene-diffusion]"
DEFAULT_SIZE = 512
# Keys under which A1111 requests carry images; they are left out of the `parameters` echo (as A1111 does),
# which would otherwise send every input back to the client.
_IMAGE_KEYS = frozenset({"init_images", "mask", "image", "input_image", "mask_image"})
# `scheduler` values (A1111 1.9+) that mean "whatever the sampler uses": nothing to add to the sampler name.
_AUTOMATIC_SCHEDULERS = frozenset({"", "automatic"})


class _Generation(BaseModel):
    """Fields common to A1111's txt2img and img2img requests that this server uses; others are ignored."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field("", max_length=10_000)
    negative_prompt: str | None = Field("", max_length=10_000)
    seed: int | None = Field(-1, description="-1: random; the seed used is in `info`")
    steps: int = 20
    cfg_scale: float = 7.0
    width: int | None = Field(None, description=f"default {DEFAULT_SIZE}; img2img: the init image's width")
    height: int | None = Field(None, description=f"default {DEFAULT_SIZE}; img2img: the init image's height")
    batch_size: int = 1
    n_iter: int = 1
    sampler_name: str | None = Field(None, description="an A1111 label (\"Euler a\") or one of ours (euler_a)")
    sampler_index: str | None = Field(None, description="legacy name of sampler_name, used when that is absent")
    scheduler: str | None = Field(None, description="A1111 1.9+: \"Karras\" selects the Karras variant")
    tiling: bool | None = Field(False, description="seamless in both directions")
    denoising_strength: float | None = None
    send_images: bool = True
    override_settings: dict[str, Any] | None = None
    alwayson_scripts: dict[str, Any] | None = None


class Txt2ImgIn(_Generation):
    """POST /sdapi/v1/txt2img."""


class Img2ImgIn(_Generation):
    """POST /sdapi/v1/img2img. The first init image is used; `mask` (white = repaint) makes it inpainting."""

    init_images: list[str] | None = None
    mask: str | None = None
    inpainting_mask_invert: int | bool = Field(0, description="1: repaint where the mask is black")


def create_router(engine, queue: JobQueue, validated) -> APIRouter:
    """The A1111 routes around `engine` and its `queue`; `validated` is the app's request check (limits, mode)."""
    router = APIRouter(tags=["automatic1111"])
    model_id: str = engine.model_id

    def check_checkpoint(settings: dict[str, Any] | None) -> None:
        """422 unless `sd_model_checkpoint` (when set) names the one model this server has loaded.

        Clients switch models by setting it; answering 200 and generating with another model would
        give them images of the wrong model without a word.
        """
        wanted = (settings or {}).get("sd_model_checkpoint")
        if wanted in (None, "") or not isinstance(wanted, str):
            return
        # Clients send the title from /sd-models, or "name [hash]" in A1111's style.
        if wanted == model_id or wanted.startswith(model_id + " "):
            return
        raise InvalidRequest(f"this server serves the model '{model_id}' only, not '{wanted}' "
                             "(GET /sdapi/v1/sd-models)")

    def to_request(body: _Generation, init=None, mask=None) -> GenerationRequest:
        check_checkpoint(body.override_settings)
        width, height = _output_size(body, init)
        size = (width, height)
        depth, controlnet_scale = _controlnet_depth(body.alwayson_scripts, size)
        request = GenerationRequest(
            prompt=body.prompt,
            negative_prompt=body.negative_prompt or "",
            width=width,
            height=height,
            steps=body.steps,
            guidance=body.cfg_scale,
            seed=None if body.seed in (None, -1) else body.seed,
            count=body.batch_size * body.n_iter,
            strength=0.75 if body.denoising_strength is None else body.denoising_strength,
            init_images=(init,) if init is not None else (),
            masks=(_resized(mask, size, nearest=True),) if mask is not None else (),
            depths=(depth,) if depth is not None else (),
            controlnet_scale=controlnet_scale,
            seamless="xy" if body.tiling else "",
            sampler=_sampler(body),
        )
        return validated(request)

    def run(body: _Generation, request: GenerationRequest) -> JSONResponse:
        """Queue the job and wait for it: A1111 clients expect the images in the response."""
        job = queue.submit(request)
        job.done.wait()
        if job.state == "failed":
            return JSONResponse({"detail": job.error or "the job failed"}, status_code=500)
        interrupted = job.state == "cancelled"
        images = [] if interrupted or not body.send_images else [base64.b64encode(b).decode("ascii")
                                                                 for b in job.images]
        return JSONResponse({
            "images": images,
            "parameters": _without_images(body.model_dump()),
            "info": json.dumps(_info(job, body, interrupted, engine)),
        })

    @router.post("/sdapi/v1/txt2img")
    def txt2img(body: Txt2ImgIn) -> JSONResponse:
        """Text to image (with a ControlNet depth unit: depth-conditioned). Waits for the result."""
        return run(body, to_request(body))

    @router.post("/sdapi/v1/img2img")
    def img2img(body: Img2ImgIn) -> JSONResponse:
        """Image to image from the first init image; with `mask`, inpainting. Waits for the result."""
        if not body.init_images:
            raise InvalidRequest("img2img needs an init image: init_images holds none")
        init = decode_image(body.init_images[0], "init image", "RGB")
        mask = None
        if body.mask:
            mask = decode_image(body.mask, "mask", "L")
            if body.inpainting_mask_invert:
                from PIL import ImageOps

                mask = ImageOps.invert(mask)
        return run(body, to_request(body, init, mask))

    @router.get("/sdapi/v1/progress")
    def progress(skip_current_image: bool = False) -> dict[str, Any]:
        """The running job's progress, as A1111 reports it; 0 and no image when nothing runs."""
        job = queue.current
        running = job is not None and job.state == "running"
        step, total = (job.step, job.total) if running else (0, 0)
        fraction = min(step / total, 1.0) if total else 0.0
        eta = 0.0
        if running and job.started is not None and fraction > 0:
            elapsed = time.time() - job.started
            eta = elapsed / fraction - elapsed
        preview = job.preview if running and not skip_current_image else None
        started = job.started if running and job.started is not None else None
        return {
            "progress": fraction,
            "eta_relative": eta,
            "state": {
                "skipped": False,
                "interrupted": bool(running and job.cancel.is_set()),
                "job": "",
                "job_count": queue.queued() + (1 if running else 0),
                "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(started)) if started else "0",
                "job_no": 0,
                "sampling_step": step,
                "sampling_steps": total,
            },
            "current_image": encode_png_b64(preview) if preview is not None else None,
            "textinfo": None,
        }

    def cancel_current() -> None:
        job = queue.current
        if job is not None:
            queue.cancel(job)

    @router.post("/sdapi/v1/interrupt")
    def interrupt() -> None:
        """Cancel the running job; its txt2img/img2img call returns no images and `interrupted` in info."""
        cancel_current()

    @router.post("/sdapi/v1/skip")
    def skip() -> None:
        """A1111 skips to the next image of a batch; a batch is one job here, so this interrupts it."""
        cancel_current()

    @router.get("/sdapi/v1/sd-models")
    def sd_models() -> list[dict[str, Any]]:
        return [{"title": model_id, "model_name": model_id, "hash": None, "sha256": None, "filename": model_id,
                 "config": None}]

    @router.get("/sdapi/v1/options")
    def get_options() -> dict[str, Any]:
        return {
            "sd_model_checkpoint": model_id,
            "sd_checkpoint_hash": None,
            "samples_format": "png",
            "sd_vae": "Automatic",
            "CLIP_stop_at_last_layers": 1,
            "eta_noise_seed_delta": 0,
            "live_previews_enable": True,
            "show_progress_every_n_steps": 1,
        }

    @router.post("/sdapi/v1/options")
    def set_options(body: dict[str, Any]) -> None:
        """Accepted and ignored, except a model switch, which this one-model server must refuse."""
        check_checkpoint(body)

    @router.get("/sdapi/v1/samplers")
    def list_samplers() -> list[dict[str, Any]]:
        return [{"name": a1111_label, "aliases": [name], "options": {}}
                for name, (_, _, a1111_label) in SAMPLERS.items()]

    # Clients list these before their first request; this server has none of them.
    @router.get("/sdapi/v1/sd-vae")
    def sd_vae() -> list:
        return []

    @router.get("/sdapi/v1/upscalers")
    def upscalers() -> list:
        return []

    @router.get("/sdapi/v1/loras")
    def loras() -> list:
        return []

    # The ControlNet extension's discovery routes, by which clients decide whether to offer ControlNet.
    @router.get("/controlnet/version")
    def controlnet_version() -> dict[str, int]:
        return {"version": 2}

    @router.get("/controlnet/model_list")
    def controlnet_models() -> dict[str, list[str]]:
        return {"model_list": [CONTROLNET_DEPTH_MODEL] if "depth" in engine.modes() else []}

    @router.get("/controlnet/module_list")
    def controlnet_modules() -> dict[str, list[str]]:
        return {"module_list": ["none"]}

    return router


def _output_size(body: _Generation, init) -> tuple[int, int]:
    """Width and height asked for; for img2img what is not given follows the init image.

    The init image's size is rounded down to the latent grid (a multiple of 8), since the client did not
    ask for that exact size and a 422 about a size it never sent would puzzle it.
    """
    defaults = [DEFAULT_SIZE, DEFAULT_SIZE]
    if init is not None:
        defaults = [max(64, side - side % 8) for side in init.size]
    width = body.width if body.width else defaults[0]
    height = body.height if body.height else defaults[1]
    return width, height


def _sampler(body: _Generation) -> str:
    """Our sampler name: sampler_name, else the legacy sampler_index, else "" (the model's own).

    A1111 1.9+ names the noise schedule apart (`scheduler`: "Karras"); ours are folded into the sampler
    ("DPM++ 2M Karras"), so the two are joined. A schedule we do not have is refused, not dropped.
    """
    name = (body.sampler_name or body.sampler_index or "").strip()
    scheduler = (body.scheduler or "").strip()
    if not name or scheduler.lower() in _AUTOMATIC_SCHEDULERS or name.lower().endswith(" " + scheduler.lower()):
        return canonical(name)
    try:
        return canonical(f"{name} {scheduler}")
    except InvalidRequest:
        canonical(name)  # an unknown sampler is the first thing to say
        raise InvalidRequest(f"sampler '{name}' with the '{scheduler}' schedule is not available: send scheduler "
                             f"'Automatic', or one of the samplers {', '.join(label(n) for n in SAMPLERS)}") from None


def _controlnet_depth(scripts: dict[str, Any] | None, size: tuple[int, int]):
    """(depth image, weight) from the first enabled ControlNet unit with an image, or (None, 1.0).

    Only ready depth maps (module "none") are accepted: this engine's ControlNet is a depth one and it runs
    no preprocessors, so a canny edge map or a photo to estimate depth from would be misread as depth.
    """
    if not scripts:
        return None, 1.0
    script = next((v for k, v in scripts.items() if k.lower() == "controlnet"), None)
    if not isinstance(script, dict):
        return None, 1.0
    units = script.get("args") or []
    if not isinstance(units, list):
        raise InvalidRequest("alwayson_scripts.controlnet.args must be a list of ControlNet units")
    for k, unit in enumerate(units):
        if not isinstance(unit, dict):
            raise InvalidRequest(f"alwayson_scripts.controlnet.args[{k}] must be an object (a ControlNet unit)")
        if unit.get("enabled", True) is False:
            continue
        image = unit.get("image") or unit.get("input_image")
        if isinstance(image, dict):  # some extension versions: {"image": b64, "mask": b64 or null}
            image = image.get("image")
        if not image:
            continue
        module = unit.get("module") or "none"
        if str(module).lower() != "none":
            raise InvalidRequest(f"ControlNet unit {k} asks for the preprocessor '{module}': only module 'none' "
                                 "(a ready depth map, near = bright) is supported")
        model = str(unit.get("model") or "none")
        if model.lower() != "none" and "depth" not in model.lower():
            raise InvalidRequest(f"ControlNet unit {k} asks for the model '{model}': this server has a depth "
                                 f"ControlNet only ('{CONTROLNET_DEPTH_MODEL}')")
        weight = unit.get("weight")
        try:
            scale = 1.0 if weight is None else float(weight)
        except (TypeError, ValueError):
            raise InvalidRequest(f"ControlNet unit {k}: weight must be a number, got {weight!r}") from None
        depth = decode_image(image, f"ControlNet unit {k} image", "L")
        return _resized(depth, size), scale
    return None, 1.0


def _resized(image, size: tuple[int, int], nearest: bool = False):
    """`image` at the output size. Masks use nearest-neighbour, so that what is outside stays exactly outside."""
    from PIL import Image

    if image.size == size:
        return image
    return image.resize(size, Image.NEAREST if nearest else Image.LANCZOS)


def _without_images(value: Any) -> Any:
    """A copy of a request's fields with the images left out (None), for the `parameters` echo."""
    if isinstance(value, dict):
        return {k: None if k in _IMAGE_KEYS else _without_images(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_images(v) for v in value]
    return value


def _info(job: Job, body: _Generation, interrupted: bool, engine) -> dict[str, Any]:
    """A1111's `info` (sent as a JSON string): what was generated, with the real seeds."""
    request = job.request
    n = request.batch_size * request.count
    seeds = job.seeds or [request.image_seed(k) for k in range(n)]
    used = job.parameters[0] if job.parameters else {}
    sampler = used.get("sampler") or canonical(request.sampler) or engine.info().get("default_sampler", "")
    return {
        "prompt": request.prompt,
        "all_prompts": [request.prompt] * len(seeds),
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [request.negative_prompt] * len(seeds),
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": seeds[0],
        "all_subseeds": seeds,
        "subseed_strength": 0,
        "width": request.width,
        "height": request.height,
        "sampler_name": label(sampler),
        "cfg_scale": request.guidance,
        "steps": request.steps,
        "batch_size": body.batch_size,
        "n_iter": body.n_iter,
        "restore_faces": False,
        "sd_model_name": engine.model_id,
        "sd_model_hash": None,
        "denoising_strength": request.strength if request.init_images else body.denoising_strength,
        "tiling": bool(request.seamless),
        "seamless": request.seamless,
        "controlnet_scale": request.controlnet_scale if request.depths else None,
        "mode": request.mode,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": [format_a1111(params) for params in job.parameters],
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.started or job.created)),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "interrupted": interrupted,
    }
