"""Real-Blender test utilities: a clean factory scene and render passes read back as arrays.

Import only from tests that have already done ``pytest.importorskip("bpy")``.
"""

from __future__ import annotations

import os

import bpy
import numpy as np

from blender_addon.core.exr import find_channel, read_exr


def factory_scene(width: int = 64, height: int = 48) -> bpy.types.Scene:
    """Blender's factory startup (Camera, Cube, Light) with a small render size."""
    bpy.ops.wm.read_factory_settings(use_empty=False)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    return scene


def render_passes(scene: bpy.types.Scene, path: str | os.PathLike, engine: str = "BLENDER_WORKBENCH",
                  emission: bool = False) -> dict[str, np.ndarray]:
    """Render the scene's camera to a multilayer EXR with the Z pass; every channel, top row first.

    Cycles renders one sample per pixel with a (near) zero-width box filter: each pixel is its centre.
    """
    scene.render.engine = engine
    if engine == "CYCLES":
        scene.cycles.device = "CPU"
        scene.cycles.samples = 1
        scene.cycles.use_denoising = False
        scene.cycles.pixel_filter_type = "BOX"
        scene.cycles.filter_width = 0.01
    layer = scene.view_layers[0]
    layer.use_pass_z = True
    if emission:
        layer.use_pass_emit = True
    settings = scene.render.image_settings
    settings.media_type = "MULTI_LAYER_IMAGE"  # Blender 5.0: file_format follows from the media type
    settings.exr_codec = "NONE"
    settings.color_depth = "32"
    scene.render.filepath = os.fspath(path)
    bpy.ops.render.render(write_still=True)
    return read_exr(path)


def render_depth(scene: bpy.types.Scene, path: str | os.PathLike) -> np.ndarray:
    """The Z pass (planar depth; 1e10 where nothing was hit), (height, width), top row first."""
    return find_channel(render_passes(scene, path), "Depth.Z", "Z")
