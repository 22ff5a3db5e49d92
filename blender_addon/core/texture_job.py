"""Text-to-texture as a job: views generated round by round on a backend, projected into the UV map.

Round 1 paints the first view from its depth alone. Round 2 sends every other view at once, as one
batch: each with the texture so far as seen from it (through its UV pass) for init image, and for mask
what no view has covered well yet, so views agree where they overlap and only the gaps are painted.
Everything here runs in a worker thread; the main thread only calls `poll_once()`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .clients import Backend
from .depth import normalized_depth
from .jobs import BackgroundWork, JobRunner
from .jobs import Finished as JobFinished
from .jobs import Progress as JobProgress
from .png import encode_png
from .protocol import JobIn
from .texturing import (
    TextureAccumulator,
    View,
    contribution,
    coverage_texture,
    inpaint_mask,
    parallel_map,
    rasterize,
    view_lookup,
    view_weights,
)


@dataclass(frozen=True)
class ViewPasses:
    """A view as Blender rendered it: camera, Z pass, UV pass and where the object is."""

    view: View
    uv: np.ndarray  # (H, W, 2)
    alpha: np.ndarray  # (H, W) 1 where the object is seen

    @property
    def depth_png(self) -> bytes:
        return encode_png(normalized_depth(self.view.z))


@dataclass(frozen=True)
class TextureProgress:
    stage: str  # "view 1/8", "views 2-8"
    step: int
    total: int
    preview: np.ndarray | None = None


@dataclass(frozen=True)
class TextureFinished:
    state: str  # done, failed, cancelled
    texture: np.ndarray | None = None  # (size, size, 3) float 0..1, filled and padded
    painted: np.ndarray | None = None  # (size, size) bool: texels some view painted
    coverage: float = 0.0  # painted share of the UV map's texels
    view_images: list = field(default_factory=list)  # (view index, (H, W, 3) uint8, parameters text)
    error: str = ""
    parameters: dict = field(default_factory=dict)  # what reproduces the texture (stored with its image)
    png: bytes = b""  # the texture encoded, with the parameters: done here, off Blender's main thread


@dataclass(frozen=True)
class TextureSettings:
    prompt: str
    negative_prompt: str = ""
    model: str | None = None
    steps: int = 25
    guidance: float = 7.0
    seed: int = 0
    controlnet_scale: float = 1.0
    texture_size: int = 1024
    sharpness: float = 4.0  # facing^sharpness: how strongly oblique views are trusted less
    blend: float = 2.0  # weight^blend where views overlap: higher keeps the best view
    coverage_threshold: float = 0.1  # below this best weight a texel is repainted by later views
    first_view_priority: float = 3.0  # the first view (the camera the artist looks through) counts this much more


class TextureJob(BackgroundWork):
    PROGRESS, FINISHED = TextureProgress, TextureFinished
    thread_name = "scene-diffusion-texture"

    def __init__(self, backend: Backend | Callable[[], Backend], mesh: tuple[np.ndarray, np.ndarray, np.ndarray],
                 views: list[ViewPasses], settings: TextureSettings) -> None:
        if not views:
            raise ValueError("texturing needs at least one view")
        super().__init__()
        self._backend_source = backend
        self.mesh = mesh
        self.views = views
        self.settings = settings

    def wait(self, timeout: float = 600.0) -> TextureFinished:
        return super().wait(timeout)

    def _failed(self, message: str) -> TextureFinished:
        return TextureFinished("failed", error=message)

    def _work(self) -> TextureFinished:
        try:
            return self._paint()
        except _Stop as stop:  # a round was cancelled or failed: its state and message end the job
            return TextureFinished(stop.state, error=stop.message)
        except ValueError as exc:  # the mesh cannot be textured as it is; the message says why
            return TextureFinished("failed", error=str(exc))

    def _paint(self) -> TextureFinished:
        s = self.settings
        backend = self._backend_source() if callable(self._backend_source) else self._backend_source
        surface = rasterize(*self.mesh, s.texture_size)
        if not len(surface.index):
            raise ValueError("the UV map covers no texel: unwrap the mesh (or let the add-on make a UV map)")
        accumulator = TextureAccumulator(surface)
        weights = parallel_map(lambda p: view_weights(p.view, surface, sharpness=s.sharpness), self.views)
        view_images = []
        first = self.views[0]
        height, width = first.view.z.shape
        job = self._job(width, height, depths=(first.depth_png,), seed=s.seed)
        (result,) = self._run_job(backend, job, f"view 1/{len(self.views)}")
        image = result.pixels[..., :3]
        view_images.append((0, image, result.text.get("parameters", "")))
        first_weight, first_xy = weights[0]
        accumulator.add(image.astype(np.float32) / 255.0, np.minimum(first_weight * s.first_view_priority, 1.0),
                        first_xy, blend=s.blend)

        rest = list(range(1, len(self.views)))
        if rest:
            texture, _ = accumulator.texture()
            coverage = coverage_texture(surface, accumulator.coverage)
            inits, masks, depths, todo = [], [], [], []
            for k in rest:
                passes = self.views[k]
                seen, seen_coverage = view_lookup(texture, coverage, passes.uv, passes.alpha)
                mask = inpaint_mask(seen_coverage, passes.alpha, s.coverage_threshold)
                if not mask.any():
                    continue  # this view sees nothing new
                inits.append(encode_png((np.clip(seen, 0, 1) * 255 + 0.5).astype(np.uint8)))
                masks.append(encode_png(mask))
                depths.append(passes.depth_png)
                todo.append(k)
            if todo:
                height, width = self.views[todo[0]].view.z.shape
                label = f"views 2-{len(self.views)}" if len(todo) > 1 else f"view {todo[0] + 1}/{len(self.views)}"
                job = self._job(width, height, depths=tuple(depths), init_images=tuple(inits), masks=tuple(masks),
                                seed=s.seed + 1, strength=1.0)
                results = self._run_job(backend, job, label)
                images = [result.pixels[..., :3] for result in results]
                view_images += [(k, image, result.text.get("parameters", ""))
                                for k, image, result in zip(todo, images, results, strict=True)]
                parts = parallel_map(lambda pair: contribution(pair[1].astype(np.float32) / 255.0, *weights[pair[0]],
                                                               blend=s.blend), list(zip(todo, images, strict=True)))
                for part in parts:
                    accumulator.add_contribution(part)
        texture, painted = accumulator.texture()
        interior = surface.interior
        coverage = float((painted & interior).sum() / interior.sum()) if interior.any() else 0.0
        parameters = {"prompt": s.prompt, "negative_prompt": s.negative_prompt, "model": s.model, "seed": s.seed,
                      "steps": s.steps, "guidance": s.guidance, "mode": "texture", "texture_size": s.texture_size,
                      "views": len(view_images), "sharpness": s.sharpness, "blend": s.blend,
                      "coverage": round(coverage, 4), "parameters": json.dumps([t for _, _, t in view_images])}
        pixels = (np.clip(texture, 0, 1) * 255 + 0.5).astype(np.uint8)
        png = encode_png(pixels, {"scene_diffusion": json.dumps(parameters), "parameters": parameters["parameters"]})
        return TextureFinished("done", texture=texture, painted=painted & interior, coverage=coverage,
                               view_images=view_images, parameters=parameters, png=png)

    def _job(self, width: int, height: int, **images) -> JobIn:
        s = self.settings
        return JobIn(prompt=s.prompt, negative_prompt=s.negative_prompt, model=s.model, width=width, height=height,
                     steps=s.steps, guidance=s.guidance, controlnet_scale=s.controlnet_scale, **images)

    def _run_job(self, backend: Backend, job: JobIn, stage: str) -> list:
        if self._cancel.is_set():
            raise _Stop("cancelled", "cancelled")
        runner = JobRunner(backend, job).start()
        while True:
            for event in runner.poll_once():
                if isinstance(event, JobProgress):
                    self._events.put(TextureProgress(stage, event.step, event.total, event.preview))
                elif isinstance(event, JobFinished):
                    if event.state == "done":
                        return event.results
                    if event.state == "cancelled":
                        raise _Stop("cancelled", "cancelled")
                    raise _Stop("failed", f"{stage}: {event.error}")
            if self._cancel.is_set():
                runner.cancel()
            time.sleep(0.02)


class _Stop(Exception):
    def __init__(self, state: str, message: str) -> None:
        super().__init__(message)
        self.state, self.message = state, message
