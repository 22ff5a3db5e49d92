"""Reading the scene into plain data on the main thread: a camera render and its depth.

One render gives both: the view-transformed colour as the artist sees it (saved as PNG through the
scene's colour management) and the Z pass (an uncompressed multilayer EXR read with numpy). Every
render setting touched is put back afterwards, whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass

import bpy
import numpy as np

from .core.depth import normalized_depth
from .core.exr import find_channel, read_exr


class CaptureError(Exception):
    pass


@dataclass(frozen=True)
class Capture:
    """A camera's view: colour (H, W, 3) uint8 and depth (H, W) uint8 near = bright, top row first."""

    color: np.ndarray
    depth: np.ndarray
    z: np.ndarray  # the raw Z pass, for projecting results back onto the scene
    camera: str
    width: int
    height: int


def output_size(scene, longest: int, use_render_aspect: bool, width: int, height: int) -> tuple[int, int]:
    """The generation size: the render's aspect with `longest` as its longest side, on the 8-pixel grid."""
    if not use_render_aspect:
        return width - width % 8, height - height % 8
    render = scene.render
    aspect = (render.resolution_x * render.pixel_aspect_x) / max(1, render.resolution_y * render.pixel_aspect_y)
    if aspect >= 1:
        w, h = longest, longest / aspect
    else:
        w, h = longest * aspect, longest
    return max(64, int(round(w / 8)) * 8), max(64, int(round(h / 8)) * 8)


@contextlib.contextmanager
def _render_settings(scene, camera, width: int, height: int, engine: str | None):
    render = scene.render
    layer = bpy.context.view_layer if bpy.context.view_layer.id_data == scene else scene.view_layers[0]
    saved = dict(camera=scene.camera, engine=render.engine, x=render.resolution_x, y=render.resolution_y,
                 percentage=render.resolution_percentage, z=layer.use_pass_z, filepath=render.filepath,
                 media_type=render.image_settings.media_type, file_format=render.image_settings.file_format,
                 color_depth=render.image_settings.color_depth, codec=render.image_settings.exr_codec,
                 use_compositing=render.use_compositing, use_border=render.use_border)
    try:
        scene.camera = camera
        if engine:
            render.engine = engine
        render.resolution_x, render.resolution_y, render.resolution_percentage = width, height, 100
        render.use_border = False
        render.use_compositing = False  # the passes as rendered, not the artist's compositing of them
        layer.use_pass_z = True
        yield layer
    finally:
        scene.camera = saved["camera"]
        render.engine = saved["engine"]
        render.resolution_x, render.resolution_y = saved["x"], saved["y"]
        render.resolution_percentage = saved["percentage"]
        layer.use_pass_z = saved["z"]
        render.filepath = saved["filepath"]
        render.image_settings.media_type = saved["media_type"]
        render.image_settings.file_format = saved["file_format"]
        render.image_settings.color_depth = saved["color_depth"]
        render.image_settings.exr_codec = saved["codec"]
        render.use_compositing = saved["use_compositing"]
        render.use_border = saved["use_border"]


def render_camera(scene, camera, width: int, height: int, fast: bool = True) -> Capture:
    """Render `camera` at width x height (Workbench when `fast`, else the scene's engine) with its depth."""
    if camera is None or camera.type != "CAMERA":
        raise CaptureError("the scene has no active camera: add one, or set one with Ctrl+Numpad 0")
    with tempfile.TemporaryDirectory(prefix="scene-diffusion-") as folder, \
            _render_settings(scene, camera, width, height, "BLENDER_WORKBENCH" if fast else None):
        settings = scene.render.image_settings
        settings.media_type = "MULTI_LAYER_IMAGE"
        settings.exr_codec = "NONE"
        settings.color_depth = "32"
        exr_path = os.path.join(folder, "capture.exr")
        scene.render.filepath = exr_path
        bpy.ops.render.render(write_still=True, scene=scene.name)
        if not os.path.exists(exr_path):
            raise CaptureError("the render wrote no image: is the camera's view empty of render layers?")
        channels = read_exr(exr_path)
        z = find_channel(channels, ".Depth.Z", "Z")
        settings.media_type = "IMAGE"
        settings.file_format = "PNG"
        settings.color_depth = "8"
        png_path = os.path.join(folder, "capture.png")
        bpy.data.images["Render Result"].save_render(png_path, scene=scene)
        color = _load_pixels(png_path)
    return Capture(color=color, depth=normalized_depth(z), z=z, camera=camera.name, width=width, height=height)


def _load_pixels(path: str) -> np.ndarray:
    """RGB uint8 of a PNG, top row first, read through Blender (no PIL here)."""
    image = bpy.data.images.load(path, check_existing=False)
    try:
        width, height = image.size
        flat = np.empty(width * height * 4, np.float32)
        image.pixels.foreach_get(flat)
    finally:
        bpy.data.images.remove(image)
    rgba = flat.reshape(height, width, 4)[::-1]
    return (np.clip(rgba[..., :3], 0, 1) * 255 + 0.5).astype(np.uint8)


@contextlib.contextmanager
def viewport_camera(context, region_3d=None, space=None):
    """A temporary camera that sees what the 3D viewport shows (removed afterwards)."""
    region_3d = region_3d or context.region_data
    space = space or context.space_data
    if region_3d is None or space is None or getattr(space, "type", "VIEW_3D") != "VIEW_3D":
        raise CaptureError("viewport capture needs a 3D Viewport: use it from the viewport's sidebar, "
                           "or capture the camera instead")
    if region_3d.view_perspective == "CAMERA" and context.scene.camera is not None:
        yield context.scene.camera
        return
    data = bpy.data.cameras.new("SceneDiffusion Viewport")
    camera = bpy.data.objects.new("SceneDiffusion Viewport", data)
    try:
        camera.matrix_world = region_3d.view_matrix.inverted()
        if region_3d.view_perspective == "ORTHO":
            data.type = "ORTHO"
            data.ortho_scale = region_3d.view_distance * 2.0
        else:
            data.lens = space.lens
            data.sensor_width = 72.0  # the viewport's lens is relative to a 72 mm wide sensor
        data.clip_start, data.clip_end = space.clip_start, space.clip_end
        context.scene.collection.objects.link(camera)
        yield camera
    finally:
        bpy.data.objects.remove(camera)
        bpy.data.cameras.remove(data)
