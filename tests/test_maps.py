"""Derived maps (blender_addon.core.maps): they tile exactly as the albedo does, and they mean what Blender reads.

Orientation: images are arrays top row first; +X is to the right, +Y is up (towards row 0), since
Blender puts an image's top row at v = 1 and its Normal Map node reads green as +Y (OpenGL).
"""

from __future__ import annotations

import numpy as np
import pytest

from blender_addon.core import maps
from blender_addon.core.maps import TILEABLE_MAX, tileability


def periodic_noise(height=96, width=128, seed=0, sigma=3.0) -> np.ndarray:
    """Smooth colour noise that is periodic by construction (a circular blur of white noise), uint8."""
    rng = np.random.default_rng(seed)
    field = maps.circular_blur(rng.random((height, width, 3)).astype(np.float32), sigma)
    field = (field - field.min()) / (field.max() - field.min())
    return maps.to_uint8(field)


def cropped_noise(height=96, width=128, seed=0, sigma=3.0) -> np.ndarray:
    """The same kind of noise cut out of a larger periodic field: its opposite edges do not meet."""
    return periodic_noise(height * 2 + 37, width * 2 + 53, seed, sigma)[:height, :width]


def seam_and_interior(image: np.ndarray) -> tuple[float, float]:
    """Mean |difference| across the wrap-around edges, and between neighbours inside (both axes)."""
    values = image.astype(np.float64)
    seam = np.mean([np.abs(values[0] - values[-1]).mean(), np.abs(values[:, 0] - values[:, -1]).mean()])
    inner = np.mean([np.abs(np.diff(values, axis=0)).mean(), np.abs(np.diff(values, axis=1)).mean()])
    return seam, inner


@pytest.fixture(scope="module")
def derived():
    return maps.derive_maps(periodic_noise())


def test_seamless_input_reads_as_tiling_and_a_cut_one_does_not():
    for seed in range(5):
        assert tileability(periodic_noise(seed=seed)) <= 1.1
        assert tileability(cropped_noise(seed=seed)) > 2 * TILEABLE_MAX
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    assert tileability(ramp) > 10, "a ramp wraps from white back to black"
    assert tileability(np.zeros((16, 16, 3), np.uint8)) == pytest.approx(1.0), "flat: nothing to see"
    with pytest.raises(maps.NotTileable, match="does not tile"):
        maps.check_tiles(cropped_noise(), "the test backend")


def test_tiling_on_one_axis_only_is_not_tiling():
    rows_wrap = periodic_noise(96, 2 * 128 + 53)[:, :128]  # periodic from top to bottom, cut left to right
    assert tileability(rows_wrap) > TILEABLE_MAX
    assert tileability(rows_wrap.transpose(1, 0, 2)) > TILEABLE_MAX


def test_a_pattern_whose_seam_lies_on_its_own_edge_still_tiles():
    """Bricks with the wrap-around seam exactly on a mortar edge: the seam is as strong as the other edges."""
    y, x = np.mgrid[0:64, 0:96]
    mortar = (y % 16 < 3) | ((x + (y // 16 % 2) * 12) % 24 < 3)
    bricks = np.where(mortar[..., None], 0.8, [0.6, 0.25, 0.2]).astype(np.float32)
    bricks = np.roll(bricks, -3, axis=0)  # the bottom row is mortar, the top row brick: the seam is an edge
    assert np.abs(bricks[0] - bricks[-1]).mean() > 0.1
    assert tileability(bricks) <= TILEABLE_MAX


@pytest.mark.parametrize("kind", maps.MAP_NAMES)
def test_every_map_tiles_as_the_albedo_does(derived, kind):
    image = derived[kind]
    seam, inner = seam_and_interior(image)
    assert seam <= 1.3 * inner, f"{kind}: the wrap-around edge is as continuous as the interior"
    assert tileability(image) <= TILEABLE_MAX


@pytest.mark.parametrize("kind", maps.MAP_NAMES)
def test_every_map_commutes_with_a_wraparound_shift(derived, kind):
    """Exact tiling: shifting the albedo around the torus shifts each map the same way, to the last bit."""
    shifted = maps.derive_maps(np.roll(periodic_noise(), (29, 71), axis=(0, 1)))
    assert np.array_equal(np.roll(derived[kind], (29, 71), axis=(0, 1)), shifted[kind])


def test_the_seam_check_is_not_vacuous_on_maps():
    """A non-tiling albedo gives a non-tiling height (unblurred: a circular blur softens any seam)."""
    derived = maps.derive_maps(cropped_noise(), maps.MapSettings(height_blur=0.0))
    assert tileability(derived["height"]) > TILEABLE_MAX


def test_shapes_types_and_ranges(derived):
    assert derived["albedo"].shape == (96, 128, 3) and derived["normal"].shape == (96, 128, 3)
    assert derived["height"].shape == derived["roughness"].shape == (96, 128)
    assert all(a.dtype == np.uint8 for a in derived.values())
    assert derived["height"].min() == 0 and derived["height"].max() == 255, "the height fills 0..1"


def ramp(direction: str, size: int = 32) -> np.ndarray:
    """A height rising by 1/size per pixel towards +X (right) or +Y (up: towards row 0)."""
    values = np.arange(size, dtype=np.float32) / size
    if direction == "+x":
        return np.tile(values, (size, 1))
    if direction == "+y":
        return np.tile(values[::-1, None], (1, size))  # row 0 (the top) is highest
    raise ValueError(direction)


def test_normal_map_convention_opengl():
    """Rising to +X tilts the normal to -X (red < 0.5); rising up the image (to +Y) tilts it to -Y (green < 0.5)."""
    inside = (slice(2, -2), slice(2, -2))  # away from the ramp's own wrap-around cliff
    x = maps.normal_map(ramp("+x"), strength=8.0)[inside]
    y = maps.normal_map(ramp("+y"), strength=8.0)[inside]
    tilt = 8.0 / 32  # slope: strength pixels of relief per 32 pixels
    expected = np.array([-tilt, 0.0, 1.0]) / np.hypot(tilt, 1.0) * 0.5 + 0.5
    assert np.allclose(x, expected, atol=1e-6), "red < 0.5, green = 0.5, blue high"
    assert np.allclose(y, expected[[1, 0, 2]], atol=1e-6), "green < 0.5, red = 0.5"
    assert (x[..., 0] < 0.5).all() and (y[..., 1] < 0.5).all()
    assert np.allclose(maps.normal_map(ramp("+x")[:, ::-1], 8.0)[inside][..., 0], 1 - expected[0], atol=1e-6)


def test_flat_height_gives_the_flat_normal_colour():
    flat = maps.to_uint8(maps.normal_map(np.full((8, 8), 0.3, np.float32), 5.0))
    assert (flat == [128, 128, 255]).all()
    encoded = maps.normal_map(maps.height_map(periodic_noise()), 4.0) * 2 - 1
    assert np.allclose(np.linalg.norm(encoded, axis=-1), 1.0, atol=1e-5), "unit normals"
    assert (encoded[..., 2] > 0).all(), "always facing out of the surface"


def test_normal_strength_scales_the_tilt():
    gentle = maps.normal_map(ramp("+x"), 1.0)[4:-4, 4:-4, 0]
    steep = maps.normal_map(ramp("+x"), 10.0)[4:-4, 4:-4, 0]
    assert 0.5 - steep.mean() > 5 * (0.5 - gentle.mean()) > 0
    assert np.allclose(maps.normal_map(ramp("+x"), 0.0), [0.5, 0.5, 1.0])


def test_height_is_luminance_blurred_around_the_torus_and_scaled():
    image = np.zeros((32, 32, 3), np.uint8)
    image[0, 0] = 255  # one bright pixel in the corner: its blur must reach the other three corners
    height = maps.height_map(image, blur=2.0)
    assert height[0, 0] == pytest.approx(1.0) and height.min() == pytest.approx(0.0, abs=1e-6)
    assert height[-1, -1] == pytest.approx(height[1, 1], rel=1e-4), "wraps diagonally"
    assert height[0, -1] == pytest.approx(height[0, 1], rel=1e-4) and height[16, 16] < 1e-3
    assert maps.height_map(image, blur=0)[0, 1] == 0.0
    half = maps.height_map(image, blur=2.0, scale=0.5)
    assert half.max() == pytest.approx(0.75) and half.min() == pytest.approx(0.25, abs=1e-6)
    assert (maps.height_map(np.full((8, 8, 3), 90, np.uint8)) == 0.5).all()
    green, blue = np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 3), np.float32)
    green[..., 1], blue[..., 2] = 1, 1
    assert maps.luminance(green).mean() > maps.luminance(blue).mean(), "luma: green is brighter than blue"


@pytest.mark.parametrize("low, high", [(0.3, 0.9), (0.0, 1.0), (0.5, 0.5)])
def test_roughness_stays_in_its_range(low, high):
    image = periodic_noise(sigma=1.5)
    image[:, :40] = 128  # an even band: as smooth as it gets
    rough = maps.roughness_map(image, low, high)
    assert rough.min() >= low - 1e-6 and rough.max() <= high + 1e-6
    if high > low:
        assert rough.min() == pytest.approx(low, abs=1e-3) and rough.max() == pytest.approx(high)
        assert rough[:, 12:28].mean() < rough[:, 60:].mean(), "rough where busy, smooth where even"


def test_bad_settings_are_refused_with_their_name():
    with pytest.raises(ValueError, match="roughness range"):
        maps.roughness_map(periodic_noise(), 0.9, 0.1)
    with pytest.raises(ValueError, match="roughness range"):
        maps.derive_maps(periodic_noise(), maps.MapSettings(roughness_low=0.8, roughness_high=0.2))
    with pytest.raises(ValueError, match="normal strength"):
        maps.MapSettings(normal_strength=-1).validate()
    with pytest.raises(ValueError, match="albedo must be"):
        maps.derive_maps(np.zeros((8, 8), np.uint8))


def test_settings_are_described_for_the_metadata():
    settings = maps.MapSettings(normal_strength=3.0)
    assert settings.describe("normal")["strength"] == 3.0
    assert "green = +Y up" in settings.describe("normal")["convention"]
    assert settings.describe("roughness")["low"] == 0.3
    with pytest.raises(ValueError, match="unknown map"):
        settings.describe("metallic")


def test_blur_is_vectorised_fast_enough_for_a_main_thread_tick():
    import time

    image = periodic_noise(512, 512)
    t0 = time.perf_counter()
    maps.derive_maps(image)
    assert time.perf_counter() - t0 < 1.0
