"""Text-to-texture, the Blender side: the mesh's arrays, the views and their render passes (main
thread), then a TextureJob in the background, and the result as an image and material on the mesh.

The mesh's own UV map is used (its active render map); one is made only if the mesh has none. Nothing
is added to the scene until the texture is done, so cancel or failure leave the object as it was.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from dataclasses import dataclass

import bpy
import numpy as np
from mathutils import Matrix, Vector

from . import session
from .core.exr import find_channel, read_exr
from .core.texture_job import TextureFinished, TextureJob, TextureProgress, TextureSettings, ViewPasses
from .core.texturing import View

NEW_UV_MAP = "SceneDiffusion UV"


class TexturingError(Exception):
    pass


@dataclass(frozen=True)
class CameraSpec:
    """A view to render: where the camera is and what it sees."""

    matrix_world: Matrix
    lens: float = 50.0
    sensor_width: float = 36.0
    ortho: bool = False
    ortho_scale: float = 2.0
    name: str = ""

    def to_json(self, width: int, height: int) -> dict:
        return {"name": self.name, "matrix_world": [list(row) for row in self.matrix_world], "lens": self.lens,
                "sensor_width": self.sensor_width, "sensor_fit": "AUTO", "type": "ORTHO" if self.ortho else "PERSP",
                "ortho_scale": self.ortho_scale, "resolution": [width, height]}


# -- the mesh ------------------------------------------------------------------------------------


def texture_problems(obj) -> str:
    if obj is None:
        return "select a mesh object to texture"
    if obj.type != "MESH":
        return f"{obj.name} is a {obj.type.lower()}, not a mesh"
    if obj.mode == "EDIT":
        return f"{obj.name} is in Edit Mode: switch to Object Mode"
    if not obj.data.polygons:
        return f"{obj.name} has no faces"
    return ""


def ensure_uv_map(obj) -> str:
    """The UV map the texture goes on: the mesh's active render map, or a new one unwrapped now."""
    mesh = obj.data
    maps = [layer for layer in mesh.uv_layers if not layer.name.startswith(".")]  # ".uv_select_*" are internal
    for layer in maps:
        if layer.active_render:
            return layer.name
    if maps:
        return maps[0].name
    layer = mesh.uv_layers.new(name=NEW_UV_MAP)
    mesh.uv_layers.active = layer
    _smart_unwrap(obj)
    return layer.name


def _smart_unwrap(obj) -> None:
    view_layer = bpy.context.view_layer
    previous = view_layer.objects.active
    selected = [o for o in view_layer.objects if o.select_get()]
    try:
        for o in selected:
            o.select_set(False)
        obj.select_set(True)
        view_layer.objects.active = obj
        bpy.ops.object.mode_set(mode="EDIT")
        bpy.ops.mesh.select_all(action="SELECT")
        bpy.ops.uv.smart_project(island_margin=0.01)
        bpy.ops.object.mode_set(mode="OBJECT")
    finally:
        obj.select_set(False)
        for o in selected:
            o.select_set(True)
        view_layer.objects.active = previous


def mesh_arrays(obj, uv_map: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uv (T, 3, 2), positions (T, 3, 3), normals (T, 3, 3)) of the evaluated mesh, world space."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        mesh.calc_loop_triangles()
        tris = np.empty(len(mesh.loop_triangles) * 3, np.int32)
        mesh.loop_triangles.foreach_get("loops", tris)
        corner_vert = np.empty(len(mesh.loops), np.int32)
        mesh.loops.foreach_get("vertex_index", corner_vert)
        co = np.empty(len(mesh.vertices) * 3, np.float32)
        mesh.vertices.foreach_get("co", co)
        # Vertex normals (smooth whatever the shading): the same surface point then gets the same view
        # weights on both sides of a UV seam or a sharp edge, so the two sides blend the same views alike.
        normals = np.empty(len(mesh.vertices) * 3, np.float32)
        mesh.vertices.foreach_get("normal", normals)
        layer = mesh.uv_layers.get(uv_map)
        if layer is None:
            raise TexturingError(f"the UV map '{uv_map}' is gone from {obj.name}'s evaluated mesh (a modifier?)")
        uv = np.empty(len(mesh.loops) * 2, np.float32)
        layer.uv.foreach_get("vector", uv)
    finally:
        evaluated.to_mesh_clear()
    world = np.array(obj.matrix_world, np.float64)
    co = co.reshape(-1, 3) @ world[:3, :3].T + world[:3, 3]
    normal_matrix = np.linalg.inv(world[:3, :3]).T
    normals = normals.reshape(-1, 3) @ normal_matrix.T
    tris = tris.reshape(-1, 3)
    return (uv.reshape(-1, 2)[tris], co[corner_vert[tris]].astype(np.float32),
            normals[corner_vert[tris]].astype(np.float32))


# -- views ---------------------------------------------------------------------------------------


def bounding_sphere(obj) -> tuple[Vector, float]:
    """Centre of the bounding box and the farthest vertex from it (world space): views frame this sphere."""
    corners = [obj.matrix_world @ Vector(c) for c in obj.bound_box]
    centre = sum(corners, Vector()) / 8
    if obj.type != "MESH" or not len(obj.data.vertices):
        return centre, max((c - centre).length for c in corners)
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    world = np.array(obj.matrix_world, np.float64)
    points = co.reshape(-1, 3) @ world[:3, :3].T + world[:3, 3]
    return centre, float(np.linalg.norm(points - np.array(centre), axis=1).max())


def look_at(eye: Vector, target: Vector) -> Matrix:
    direction = (target - eye).normalized()
    up = "Z" if abs(direction.z) < 0.999 else "Y"
    return Matrix.Translation(eye) @ direction.to_track_quat("-Z", up).to_matrix().to_4x4()


def automatic_views(obj, count: int, first: CameraSpec | None, lens: float = 50.0) -> list[CameraSpec]:
    """`first` (the camera or viewport), then a ring around the object and views from top and bottom.

    The ring starts opposite the first view's side and spreads evenly; each camera frames the object's
    bounding sphere. `count` is the total number of views.
    """
    centre, radius = bounding_sphere(obj)
    fov = 2 * math.atan(36.0 / (2 * lens))
    distance = max(radius, 1e-3) / math.sin(fov / 2) * 1.05
    views = [first] if first is not None else []
    start = 0.0
    if first is not None:
        offset = first.matrix_world.translation - centre
        start = math.atan2(offset.y, offset.x)
    remaining = max(count - len(views), 0)
    poles = min(2, remaining) if remaining >= 3 else 0
    ring = remaining - poles
    for k in range(ring):
        angle = start + 2 * math.pi * (k + 1) / (ring + 1) if first is not None else 2 * math.pi * k / ring
        eye = centre + Vector((math.cos(angle), math.sin(angle), 0.35)).normalized() * distance
        views.append(CameraSpec(look_at(eye, centre), lens=lens, name=f"ring {k + 1}"))
    for k, z in enumerate((1.0, -1.0)[:poles]):
        eye = centre + Vector((0.02, 0.0, z)).normalized() * distance
        views.append(CameraSpec(look_at(eye, centre), lens=lens, name="top" if k == 0 else "bottom"))
    return views[:count]


def camera_spec(camera_object) -> CameraSpec:
    data = camera_object.data
    return CameraSpec(camera_object.matrix_world.copy(), lens=data.lens, sensor_width=data.sensor_width,
                      ortho=data.type == "ORTHO", ortho_scale=data.ortho_scale, name=camera_object.name)


@contextlib.contextmanager
def _isolated_render(scene, obj, camera, size: int):
    """Only `obj` renders, with Cycles at one sample and no pixel filter: exact passes, fast."""
    render, cycles = scene.render, scene.cycles
    layer = scene.view_layers[0]
    hidden = [o for o in scene.objects if o is not obj and not o.hide_render and o.type != "CAMERA"]
    saved = dict(camera=scene.camera, engine=render.engine, x=render.resolution_x, y=render.resolution_y,
                 pct=render.resolution_percentage, samples=cycles.samples, filter=render.filter_size,
                 z=layer.use_pass_z, uv=layer.use_pass_uv, path=render.filepath,
                 media=render.image_settings.media_type, codec=render.image_settings.exr_codec,
                 depth=render.image_settings.color_depth, compositing=render.use_compositing,
                 denoise=cycles.use_denoising, adaptive=cycles.use_adaptive_sampling, border=render.use_border)
    try:
        for o in hidden:
            o.hide_render = True
        scene.camera = camera
        render.engine = "CYCLES"
        cycles.device = "CPU"
        cycles.samples, cycles.use_denoising, cycles.use_adaptive_sampling = 1, False, False
        render.filter_size = 0.01
        render.resolution_x = render.resolution_y = size
        render.resolution_percentage = 100
        render.use_compositing = render.use_border = False
        layer.use_pass_z = layer.use_pass_uv = True
        settings = render.image_settings
        settings.media_type, settings.exr_codec, settings.color_depth = "MULTI_LAYER_IMAGE", "NONE", "32"
        yield
    finally:
        for o in hidden:
            o.hide_render = False
        scene.camera = saved["camera"]
        render.engine = saved["engine"]
        render.resolution_x, render.resolution_y = saved["x"], saved["y"]
        render.resolution_percentage = saved["pct"]
        cycles.samples, render.filter_size = saved["samples"], saved["filter"]
        cycles.use_denoising, cycles.use_adaptive_sampling = saved["denoise"], saved["adaptive"]
        layer.use_pass_z, layer.use_pass_uv = saved["z"], saved["uv"]
        render.filepath = saved["path"]
        render.image_settings.media_type = saved["media"]
        render.image_settings.exr_codec, render.image_settings.color_depth = saved["codec"], saved["depth"]
        render.use_compositing, render.use_border = saved["compositing"], saved["border"]


def render_passes(scene, obj, spec: CameraSpec, size: int) -> ViewPasses:
    """The view's Z and UV passes (of `obj` alone) and its matrices."""
    data = bpy.data.cameras.new("SceneDiffusion View")
    camera = bpy.data.objects.new("SceneDiffusion View", data)
    try:
        camera.matrix_world = spec.matrix_world
        data.lens, data.sensor_width, data.sensor_fit = spec.lens, spec.sensor_width, "AUTO"
        if spec.ortho:
            data.type, data.ortho_scale = "ORTHO", spec.ortho_scale
        _, radius = bounding_sphere(obj)
        distance = (spec.matrix_world.translation - bounding_sphere(obj)[0]).length
        data.clip_start = max(1e-3, (distance - radius) * 0.5)
        data.clip_end = (distance + radius) * 2
        scene.collection.objects.link(camera)
        with tempfile.TemporaryDirectory(prefix="scene-diffusion-view-") as folder, \
                _isolated_render(scene, obj, camera, size):
            path = os.path.join(folder, "view.exr")
            scene.render.filepath = path
            bpy.ops.render.render(write_still=True, scene=scene.name)
            channels = read_exr(path)
        z = find_channel(channels, "Depth.Z", "Z")
        uv = np.stack([find_channel(channels, "UV.U", "UV.X"), find_channel(channels, "UV.V", "UV.Y")], axis=-1)
        depsgraph = bpy.context.evaluated_depsgraph_get()
        projection = np.array(camera.calc_matrix_camera(depsgraph, x=size, y=size), np.float64)
        world_to_camera = np.array(camera.matrix_world.inverted(), np.float64)
        view = View(world_to_camera=world_to_camera, projection=projection, z=z,
                    origin=np.array(camera.matrix_world.translation, np.float64), ortho=spec.ortho)
        return ViewPasses(view=view, uv=uv, alpha=(z < 1e9).astype(np.float32))
    finally:
        bpy.data.objects.remove(camera)
        bpy.data.cameras.remove(data)


# -- the job -------------------------------------------------------------------------------------


class TextureSceneJob:
    """A texturing job for one object; ticks like generation.SceneJob and applies the texture at the end."""

    action = "TEXTURE"

    def __init__(self, context, obj, settings: TextureSettings, specs: list[CameraSpec], view_size: int,
                 uv_map: str, backend_source=None) -> None:
        problem = texture_problems(obj)
        if problem:
            raise TexturingError(problem)
        self.object_name = obj.name
        self.scene_name = context.scene.name
        self.settings = settings
        self.specs = specs
        self.view_size = view_size
        self.uv_map = uv_map
        passes = [render_passes(context.scene, obj, spec, view_size) for spec in specs]
        if not passes[0].alpha.any():
            raise TexturingError(f"the first view does not see {obj.name}: aim the camera at it")
        self.job = TextureJob(backend_source or session.backend_source(context), mesh_arrays(obj, uv_map),
                              passes, settings)
        self.progress: TextureProgress | None = None
        self.outcome = None
        self.longest_tick = 0.0
        self.started = time.perf_counter()

    def start(self) -> TextureSceneJob:
        session.set_active_job(self)
        self.job.start()
        return self

    def cancel(self) -> None:
        self.job.cancel()

    @property
    def fraction(self) -> float:
        p = self.progress
        return p.step / p.total if p and p.total else 0.0

    def tick(self, context):
        from .generation import Outcome, _status

        t0 = time.perf_counter()
        try:
            for event in self.job.poll_once():
                if isinstance(event, TextureProgress):
                    self.progress = event
                    _status(context, f"Scene Diffusion: {event.stage}, step {event.step}/{event.total}")
                elif isinstance(event, TextureFinished):
                    session.set_active_job(None)
                    _status(context, None)
                    if event.state != "done":
                        verb = "cancelled: nothing was changed" if event.state == "cancelled" else "failed"
                        message = f"Texturing {verb}" + (f": {event.error}" if event.state == "failed" else "")
                        self.outcome = Outcome(event.state, message)
                    else:
                        self.outcome = self._apply(context, event)
        finally:
            self.longest_tick = max(self.longest_tick, time.perf_counter() - t0)
        return self.outcome

    def _apply(self, context, event: TextureFinished):
        from .generation import Outcome

        obj = bpy.data.objects.get(self.object_name)
        if obj is None:
            return Outcome("failed", f"{self.object_name} is gone: the texture was not applied")
        try:
            material, image = apply_texture(context.scene, obj, event, self.settings, self.uv_map)
        except (ValueError, RuntimeError) as exc:
            return Outcome("failed", f"Could not apply the texture: {exc}")
        seconds = time.perf_counter() - self.started
        return Outcome("done", f"Textured {obj.name} ({event.coverage:.0%} of its UV map painted by "
                               f"{len(event.view_images)} views) in {seconds:.1f} s", [image])


def apply_texture(scene, obj, event: TextureFinished, settings: TextureSettings, uv_map: str):
    """The texture as an image (with its parameters) and a new material on `obj`, all or nothing."""
    from . import materials
    from .generation import add_history, storage_folder

    params = {**event.parameters, "uv_map": uv_map}
    pixels = (np.clip(event.texture, 0, 1) * 255 + 0.5).astype(np.uint8)
    save_dir = storage_folder(scene)
    with materials.Rollback() as rollback:
        image = materials.new_image(f"{obj.name} Texture", pixels, params, pack=save_dir is None, save_dir=save_dir,
                                    rollback=rollback, png=event.png or None)
        material = materials.image_material(image, rollback=rollback)
        _use_uv_map(material, image, uv_map)
        materials.assign_material([obj], material, rollback=rollback)
    add_history(scene, image, params, "TEXTURE")
    return material, image


def _use_uv_map(material, image, uv_map: str) -> None:
    """Read the texture through the UV map it was baked for, by name, whatever map is active later."""
    tree = material.node_tree
    texture = next(n for n in tree.nodes if n.type == "TEX_IMAGE" and n.image == image)
    node = tree.nodes.new("ShaderNodeUVMap")
    node.uv_map = uv_map
    node.location = (texture.location.x - 220, texture.location.y)
    tree.links.new(node.outputs["UV"], texture.inputs["Vector"])
