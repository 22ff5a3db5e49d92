"""Putting generated images into the scene: images, materials, slots and camera projection.

Main thread only (bpy data). Every public function is all-or-nothing: if a step fails, what the
call created (images, files, materials, slots, UV maps, attributes) is removed again and the error
is re-raised. An operator that chains several calls passes one ``Rollback`` to all of them, so a
failure in the last step also takes back the first::

    with Rollback() as rb:
        image = new_image("Restyle", pixels, params, rollback=rb)
        material = image_material(image, rollback=rb)
        assign_material(objects, material, rollback=rb)

Facts this module relies on, checked with Blender 5.0.1 (bpy module, background):

- The Z pass is *planar* depth: the distance along the camera's view axis (camera-space -z), not
  the distance from the camera, in Workbench, Cycles and EEVEE alike. Rendering the factory cube
  and ray casting through pixel centres: Z = 9.8454 where planar depth is 9.8454 and the ray length
  9.8457; off-centre, Z = 11.3093 against planar 11.3092 and ray length 11.3909. Empty background
  is 1e10 in Workbench and Cycles and the camera's clip end in EEVEE (EEVEE's depth is also off by
  about 4e-4 of the depth). For an orthographic camera Z is the distance from the camera's plane.
  So the depth test compares planar camera-space depth with Z, with a tolerance relative to depth.
- ``Object.calc_matrix_camera(depsgraph, x, y, scale_x, scale_y)`` (render size, pixel aspect)
  times the camera's world inverse agrees with ``bpy_extras.object_utils.world_to_camera_view`` to
  1e-7 with shift, pixel aspect, sensor fit, portrait frames and orthographic cameras.
- A generated image packs directly (``image.pack()``), but then the .blend holds Blender's own PNG
  without our text chunks. Instead: ``filepath_raw = "//name.png"``, ``source = 'FILE'``, then
  ``image.pack(data=png_bytes, data_len=...)``: Blender decodes the packed PNG on first use, no
  file is needed and nothing is logged.
- An image no one uses is not written to the .blend (orphans are dropped on save), so new images
  get a fake user by default: a result the GPU spent minutes on must survive saving the file.
- ID properties hold 32-bit integers only: a larger seed goes in as a string.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import bpy
import numpy as np

from .core.png import encode_png

PROPERTY = "scene_diffusion"
"""Custom property on images (JSON of the generation parameters) and materials (True)."""

FLAT_KEYS = ("prompt", "negative_prompt", "seed", "model", "mode", "steps", "cfg_scale", "strength", "sampler")
"""Parameters also stored as flat custom properties on the image, for the UI."""

PROJECTION_UV = "SceneDiffusion Projection"
VISIBILITY_ATTRIBUTE = "SceneDiffusion Visibility"
HOMOGENEOUS_ATTRIBUTE = "SceneDiffusion Projection Homogeneous"

HIDDEN_COLOR = (0.2140, 0.2140, 0.2140, 1.0)
"""Base colour where the camera did not see the surface: 50% grey in sRGB (linear 0.214)."""

MAX_UV_MAPS = 8
_INT32 = (-(2**31), 2**31 - 1)


# ---------------------------------------------------------------------------------------------
# All-or-nothing


class Rollback:
    """What to take back if the work it guards fails; a context manager.

    Inside ``with Rollback() as rb:`` record each change as it is made (``rb.created(id)`` for a
    new data-block, ``rb.on_failure(fn)`` for anything else). On an exception the recorded steps
    run newest first and the exception propagates; a step that itself fails is noted on the
    exception rather than hiding it. On success nothing is undone.
    """

    def __init__(self) -> None:
        self._steps: list[Callable[[], object]] = []

    def created(self, datablock):
        self._steps.append(lambda: remove_created([datablock]))
        return datablock

    def on_failure(self, step: Callable[[], object]) -> None:
        self._steps.append(step)

    def __enter__(self) -> Rollback:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None:
            self.rollback(exc)
        return False

    def rollback(self, exc: BaseException | None = None) -> None:
        steps, self._steps = self._steps, []
        for step in reversed(steps):
            try:
                step()
            except Exception as err:  # keep going: the rest must still be taken back
                if exc is not None:
                    exc.add_note(f"Scene Diffusion: cleaning up after the error also failed: {err!r}")


def remove_created(ids: Iterable[bpy.types.ID]) -> None:
    """Remove data-blocks (any ID type) created by a failed call; ones already gone are skipped."""
    alive = []
    for datablock in ids:
        try:
            datablock.name  # noqa: B018 - raises ReferenceError once the ID was removed
        except ReferenceError:
            continue
        alive.append(datablock)
    if alive:
        bpy.data.batch_remove(alive)


@contextmanager
def _transaction(rollback: Rollback | None) -> Iterator[Rollback]:
    """The caller's rollback when there is one (it decides when to undo), else a new one."""
    if rollback is not None:
        yield rollback
    else:
        with Rollback() as own:
            yield own


# ---------------------------------------------------------------------------------------------
# Images


def new_image(
    name: str,
    pixels: np.ndarray,
    params: dict | None = None,
    *,
    pack: bool = True,
    save_dir: str | None = None,
    fake_user: bool = True,
    rollback: Rollback | None = None,
    png: bytes | None = None,
) -> bpy.types.Image:
    """A new sRGB image holding ``pixels``: (height, width, 3 or 4), uint8 or float 0..1, top row first.

    ``png``: these pixels already encoded (a backend's result, with its own text chunks); stored as they
    are when the image is saved or packed, which spares the main thread the encoding.

    ``params`` (the generation parameters) go on the image as ``image["scene_diffusion"]`` (JSON)
    plus flat properties for the keys in ``FLAT_KEYS``, and into the PNG's text chunks
    (``scene_diffusion``, and ``parameters`` when ``params`` has that A1111 string).

    Where the pixels live:

    - ``save_dir`` (absolute, or ``//``-relative to the .blend): a PNG written there atomically under
      the image's name (never over an existing file), referenced by path (``//``-relative when
      under the saved .blend's folder), not packed;
    - else ``pack``: the same PNG packed into the .blend (``//<name>.png`` when unpacked);
    - else a generated image in memory (set with ``foreach_set``), lost on reload unless saved;
      changing its colour space also regenerates it blank (Blender 5.0), so set pixels last.

    Images get a fake user (``fake_user``): Blender drops unused images when it saves the file.
    """
    if np.ndim(pixels) != 3 or np.shape(pixels)[2] not in (3, 4) or 0 in np.shape(pixels)[:2]:
        raise ValueError(f"pixels must be (height, width, 3 or 4), not {np.shape(pixels)}")
    properties = _image_properties(params)
    height, width = np.shape(pixels)[:2]
    has_alpha = np.ndim(pixels) == 3 and np.shape(pixels)[2] == 4
    encoded = png is not None and (save_dir is not None or pack)
    rgba = None if encoded else _bottom_up_rgba(pixels)[0]
    with _transaction(rollback) as rb:
        image = rb.created(bpy.data.images.new(name, width, height, alpha=has_alpha))
        image.colorspace_settings.name = "sRGB"  # first: changing it later drops a generated image's pixels
        for key, value in properties.items():
            image[key] = value
        image.file_format = "PNG"
        if save_dir is not None or pack:
            if png is None:
                png = encode_png(_top_down_bytes(rgba, width, height, has_alpha), _png_text(params))
            if save_dir is not None:
                image.filepath_raw = _write_png(png, save_dir, _file_name(image), rb)
                image.source = "FILE"
            else:
                image.filepath_raw = "//" + _file_name(image)
                image.source = "FILE"
                image.pack(data=png, data_len=len(png))
        else:
            image.pixels.foreach_set(rgba)
            image.update()
        image.use_fake_user = fake_user
        return image


def _bottom_up_rgba(pixels: np.ndarray) -> tuple[np.ndarray, bool]:
    """Flat float32 RGBA in Blender's order (bottom row first), and whether alpha was given."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4) or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError(f"pixels must be (height, width, 3 or 4), not {pixels.shape}")
    if pixels.dtype == np.uint8:
        values = pixels.astype(np.float32) / 255.0
    elif np.issubdtype(pixels.dtype, np.floating):
        values = np.clip(np.nan_to_num(pixels.astype(np.float32)), 0.0, 1.0)
    else:
        raise ValueError(f"pixels must be uint8 or float in 0..1, not {pixels.dtype}")
    height, width, channels = values.shape
    rgba = np.ones((height, width, 4), np.float32)
    rgba[..., :channels] = values[::-1]
    return rgba.ravel(), channels == 4


def _top_down_bytes(rgba: np.ndarray, width: int, height: int, has_alpha: bool) -> np.ndarray:
    image = rgba.reshape(height, width, 4)[::-1, :, : 4 if has_alpha else 3]
    return np.rint(image * 255.0).astype(np.uint8)


def _image_properties(params: dict | None) -> dict:
    if not params:
        return {}
    properties = {PROPERTY: _params_json(params)}
    for key in FLAT_KEYS:
        value = params.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and not _INT32[0] <= value <= _INT32[1]:
            value = str(value)  # ID properties are 32-bit; seeds often are not
        if isinstance(value, str | int | float | bool):
            properties[key] = value
    return properties


def _params_json(params: dict) -> str:
    return json.dumps(params, default=str, ensure_ascii=False, sort_keys=True)


def _png_text(params: dict | None) -> dict[str, str]:
    if not params:
        return {}
    text = {PROPERTY: _params_json(params)}
    if isinstance(params.get("parameters"), str) and params["parameters"]:
        text["parameters"] = params["parameters"]
    return text


def _file_name(image: bpy.types.Image) -> str:
    """The image's name as a file name: only what Windows, macOS or Linux forbid is replaced."""
    stem = re.sub(r'[<>:"/\\|?*\x00-\x1f]', "_", image.name).strip(" .")
    return (stem or "image") + ".png"


def _write_png(png: bytes, save_dir: str, file_name: str, rb: Rollback) -> str:
    """Write ``png`` under a free name in ``save_dir`` (temporary file, then rename); return the path to store."""
    directory = os.path.abspath(bpy.path.abspath(save_dir))
    for made in _make_dirs(directory):
        rb.on_failure(lambda made=made: os.rmdir(made) if not os.listdir(made) else None)
    path = _free_path(directory, file_name)
    fd, partial = tempfile.mkstemp(prefix=".", suffix=".png.partial", dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(png)
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    rb.on_failure(lambda: os.remove(path))
    return _blend_relative(path)


def _make_dirs(directory: str) -> list[str]:
    """Create ``directory``; return the folders that did not exist, deepest last."""
    missing = []
    head = directory
    while head and not os.path.isdir(head):
        missing.append(head)
        parent = os.path.dirname(head)
        if parent == head:
            break
        head = parent
    os.makedirs(directory, exist_ok=True)
    return missing[::-1]


def _free_path(directory: str, file_name: str) -> str:
    """A path in ``directory`` that no file has: never overwrite the user's files."""
    stem, ext = os.path.splitext(file_name)
    path, n = os.path.join(directory, file_name), 0
    while os.path.exists(path):
        n += 1
        path = os.path.join(directory, f"{stem}.{n:03d}{ext}")
    return path


def _blend_relative(path: str) -> str:
    if bpy.data.filepath:
        blend_dir = os.path.dirname(os.path.abspath(bpy.data.filepath))
        try:
            if os.path.commonpath([blend_dir, path]) == blend_dir:
                return bpy.path.relpath(path)
        except ValueError:  # another drive (Windows)
            pass
    return path


# ---------------------------------------------------------------------------------------------
# Materials


def image_material(
    image: bpy.types.Image, name: str | None = None, *, rollback: Rollback | None = None
) -> bpy.types.Material:
    """A new material (named after the image): Principled BSDF, Base Color from an Image Texture of ``image``.

    The texture reads the active render UV map; its alpha is left unwired.
    """
    with _transaction(rollback) as rb:
        material = rb.created(bpy.data.materials.new(name or image.name))
        tree, bsdf = _principled_tree(material)
        texture = _node(tree, "ShaderNodeTexImage", (-400, 0), label="Generated")
        texture.image = image
        tree.links.new(texture.outputs["Color"], bsdf.inputs["Base Color"])
        material[PROPERTY] = True
        return material


def _principled_tree(material: bpy.types.Material) -> tuple[bpy.types.NodeTree, bpy.types.Node]:
    """The material's node tree reduced to Principled BSDF -> Material Output, laid out at the origin."""
    if material.node_tree is None:  # Blender < 5.0: materials start without nodes
        material.use_nodes = True
    tree = material.node_tree
    for node in list(tree.nodes):
        if node.type not in ("BSDF_PRINCIPLED", "OUTPUT_MATERIAL"):
            tree.nodes.remove(node)
    bsdf = next((n for n in tree.nodes if n.type == "BSDF_PRINCIPLED"), None) or tree.nodes.new(
        "ShaderNodeBsdfPrincipled"
    )
    output = next((n for n in tree.nodes if n.type == "OUTPUT_MATERIAL"), None) or tree.nodes.new(
        "ShaderNodeOutputMaterial"
    )
    bsdf.location, output.location = (0, 0), (340, 0)
    if not output.inputs["Surface"].is_linked:
        tree.links.new(bsdf.outputs["BSDF"], output.inputs["Surface"])
    return tree, bsdf


def _node(tree: bpy.types.NodeTree, kind: str, location: tuple[float, float], label: str = "") -> bpy.types.Node:
    node = tree.nodes.new(kind)
    node.location = location
    if label:
        node.label = label
    return node


def _socket(sockets, identifier: str):
    return next(s for s in sockets if s.identifier == identifier)


# ---------------------------------------------------------------------------------------------
# Material slots


def assign_material(
    objects: Iterable[bpy.types.Object], material: bpy.types.Material, *, rollback: Rollback | None = None
) -> None:
    """Add ``material`` in a new slot of each object and use it everywhere; the user's slots stay.

    Meshes get every face on the new slot; curves every spline and text every character. Other
    objects with materials (metaballs, volumes, point clouds, hair, grease pencil) only get the
    slot. Objects sharing data get one slot. A slot that already holds ``material`` is reused.
    Raises ValueError, before changing anything, for objects that cannot take a material (empties,
    cameras, lights, ...), are in Edit Mode, or whose data is linked from a library.
    """
    objects = _unique(objects)
    _raise_problems(material_problems(objects))
    with _transaction(rollback) as rb:
        for data in _unique(obj.data for obj in objects):
            _use_material(data, material, rb)


def _unique(items: Iterable) -> list:
    seen: dict[int, object] = {}
    for item in items:
        seen.setdefault(item.as_pointer(), item)
    return list(seen.values())


def material_problems(objects: Iterable[bpy.types.Object]) -> dict[str, str]:
    """{object name: why it cannot take a material} for those that cannot; empty when all can."""
    problems = {}
    for obj in objects:
        if obj.data is None or not hasattr(obj.data, "materials"):
            problems[obj.name] = "cannot take a material (select meshes, curves or text)"
        elif obj.mode == "EDIT":
            problems[obj.name] = "is in Edit Mode (switch to Object Mode first)"
        elif not obj.data.is_editable:
            problems[obj.name] = "has data linked from a library (make it local first)"
    return problems


def projection_problems(objects: Iterable[bpy.types.Object]) -> dict[str, str]:
    """{object name: why a camera projection cannot go on it}; filter with it before projecting."""
    objects = _unique(objects)
    problems = material_problems(objects)
    users: dict[int, list[str]] = {}
    for obj in objects:
        if obj.name in problems:
            continue
        if obj.type != "MESH":
            problems[obj.name] = "is not a mesh (projection needs a UV map)"
        elif len(obj.data.uv_layers) >= MAX_UV_MAPS:
            problems[obj.name] = f"already has {MAX_UV_MAPS} UV maps, Blender's limit (remove one)"
        else:
            users.setdefault(obj.data.as_pointer(), []).append(obj.name)
    for names in users.values():
        if len(names) > 1:
            for name in names:
                others = ", ".join(n for n in names if n != name)
                problems[name] = (
                    f"shares its mesh with {others}, and a mesh holds one projection "
                    "(Object > Relations > Make Single User > Object & Data)"
                )
    return problems


def _raise_problems(problems: dict[str, str]) -> None:
    if problems:
        raise ValueError("; ".join(f"{name} {why}" for name, why in problems.items()))


def _use_material(data: bpy.types.ID, material: bpy.types.Material, rb: Rollback) -> None:
    slots = data.materials
    index = next((i for i, m in enumerate(slots) if m == material), None)
    if index is None:
        slots.append(material)
        index = len(slots) - 1
        rb.on_failure(lambda: slots.pop(index=index))
    if isinstance(data, bpy.types.Mesh):
        _set_indices(data.polygons, index, rb)
        data.update()
    elif isinstance(data, bpy.types.TextCurve):
        _set_indices(data.body_format, index, rb)
    elif isinstance(data, bpy.types.Curve):
        _set_indices(data.splines, index, rb)


def _set_indices(collection, index: int, rb: Rollback) -> None:
    before = np.empty(len(collection), np.int32)
    collection.foreach_get("material_index", before)
    rb.on_failure(lambda: collection.foreach_set("material_index", before))
    collection.foreach_set("material_index", np.full(len(collection), index, np.int32))


# ---------------------------------------------------------------------------------------------
# Camera projection


def project_from_camera(
    objects: Iterable[bpy.types.Object],
    camera: bpy.types.Object,
    image: bpy.types.Image,
    depth: np.ndarray | None = None,
    tolerance: float = 0.01,
    *,
    scene: bpy.types.Scene | None = None,
    hidden_color: tuple[float, float, float, float] = HIDDEN_COLOR,
    rollback: Rollback | None = None,
) -> bpy.types.Material:
    """Project ``image`` (a render from ``camera``, restyled) onto mesh ``objects``; return the new material.

    Each mesh the camera sees gets, all named with one suffix when the names are taken:

    - a UV map ``PROJECTION_UV`` with each corner's projected (x, y) in the frame, 0..1 from the
      bottom left (what ``world_to_camera_view`` gives), for baking, painting or export; the
      user's UV maps and their active and active-render flags stay as they were;
    - a float corner attribute ``VISIBILITY_ATTRIBUTE``: 1 where the corner is in the frame, on a
      face turned towards the camera and (with ``depth``) not behind what the render saw; else 0;
    - a float-vector corner attribute ``HOMOGENEOUS_ATTRIBUTE``: (x·w, y·w, w). UVs interpolate
      affinely across a face, which shifts the picture on faces whose depth varies (on the factory
      cube at 320x240, up to 4 pixels); these are linear in position, so dividing per pixel in the
      shader gives the exact perspective projection (under a pixel). The material uses this,
      by name, so the active render UV map does not matter.

    The material: Base Color = mix(``hidden_color``, image, visibility): what the camera did not
    see is neutral grey, not a stretched copy of the picture. It goes in a new slot on every face
    (``assign_material``). Meshes of which the camera sees no corner are left untouched; if it
    sees none of them, ValueError.

    ``depth`` is the render's Z pass, (height, width) top row first, at the scene's render size:
    a corner is hidden when it lies more than ``tolerance`` (a fraction of its depth) behind the
    largest Z of the four pixels around its projection (the largest, so that corners on silhouettes
    and creases are not lost to a neighbouring pixel). Without ``depth`` one object hiding another
    is not detected. Positions include deforming modifiers and shape keys when they keep the mesh's
    topology; otherwise the base mesh is used. Objects that cannot take a projection raise
    ValueError before anything changes (``projection_problems`` tells which, to filter them out).
    """
    scene = scene or bpy.context.scene
    objects = _unique(objects)
    if camera is None or camera.type != "CAMERA":
        raise ValueError(f"not a camera: {getattr(camera, 'name', camera)}")
    if camera.data.type == "PANO":
        raise ValueError(f"camera {camera.name} is panoramic: projection needs a perspective or orthographic camera")
    _raise_problems(projection_problems(objects))
    width, height = _render_size(scene)
    if depth is not None:
        # The Z pass fixes the frame: it was rendered from this camera at its own size (a capture renders at
        # the generation size, with the scene's aspect), so project at that size.
        depth = np.asarray(depth, dtype=np.float32)
        if depth.ndim != 2:
            raise ValueError(f"depth must be a 2D Z pass, got shape {depth.shape}")
        height, width = depth.shape

    lens = _lens(scene, camera, width, height)
    projected = {}
    for obj in objects:
        uv, visible, homogeneous = _project_mesh(obj, lens, depth, tolerance)
        if visible.any():
            projected[obj.name] = (obj, uv, visible, homogeneous)
    if not projected:
        raise ValueError(f"camera {camera.name} sees none of: {', '.join(o.name for o in objects)}")
    targets = [obj for obj, *_ in projected.values()]
    uv_name, vis_name, hom_name = _free_names(targets)

    with _transaction(rollback) as rb:
        for obj, uv, visible, homogeneous in projected.values():
            _write_projection(obj.data, (uv_name, vis_name, hom_name), uv, visible, homogeneous, rb)
        material = rb.created(bpy.data.materials.new(image.name))
        shadow = None
        if depth is not None and not lens.ortho:
            shadow = rb.created(_depth_image(f"{image.name} Depth", depth, tolerance))
        _projection_nodes(material, image, hom_name, vis_name, hidden_color, shadow)
        material[PROPERTY] = True
        material[PROPERTY + "_projection"] = json.dumps(
            {"camera": camera.name, "uv_map": uv_name, "visibility": vis_name, "homogeneous": hom_name}
        )
        assign_material(targets, material, rollback=rb)
        return material


@dataclass(frozen=True)
class _Lens:
    depsgraph: bpy.types.Depsgraph
    view: np.ndarray  # world -> camera space
    view_projection: np.ndarray  # world -> clip space
    origin: np.ndarray
    forward: np.ndarray
    ortho: bool
    clip: tuple[float, float]


def _lens(scene: bpy.types.Scene, camera: bpy.types.Object, width: int, height: int) -> _Lens:
    depsgraph = bpy.context.evaluated_depsgraph_get()
    camera_eval = camera.evaluated_get(depsgraph)
    r = scene.render
    projection = _matrix(
        camera_eval.calc_matrix_camera(depsgraph, x=width, y=height, scale_x=r.pixel_aspect_x, scale_y=r.pixel_aspect_y)
    )
    world = _matrix(camera_eval.matrix_world)
    view = np.linalg.inv(world)
    return _Lens(
        depsgraph=depsgraph,
        view=view,
        view_projection=projection @ view,
        origin=world[:3, 3],
        forward=-world[:3, 2] / np.linalg.norm(world[:3, 2]),
        ortho=camera.data.type == "ORTHO",
        clip=(camera.data.clip_start, camera.data.clip_end),
    )


def _matrix(m) -> np.ndarray:
    return np.array(m, dtype=np.float64)


def _render_size(scene: bpy.types.Scene) -> tuple[int, int]:
    r = scene.render
    return (
        max(1, int(r.resolution_x * r.resolution_percentage / 100)),
        max(1, int(r.resolution_y * r.resolution_percentage / 100)),
    )


def _free_names(objects: Sequence[bpy.types.Object]) -> tuple[str, str, str]:
    """Attribute names free on every mesh, with one suffix for all, so one material fits all."""
    bases = (PROJECTION_UV, VISIBILITY_ATTRIBUTE, HOMOGENEOUS_ATTRIBUTE)
    taken = {a.name for o in objects for a in o.data.attributes} | {u.name for o in objects for u in o.data.uv_layers}
    n = 0
    while True:
        names = tuple(base if n == 0 else f"{base}.{n:03d}" for base in bases)
        if taken.isdisjoint(names):
            return names
        n += 1


def _mesh_arrays(mesh: bpy.types.Mesh) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    corner_vert = np.empty(len(mesh.loops), np.int32)
    mesh.loops.foreach_get("vertex_index", corner_vert)
    normals = np.empty(len(mesh.polygons) * 3, np.float32)
    mesh.polygon_normals.foreach_get("vector", normals)
    loop_total = np.empty(len(mesh.polygons), np.int32)
    mesh.polygons.foreach_get("loop_total", loop_total)
    # Face corners are stored face after face, so each corner's face is a repeat of face indices.
    corner_face = np.repeat(np.arange(len(mesh.polygons)), loop_total)
    return co.reshape(-1, 3), corner_vert, normals.reshape(-1, 3), corner_face


def _project_mesh(obj, lens: _Lens, depth: np.ndarray | None, tolerance: float):
    """Per corner: projected (x, y), visibility 0/1, and (x·w, y·w, w)."""
    mesh = obj.data
    obj_eval = obj.evaluated_get(lens.depsgraph)
    evaluated = obj_eval.to_mesh()
    try:
        same = (len(evaluated.vertices), len(evaluated.loops), len(evaluated.polygons)) == (
            len(mesh.vertices),
            len(mesh.loops),
            len(mesh.polygons),
        )
        co, corner_vert, normals, corner_face = _mesh_arrays(evaluated if same else mesh)
    finally:
        obj_eval.to_mesh_clear()
    world = _matrix(obj_eval.matrix_world)
    points = co @ world[:3, :3].T + world[:3, 3]
    points_h = np.c_[points, np.ones(len(points))]
    clip = (points_h @ lens.view_projection.T)[corner_vert]
    distance = -(points_h @ lens.view[2])[corner_vert]  # planar depth, as the Z pass holds it
    w = clip[:, 3]
    ahead = w > 1e-9
    safe_w = np.where(ahead, w, 1.0)
    uv = np.where(ahead[:, None], (clip[:, :2] / safe_w[:, None] + 1.0) * 0.5, 0.0)
    homogeneous = np.c_[(clip[:, :2] + w[:, None]) * 0.5, w]

    # Normals are covectors: transform by the inverse transpose (right for negative scale too).
    face_normals = normals @ np.linalg.inv(world[:3, :3])
    toward = lens.forward[None, :] if lens.ortho else points[corner_vert] - lens.origin
    facing = np.einsum("ij,ij->i", face_normals[corner_face], np.broadcast_to(toward, face_normals[corner_face].shape))
    # The frame's edge is not decided here, per corner: a big face whose corners all lie outside the frame
    # (a floor, say) is still partly seen. The material clips the image per pixel instead.
    in_frame = (uv >= 0.0).all(axis=1) & (uv <= 1.0).all(axis=1)
    visible = ahead & (facing < 0.0) & (distance >= lens.clip[0]) & (distance <= lens.clip[1])
    if depth is not None:  # occlusion can only be judged where the Z pass has a pixel
        visible &= ~in_frame | _unoccluded(uv, distance, depth, tolerance)
    return uv.astype(np.float32), visible.astype(np.float32), homogeneous.astype(np.float32)


def _unoccluded(uv: np.ndarray, distance: np.ndarray, depth: np.ndarray, tolerance: float) -> np.ndarray:
    height, width = depth.shape
    x = uv[:, 0] * width - 0.5  # pixel-centre coordinates
    y = (1.0 - uv[:, 1]) * height - 0.5  # rows from the top, as depth is stored
    x0, y0 = np.floor(x).astype(np.intp), np.floor(y).astype(np.intp)
    xs = np.clip(np.stack([x0, x0 + 1]), 0, width - 1)
    ys = np.clip(np.stack([y0, y0 + 1]), 0, height - 1)
    nearest_far = np.maximum.reduce([depth[ys[i], xs[j]] for i in (0, 1) for j in (0, 1)])
    return distance <= nearest_far + tolerance * distance


def _write_projection(mesh, names: tuple[str, str, str], uv, visible, homogeneous, rb: Rollback) -> None:
    uv_name, vis_name, hom_name = names
    uv_layers = mesh.uv_layers
    active_index = uv_layers.active_index
    active_render = next((layer.name for layer in uv_layers if layer.active_render), None)
    attribute_index = mesh.attributes.active_index

    def restore_active() -> None:
        if active_index >= 0 and active_index < len(uv_layers):
            uv_layers.active_index = active_index
        if active_render is not None and active_render in uv_layers:
            uv_layers[active_render].active_render = True
        mesh.attributes.active_index = attribute_index

    def remove() -> None:
        for name in names:
            if name in mesh.attributes:
                mesh.attributes.remove(mesh.attributes[name])
        restore_active()
        mesh.update()

    rb.on_failure(remove)
    layer = uv_layers.new(name=uv_name, do_init=False)
    if layer is None:
        raise RuntimeError(f"Blender refused a new UV map on mesh {mesh.name!r}")
    layer.uv.foreach_set("vector", uv.ravel())
    mesh.attributes.new(vis_name, "FLOAT", "CORNER").data.foreach_set("value", visible)
    mesh.attributes.new(hom_name, "FLOAT_VECTOR", "CORNER").data.foreach_set("vector", homogeneous.ravel())
    restore_active()
    mesh.update()


def _depth_image(name: str, depth: np.ndarray, tolerance: float) -> bpy.types.Image:
    """The Z pass as a packed float image, scaled by (1 + tolerance), for the per-pixel occlusion test."""
    height, width = depth.shape
    image = bpy.data.images.new(name, width, height, float_buffer=True, is_data=True)
    scaled = np.nan_to_num(depth[::-1] * (1.0 + tolerance), nan=1e10, posinf=1e10).astype(np.float32)
    rgba = np.repeat(scaled[..., None], 4, axis=2)
    rgba[..., 3] = 1.0
    image.pixels.foreach_set(rgba.ravel())
    image.pack()
    image.use_fake_user = True
    return image


def _projection_nodes(material, image, hom_name: str, vis_name: str, hidden_color, shadow=None) -> None:
    """(x·w, y·w, w) / w -> image; mix(hidden colour, image, visibility) -> Base Color."""
    tree, bsdf = _principled_tree(material)
    links = tree.links
    homogeneous = _node(tree, "ShaderNodeAttribute", (-1060, 0), label="Projection")
    homogeneous.attribute_name = hom_name
    split = _node(tree, "ShaderNodeSeparateXYZ", (-880, -60))
    divide = _node(tree, "ShaderNodeVectorMath", (-700, 0), label="Perspective divide")
    divide.operation = "DIVIDE"
    texture = _node(tree, "ShaderNodeTexImage", (-520, 0), label="Generated")
    texture.image = image
    texture.extension = "CLIP"  # outside the camera's frame: alpha 0, so the hidden colour shows
    visibility = _node(tree, "ShaderNodeAttribute", (-520, 260), label="Visibility")
    visibility.attribute_name = vis_name
    mix = _node(tree, "ShaderNodeMix", (-220, 60), label="Seen by the camera")
    mix.data_type = "RGBA"
    _socket(mix.inputs, "A_Color").default_value = hidden_color
    links.new(_socket(homogeneous.outputs, "Vector"), split.inputs["Vector"])
    links.new(_socket(homogeneous.outputs, "Vector"), divide.inputs[0])
    links.new(split.outputs["Z"], divide.inputs[1])
    links.new(divide.outputs["Vector"], texture.inputs["Vector"])
    seen = _node(tree, "ShaderNodeMath", (-360, 200), label="Seen and in frame")
    seen.operation = "MULTIPLY"
    links.new(_socket(visibility.outputs, "Fac"), seen.inputs[0])
    links.new(texture.outputs["Alpha"], seen.inputs[1])
    factor = seen.outputs["Value"]
    if shadow is not None:
        # Per pixel, as a shadow map: this point's depth from the camera (w, the planar depth the Z pass
        # holds) against the Z the render saw through the same pixel. Corners alone cannot tell which part
        # of a big face lies behind something.
        z_seen = _node(tree, "ShaderNodeTexImage", (-520, -300), label="Camera depth")
        z_seen.image, z_seen.interpolation, z_seen.extension = shadow, "Closest", "EXTEND"
        links.new(divide.outputs["Vector"], z_seen.inputs["Vector"])
        in_front = _node(tree, "ShaderNodeMath", (-360, -160), label="Not behind what the camera saw")
        in_front.operation = "LESS_THAN"
        links.new(split.outputs["Z"], in_front.inputs[0])
        links.new(z_seen.outputs["Color"], in_front.inputs[1])
        both = _node(tree, "ShaderNodeMath", (-200, 220), label="Visible")
        both.operation = "MULTIPLY"
        links.new(factor, both.inputs[0])
        links.new(in_front.outputs["Value"], both.inputs[1])
        factor = both.outputs["Value"]
    links.new(factor, _socket(mix.inputs, "Factor_Float"))
    links.new(texture.outputs["Color"], _socket(mix.inputs, "B_Color"))
    links.new(_socket(mix.outputs, "Result_Color"), bsdf.inputs["Base Color"])
