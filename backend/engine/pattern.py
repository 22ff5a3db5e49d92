"""`testing/pattern`: an engine that paints smooth, deterministic colour fields instead of diffusing.

For measuring geometry (projection, baking, seams, coverage) exactly, independent of what a model
paints: every mode answers with a low-frequency colour field drawn from the seed; image-to-image
mixes it with the init image by strength; inpainting keeps the init outside the mask, as the real
engine does. It honours count, batches, progress, cancel and seamless tiling (integer frequencies).
"""

from __future__ import annotations

import threading

import numpy as np

from .. import __version__
from ..errors import Cancelled
from .request import GeneratedImage, GenerationRequest, Progress

PATTERN = "testing/pattern"


def colour_field(width: int, height: int, seed: int, seamless: str = "") -> np.ndarray:
    """(height, width, 3) float in 0..1: a few smooth waves per channel, periodic on tiled axes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = (x + 0.5) / width, (y + 0.5) / height
    out = np.empty((height, width, 3))
    for channel in range(3):
        value = np.full((height, width), rng.uniform(0.35, 0.65))
        for _ in range(3):
            fx = rng.integers(1, 3) if "x" in seamless else rng.uniform(0.5, 2.0)
            fy = rng.integers(1, 3) if "y" in seamless else rng.uniform(0.5, 2.0)
            phase = rng.uniform(0, 2 * np.pi)
            value += rng.uniform(0.05, 0.15) * np.sin(2 * np.pi * (fx * u + fy * v) + phase)
        out[..., channel] = value
    return np.clip(out, 0.0, 1.0)


class PatternEngine:
    model_id = PATTERN

    def info(self) -> dict:
        return {"model": PATTERN, "family": "pattern", "device": "cpu", "dtype": "float32", "modes": self.modes(),
                "samplers": [], "default_sampler": "pattern"}

    def modes(self) -> list[str]:
        return ["depth", "img2img", "inpaint", "txt2img"]

    def generate(self, request: GenerationRequest, progress=None, cancel: threading.Event | None = None
                 ) -> list[GeneratedImage]:
        from PIL import Image

        request.validate()
        request = request.with_seed()
        total = max(1, int(request.steps * request.strength)) if request.init_images else request.steps
        for step in range(1, total + 1):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            if progress is not None:
                progress(Progress(step=step, total=total, preview=None))
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        size = (request.width, request.height)
        results = []
        for k in range(request.batch_size * request.count):
            item = k // request.count
            seed = request.image_seed(k)
            pixels = colour_field(request.width, request.height, seed, request.seamless)
            if request.init_images:
                init = _pick(request.init_images, item).convert("RGB").resize(size)
                init_pixels = np.asarray(init, np.float64) / 255.0
                if request.masks:
                    mask = np.asarray(_pick(request.masks, item).convert("L").resize(size), np.float64)[..., None]
                    pixels = init_pixels * (1 - mask / 255.0) + pixels * (mask / 255.0)
                else:
                    pixels = init_pixels * (1 - request.strength) + pixels * request.strength
            image = Image.fromarray((pixels * 255 + 0.5).astype(np.uint8), "RGB")
            params = {"prompt": request.prompt, "negative_prompt": request.negative_prompt, "steps": request.steps,
                      "sampler": "pattern", "guidance": request.guidance, "width": request.width,
                      "height": request.height, "model": PATTERN, "mode": request.mode, "seed": seed,
                      "version": f"scene-diffusion {__version__}"}
            if request.init_images:
                params["strength"] = request.strength
            if request.seamless:
                params["seamless"] = request.seamless
            results.append(GeneratedImage(image=image, seed=seed, parameters=params))
        return results


def _pick(images: tuple, item: int):
    return images[item % len(images)]
