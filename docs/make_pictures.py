"""Makes the pictures in docs/addon.md from the add-on's own code, headless (run from the repo root):

    .venv/bin/python docs/make_pictures.py

capture.png: what restyle sends for the default scene (the camera render and its depth, near = bright).
projection.png: "Project onto Objects": an image projected from the camera, seen from another angle;
faces the camera does not see stay neutral grey.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "images"


def scene():
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=False)
    bpy.ops.mesh.primitive_plane_add(size=8, location=(0, 0, -1))
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.8, location=(2.2, -1.2, -0.2))
    bpy.ops.object.shade_smooth()
    import addon_utils

    addon_utils.enable("blender_addon")
    return bpy


def save(pixels: np.ndarray, name: str) -> None:
    from blender_addon.core.png import encode_png

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / name).write_bytes(encode_png(pixels, level=9))
    print(OUT / name)


def main() -> None:
    bpy = scene()
    from blender_addon import capture, materials

    sc = bpy.context.scene
    shot = capture.render_camera(sc, sc.camera, 384, 216)
    save(np.concatenate([shot.color, np.repeat(shot.depth[..., None], 3, axis=2)], axis=1), "capture.png")

    # A stand-in for a restyle result: bold stripes and a gradient, so the projection is easy to read.
    h, w = shot.color.shape[:2]
    y, x = np.mgrid[0:h, 0:w]
    stripes = ((x // 24 + y // 24) % 2).astype(np.float32)
    image_pixels = np.stack([0.9 * stripes + 0.1, x / w, 1 - y / h], axis=-1)
    image = materials.new_image("Projected", (image_pixels * 255).astype(np.uint8), {"prompt": "stand-in"})
    targets = [o for o in sc.objects if o.type == "MESH"]
    materials.project_from_camera(targets, sc.camera, image, depth=shot.z, scene=sc)

    view = bpy.data.objects.new("Side", bpy.data.cameras.new("Side"))
    sc.collection.objects.link(view)
    view.location = (9.0, 5.5, 4.0)
    direction = -view.location.normalized()
    view.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
    sc.camera = view
    sc.render.engine = "CYCLES"
    sc.cycles.samples = 16
    sc.cycles.device = "CPU"
    side = capture.render_camera(sc, view, 384, 216, fast=False)
    sc.camera = bpy.data.objects["Camera"]
    from_camera = capture.render_camera(sc, sc.camera, 384, 216, fast=False)
    save(np.concatenate([from_camera.color, side.color], axis=1), "projection.png")


if __name__ == "__main__":
    main()
