"""Seamless materials in real Blender: the node graph, applying it, rollback and undo, and the Seamless
Material operator end to end against our server on loopback (tiny model: noise, but really tiling)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from live_server import live_server

bpy = pytest.importorskip("bpy")
import addon_utils  # noqa: E402

from backend.engine.request import GeneratedImage  # noqa: E402
from backend.server.app import create_app  # noqa: E402
from blender_addon.core import maps  # noqa: E402

ADDON = "blender_addon"


def periodic_albedo(size=64, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = maps.circular_blur(rng.random((size, size, 3)).astype(np.float32), 2.0)
    return maps.to_uint8((field - field.min()) / (field.max() - field.min()))


@pytest.fixture
def addon():
    """A factory scene with the add-on enabled, the material operator registered (also before the add-on's
    module list names it), and the Cube selected."""
    from blender_addon import seamless_ops

    bpy.ops.wm.read_factory_settings(use_empty=False)
    addon_utils.enable(ADDON, default_set=True)
    own = not hasattr(bpy.types, "SCENE_DIFFUSION_OT_seamless_material")
    if own:
        seamless_ops.register()
    select("Cube")
    yield bpy.context.preferences.addons[ADDON].preferences
    if own:
        seamless_ops.unregister()
    addon_utils.disable(ADDON, default_set=True)


def select(*names):
    bpy.ops.object.select_all(action="DESELECT")
    for name in names:
        bpy.data.objects[name].select_set(True)
    bpy.context.view_layer.objects.active = bpy.data.objects[names[0]] if names else None


class NoTiling:
    """A backend engine that ignores seamless: it answers with a smooth ramp, whose ends do not meet."""

    def __init__(self, engine):
        self.engine, self.model_id = engine, engine.model_id

    def info(self):
        return self.engine.info()

    def modes(self):
        return self.engine.modes()

    def generate(self, request, progress=None, cancel=None):
        from PIL import Image

        ramp = np.linspace(0, 255, request.width).astype(np.uint8)
        pixels = np.repeat(np.tile(ramp, (request.height, 1))[..., None], 3, axis=2)
        params = {"prompt": request.prompt, "seed": 1, "seamless": "", "width": request.width,
                  "height": request.height, "steps": request.steps, "model": self.model_id}
        return [GeneratedImage(Image.fromarray(pixels), 1, params)]


@pytest.fixture
def server(tiny_engine, addon):
    with live_server(create_app(tiny_engine)) as url:
        addon.backend, addon.url, addon.timeout = "REMOTE", url, 30.0
        yield url


def counts() -> tuple[int, int]:
    return len(bpy.data.images), len(bpy.data.materials)


def links_to(node, socket_name: str):
    socket = node.inputs[socket_name]
    assert socket.is_linked, f"{node.name}.{socket_name} is not linked"
    return socket.links[0].from_node


def build(objects=(), **options):
    from blender_addon import seamless

    return seamless.material_from_albedo("Stone", periodic_albedo(), {"prompt": "stone", "seed": 3},
                                         objects=[bpy.data.objects[n] for n in objects], **options)


def test_node_graph_with_object_coordinates_and_box_projection(addon):
    material = build(scale=2.5)
    nodes = material.node_tree.nodes
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    albedo, roughness = links_to(bsdf, "Base Color"), links_to(bsdf, "Roughness")
    assert (albedo.name, albedo.image.colorspace_settings.name) == ("Albedo", "sRGB")
    assert (roughness.name, roughness.image.colorspace_settings.name) == ("Roughness", "Non-Color")
    bump = links_to(bsdf, "Normal")
    assert bump.type == "BUMP", "object coordinates: relief from the height through Bump"
    height = links_to(bump, "Height")
    assert (height.name, height.image.colorspace_settings.name) == ("Height", "Non-Color")
    normal_map = nodes["Normal Map"]
    assert normal_map.space == "TANGENT" and links_to(normal_map, "Color").image.colorspace_settings.name == "Non-Color"
    mapping = nodes["Mapping"]
    assert links_to(mapping, "Vector").type == "TEX_COORD"
    assert mapping.inputs["Vector"].links[0].from_socket.name == "Object"
    scale = links_to(mapping, "Scale")
    assert scale.type == "VALUE" and scale.outputs["Value"].default_value == pytest.approx(2.5)
    textures = [n for n in nodes if n.type == "TEX_IMAGE"]
    assert len(textures) == 4
    for texture in textures:
        assert texture.projection == "BOX" and texture.extension == "REPEAT"
        assert links_to(texture, "Vector") == mapping
        assert texture.image.packed_file is not None
    relief = links_to(bump, "Distance")
    assert relief.inputs[0].default_value == pytest.approx(2.0 / 64) and links_to(relief, "Value_001") == scale
    stored = json.loads(material["scene_diffusion_seamless"])
    assert stored["mapping"] == "OBJECT" and stored["box_projection"] and stored["scale"] == 2.5


def test_node_graph_with_uv_coordinates(addon):
    material = build(mapping="UV", box_projection=True, scale=3.0)  # box projection is an Object-mapping option
    nodes = material.node_tree.nodes
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    normal_map = links_to(bsdf, "Normal")
    assert normal_map.type == "NORMAL_MAP" and normal_map.space == "TANGENT"
    assert links_to(normal_map, "Color").name == "Normal"
    assert nodes["Mapping"].inputs["Vector"].links[0].from_socket.name == "UV"
    assert all(n.projection == "FLAT" for n in nodes if n.type == "TEX_IMAGE")
    from blender_addon import seamless

    images = {k: nodes[seamless.NODE_NAMES[k]].image for k in maps.MAP_NAMES}
    with pytest.raises(ValueError, match="box projection needs Object mapping"):
        seamless.seamless_material("X", *images.values(), mapping="UV", box_projection=True)


def test_images_hold_the_maps_with_their_parameters_and_tile(addon):
    from blender_addon import seamless

    material = build()
    expected = maps.derive_maps(periodic_albedo())
    for kind in maps.MAP_NAMES:
        image = material.node_tree.nodes[seamless.NODE_NAMES[kind]].image
        width, height = image.size
        flat = np.empty(width * height * 4, np.float32)
        image.pixels.foreach_get(flat)
        pixels = np.rint(flat.reshape(height, width, 4)[::-1, :, :3] * 255).astype(np.uint8)
        want = expected[kind] if expected[kind].ndim == 3 else np.repeat(expected[kind][..., None], 3, axis=2)
        assert np.array_equal(pixels, want), f"{kind}: the pixels survive the switch to Non-Color"
        assert maps.tileability(pixels) <= maps.TILEABLE_MAX
        params = json.loads(image["scene_diffusion"])
        assert params["map"] == kind and params["prompt"] == "stone" and image["seed"] == 3
        assert image.use_fake_user


def test_applied_as_a_new_slot_keeping_the_users_material(addon):
    cube = bpy.data.objects["Cube"]
    material = build(objects=["Cube"])
    assert [s.material.name for s in cube.material_slots] == ["Material", material.name]
    faces = np.empty(len(cube.data.polygons), np.int32)
    cube.data.polygons.foreach_get("material_index", faces)
    assert (faces == 1).all()


def test_failure_takes_everything_back(addon, monkeypatch):
    from blender_addon import seamless

    before = counts()
    with pytest.raises(ValueError, match="Camera cannot take a material"):
        build(objects=["Cube", "Camera"])
    assert counts() == before

    def broken(*args, **kwargs):
        raise RuntimeError("node trouble")

    monkeypatch.setattr(seamless, "_seamless_nodes", broken)
    with pytest.raises(RuntimeError, match="node trouble"):
        build(objects=["Cube"])
    assert counts() == before, "the four images and the material are removed again"
    assert [s.material.name for s in bpy.data.objects["Cube"].material_slots] == ["Material"]


def test_operator_end_to_end_on_the_server_then_undo(server):
    from blender_addon import session

    s = bpy.context.scene.scene_diffusion
    s.prompt, s.steps, s.seed, s.use_random_seed = "mossy flagstones", 2, 11, False
    materials_before, images_before = {m.name for m in bpy.data.materials}, {i.name for i in bpy.data.images}
    bpy.ops.ed.undo_push(message="before")
    assert bpy.ops.scene_diffusion.seamless_material(size=64, scale=2.0) == {"FINISHED"}
    bpy.ops.ed.undo_push(message="Seamless Material")
    cube = bpy.data.objects["Cube"]
    material = cube.material_slots[-1].material
    assert material.name == "mossy flagstones" and cube.material_slots[0].material.name == "Material"
    albedo = material.node_tree.nodes["Albedo"].image
    flat = np.empty(64 * 64 * 4, np.float32)
    albedo.pixels.foreach_get(flat)
    pixels = flat.reshape(64, 64, 4)[::-1, :, :3]
    assert pixels.std() > 0.02 and maps.tileability(pixels) <= maps.TILEABLE_MAX
    params = json.loads(albedo["scene_diffusion"])
    assert params["seamless"] == "xy" and params["seed"] == 11 and params["width"] == 64
    assert s.history[-1].image == albedo and s.history[-1].action == "MATERIAL" and s.last_seed == 11
    assert session.active_job() is None and bpy.data.images.get("SceneDiffusion Preview") is None

    bpy.ops.ed.undo()
    assert {m.name for m in bpy.data.materials} == materials_before
    assert {i.name for i in bpy.data.images} == images_before
    assert [s.material.name for s in bpy.data.objects["Cube"].material_slots] == ["Material"]


def test_operator_through_scene_job_ticks(server):
    """What the modal operator does, tick by tick: a MaterialJob (a generation.SceneJob) polled until done."""
    from blender_addon import generation, seamless_ops
    from blender_addon.core.maps import MapSettings

    s = bpy.context.scene.scene_diffusion
    s.prompt, s.steps = "brushed steel", 2
    job = generation.build_job(bpy.context)
    import dataclasses

    job = dataclasses.replace(job, width=256, height=256, seamless="xy")
    options = seamless_ops.MaterialOptions(MapSettings(roughness_low=0.1, roughness_high=0.4), mapping="UV")
    scene_job = seamless_ops.MaterialJob(bpy.context, job, ["Cube"], options, {}).start()
    import time

    deadline = time.monotonic() + 30
    ticks = []
    while True:
        t0 = time.perf_counter()
        outcome = scene_job.tick(bpy.context)
        ticks.append(time.perf_counter() - t0)
        if outcome is not None:
            break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert outcome.state == "done", outcome.message
    # the maps and their PNGs are made in a worker: no tick, not even the last, holds the main thread long
    print(f"\nlongest material tick {max(ticks) * 1000:.1f} ms")
    assert max(ticks) < 0.05
    material = scene_job.material
    assert bpy.data.objects["Cube"].material_slots[-1].material == material
    rough = material.node_tree.nodes["Roughness"].image
    flat = np.empty(256 * 256 * 4, np.float32)
    rough.pixels.foreach_get(flat)
    assert 0.1 - 1e-3 <= flat.reshape(-1, 4)[:, 0].min() and flat.reshape(-1, 4)[:, 0].max() <= 0.4 + 1e-3


def test_operator_skips_what_cannot_take_a_material(server):
    select("Cube", "Camera")
    s = bpy.context.scene.scene_diffusion
    s.prompt, s.steps = "bark", 2
    assert bpy.ops.scene_diffusion.seamless_material(size=64) == {"FINISHED"}
    assert len(bpy.data.objects["Cube"].material_slots) == 2


def test_operator_refuses_a_backend_that_does_not_tile(tiny_engine, addon):
    from blender_addon import session

    with live_server(create_app(NoTiling(tiny_engine))) as url:
        addon.backend, addon.url = "REMOTE", url
        s = bpy.context.scene.scene_diffusion
        s.prompt, s.steps = "tiles", 2
        before = counts()
        with pytest.raises(RuntimeError, match="does not tile.*seamless"):
            bpy.ops.scene_diffusion.seamless_material(size=64)
    assert counts() == before and len(s.history) == 0
    assert [m.material.name for m in bpy.data.objects["Cube"].material_slots] == ["Material"]
    assert session.active_job() is None


def test_poll_explains_what_is_missing(addon):
    s = bpy.context.scene.scene_diffusion
    s.prompt = ""
    assert not bpy.ops.scene_diffusion.seamless_material.poll()
    s.prompt = "marble"
    assert bpy.ops.scene_diffusion.seamless_material.poll()
    select("Camera")
    assert not bpy.ops.scene_diffusion.seamless_material.poll(), "a camera cannot take a material"
    select()
    assert not bpy.ops.scene_diffusion.seamless_material.poll()


def render_brightness(material) -> float:
    """Mean brightness of an overhead render of the plane with `material` over x, y in 0.2..0.8: away from
    where the ramps jump back (the plane's edges with UVs, its middle with object coordinates)."""
    from blender_addon import capture

    scene = bpy.context.scene
    plane = bpy.data.objects["Plane"]
    plane.data.materials.clear()
    plane.data.materials.append(material)
    scene.render.engine = "CYCLES"
    scene.cycles.samples, scene.cycles.device, scene.cycles.use_denoising = 4, "CPU", False
    shot = capture.render_camera(scene, scene.camera, 32, 32, fast=False)  # the whole 2 m plane
    return float(shot.color[4:12, 20:28].mean())  # rows from the top: y 0.8..0.2; columns: x 0.2..0.8


def test_relief_lights_as_the_height_says_with_the_normal_map_and_with_bump(addon):
    """Blender's own shading checks the convention: a height rising to +X faces away from a light at +X
    (darker), falling to +X faces it (brighter); the normal map (UV) and Bump (Object) paths agree. The
    same along Y, with the light at +Y: up in the image is +Y."""
    from blender_addon import seamless

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.mesh.primitive_plane_add(size=2)
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    camera.data.type, camera.data.ortho_scale, camera.location = "ORTHO", 2.0, (0, 0, 3)
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    scene = bpy.context.scene
    for obj in (camera, sun):
        scene.collection.objects.link(obj)
    scene.camera = camera
    world = bpy.data.worlds.new("Black")
    world.color = (0, 0, 0)
    scene.world = world

    size = 64
    ramp = np.arange(size, dtype=np.float32) / size
    heights = {"+x": np.tile(ramp, (size, 1)), "-x": np.tile(ramp[::-1], (size, 1)),
               "+y": np.tile(ramp[::-1, None], (1, size)), "-y": np.tile(ramp[:, None], (1, size))}
    settings = maps.MapSettings(normal_strength=24.0)
    light = {"x": (0.0, 1.0, 0.0), "y": (-1.0, 0.0, 0.0)}  # sun rotated 57 degrees towards +X, or towards +Y
    results = {}
    for axis in ("x", "y"):
        sun.rotation_euler = tuple(np.radians(57) * np.array(light[axis]))
        for sign in "+-":
            height = heights[sign + axis]
            albedo = np.full((size, size, 3), 180, np.uint8)
            normal = maps.to_uint8(maps.normal_map(height, settings.normal_strength))
            derived = {"albedo": albedo, "height": maps.to_uint8(height), "normal": normal,
                       "roughness": np.full((size, size), 200, np.uint8)}
            for mapping, scale in (("UV", 1.0), ("OBJECT", 0.5)):  # both: one repeat across the 2 m plane
                material = seamless.build_seamless_material(f"{sign}{axis} {mapping}", derived, settings=settings,
                                                            mapping=mapping, box_projection=False, scale=scale)
                results[sign + axis, mapping] = render_brightness(material)
    for axis in ("x", "y"):
        for mapping in ("UV", "OBJECT"):
            assert results["+" + axis, mapping] < results["-" + axis, mapping] - 5, (axis, mapping, results)
        for sign in "+-":
            uv, bump = results[sign + axis, "UV"], results[sign + axis, "OBJECT"]
            assert abs(uv - bump) < 0.05 * max(uv, bump), f"normal map and bump agree: {results}"
