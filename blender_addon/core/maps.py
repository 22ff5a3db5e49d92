"""Derived maps for seamless materials: height, normal and roughness from a tileable albedo, in numpy.

Runs inside Blender (the add-on's material maker) and in the CLI (`scene-diffusion material`), so it
imports numpy only. Images are arrays top row first, as PNGs store them: (height, width, 3 or 4)
uint8 or float 0..1 for colour, (height, width) float 0..1 for single-channel maps.

Every operation is circular: neighbours are taken with ``np.roll`` and blurs are FFT convolutions
(circular by construction, the same as a sum of ``np.roll`` shifts). So each map commutes with
``np.roll`` (``map(roll(albedo)) == roll(map(albedo))``): the pixel pair across the wrap-around edge
is computed exactly as an interior pair is, and every map tiles exactly as the albedo does. Global
statistics (minimum, maximum, percentiles) do not depend on where the image is cut, so normalising
keeps that property.

Image orientation: +X is to the right (increasing column); +Y is *up*, towards row 0, because
Blender puts an image's top row at v = 1. Normal maps use the OpenGL convention Blender's Normal Map
node expects (green = +Y up): a height rising to +X tilts the normal to -X (red < 0.5), rising
towards the top of the image tilts it to -Y (green < 0.5).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

TILEABLE_MAX = 1.5
"""`tileability()` at or below this: the image tiles. See `tileability` for why 1.5."""

MAP_NAMES = ("albedo", "height", "normal", "roughness")
NORMAL_CONVENTION = "OpenGL (tangent space, green = +Y up)"
LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)  # Rec. 709, on the stored (sRGB-encoded) values
_FLAT = 1e-3  # differences below this (in 0..1 units) count as a flat image in `tileability`


# ---------------------------------------------------------------------------------------------
# Tileability


def tileability(rgb: np.ndarray) -> float:
    """How much the wrap-around seam stands out from the image's own lines; <= ``TILEABLE_MAX``: it tiles.

    Per axis: the seam's discontinuity is the mean absolute difference between the first and the last
    row (columns for the other axis); each interior line between two neighbouring rows has its own mean
    absolute difference. The score is the seam's difference over the *strongest* interior line, and
    the image's score is the worse of the two axes.

    Why the strongest line and not the mean of all of them: a tiling brick or tile texture may well
    have its seam exactly on a mortar edge; that seam is a strong line, but no stronger than the
    pattern's other mortar edges, and dividing by the mean would refuse it. A picture that does not
    tile has a seam unlike any line inside it: on generated textures (stone, wood, fabric, noise)
    2 to 20 times the strongest one. A seamless image reads about 1 or below (a seam is just one
    more line; 0.5 to 1 for smooth images), so 1.5 leaves room for noise on small images while
    catching a seam that is half again as strong as anything inside. Not caught: a non-tiling image
    whose seam happens to be no stronger than an edge it already has (a horizon, a plank joint).

    A flat axis (no differences at all) scores 1 when its seam is flat too.
    """
    values = _as_float(rgb)
    if values.ndim == 2:
        values = values[..., None]
    if values.shape[0] < 3 or values.shape[1] < 3:
        raise ValueError(f"tileability needs an image of at least 3x3 pixels, got {values.shape[:2]}")
    scores = []
    for axis in (0, 1):
        inner = np.abs(np.diff(values, axis=axis))
        lines = inner.mean(axis=tuple(a for a in range(inner.ndim) if a != axis))  # one mean per interior line
        seam = np.abs(np.take(values, 0, axis=axis) - np.take(values, -1, axis=axis)).mean()
        scores.append((seam + _FLAT) / (lines.max() + _FLAT))
    return float(max(scores))


def tiles(rgb: np.ndarray) -> bool:
    return tileability(rgb) <= TILEABLE_MAX


class NotTileable(ValueError):
    """A generated image whose wrap-around seam shows: the backend ignored seamless tiling."""


def check_tiles(rgb: np.ndarray, source: str = "the backend") -> float:
    """The image's ``tileability``; NotTileable, naming ``source``, when its seam shows."""
    score = tileability(rgb)
    if score > TILEABLE_MAX:
        raise NotTileable(
            f"{source} returned an image that does not tile (its wrap-around seam is {score:.1f}x the strongest "
            f"edge inside it, {TILEABLE_MAX:g} at most for a tiling image): it seems not to support seamless "
            "tiling. Use a backend that does, such as Scene Diffusion's own server"
        )
    return score


# ---------------------------------------------------------------------------------------------
# Circular filters


def circular_blur(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of standard deviation ``sigma`` pixels that wraps around both edges (float32).

    Done in the frequency domain: the FFT treats the image as periodic, so the blur is circular
    exactly and costs the same for any ``sigma``. Works on (H, W) and (H, W, C).
    """
    values = np.asarray(values, np.float32)
    if sigma <= 0:
        return values.copy()
    height, width = values.shape[:2]
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    response = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
    if values.ndim == 3:
        response = response[..., None]
    spectrum = np.fft.rfft2(values, axes=(0, 1))
    return np.fft.irfft2(spectrum * response, s=(height, width), axes=(0, 1)).astype(np.float32)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """(H, W) float32 0..1: Rec. 709 luma of the stored values (a grey image is returned as it is)."""
    values = _as_float(rgb)
    if values.ndim == 2:
        return values
    if values.shape[2] == 1:
        return values[..., 0]
    return values[..., :3] @ LUMA


# ---------------------------------------------------------------------------------------------
# Maps


def height_map(rgb: np.ndarray, blur: float = 1.0, scale: float = 1.0) -> np.ndarray:
    """(H, W) float32 0..1: bright = high. Luminance, low-passed by a circular blur of ``blur`` pixels
    (0: none; it keeps pixel noise out of the normals), stretched to fill 0..1, then scaled by
    ``scale`` around mid-grey 0.5 (Blender's Displacement midlevel) and clipped: 1 fills 0..1, 0.5
    gives 0.25..0.75, 0 a flat 0.5. A flat image gives 0.5 everywhere."""
    if blur < 0:
        raise ValueError(f"blur must not be negative, got {blur}")
    if scale < 0:
        raise ValueError(f"scale must not be negative, got {scale}")
    height = circular_blur(luminance(rgb), blur)
    low, high = float(height.min()), float(height.max())
    if high - low < 1e-6:
        return np.full(height.shape, 0.5, np.float32)
    height = (height - low) / (high - low)
    return np.clip(0.5 + (height - 0.5) * scale, 0.0, 1.0).astype(np.float32)


def normal_map(height: np.ndarray, strength: float = 2.0) -> np.ndarray:
    """(H, W, 3) float32, encoded 0..1 as ``n * 0.5 + 0.5``: the tangent-space normal of the height field.

    ``strength`` is the relief's depth in pixels: a height of 1 stands ``strength`` texture pixels
    above a height of 0, so a ramp from 0 to 1 over ``k`` pixels slopes by ``strength / k``.
    Slopes are central differences with ``np.roll`` (the wrap-around neighbours at the edges), with
    +Y up (towards row 0): n = normalise(-strength * dh/dx, -strength * dh/dy, 1). Flat: (0.5, 0.5, 1).
    """
    h = np.asarray(height, np.float32)
    if h.ndim != 2:
        raise ValueError(f"height must be (H, W), got shape {h.shape}")
    dx = (np.roll(h, -1, axis=1) - np.roll(h, 1, axis=1)) * 0.5  # right neighbour minus left
    dy = (np.roll(h, 1, axis=0) - np.roll(h, -1, axis=0)) * 0.5  # the row above minus the row below
    normal = np.stack([-strength * dx, -strength * dy, np.ones_like(h)], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    return (normal * 0.5 + 0.5).astype(np.float32)


def roughness_map(rgb: np.ndarray, low: float = 0.3, high: float = 0.9, radius: float = 4.0) -> np.ndarray:
    """(H, W) float32 in [low, high]: rough where the albedo is busy, smooth where it is even.

    Local contrast is the standard deviation of luminance in a circular Gaussian window of ``radius``
    pixels, divided by its 99th percentile (so a few extreme spots do not squash the rest) and
    clipped to 0..1, then mapped linearly: no contrast -> ``low``, the busiest areas -> ``high``.
    """
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"the roughness range must satisfy 0 <= low <= high <= 1, got {low} and {high}")
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    lum = luminance(rgb)
    mean = circular_blur(lum, radius)
    variance = circular_blur(lum * lum, radius) - mean * mean
    contrast = np.sqrt(np.maximum(variance, 0.0))
    top = float(np.percentile(contrast, 99))
    contrast = np.clip(contrast / top, 0.0, 1.0) if top > 1e-6 else np.zeros_like(contrast)
    return (low + (high - low) * contrast).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# All maps at once


@dataclass(frozen=True)
class MapSettings:
    """How the maps are derived from the albedo; stored with every map."""

    height_blur: float = 1.0
    height_scale: float = 1.0
    normal_strength: float = 2.0
    roughness_low: float = 0.3
    roughness_high: float = 0.9
    roughness_radius: float = 4.0

    def validate(self) -> None:
        """ValueError naming the first bad setting."""
        if self.height_blur < 0:
            raise ValueError(f"the height blur must not be negative, got {self.height_blur}")
        if self.height_scale < 0:
            raise ValueError(f"the height scale must not be negative, got {self.height_scale}")
        if self.normal_strength < 0:
            raise ValueError(f"the normal strength must not be negative, got {self.normal_strength}")
        if not 0.0 <= self.roughness_low <= self.roughness_high <= 1.0:
            raise ValueError("the roughness range must satisfy 0 <= low <= high <= 1, got "
                             f"{self.roughness_low:g} {self.roughness_high:g}")
        if self.roughness_radius <= 0:
            raise ValueError(f"the roughness radius must be positive, got {self.roughness_radius}")

    def describe(self, kind: str) -> dict:
        """What went into map ``kind``, for its metadata."""
        settings = asdict(self)
        if kind == "albedo":
            return {"source": "generated", "seamless": "xy"}
        if kind == "height":
            return {"source": "albedo luminance, bright = high", "blur": settings["height_blur"],
                    "scale": settings["height_scale"]}
        if kind == "normal":
            return {"source": "height", "strength": settings["normal_strength"], "convention": NORMAL_CONVENTION,
                    "height_blur": settings["height_blur"], "height_scale": settings["height_scale"]}
        if kind == "roughness":
            return {"source": "albedo local contrast", "low": settings["roughness_low"],
                    "high": settings["roughness_high"], "radius": settings["roughness_radius"]}
        raise ValueError(f"unknown map {kind!r}: one of {', '.join(MAP_NAMES)}")


DEFAULT_SETTINGS = MapSettings()


def derive_maps(albedo: np.ndarray, settings: MapSettings = DEFAULT_SETTINGS) -> dict[str, np.ndarray]:
    """{"albedo": (H, W, 3), "height": (H, W), "normal": (H, W, 3), "roughness": (H, W)}, all uint8.

    The normal map is taken from the height before it is rounded to 8 bits, so it has no terracing.
    """
    settings.validate()
    albedo = np.asarray(albedo)
    if albedo.ndim != 3 or albedo.shape[2] not in (3, 4):
        raise ValueError(f"the albedo must be (H, W, 3 or 4), got shape {albedo.shape}")
    rgb = to_uint8(_as_float(albedo)[..., :3])
    height = height_map(rgb, settings.height_blur, settings.height_scale)
    return {
        "albedo": rgb,
        "height": to_uint8(height),
        "normal": to_uint8(normal_map(height, settings.normal_strength)),
        "roughness": to_uint8(roughness_map(rgb, settings.roughness_low, settings.roughness_high,
                                            settings.roughness_radius)),
    }


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Float 0..1 to uint8 0..255, rounded (0.5 -> 128, the flat normal's 128, 128, 255)."""
    values = np.asarray(values)
    if values.dtype == np.uint8:
        return values
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def _as_float(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32, copy=False)
    raise ValueError(f"expected uint8 or float pixels, got {image.dtype}")
