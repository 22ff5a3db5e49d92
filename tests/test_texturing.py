"""Text-to-texture: the geometry in numpy, then the whole path in Blender, measured with the pattern engine."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from live_server import live_server

from blender_addon.core import texturing as tx

bpy = pytest.importorskip("bpy")
import addon_utils  # noqa: E402
import texture_metrics as tm  # noqa: E402

from backend.engine.pattern import PatternEngine  # noqa: E402
from backend.server.app import create_app  # noqa: E402
from backend.server.jobs import JobQueue  # noqa: E402

# -- numpy geometry ------------------------------------------------------------------------------


def quad(z: float = 0.0):
    """Two triangles covering the whole UV square, a 2x2 square in the XY plane facing +Z."""
    uv = np.array([[[0, 0], [1, 0], [1, 1]], [[0, 0], [1, 1], [0, 1]]], np.float32)
    pos = np.concatenate([uv * 2 - 1, np.full((2, 3, 1), z, np.float32)], axis=2)
    normals = np.tile(np.array([0, 0, 1], np.float32), (2, 3, 1))
    return uv, pos, normals


def test_rasterize_covers_the_uv_square_and_interpolates_positions():
    surface = tx.rasterize(*quad(), size=16)
    assert surface.interior.all() and surface.mask.all()
    grid = np.zeros((16 * 16, 3), np.float32)
    grid[surface.index] = surface.position
    grid = grid.reshape(16, 16, 3)
    # texel (row 0, col 0) is the top-left: u = 1/32, v = 31/32 -> x = -15/16, y = +15/16
    assert np.allclose(grid[0, 0, :2], [-15 / 16, 15 / 16], atol=1e-5)
    assert np.allclose(grid[15, 15, :2], [15 / 16, -15 / 16], atol=1e-5)


def test_rasterize_margin_texels_extend_the_island():
    uv = np.array([[[0.25, 0.25], [0.75, 0.25], [0.5, 0.75]]], np.float32)
    pos = np.concatenate([uv, np.zeros((1, 3, 1), np.float32)], axis=2)
    normals = np.tile(np.array([0, 0, 1], np.float32), (1, 3, 1))
    surface = tx.rasterize(uv, pos, normals, size=64, margin=1.5)
    extra = surface.mask & ~surface.interior
    assert surface.interior.sum() > 100 and 0 < extra.sum() < surface.interior.sum()
    rows, cols = np.nonzero(extra)
    assert np.allclose(surface.position[np.searchsorted(surface.index, rows * 64 + cols)][:, :2],
                       np.stack([(cols + 0.5) / 64, 1 - (rows + 0.5) / 64], axis=1), atol=1e-5), \
        "margin texels hold the triangle's extrapolated position"


def test_rasterize_many_triangles_in_chunks(monkeypatch):
    monkeypatch.setattr(tx, "CANDIDATES_PER_CHUNK", 50)
    small = tx.rasterize(*quad(), size=32)
    assert small.interior.all()


def test_push_pull_keeps_known_and_fills_smoothly():
    image = np.zeros((32, 32, 3))
    known = np.zeros((32, 32), bool)
    image[8:12, 8:12] = [1.0, 0.5, 0.0]
    known[8:12, 8:12] = True
    filled = tx.push_pull(image, known)
    assert np.array_equal(filled[known], image[known])
    assert np.allclose(filled[~known], [1.0, 0.5, 0.0]), "a single colour spreads everywhere"


def camera_view(z_plane: float = 0.0, size: int = 32, distance: float = 4.0) -> tx.View:
    """A camera on +Z looking down at the origin, 90 degree field of view, and its Z pass of a plane."""
    world_to_camera = np.eye(4)
    world_to_camera[2, 3] = -distance
    near, far = 0.1, 100.0
    projection = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -(far + near) / (far - near),
                                                         -2 * far * near / (far - near)], [0, 0, -1, 0]])
    z = np.full((size, size), distance - z_plane, np.float32)
    return tx.View(world_to_camera=world_to_camera, projection=projection, z=z, origin=np.array([0, 0, distance]))


def test_view_weights_see_a_facing_plane_and_not_one_behind():
    surface = tx.rasterize(*quad(), size=16)
    weight, xy = tx.view_weights(camera_view(), surface)
    assert (weight > 0).mean() > 0.5 and weight.max() <= 1.0
    # the centre of the plane lands in the centre of the image
    centre = np.argmin(np.linalg.norm(surface.position[:, :2], axis=1))
    assert np.allclose(xy[centre], [16, 16], atol=1.5)
    hidden, _ = tx.view_weights(camera_view(z_plane=1.0), surface)  # something at z=1 hides the plane
    assert not hidden.any()
    away = tx.rasterize(*quad()[:2], -quad()[2], size=16)  # normals facing away from the camera
    assert not tx.view_weights(camera_view(), away)[0].any()


# -- in Blender ----------------------------------------------------------------------------------


@pytest.fixture
def suzanne():
    bpy.ops.wm.read_factory_settings(use_empty=False)
    bpy.data.objects.remove(bpy.data.objects["Cube"])
    bpy.ops.mesh.primitive_monkey_add()
    obj = bpy.context.active_object
    camera = bpy.context.scene.camera
    camera.location, camera.rotation_euler = (0.0, -4.2, 0.9), (1.39, 0.0, 0.0)
    addon_utils.enable("blender_addon", default_set=True)
    yield obj
    addon_utils.disable("blender_addon", default_set=True)


@pytest.fixture
def pattern_server():
    queue = JobQueue(PatternEngine())
    with live_server(create_app(queue.engine, queue=queue)) as url:
        yield url, queue


def panel(prompt="bronze", views=8, size="512", view_size=256):
    s = bpy.context.scene.scene_diffusion
    s.prompt, s.action, s.steps, s.seed, s.use_random_seed = prompt, "TEXTURE", 2, 3, False
    s.texture_views, s.texture_size, s.texture_view_size = views, size, view_size
    return s


def use_server(url):
    prefs = bpy.context.preferences.addons["blender_addon"].preferences
    prefs.backend, prefs.url = "REMOTE", url


def test_texture_selected_object_from_the_panel(suzanne, pattern_server):
    url, queue = pattern_server
    use_server(url)
    panel()
    uv_maps = [layer.name for layer in suzanne.data.uv_layers]
    slots = [s.material for s in suzanne.material_slots]
    assert bpy.ops.scene_diffusion.generate() == {"FINISHED"}
    assert [layer.name for layer in suzanne.data.uv_layers] == uv_maps, "the artist's UV map is kept, no new one"
    material = suzanne.material_slots[-1].material
    assert [s.material for s in suzanne.material_slots][:-1] == slots
    uv_node = next(n for n in material.node_tree.nodes if n.type == "UVMAP")
    assert uv_node.uv_map == "UVMap"
    image = next(n.image for n in material.node_tree.nodes if n.type == "TEX_IMAGE")
    params = json.loads(image["scene_diffusion"])
    assert params["mode"] == "texture" and params["views"] == 8 and params["coverage"] > 0.9
    jobs = list(queue._jobs.values())
    assert len(jobs) == 2, "round 1: the first view; round 2: all other views in one batch"
    assert jobs[0].request.batch_size == 1 and jobs[1].request.batch_size == 7
    assert jobs[0].request.mode == "depth" and jobs[1].request.masks and jobs[1].request.init_images


def run_texture_job(obj, views: int, texture_size: int = 512, view_size: int = 256):
    from backend.inprocess import InProcessBackend
    from blender_addon import texturing
    from blender_addon.core.texture_job import TextureSettings

    scene = bpy.context.scene
    uv_map = texturing.ensure_uv_map(obj)
    specs = texturing.automatic_views(obj, views, texturing.camera_spec(scene.camera))
    job = texturing.TextureSceneJob(bpy.context, obj, TextureSettings(prompt="x", steps=2, seed=3,
                                                                     texture_size=texture_size),
                                    specs, view_size, uv_map, backend_source=InProcessBackend(PatternEngine()))
    job.start()
    ticks = []
    while True:
        t0 = time.perf_counter()
        outcome = job.tick(bpy.context)
        ticks.append(time.perf_counter() - t0)
        if outcome is not None:
            break
        time.sleep(0.005)
    assert outcome.state == "done", outcome.message
    return job, outcome, specs, uv_map, ticks


def test_projection_is_faithful_from_the_first_view(suzanne):
    job, outcome, specs, uv_map, _ = run_texture_job(suzanne, views=1)
    rgb, seen = tm.render_emission(bpy.context.scene, suzanne, outcome.images[0], uv_map, specs[0], 256)
    first = job.job.finished.view_images[0][1] / 255.0
    value = tx.psnr(rgb, first, tm.erode(seen, 1))
    assert value > 40, f"reprojection PSNR {value:.1f} dB"


def test_eight_views_cover_suzanne_without_seams(suzanne):
    job, _, _, uv_map, ticks = run_texture_job(suzanne, views=8)
    finished = job.job.finished
    assert finished.coverage > 0.93, f"coverage {finished.coverage:.1%}"
    ratio, _, _ = tm.seam_ratio(suzanne, uv_map, finished.texture, finished.painted)
    assert ratio < 1.5, f"seams {ratio:.2f}x the interior's texel-to-texel difference"
    assert max(ticks[:-1]) < 0.01, "progress ticks stay short"


def test_a_mesh_without_uvs_gets_one(suzanne):
    from blender_addon import texturing

    for name in [u.name for u in suzanne.data.uv_layers if not u.name.startswith(".")]:
        suzanne.data.uv_layers.remove(suzanne.data.uv_layers[name])
    job, _, _, uv_map, _ = run_texture_job(suzanne, views=2)
    maps = [u.name for u in suzanne.data.uv_layers if not u.name.startswith(".")]
    assert uv_map == texturing.NEW_UV_MAP and maps == [texturing.NEW_UV_MAP]
    assert job.job.finished.coverage > 0.3


def test_cancel_leaves_the_object_as_it_was(suzanne):
    import threading

    from backend.inprocess import InProcessBackend
    from blender_addon import operators, session

    class Slow(PatternEngine):
        started = threading.Event()

        def generate(self, request, progress=None, cancel=None):
            self.started.set()
            while not cancel.wait(0.01):
                pass
            return super().generate(request, progress, cancel)

    engine = Slow()
    panel(views=3)
    slots, images = len(suzanne.material_slots), len(bpy.data.images)
    job = operators.texture_job(bpy.context, backend_source=InProcessBackend(engine)).start()
    assert engine.started.wait(30)
    bpy.ops.scene_diffusion.cancel()
    deadline = time.monotonic() + 30
    while (outcome := job.tick(bpy.context)) is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert outcome.state == "cancelled"
    assert len(suzanne.material_slots) == slots and len(bpy.data.images) == images and session.active_job() is None


def test_texture_needs_a_mesh(suzanne):
    panel()
    bpy.context.view_layer.objects.active = bpy.data.objects["Camera"]
    assert not bpy.ops.scene_diffusion.generate.poll()
    bpy.context.view_layer.objects.active = suzanne
    assert bpy.ops.scene_diffusion.generate.poll()
