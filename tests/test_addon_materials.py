"""blender_addon.materials in real Blender: images, materials, slots, camera projection, rollback, undo.

Every test starts from Blender's factory scene (Camera, Cube with "Material", Light).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
from bpy_extras.object_utils import world_to_camera_view  # noqa: E402
from bpy_helpers import factory_scene, render_depth, render_passes  # noqa: E402
from mathutils import Vector  # noqa: E402

from blender_addon import materials  # noqa: E402
from blender_addon.core.exr import find_channel  # noqa: E402
from blender_addon.core.png import decode_png  # noqa: E402

# The factory camera sees the cube's +X, -Y and +Z faces.
FACING_CAMERA = [(1, 0, 0), (0, -1, 0), (0, 0, 1)]


@pytest.fixture
def scene():
    return factory_scene()


def counts() -> tuple[int, int]:
    return len(bpy.data.images), len(bpy.data.materials)


def gradient(height=6, width=10, channels=3) -> np.ndarray:
    """Red grows down the rows, green along the columns: any flip or transpose shows."""
    rows, cols = np.mgrid[0:height, 0:width]
    pixels = np.stack([rows * 40, cols * 25, np.full_like(rows, 7), np.full_like(rows, 200)][:channels], -1)
    return pixels.astype(np.uint8)


def read_top_down(image) -> np.ndarray:
    width, height = image.size
    flat = np.empty(width * height * 4, np.float32)
    image.pixels.foreach_get(flat)
    return np.rint(flat.reshape(height, width, 4)[::-1] * 255).astype(np.uint8)


def corner_values(mesh, name: str) -> np.ndarray:
    values = np.empty(len(mesh.loops), np.float32)
    mesh.attributes[name].data.foreach_get("value", values)
    return values


def corner_uvs(mesh, name: str) -> np.ndarray:
    uvs = np.empty(len(mesh.loops) * 2, np.float32)
    mesh.uv_layers[name].uv.foreach_get("vector", uvs)
    return uvs.reshape(-1, 2)


def corner_normals(obj) -> np.ndarray:
    """World-space normal of each corner's face."""
    mesh = obj.data
    normals = np.array([(obj.matrix_world.to_3x3() @ p.normal).normalized()[:] for p in mesh.polygons])
    faces = np.repeat(np.arange(len(mesh.polygons)), [p.loop_total for p in mesh.polygons])
    return normals[faces]


# -- images -------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["pack", "save", "memory"])
@pytest.mark.parametrize("channels", [3, 4])
def test_pixels_round_trip_top_row_first(scene, tmp_path, storage, channels):
    pixels = gradient(channels=channels)
    image = materials.new_image(
        "Result", pixels, pack=storage == "pack", save_dir=str(tmp_path) if storage == "save" else None
    )
    assert tuple(image.size) == (10, 6)
    back = read_top_down(image)
    np.testing.assert_array_equal(back[..., :channels], pixels)
    if channels == 3:
        assert (back[..., 3] == 255).all()
    # Blender's own order is bottom row first: its first pixel is the array's bottom-left one.
    assert np.rint(np.array(image.pixels[:3]) * 255).astype(int).tolist() == pixels[-1, 0, :3].tolist()
    assert image.colorspace_settings.name == "sRGB"


def test_float_pixels(scene):
    pixels = np.zeros((2, 3, 3), np.float32)
    pixels[0, 0] = (1.0, 0.5, 2.0)  # top-left; 2.0 is clipped
    image = materials.new_image("Float", pixels)
    assert read_top_down(image)[0, 0, :3].tolist() == [255, 128, 255]


def test_bad_pixels_create_nothing(scene):
    before = counts()
    for bad in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4, 3), np.int64)):
        with pytest.raises(ValueError, match="pixels"):
            materials.new_image("Bad", bad)
    assert counts() == before


def test_parameters_on_the_image_and_in_the_png(scene):
    params = {
        "prompt": "a castle " * 200,
        "seed": 2**40,
        "steps": 20,
        "model": "testing/tiny-sd",
        "controlnet": {"depth": 0.8},
        "parameters": "a castle\nSteps: 20, Seed: 1099511627776",
    }
    image = materials.new_image("Result", gradient(), params)
    assert json.loads(image["scene_diffusion"]) == params
    assert image["prompt"] == params["prompt"]
    assert image["seed"] == str(2**40)  # ID properties are 32-bit
    assert image["steps"] == 20
    assert image["model"] == "testing/tiny-sd"
    _, text = decode_png(bytes(image.packed_file.data))
    assert json.loads(text["scene_diffusion"]) == params
    assert text["parameters"] == params["parameters"]


def test_packed_image_survives_save_and_reload(scene, tmp_path):
    image = materials.new_image("Packed Result", gradient())
    assert image.packed_file is not None
    assert image.filepath == "//Packed Result.png"
    assert image.use_fake_user  # else Blender drops the unused image when saving
    blend = str(tmp_path / "scene.blend")
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    bpy.ops.wm.open_mainfile(filepath=blend)
    np.testing.assert_array_equal(read_top_down(bpy.data.images["Packed Result"])[..., :3], gradient())
    assert os.listdir(tmp_path) == ["scene.blend"]  # nothing unpacked


def test_saved_png_is_atomic_and_never_overwrites(scene, tmp_path):
    folder = tmp_path / "new" / "folder"
    params = {"prompt": "p", "parameters": "p\nSteps: 1"}
    first = materials.new_image("Result", gradient(), params, save_dir=str(folder))
    path = folder / "Result.png"
    assert image_path(first) == str(path)
    assert first.packed_file is None and first.source == "FILE"
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    pixels, text = decode_png(data)
    np.testing.assert_array_equal(pixels, gradient())
    assert text["parameters"] == "p\nSteps: 1"

    # An image of the same name (a new session, say) gets a new file; the first file is untouched.
    bpy.data.images.remove(first)
    second = materials.new_image("Result", gradient(channels=4), save_dir=str(folder))
    assert image_path(second) == str(folder / "Result.001.png")
    assert path.read_bytes() == data
    assert sorted(os.listdir(folder)) == ["Result.001.png", "Result.png"]  # no temporary files left


def image_path(image) -> str:
    return os.path.normpath(bpy.path.abspath(image.filepath))


def test_saved_png_is_relative_to_the_blend(scene, tmp_path):
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))
    image = materials.new_image("Result", gradient(), save_dir="//textures")
    assert image.filepath == "//textures/Result.png"
    assert (tmp_path / "textures" / "Result.png").is_file()


def test_failed_save_leaves_no_image_and_no_file(scene, tmp_path, monkeypatch):
    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(materials.os, "replace", refuse)
    before = counts()
    folder = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        materials.new_image("Result", gradient(), save_dir=str(folder))
    assert counts() == before
    assert not folder.exists()  # the folder it made is gone too


# -- materials and slots ----------------------------------------------------------------------


def test_image_material_node_graph(scene):
    image = materials.new_image("Result", gradient())
    material = materials.image_material(image)
    assert material.name == "Result"
    assert material["scene_diffusion"] is True or material["scene_diffusion"] == 1
    nodes = material.node_tree.nodes
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    output = next(n for n in nodes if n.type == "OUTPUT_MATERIAL")
    (link,) = bsdf.inputs["Base Color"].links
    assert link.from_node.type == "TEX_IMAGE" and link.from_node.image == image
    assert not bsdf.inputs["Alpha"].is_linked
    assert output.inputs["Surface"].links[0].from_node == bsdf
    assert link.from_node.location.x < bsdf.location.x < output.location.x
    assert materials.image_material(image, "Named").name == "Named"


def test_assign_keeps_the_users_material(scene):
    cube = bpy.data.objects["Cube"]
    original = cube.material_slots[0].material
    material = materials.image_material(materials.new_image("Result", gradient()))
    materials.assign_material([cube], material)
    assert [s.material for s in cube.material_slots] == [original, material]
    indices = np.empty(len(cube.data.polygons), np.int32)
    cube.data.polygons.foreach_get("material_index", indices)
    assert (indices == 1).all()
    materials.assign_material([cube, cube], material)  # again: the slot is reused, not duplicated
    assert len(cube.material_slots) == 2


def test_assign_to_objects_without_slots_and_to_curves(scene):
    bpy.ops.mesh.primitive_plane_add()
    plane = bpy.context.active_object
    bpy.ops.curve.primitive_bezier_circle_add()
    circle = bpy.context.active_object
    bpy.ops.object.text_add()
    text = bpy.context.active_object
    material = bpy.data.materials.new("Generated")
    materials.assign_material([plane, circle, text], material)
    for obj in (plane, circle, text):
        assert [s.material for s in obj.material_slots] == [material]


def test_objects_that_cannot_take_a_material_change_nothing(scene):
    cube = bpy.data.objects["Cube"]
    bpy.ops.object.empty_add()
    empty = bpy.context.active_object
    material = bpy.data.materials.new("Generated")
    before = counts()
    with pytest.raises(ValueError) as err:
        materials.assign_material([cube, empty, bpy.data.objects["Camera"]], material)
    assert "Empty" in str(err.value) and "Camera" in str(err.value) and "Cube" not in str(err.value)
    assert counts() == before
    assert len(cube.material_slots) == 1


def test_one_rollback_takes_back_a_chain_of_calls(scene, tmp_path):
    """What an operator does: image, material, slot; a failure at the end undoes them all."""
    cube = bpy.data.objects["Cube"]
    before = counts()
    with pytest.raises(RuntimeError, match="late failure"), materials.Rollback() as rb:
        image = materials.new_image("Result", gradient(), save_dir=str(tmp_path), rollback=rb)
        material = materials.image_material(image, rollback=rb)
        materials.assign_material([cube], material, rollback=rb)
        assert len(cube.material_slots) == 2
        raise RuntimeError("late failure")
    assert counts() == before
    assert len(cube.material_slots) == 1 and cube.material_slots[0].material.name == "Material"
    assert os.listdir(tmp_path) == []


# -- projection -------------------------------------------------------------------------------


def projected(scene, tmp_path, depth=True, objects=None):
    z = render_depth(scene, tmp_path / "depth.exr") if depth else None
    image = materials.new_image("Restyle", gradient(48, 64))
    cube = bpy.data.objects["Cube"]
    material = materials.project_from_camera(objects or [cube], scene.camera, image, depth=z)
    return cube, image, material


@pytest.mark.parametrize("camera_type", ["PERSP", "ORTHO"])
def test_projected_uvs_are_world_to_camera_view(scene, tmp_path, camera_type):
    scene.camera.data.type = camera_type
    scene.camera.data.shift_x = 0.05
    cube, _, _ = projected(scene, tmp_path, depth=False)
    mesh = cube.data
    uvs = corner_uvs(mesh, materials.PROJECTION_UV)
    for loop in mesh.loops:
        expected = world_to_camera_view(scene, scene.camera, cube.matrix_world @ mesh.vertices[loop.vertex_index].co)
        np.testing.assert_allclose(uvs[loop.index], expected[:2], atol=1e-5)


@pytest.mark.parametrize("depth", [True, False])
def test_visibility_front_faces_seen_back_faces_hidden(scene, tmp_path, depth):
    cube, _, _ = projected(scene, tmp_path, depth=depth)
    visible = corner_values(cube.data, materials.VISIBILITY_ATTRIBUTE)
    facing = np.isclose(corner_normals(cube)[:, None, :], np.array(FACING_CAMERA)).all(-1).any(-1)
    assert facing.sum() == 12
    np.testing.assert_array_equal(visible, facing.astype(np.float32))


def test_user_uv_maps_stay_active(scene, tmp_path):
    cube = bpy.data.objects["Cube"]
    cube.data.uv_layers.new(name="Second")
    cube.data.uv_layers.active_index = 1
    projected(scene, tmp_path, depth=False)
    layers = cube.data.uv_layers
    assert [u.name for u in layers] == ["UVMap", "Second", materials.PROJECTION_UV]
    assert layers.active.name == "Second"
    assert [u.name for u in layers if u.active_render] == ["UVMap"]


def test_projection_material_and_slot(scene, tmp_path):
    cube, image, material = projected(scene, tmp_path, depth=False)
    assert [s.material.name for s in cube.material_slots] == ["Material", material.name]
    nodes = material.node_tree.nodes
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    mix = bsdf.inputs["Base Color"].links[0].from_node
    assert mix.type == "MIX"
    factor = next(s for s in mix.inputs if s.identifier == "Factor_Float").links[0].from_node
    # visibility x the image's alpha (0 outside the camera's frame, the texture clipping there)
    assert factor.type == "MATH" and factor.operation == "MULTIPLY"
    sources = {link.from_node.type: link.from_node for i in factor.inputs for link in i.links}
    assert sources["ATTRIBUTE"].attribute_name == materials.VISIBILITY_ATTRIBUTE
    assert sources["TEX_IMAGE"].image == image and sources["TEX_IMAGE"].extension == "CLIP"
    texture = next(s for s in mix.inputs if s.identifier == "B_Color").links[0].from_node
    assert texture.image == image
    info = json.loads(material["scene_diffusion_projection"])
    assert info["uv_map"] == materials.PROJECTION_UV and info["camera"] == "Camera"


def test_a_hidden_object_is_left_alone_and_a_half_hidden_one_is_masked(scene, tmp_path):
    camera = scene.camera.location.copy()
    away = -camera.normalized()  # from the camera through the cube's centre
    bpy.ops.mesh.primitive_cube_add(size=0.3, location=away * 2.5)
    hidden = bpy.context.active_object
    # A grid behind the cube, facing the camera, larger than the cube: its middle is hidden.
    bpy.ops.mesh.primitive_grid_add(x_subdivisions=12, y_subdivisions=12, size=6, location=away * 3)
    grid = bpy.context.active_object
    grid.rotation_euler = away.to_track_quat("-Z", "Y").to_euler()
    bpy.context.view_layer.update()
    cube, _, material = projected(scene, tmp_path, objects=[bpy.data.objects["Cube"], hidden, grid])

    assert materials.PROJECTION_UV not in hidden.data.uv_layers and len(hidden.material_slots) == 0
    assert grid.material_slots[-1].material == material

    visible = corner_values(grid.data, materials.VISIBILITY_ATTRIBUTE)
    truth, certain = seen_from(scene, grid)
    assert 0 < truth.sum() < len(truth)  # the test means something: some seen, some hidden
    per_corner = np.array([truth[loop.vertex_index] for loop in grid.data.loops])
    sure = np.array([certain[loop.vertex_index] for loop in grid.data.loops])
    np.testing.assert_array_equal(visible[sure], per_corner[sure])
    assert sure.mean() > 0.8


def seen_from(scene, obj):
    """Per vertex: does a ray from the camera reach it, and is the answer the same a little to each side?"""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    origin = scene.camera.matrix_world.translation
    axes = [scene.camera.matrix_world.to_3x3() @ Vector(v) for v in ((1, 0, 0), (0, 1, 0))]

    def reaches(target):
        hit, location, *_ = scene.ray_cast(depsgraph, origin, (target - origin).normalized())
        return not hit or (location - origin).length > (target - origin).length - 1e-3

    truth, certain = [], []
    for vertex in obj.data.vertices:
        point = obj.matrix_world @ vertex.co
        seen = reaches(point)
        nearby = [reaches(point + axis * s * 0.15) for axis in axes for s in (-1, 1)]
        truth.append(seen)
        certain.append(all(n == seen for n in nearby))
    return np.array(truth, np.float32), np.array(certain)


def test_projection_renders_the_image_back_from_the_camera(tmp_path):
    """Cycles, looking through the camera at the projected material, sees the image where the cube is.

    UVs interpolated across the faces would be off by up to 1.7 pixels here; the perspective divide
    in the shader keeps it to 8-bit rounding (0.3 pixels).
    """
    scene = factory_scene(128, 96)
    z = render_depth(scene, tmp_path / "depth.exr")
    height, width = z.shape
    rows, cols = np.mgrid[0:height, 0:width]
    pixels = np.stack([(cols + 0.5) / width, (rows + 0.5) / height, np.full(rows.shape, 0.5)], -1)
    image = materials.new_image("Restyle", pixels.astype(np.float32))
    image.colorspace_settings.name = "Non-Color"  # read the coordinates back unchanged (reloads the packed PNG)
    material = materials.project_from_camera([bpy.data.objects["Cube"]], scene.camera, image, depth=z)
    tree = material.node_tree
    mix = next(n for n in tree.nodes if n.type == "MIX")
    emission = tree.nodes.new("ShaderNodeEmission")
    tree.links.new(next(s for s in mix.outputs if s.identifier == "Result_Color"), emission.inputs["Color"])
    tree.links.new(emission.outputs["Emission"], next(n for n in tree.nodes if n.type == "OUTPUT_MATERIAL").inputs[0])

    channels = render_passes(scene, tmp_path / "render.exr", engine="CYCLES", emission=True)
    seen = find_channel(channels, "Emission.R"), find_channel(channels, "Emission.G")
    cube = z < 1e9
    error_px = np.hypot((seen[0] - pixels[..., 0]) * width, (seen[1] - pixels[..., 1]) * height)[cube]
    assert cube.sum() > 500
    assert error_px.max() < 1.0, error_px.max()  # 8-bit image: half a level is 0.25 px here


def test_projecting_twice_uses_new_names(scene, tmp_path):
    cube, _, first = projected(scene, tmp_path, depth=False)
    _, _, second = projected(scene, tmp_path, depth=False)
    assert json.loads(second["scene_diffusion_projection"])["uv_map"] == materials.PROJECTION_UV + ".001"
    assert materials.VISIBILITY_ATTRIBUTE + ".001" in cube.data.attributes
    assert [s.material for s in cube.material_slots][1:] == [first, second]


def test_projection_refuses_before_changing_anything(scene, tmp_path):
    cube = bpy.data.objects["Cube"]
    light = bpy.data.objects["Light"]
    image = materials.new_image("Restyle", gradient(48, 64))
    bpy.ops.object.duplicate_move_linked()  # a second object on the cube's mesh
    twin = bpy.context.active_object
    before = counts(), len(cube.data.uv_layers), len(cube.material_slots)
    cases = [
        ([cube, light], {}, "Light cannot take a material"),
        ([cube, twin], {}, "shares its mesh"),
        ([cube], {"depth": np.zeros(10, np.float32)}, "must be a 2D Z pass"),
        ([cube], {"depth": np.zeros((48, 64), np.float32)}, "sees none of: Cube"),
    ]
    for objects, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            materials.project_from_camera(objects, scene.camera, image, **kwargs)
    with pytest.raises(ValueError, match="not a camera"):
        materials.project_from_camera([cube], light, image)
    assert (counts(), len(cube.data.uv_layers), len(cube.material_slots)) == before
    assert set(materials.projection_problems([cube, light, twin])) == {"Light", "Cube", "Cube.001"}


def test_projection_failing_late_takes_everything_back(scene, tmp_path, monkeypatch):
    cube = bpy.data.objects["Cube"]
    image = materials.new_image("Restyle", gradient(48, 64))
    before = counts(), [a.name for a in cube.data.attributes], cube.data.uv_layers.active.name

    def broken(objects, material, rollback=None):
        raise RuntimeError("slot refused")

    monkeypatch.setattr(materials, "assign_material", broken)
    with pytest.raises(RuntimeError, match="slot refused"):
        materials.project_from_camera([cube], scene.camera, image)
    assert (counts(), [a.name for a in cube.data.attributes], cube.data.uv_layers.active.name) == before
    assert len(cube.material_slots) == 1


# -- undo ---------------------------------------------------------------------------------------


def test_undo_takes_back_what_an_operator_did(scene, tmp_path):
    """Headless undo works, given explicit steps before and after the change.

    In background mode no file load pushes a first step: without one, ``ed.undo`` fails its poll with
    "Undo disabled at startup in background-mode (call `ed.undo_push()` to explicitly initialize the
    undo-system)". An operator with {'UNDO'} run through ``bpy.ops`` here pushes no step of its own
    either, so the test pushes both, as the UI would around an operator.
    """
    bpy.ops.ed.undo_push(message="before")
    cube, _, material = projected(scene, tmp_path, depth=False)
    name = material.name
    bpy.ops.ed.undo_push(message="Project")
    assert bpy.ops.ed.undo() == {"FINISHED"}
    cube = bpy.data.objects["Cube"]  # undo reloads the data: old Python references are dead
    assert name not in bpy.data.materials and "Restyle" not in bpy.data.images
    assert len(cube.material_slots) == 1 and materials.PROJECTION_UV not in cube.data.uv_layers
    assert bpy.ops.ed.redo() == {"FINISHED"}
    assert name in bpy.data.materials and len(bpy.data.objects["Cube"].material_slots) == 2
