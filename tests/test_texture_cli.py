"""`scene-diffusion texture`: a .blend in, a textured .blend out, views saved for checking."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backend.cli import main

bpy = pytest.importorskip("bpy")

ARGS = ["--model", "testing/pattern", "--steps", "2", "--views", "3", "--texture-size", "256", "--view-size",
        "128", "--seed", "4"]


@pytest.fixture(scope="module")
def blend(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("scenes") / "suzanne.blend"
    bpy.ops.wm.read_factory_settings(use_empty=False)
    bpy.data.objects.remove(bpy.data.objects["Cube"])
    bpy.ops.mesh.primitive_monkey_add()
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return str(path)


def test_texture_writes_the_blend_and_the_views(blend, tmp_path, capsys):
    out, views = tmp_path / "out.blend", tmp_path / "views"
    assert main(["texture", blend, "--object", "Suzanne", "--prompt", "bronze", "--out", str(out),
                 "--save-views", str(views), *ARGS]) == 0
    assert "Textured Suzanne" in capsys.readouterr().out
    assert sorted(p.name for p in views.iterdir()) == [f"view-0{k}.{e}" for k in (1, 2, 3) for e in ("json", "png")]
    camera = json.loads((views / "view-01.json").read_text())
    assert camera["name"] == "Camera" and camera["resolution"] == [128, 128] and len(camera["matrix_world"]) == 4
    bpy.ops.wm.open_mainfile(filepath=str(out))
    suzanne = bpy.data.objects["Suzanne"]
    material = suzanne.material_slots[-1].material
    image = next(n.image for n in material.node_tree.nodes if n.type == "TEX_IMAGE")
    assert tuple(image.size) == (256, 256) and image.packed_file is not None
    pixels = np.empty(256 * 256 * 4, np.float32)
    image.pixels.foreach_get(pixels)
    assert pixels.reshape(-1, 4)[:, :3].std() > 0.01


def test_view_json_rebuilds_the_camera(blend, tmp_path):
    """A saved view can be rebuilt: a camera from its JSON renders the object where the view image has it."""
    from blender_addon import texturing

    views = tmp_path / "views"
    assert main(["texture", blend, "--object", "Suzanne", "--prompt", "x", "--out", str(tmp_path / "o.blend"),
                 "--save-views", str(views), *ARGS]) == 0
    spec = json.loads((views / "view-02.json").read_text())
    bpy.ops.wm.open_mainfile(filepath=blend)
    rebuilt = texturing.CameraSpec(matrix_world=__import__("mathutils").Matrix(spec["matrix_world"]),
                                   lens=spec["lens"], sensor_width=spec["sensor_width"])
    passes = texturing.render_passes(bpy.context.scene, bpy.data.objects["Suzanne"], rebuilt, 128)
    assert 0.05 < passes.alpha.mean() < 0.9, "the object is in that view's frame"


@pytest.mark.parametrize("extra, words", [
    (["--object", "Nope"], "no object named 'Nope'"),
    (["--object", "Camera"], "not a mesh"),
    (["--object", "Suzanne", "--view-size", "100"], "--view-size must be a multiple of 8"),
])
def test_texture_bad_input_changes_nothing(blend, tmp_path, capsys, extra, words):
    out = tmp_path / "out.blend"
    args = [a for a in ARGS]
    assert main(["texture", blend, "--prompt", "x", "--out", str(out), *args, *extra]) == 2
    assert words in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []
