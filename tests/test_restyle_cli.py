"""`scene-diffusion restyle`: the add-on's code in the bpy module, the engine in-process or on a server."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from live_server import live_server
from PIL import Image

from backend.cli import main
from backend.metadata import read_png_parameters
from backend.server.app import create_app

bpy = pytest.importorskip("bpy")

ARGS = ["--model", "testing/tiny-sd", "--steps", "4", "--size", "128", "--seed", "5"]


@pytest.fixture(scope="module")
def blend(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("scenes") / "cube.blend"
    bpy.ops.wm.read_factory_settings(use_empty=False)
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return str(path)


def test_restyle_in_process(blend, tmp_path, capsys):
    out = tmp_path / "r.png"
    assert main(["restyle", blend, "--prompt", "a marble cube", "-o", str(out), *ARGS]) == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.size == (128, 72)
        params = read_png_parameters(image)
    assert params["mode"] == "depth" and params["strength"] == pytest.approx(0.6) and params["seed"] == 5


def test_restyle_on_a_server_matches(blend, tmp_path, tiny_engine):
    local, remote = tmp_path / "l.png", tmp_path / "s.png"
    assert main(["restyle", blend, "--prompt", "a marble cube", "-o", str(local), *ARGS]) == 0
    with live_server(create_app(tiny_engine)) as url:
        assert main(["restyle", blend, "--prompt", "a marble cube", "-o", str(remote), *ARGS[2:],
                     "--backend", url]) == 0
    assert np.array_equal(np.asarray(Image.open(local)), np.asarray(Image.open(remote)))


def test_restyle_without_depth_is_image_to_image(blend, tmp_path):
    out = tmp_path / "r.png"
    assert main(["restyle", blend, "--prompt", "x", "-o", str(out), "--no-depth", *ARGS]) == 0
    assert read_png_parameters(Image.open(out))["mode"] == "img2img"


@pytest.mark.parametrize("extra, words", [
    (["--camera", "Nope"], "no camera named 'Nope'"),
    (["--strength", "1.5"], "--strength must be between 0 and 1"),
])
def test_restyle_bad_input(blend, tmp_path, capsys, extra, words):
    out = tmp_path / "r.png"
    assert main(["restyle", blend, "--prompt", "x", "-o", str(out), *ARGS, *extra]) == 2
    assert words in capsys.readouterr().err
    assert not out.exists()


def test_restyle_missing_scene(tmp_path, capsys):
    assert main(["restyle", str(tmp_path / "none.blend"), "--prompt", "x", "-o", str(tmp_path / "r.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_restyle_scene_without_camera(tmp_path, capsys):
    path = tmp_path / "empty.blend"
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    assert main(["restyle", str(path), "--prompt", "x", "-o", str(tmp_path / "r.png"), *ARGS]) == 2
    assert "has no active camera" in capsys.readouterr().err


def test_extension_zip_installs_in_blender(tmp_path):
    """The built zip is a valid extension: Blender installs and enables it under bl_ext.* (relative imports,
    __package__ and the manifest all checked by Blender itself)."""
    root = Path(__file__).resolve().parents[1]
    built = subprocess.run([sys.executable, str(root / "scripts" / "build_addon.py"), str(tmp_path / "dist")],
                           capture_output=True, text=True, check=True)
    archive = Path(built.stdout.strip())
    names = zipfile.ZipFile(archive).namelist()
    assert "blender_manifest.toml" in names and "core/jobs.py" in names
    assert not any("__pycache__" in n for n in names)
    code = f"""
import bpy, sys
bpy.ops.extensions.package_install_files(filepath={str(archive)!r}, repo='user_default', enable_on_install=True)
name = 'bl_ext.user_default.scene_diffusion'
prefs = bpy.context.preferences.addons[name].preferences
assert prefs.backend == 'LOCAL' and hasattr(bpy.types.Scene, 'scene_diffusion')
assert 'scene_diffusion' in dir(bpy.ops) and hasattr(bpy.types, 'SCENEDIFF_PT_panel')
print('installed', name)
"""
    env = {**os.environ, "BLENDER_USER_EXTENSIONS": str(tmp_path / "ext"),
           "BLENDER_USER_CONFIG": str(tmp_path / "config")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "installed bl_ext.user_default.scene_diffusion" in result.stdout, result.stdout + result.stderr
