"""Makes the picture in docs/materials.md from the add-on's own code, headless (run from the repo root):

    .venv/bin/python docs/make_material_pictures.py

material_sphere_plane.png: a deterministic, periodic brick pattern made in numpy (not a model's output,
so the picture is the same on every machine), run through the same derived-maps code
(`blender_addon.core.maps.derive_maps`) and the same material builder
(`blender_addon.seamless.build_seamless_material`) as the Seamless Material button and
`scene-diffusion material`. Top: albedo, height, normal, roughness. Bottom: a sphere on a plane rendered
with Cycles, left with Object coordinates and box projection, right with the objects' UV maps.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "images"
NAME = "material_sphere_plane.png"


def brick_pattern(size: int = 256, rows: int = 8, per_row: int = 4, mortar: int = 5) -> np.ndarray:
    """(size, size, 3) uint8 bricks in running bond, dark mortar, periodic on both axes by construction."""
    from blender_addon.core.maps import circular_blur

    brick_h, brick_w = size // rows, size // per_row
    y, x = np.mgrid[0:size, 0:size]
    row = y // brick_h
    shifted = (x + (row % 2) * (brick_w // 2)) % size  # every other row half a brick along, wrapping around
    column = shifted // brick_w
    in_mortar = (y % brick_h < mortar) | (shifted % brick_w < mortar)
    rng = np.random.default_rng(7)
    tint = rng.uniform(0.8, 1.15, (rows, per_row))[row, column]  # one shade per brick
    brick = np.array([0.62, 0.30, 0.22]) * tint[..., None]
    grit = circular_blur(rng.standard_normal((size, size)).astype(np.float32), 1.2)[..., None]
    colour = np.where(in_mortar[..., None], np.array([0.16, 0.15, 0.14]), brick) + 0.08 * grit
    return np.rint(np.clip(colour, 0, 1) * 255).astype(np.uint8)


def scene():
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    import addon_utils  # Blender's own module: importable once bpy is

    addon_utils.enable("blender_addon")
    sc = bpy.context.scene
    bpy.ops.mesh.primitive_plane_add(size=6, location=(0, 0, 0))
    bpy.ops.mesh.primitive_uv_sphere_add(radius=1.0, location=(0, 0, 1.0), segments=64, ring_count=32)
    bpy.ops.object.shade_smooth()
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    camera.location = (4.6, -4.6, 3.4)
    camera.rotation_euler = (np.radians(66), 0.0, np.radians(45))
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.data.energy = 4.0
    sun.rotation_euler = (np.radians(55), 0.0, np.radians(-30))  # low from the side: the relief shows
    for obj in (camera, sun):
        sc.collection.objects.link(obj)
    sc.camera = camera
    world = bpy.data.worlds.new("Sky")
    world.color = (0.18, 0.2, 0.24)
    sc.world = world
    sc.render.engine = "CYCLES"
    sc.cycles.device = "CPU"
    sc.cycles.samples = 24
    sc.cycles.use_denoising = False
    return bpy, sc


def render(bpy, sc, maps, params, settings, mapping: str, width: int, height: int) -> np.ndarray:
    """The sphere and the plane with the material, mapped by object coordinates (box projection) or by UVs."""
    from blender_addon import capture, seamless

    targets = [bpy.data.objects["Plane"], bpy.data.objects["Sphere"]]
    for obj in targets:
        obj.data.materials.clear()
    scale = 1.0 if mapping == "OBJECT" else 3.0  # UV: the plane's one UV square spans all 6 m of it
    seamless.build_seamless_material(f"Bricks {mapping}", maps, params, settings=settings, objects=targets,
                                     mapping=mapping, box_projection=mapping == "OBJECT", scale=scale)
    return capture.render_camera(sc, sc.camera, width, height, fast=False).color


def thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    """`image` tiled 2 x 2 (a seam would show as a cross), resized to `size` x `size` (nearest), RGB."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    tiled = np.tile(image, (2, 2, 1))
    index = np.arange(size) * tiled.shape[0] // size
    return tiled[index][:, index]


def main() -> None:
    from blender_addon.core.maps import TILEABLE_MAX, MapSettings, derive_maps, tileability
    from blender_addon.core.png import encode_png

    settings = MapSettings(normal_strength=4.0, height_blur=1.5, roughness_low=0.45, roughness_high=0.9)
    maps = derive_maps(brick_pattern(), settings)
    assert all(tileability(m) <= TILEABLE_MAX for m in maps.values()), "the pattern and its maps tile"
    params = {"prompt": "red bricks, dark mortar (procedural stand-in)", "seamless": "xy"}
    bpy, sc = scene()
    renders = [render(bpy, sc, maps, params, settings, mapping, 360, 270) for mapping in ("OBJECT", "UV")]
    strip = np.concatenate([thumbnail(maps[k], 180) for k in ("albedo", "height", "normal", "roughness")], axis=1)
    picture = np.concatenate([strip, np.concatenate(renders, axis=1)], axis=0)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / NAME).write_bytes(encode_png(picture, level=9))
    print(OUT / NAME)


if __name__ == "__main__":
    main()
