"""What a generation asks for, and what it gives back: plain data shared by the engine, CLI and server."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from ..errors import InvalidRequest

if TYPE_CHECKING:
    from PIL.Image import Image

Mode = Literal["txt2img", "img2img", "inpaint", "depth"]
SEAMLESS_AXES = ("", "x", "y", "xy")
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class GenerationRequest:
    """One call to the engine.

    The mode follows from the inputs, so a request can never say "inpaint" without a mask:
    depth images -> depth-conditioned (with init and mask when given), mask -> inpaint,
    init image -> image-to-image, nothing -> text-to-image.

    `init_images`, `masks` and `depths` each hold nothing, one image (shared by the whole batch) or one
    image per batch item (the texturing views). The engine returns `batch_size * count` images, ordered
    item by item: item 0 copies 0..count-1, then item 1, ...
    """

    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 25
    guidance: float = 7.0
    seed: int | None = None
    count: int = 1
    strength: float = 0.75
    init_images: tuple[Image, ...] = ()
    masks: tuple[Image, ...] = ()
    depths: tuple[Image, ...] = ()
    controlnet_scale: float = 1.0
    seamless: str = ""
    sampler: str = ""

    @property
    def mode(self) -> Mode:
        if self.depths:
            return "depth"
        if self.masks:
            return "inpaint"
        if self.init_images:
            return "img2img"
        return "txt2img"

    @property
    def batch_size(self) -> int:
        return max(len(self.init_images), len(self.masks), len(self.depths), 1)

    def with_seed(self) -> GenerationRequest:
        """The same request with a concrete seed, so that what is stored with the image reproduces it."""
        if self.seed is not None and self.seed >= 0:
            return self
        return replace(self, seed=secrets.randbelow(MAX_SEED + 1))

    def image_seed(self, index: int) -> int:
        """Seed of the index-th output image: consecutive seeds, as Automatic1111 numbers a batch."""
        assert self.seed is not None
        return (self.seed + index) % (MAX_SEED + 1)

    def validate(self) -> None:
        """Raise InvalidRequest naming the first bad parameter; called before any model work."""
        for name, value in (("width", self.width), ("height", self.height)):
            if not isinstance(value, int) or value < 64:
                raise InvalidRequest(f"{name} must be an integer of at least 64, got {value!r}")
            if value % 8:
                lower, upper = value - value % 8, value - value % 8 + 8
                raise InvalidRequest(
                    f"{name} must be a multiple of 8 (the latent grid), got {value}: use {lower} or {upper}"
                )
        if not isinstance(self.steps, int) or self.steps < 1:
            raise InvalidRequest(f"steps must be at least 1, got {self.steps!r}")
        if not isinstance(self.count, int) or self.count < 1:
            raise InvalidRequest(f"count must be at least 1, got {self.count!r}")
        if not 0.0 <= self.strength <= 1.0:
            raise InvalidRequest(f"strength must be between 0 and 1, got {self.strength}")
        if self.guidance < 0:
            raise InvalidRequest(f"guidance must not be negative, got {self.guidance}")
        if self.seed is not None and not -1 <= self.seed <= MAX_SEED:
            raise InvalidRequest(f"seed must be between 0 and {MAX_SEED} (or -1 for random), got {self.seed}")
        if self.seamless not in SEAMLESS_AXES:
            raise InvalidRequest(f"seamless must be one of x, y, xy (or empty), got {self.seamless!r}")
        if self.controlnet_scale < 0:
            raise InvalidRequest(f"controlnet_scale must not be negative, got {self.controlnet_scale}")
        if self.init_images and int(self.steps * self.strength) < 1:
            raise InvalidRequest(
                f"strength {self.strength} of {self.steps} steps leaves no step to run: "
                f"raise strength to at least {1 / self.steps:.2f} or add steps"
            )
        if self.masks and not self.init_images:
            raise InvalidRequest("a mask needs an init image to inpaint into")
        sizes = {len(x) for x in (self.init_images, self.masks, self.depths) if x}
        if len(sizes - {1}) > 1:
            raise InvalidRequest(
                "init images, masks and depths must each be one image or one per batch item, "
                f"got {len(self.init_images)}, {len(self.masks)} and {len(self.depths)}"
            )
        for name, images in (("mask", self.masks), ("depth", self.depths)):
            for image in images:
                if image.size != (self.width, self.height):
                    raise InvalidRequest(
                        f"the {name} image is {image.size[0]}x{image.size[1]} but the output is "
                        f"{self.width}x{self.height}: they must be the same size"
                    )


@dataclass(frozen=True)
class GeneratedImage:
    """One result: the picture and the exact parameters that reproduce it."""

    image: Image
    seed: int
    parameters: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Progress:
    """Reported once per denoising step. `preview` is a small RGB image of the current latents, or None."""

    step: int
    total: int
    preview: Image | None = None
