"""The add-on in real Blender (the bpy module, headless) against a real server on loopback."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
from doubles import GatedEngine
from live_server import live_server

bpy = pytest.importorskip("bpy")
import addon_utils  # noqa: E402

from backend.server.app import create_app  # noqa: E402

ADDON = "blender_addon"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def snapshot() -> dict:
    """What registering can leave behind: types, scene properties, handlers, timers."""
    return {
        "types": {name for name in dir(bpy.types) if name.startswith(("SCENEDIFF", "SCENE_DIFFUSION"))},
        "groups": {c.__name__ for c in bpy.types.PropertyGroup.__subclasses__() if c.is_registered},
        "scene_props": {p.identifier for p in bpy.types.Scene.bl_rna.properties if p.identifier == "scene_diffusion"},
        "handlers": {h.__name__ for h in bpy.app.handlers.load_pre},
        "ops": set(dir(bpy.ops.scene_diffusion)),
    }


@pytest.fixture
def addon():
    """A factory scene with the add-on enabled through the preferences, as an artist has it."""
    bpy.ops.wm.read_factory_settings(use_empty=False)
    addon_utils.enable(ADDON, default_set=True)
    yield bpy.context.preferences.addons[ADDON].preferences
    addon_utils.disable(ADDON, default_set=True)


@pytest.fixture
def server(tiny_engine):
    engine = GatedEngine(tiny_engine)
    with live_server(create_app(engine)) as url:
        yield url, engine
        engine.release.set()


def use_server(prefs, url):
    prefs.backend, prefs.url, prefs.timeout = "REMOTE", url, 30.0


def settings():
    return bpy.context.scene.scene_diffusion


def restyle_settings(prompt="a stone cube", **kw):
    s = settings()
    s.prompt, s.action, s.steps, s.width, s.height, s.seed, s.use_random_seed = prompt, "RESTYLE", 3, 128, 128, 9, False
    for key, value in kw.items():
        setattr(s, key, value)
    return s


def counts() -> tuple[int, int, int]:
    return len(bpy.data.images), len(bpy.data.materials), len(bpy.data.objects)


def test_register_and_unregister_leave_nothing_behind():
    bpy.ops.wm.read_factory_settings(use_empty=False)
    before = snapshot()
    addon_utils.enable(ADDON, default_set=True)
    during = snapshot()
    assert during["types"] >= {"SCENEDIFF_PT_panel", "SCENE_DIFFUSION_OT_generate"}
    assert "SCENEDIFF_PG_settings" in during["groups"]
    assert "scene_diffusion" in during["scene_props"] and "_cancel_on_file_change" in during["handlers"]
    assert "generate" in during["ops"]
    addon_utils.disable(ADDON, default_set=True)
    after = snapshot()
    assert after["types"] == before["types"] and after["scene_props"] == before["scene_props"]
    assert after["groups"] == before["groups"] and after["ops"] == before["ops"]
    assert after["handlers"] == before["handlers"]
    assert not hasattr(bpy.types.Scene, "scene_diffusion")


def test_restyle_end_to_end(addon, server):
    url, _ = server
    use_server(addon, url)
    restyle_settings()
    images_before = len(bpy.data.images)
    assert bpy.ops.scene_diffusion.generate() == {"FINISHED"}
    s = settings()
    assert len(s.history) == 1 and len(bpy.data.images) == images_before + 1
    image = s.history[0].image
    params = json.loads(image["scene_diffusion"])
    assert params["mode"] == "depth" and params["seed"] == 9 and params["prompt"] == "a stone cube"
    assert params["strength"] == pytest.approx(0.6) and "Steps: 3" in params["parameters"]
    assert tuple(image.size) == (128, 72), "render aspect (16:9) kept, longest side = width"
    assert image.packed_file is not None, "packed into the .blend by default"
    pixels = np.empty(128 * 72 * 4, np.float32)
    image.pixels.foreach_get(pixels)
    assert pixels.reshape(72, 128, 4)[..., :3].std() > 0.02
    assert s.last_seed == 9 and bpy.data.images.get("SceneDiffusion Preview") is None


def test_generate_image_and_restore_parameters(addon, server):
    url, _ = server
    use_server(addon, url)
    s = settings()
    s.prompt, s.action, s.steps, s.width, s.height, s.use_random_seed = "moss", "IMAGE", 2, 64, 64, True
    assert bpy.ops.scene_diffusion.generate() == {"FINISHED"}
    seed = s.history[0].params["seed"]
    s.prompt, s.steps, s.width = "something else", 7, 256
    assert bpy.ops.scene_diffusion.restore_parameters() == {"FINISHED"}
    assert (s.prompt, s.steps, s.width, s.seed, s.use_random_seed) == ("moss", 2, 64, seed, False)
    assert bpy.ops.scene_diffusion.generate() == {"FINISHED"}
    first, second = (s.history[k].image for k in (0, 1))
    a, b = (np.empty(64 * 64 * 4, np.float32) for _ in range(2))
    first.pixels.foreach_get(a)
    second.pixels.foreach_get(b)
    assert np.array_equal(a, b), "restored parameters reproduce the image"


def test_ticks_never_block_the_main_thread(addon, server):
    from blender_addon import generation, operators

    url, _ = server
    use_server(addon, url)
    restyle_settings(steps=20)
    capture = operators.capture_for_restyle(bpy.context)
    job = generation.SceneJob(bpy.context, generation.build_job(bpy.context, capture), "RESTYLE", capture).start()
    ticks = []
    while True:
        t0 = time.perf_counter()
        outcome = job.tick(bpy.context)
        ticks.append(time.perf_counter() - t0)
        if outcome is not None:
            break
        time.sleep(0.01)
    assert outcome.state == "done"
    progress_ticks = ticks[:-1]  # the last tick adds the result to the scene (bpy work, once)
    print(f"\nlongest progress tick {max(progress_ticks) * 1000:.2f} ms over {len(ticks)} ticks; "
          f"final tick {ticks[-1] * 1000:.1f} ms")
    assert max(progress_ticks) < 0.01


def test_cancel_leaves_the_scene_as_it_was(addon, server):
    from blender_addon import generation, session

    url, engine = server
    use_server(addon, url)
    restyle_settings(prompt="hold", steps=50)
    before = counts()
    from blender_addon import operators

    capture = operators.capture_for_restyle(bpy.context)
    job = generation.SceneJob(bpy.context, generation.build_job(bpy.context, capture), "RESTYLE", capture).start()
    assert engine.holding.wait(30)
    assert bpy.ops.scene_diffusion.cancel() == {"FINISHED"}
    deadline = time.monotonic() + 30
    while (outcome := job.tick(bpy.context)) is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert outcome.state == "cancelled" and "nothing was changed" in outcome.message
    assert counts() == before and len(settings().history) == 0
    assert session.active_job() is None and bpy.ops.scene_diffusion.generate.poll()


@pytest.mark.parametrize("case", ["unreachable", "engine failure", "not loopback", "bad url", "unknown model"])
def test_failures_report_and_change_nothing(addon, server, case):
    from blender_addon import session

    url, _ = server
    use_server(addon, url)
    restyle_settings()
    if case == "unreachable":
        addon.url = f"http://127.0.0.1:{free_port()}"
    elif case == "engine failure":
        settings().prompt = "boom"
    elif case == "not loopback":
        addon.url = "http://192.0.2.1:7860"
    elif case == "bad url":
        addon.url = "127.0.0.1:7860"
    else:
        settings().model = "other/model"
    expected = {"unreachable": "refused the connection", "engine failure": "out of GPU memory",
                "not loopback": "Allow Online Access", "bad url": "no http:// or https:// scheme",
                "unknown model": "unknown model .other/model."}[case]
    before = counts()
    # in background mode an operator's error report surfaces as a RuntimeError carrying the message
    with pytest.raises(RuntimeError, match=expected):
        bpy.ops.scene_diffusion.generate()
    assert counts() == before and len(settings().history) == 0 and session.active_job() is None
    assert bpy.ops.scene_diffusion.generate.poll(), "ready for the next job"


def test_poll_explains_why_generate_is_disabled(addon):
    settings().prompt = ""
    assert not bpy.ops.scene_diffusion.generate.poll()
    settings().prompt = "x"
    bpy.context.scene.camera = None
    settings().action, settings().source = "RESTYLE", "CAMERA"
    assert not bpy.ops.scene_diffusion.generate.poll()
    settings().action = "IMAGE"
    assert bpy.ops.scene_diffusion.generate.poll()


def test_opening_another_file_cancels_the_job(addon, server):
    from blender_addon import generation, session

    url, engine = server
    use_server(addon, url)
    restyle_settings(prompt="hold", steps=50)
    job = generation.SceneJob(bpy.context, generation.build_job(bpy.context), "IMAGE").start()
    assert engine.holding.wait(30)
    bpy.ops.wm.read_factory_settings(use_empty=False)
    assert session.active_job() is None
    finished = job.runner.wait(30)
    assert finished.state == "cancelled"


def test_local_backend_is_started_and_stopped(addon, tmp_path):
    import sys

    from blender_addon import session

    addon.backend, addon.python, addon.local_model, addon.timeout = "LOCAL", sys.executable, "testing/tiny-sd", 60
    s = settings()
    s.prompt, s.action, s.steps, s.width, s.height = "local", "IMAGE", 2, 64, 64
    assert bpy.ops.scene_diffusion.generate() == {"FINISHED"}
    server = session.local_server()
    assert server is not None and server.running
    assert bpy.ops.scene_diffusion.test_connection() == {"FINISHED"}
    assert "testing/tiny-sd" in session.connection_message()
    addon_utils.disable(ADDON, default_set=True)
    assert not server.running, "disabling the add-on stops the local server"
    addon_utils.enable(ADDON, default_set=True)


def test_local_backend_with_a_python_lacking_it(addon, tmp_path):
    from blender_addon import session

    addon.backend, addon.python = "LOCAL", "/bin/false"
    settings().prompt, settings().action = "x", "IMAGE"
    before = counts()
    with pytest.raises(RuntimeError, match="/bin/false"):
        bpy.ops.scene_diffusion.generate()
    assert counts() == before and "/bin/false" in session.local_server_error()


def test_project_onto_visible_objects(addon, server):
    url, _ = server
    use_server(addon, url)
    restyle_settings(output="PROJECT")
    cube = bpy.data.objects["Cube"]
    slots_before = [s.material.name for s in cube.material_slots]
    assert bpy.ops.scene_diffusion.generate() == {"FINISHED"}
    image = settings().history[0].image
    assert [s.material.name for s in cube.material_slots][:-1] == slots_before, "the artist's material stays"
    material = cube.material_slots[-1].material
    assert any(n.type == "TEX_IMAGE" and n.image == image for n in material.node_tree.nodes)
    visibility = cube.data.attributes["SceneDiffusion Visibility"]
    values = np.empty(len(cube.data.loops), np.float32)
    visibility.data.foreach_get("value", values)
    assert 0 < values.mean() < 1, "faces toward the camera are painted, the hidden ones are not"


def test_compositor_output(addon, server):
    url, _ = server
    use_server(addon, url)
    restyle_settings(output="COMPOSITOR")
    assert bpy.ops.scene_diffusion.generate() == {"FINISHED"}
    tree = bpy.context.scene.compositing_node_group
    image = settings().history[0].image
    assert tree is not None and any(n.type == "IMAGE" and n.image == image for n in tree.nodes)


def test_save_next_to_the_blend_needs_a_saved_file(addon, server, tmp_path):
    url, _ = server
    use_server(addon, url)
    restyle_settings(storage="SAVE")
    before = counts()
    with pytest.raises(RuntimeError, match="save the .blend first"):
        bpy.ops.scene_diffusion.generate()
    assert counts() == before
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))
    assert bpy.ops.scene_diffusion.generate() == {"FINISHED"}
    image = settings().history[0].image
    saved = list((tmp_path / "scene_diffusion").glob("*.png"))
    assert len(saved) == 1 and image.filepath.startswith("//") and image.packed_file is None


def test_apply_as_material_and_undo_it(addon, server):
    url, _ = server
    use_server(addon, url)
    s = settings()
    s.prompt, s.action, s.steps, s.width, s.height = "bricks", "IMAGE", 2, 64, 64
    assert bpy.ops.scene_diffusion.generate() == {"FINISHED"}
    cube = bpy.data.objects["Cube"]
    bpy.ops.object.select_all(action="DESELECT")
    cube.select_set(True)
    bpy.context.view_layer.objects.active = cube
    materials_before = {m.name for m in bpy.data.materials}
    # Blender's UI pushes an undo step around every UNDO operator; headless, we push them ourselves
    bpy.ops.ed.undo_push(message="before")
    assert bpy.ops.scene_diffusion.apply_material() == {"FINISHED"}
    bpy.ops.ed.undo_push(message="Apply as Material")
    cube = bpy.data.objects["Cube"]
    new = {m.name for m in bpy.data.materials} - materials_before
    assert len(new) == 1 and cube.material_slots[-1].material.name in new
    assert cube.material_slots[0].material.name == "Material", "the artist's material is kept"
    faces = np.empty(len(cube.data.polygons), np.int32)
    cube.data.polygons.foreach_get("material_index", faces)
    assert (faces == len(cube.material_slots) - 1).all()
    bpy.ops.ed.undo()
    cube = bpy.data.objects["Cube"]  # references die with an undo
    assert {m.name for m in bpy.data.materials} == materials_before
    assert [s.material.name for s in cube.material_slots] == ["Material"]


def test_apply_as_material_refuses_objects_without_materials(addon, server):
    url, _ = server
    use_server(addon, url)
    s = settings()
    s.prompt, s.action, s.steps, s.width, s.height = "bricks", "IMAGE", 2, 64, 64
    assert bpy.ops.scene_diffusion.generate() == {"FINISHED"}
    bpy.ops.object.select_all(action="DESELECT")
    bpy.data.objects["Camera"].select_set(True)
    bpy.data.objects["Cube"].select_set(True)
    before = counts()
    with pytest.raises(RuntimeError, match="Camera"):
        bpy.ops.scene_diffusion.apply_material()
    assert counts() == before and len(bpy.data.objects["Cube"].material_slots) == 1


def test_projection_tests_occlusion_per_pixel(addon):
    """The floor behind the cube is big (4 corners, all seen) but partly hidden: the material compares each
    shaded point's camera depth with the Z pass, like a shadow map."""
    from blender_addon import capture, materials

    bpy.ops.mesh.primitive_plane_add(size=8, location=(0, 0, -1))
    sc = bpy.context.scene
    shot = capture.render_camera(sc, sc.camera, 128, 72)
    image = materials.new_image("P", shot.color)
    material = materials.project_from_camera([bpy.data.objects["Plane"], bpy.data.objects["Cube"]], sc.camera,
                                             image, depth=shot.z, scene=sc)
    depth_node = next(n for n in material.node_tree.nodes if n.type == "TEX_IMAGE" and n.image != image)
    stored = np.empty(128 * 72 * 4, np.float32)
    depth_node.image.pixels.foreach_get(stored)
    stored = stored.reshape(72, 128, 4)[::-1, :, 0]
    assert depth_node.image.is_float and depth_node.interpolation == "Closest"
    assert np.allclose(stored, shot.z * 1.01, rtol=1e-5), "the Z pass, scaled by the tolerance"


def test_test_connection_lists_the_models_for_the_panel(addon, server):
    from blender_addon import session

    url, _ = server
    use_server(addon, url)
    assert bpy.ops.scene_diffusion.test_connection() == {"FINISHED"}
    assert session.known_models() == ["testing/tiny-sd"]
    assert "OK: testing/tiny-sd on cpu" in session.connection_message()


def test_viewport_capture_sees_what_the_view_shows(addon):
    """The viewport's point of view becomes a temporary camera; it is gone afterwards."""
    from types import SimpleNamespace

    from mathutils import Matrix

    from blender_addon import capture

    camera = bpy.context.scene.camera
    region = SimpleNamespace(view_perspective="PERSP", view_matrix=camera.matrix_world.inverted(),
                             view_distance=10.0)
    space = SimpleNamespace(type="VIEW_3D", lens=camera.data.lens * 2, clip_start=0.1, clip_end=100.0)
    objects_before = set(bpy.data.objects.keys())
    with capture.viewport_camera(bpy.context, region, space) as view:
        assert view.name != camera.name
        assert np.allclose(np.array(view.matrix_world), np.array(Matrix(camera.matrix_world)), atol=1e-5)
        shot = capture.render_camera(bpy.context.scene, view, 128, 72)
    reference = capture.render_camera(bpy.context.scene, camera, 128, 72)
    assert set(bpy.data.objects.keys()) == objects_before and bpy.context.scene.camera == camera
    # the viewport's lens is relative to a 72 mm sensor: twice the focal length frames like the camera
    assert np.abs(shot.depth.astype(int) - reference.depth.astype(int)).mean() < 2


def test_the_addon_never_imports_torch_pil_or_the_backend():
    import subprocess
    import sys

    code = ("import sys, bpy, addon_utils; addon_utils.enable('blender_addon'); "
            "import blender_addon.capture, blender_addon.generation, blender_addon.materials; "
            "bad = [m for m in ('torch', 'PIL', 'diffusers', 'backend') if m in sys.modules]; "
            "print('BAD', bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-500:] + result.stderr[-500:]


# -- the servers artists already run, through the preferences -------------------------------------


def test_restyle_through_an_automatic1111_server(addon, tiny_engine):
    """Our own server's /sdapi/v1 as the WebUI: restyle with ControlNet depth, unchanged add-on code."""
    with live_server(create_app(tiny_engine, token="tok")) as url:
        addon.backend, addon.url, addon.username, addon.password = "A1111", url, "artist", "tok"
        restyle_settings()
        assert bpy.ops.scene_diffusion.generate() == {"FINISHED"}
    params = settings().history[0].params
    assert params["mode"] == "depth" and params["seed"] == 9


def test_automatic1111_without_controlnet_falls_back_and_says_so(addon):
    from fake_a1111 import FakeA1111

    from blender_addon import generation

    webui = FakeA1111(controlnet=None)
    with live_server(webui.app) as url:
        addon.backend, addon.url = "A1111", url
        restyle_settings()
        from blender_addon import operators

        capture = operators.capture_for_restyle(bpy.context)
        job = generation.SceneJob(bpy.context, generation.build_job(bpy.context, capture), "RESTYLE", capture)
        job.start()
        deadline = time.monotonic() + 30
        while (outcome := job.tick(bpy.context)) is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert outcome.state == "done" and any("ControlNet" in w for w in outcome.warnings)
    path, body = webui.requests[-1]
    assert path.endswith("img2img") and "controlnet" not in json.dumps(body.get("alwayson_scripts") or {})


def test_comfyui_refuses_seamless_before_the_job_starts(addon):
    from fake_comfyui import FakeComfyUI

    fake = FakeComfyUI()
    with fake.serve() as url:
        addon.backend, addon.url = "COMFYUI", url
        s = settings()
        s.prompt, s.action, s.steps, s.width, s.height, s.seamless = "tiles", "IMAGE", 2, 64, 64, "xy"
        before = counts()
        with pytest.raises(RuntimeError, match="seamless"):
            bpy.ops.scene_diffusion.generate()
        assert counts() == before and not fake.prompts
        s.seamless = "NONE"
        assert bpy.ops.scene_diffusion.generate() == {"FINISHED"}
    assert len(settings().history) == 1
