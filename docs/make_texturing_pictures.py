"""Makes the pictures in docs/texturing.md with the pattern engine (smooth colour fields instead of a
model), so what they show is the geometry: projection, blending, coverage, fill. Run from the repo root:

    .venv/bin/python docs/make_texturing_pictures.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "images"


def save(pixels: np.ndarray, name: str) -> None:
    from blender_addon.core.png import encode_png

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / name).write_bytes(encode_png(pixels, level=9))
    print(OUT / name)


def render(scene, camera_matrix, size: int = 320) -> np.ndarray:
    import bpy

    from blender_addon import capture

    data = bpy.data.cameras.new("shot")
    camera = bpy.data.objects.new("shot", data)
    camera.matrix_world = camera_matrix
    data.lens = 55
    scene.collection.objects.link(camera)
    try:
        return capture.render_camera(scene, camera, size, size, fast=False).color
    finally:
        bpy.data.objects.remove(camera)
        bpy.data.cameras.remove(data)


def main() -> None:
    import bpy  # noqa: I001 (first: it makes Blender's own modules importable)
    import addon_utils
    from mathutils import Matrix

    from backend.engine.pattern import PatternEngine
    from backend.inprocess import InProcessBackend
    from blender_addon import texturing
    from blender_addon.core.texture_job import TextureSettings

    bpy.ops.wm.open_mainfile(filepath=str(ROOT / "demo" / "scene.blend"))
    addon_utils.enable("blender_addon")
    scene = bpy.context.scene
    scene.render.engine, scene.cycles.samples, scene.cycles.device = "CYCLES", 16, "CPU"
    suzanne = bpy.data.objects["Suzanne"]
    front = scene.camera.matrix_world.copy()
    back = Matrix.Rotation(np.pi, 4, "Z") @ front
    before = [render(scene, front), render(scene, back)]

    uv_map = texturing.ensure_uv_map(suzanne)
    specs = texturing.automatic_views(suzanne, 8, texturing.camera_spec(scene.camera))
    job = texturing.TextureSceneJob(bpy.context, suzanne, TextureSettings(prompt="pattern", steps=2, seed=7,
                                                                         texture_size=1024),
                                    specs, 512, uv_map, backend_source=InProcessBackend(PatternEngine())).start()
    while job.tick(bpy.context) is None:
        time.sleep(0.01)
    finished = job.job.finished
    after = [render(scene, front), render(scene, back)]
    save(np.concatenate([np.concatenate(before, axis=1), np.concatenate(after, axis=1)], axis=0),
         "texturing_before_after.png")

    texture = (np.clip(finished.texture, 0, 1) * 255).astype(np.uint8)
    painted = np.where(finished.painted[..., None], texture, (texture * 0.35).astype(np.uint8))
    half = slice(None, None, 2)
    save(np.concatenate([texture[half, half], painted[half, half]], axis=1), "texturing_texture.png")

    thumbs = [pixels[::4, ::4] for _, pixels, _ in sorted(finished.view_images, key=lambda v: v[0])]
    save(np.concatenate(thumbs, axis=1), "texturing_views.png")


if __name__ == "__main__":
    main()
