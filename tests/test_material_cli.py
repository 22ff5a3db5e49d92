"""`scene-diffusion material`: four tiling maps with their parameters, optionally a material in a .blend;
one clear line and nothing written for every bad input."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from live_server import live_server
from PIL import Image

import backend.cli as cli
from backend.material_cli import FILES, add_material_parser
from backend.metadata import read_png_parameters
from backend.server.app import create_app
from blender_addon.core.maps import TILEABLE_MAX, tileability

bpy = pytest.importorskip("bpy")

TINY = ["--model", "testing/tiny-sd", "--steps", "2", "--size", "64", "--seed", "7"]


@pytest.fixture(autouse=True)
def material_command(monkeypatch):
    """`main` with the material command, whether or not cli.make_parser lists it yet."""
    make_parser = cli.make_parser

    def with_material():
        parser = make_parser()
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        if "material" not in sub.choices:
            add_material_parser(sub)
        return parser

    monkeypatch.setattr(cli, "make_parser", with_material)


@pytest.fixture
def loaded(monkeypatch, tiny_engine):
    """The session's tiny engine instead of a fresh one per command (the first test builds its own)."""
    monkeypatch.setattr(cli, "build_engine", lambda args, err=None: tiny_engine)


def run(*args: str) -> int:
    return cli.main(["material", *args])


@pytest.fixture(scope="module")
def blend(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("scenes") / "factory.blend"
    bpy.ops.wm.read_factory_settings(use_empty=False)
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return str(path)


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error")]
    assert len(err) == 1, err
    return err[0]


def test_four_tiling_maps_with_their_parameters(tmp_path, capsys):
    out = tmp_path / "maps"
    assert run("weathered oak planks", "--out-dir", str(out), *TINY, "--normal-strength", "3",
               "--roughness-range", "0.2", "0.6") == 0
    assert "wrote albedo.png, height.png, normal.png, roughness.png" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES.values()), "no temporary files left"
    umask = os.umask(0o022)
    os.umask(umask)
    assert all((out / n).stat().st_mode & 0o777 == 0o666 & ~umask for n in FILES.values()), "as open() makes them"
    for kind, name in FILES.items():
        with Image.open(out / name) as image:
            params = read_png_parameters(image)
            pixels = np.asarray(image)
            assert image.size == (64, 64) and image.mode == ("L" if kind in ("height", "roughness") else "RGB")
            assert "weathered oak planks" in image.text["parameters"]
        assert params["map"] == kind and params["seed"] == 7 and params["seamless"] == "xy"
        assert params["prompt"] == "weathered oak planks" and params["model"] == "testing/tiny-sd"
        assert tileability(pixels) <= TILEABLE_MAX, f"{kind} tiles"
    normal = read_png_parameters(Image.open(out / "normal.png"))["map_settings"]
    assert normal["strength"] == 3.0 and "green = +Y up" in normal["convention"]
    rough = read_png_parameters(Image.open(out / "roughness.png"))["map_settings"]
    assert (rough["low"], rough["high"]) == (0.2, 0.6)
    pixels = np.asarray(Image.open(out / "roughness.png"))
    assert pixels.min() >= round(0.2 * 255) and pixels.max() <= round(0.6 * 255)


def test_apply_puts_the_material_on_the_objects_of_a_saved_blend(blend, tmp_path, loaded):
    out_blend = tmp_path / "with material.blend"
    stamp = open(blend, "rb").read()
    assert run("slate", "--out-dir", str(tmp_path / "maps"), *TINY, "--apply", blend, "--objects", "Cube",
               "--out", str(out_blend), "--scale", "3", "--mapping", "uv") == 0
    assert open(blend, "rb").read() == stamp, "the input scene is not touched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps", "with material.blend"], "no temporary files"
    bpy.ops.wm.open_mainfile(filepath=str(out_blend), load_ui=False)
    cube = bpy.data.objects["Cube"]
    assert [s.material.name for s in cube.material_slots] == ["Material", "slate"]
    material = cube.material_slots[-1].material
    nodes = material.node_tree.nodes
    assert nodes["Scale"].outputs["Value"].default_value == pytest.approx(3.0)
    assert nodes["Mapping"].inputs["Vector"].links[0].from_socket.name == "UV"
    for kind in ("albedo", "height", "normal", "roughness"):
        image = nodes[kind.capitalize()].image
        assert image.packed_file is not None, "packed: the .blend stands alone"
        assert image.colorspace_settings.name == ("sRGB" if kind == "albedo" else "Non-Color")
        assert json.loads(image["scene_diffusion"])["map"] == kind
    with Image.open(tmp_path / "maps" / "albedo.png") as png:
        on_disk = np.asarray(png)
    flat = np.empty(64 * 64 * 4, np.float32)
    nodes["Albedo"].image.pixels.foreach_get(flat)
    in_blend = np.rint(flat.reshape(64, 64, 4)[::-1, :, :3] * 255).astype(np.uint8)
    assert np.array_equal(in_blend, on_disk), "the material is built from the files' pixels"


def test_apply_may_write_over_its_own_input(blend, tmp_path, loaded):
    scene = tmp_path / "scene.blend"
    shutil.copy(blend, scene)
    assert run("clay", "--out-dir", str(tmp_path / "maps"), *TINY, "--apply", str(scene), "--objects", "Cube",
               "--out", str(scene)) == 0
    bpy.ops.wm.open_mainfile(filepath=str(scene), load_ui=False)
    assert bpy.data.objects["Cube"].material_slots[-1].material.name == "clay"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps", "scene.blend"], "no .blend1 or temporary files"


def test_on_a_server_it_makes_the_same_maps(tmp_path, tiny_engine, loaded):
    assert run("rust", "--out-dir", str(tmp_path / "here"), *TINY) == 0
    with live_server(create_app(tiny_engine)) as url:
        assert run("rust", "--out-dir", str(tmp_path / "there"), *TINY[2:], "--backend", url) == 0
    for name in FILES.values():
        assert np.array_equal(np.asarray(Image.open(tmp_path / "here" / name)),
                              np.asarray(Image.open(tmp_path / "there" / name)))


@pytest.mark.parametrize("extra, words", [
    (["--size", "100"], "--size must be a multiple of 8"),
    (["--size", "32"], "--size must be a multiple of 8 of at least 64"),
    (["--roughness-range", "0.8", "0.1"], "--roughness-range must satisfy 0 <= low <= high <= 1"),
    (["--scale", "0"], "--scale must be positive"),
    (["--objects", "Cube"], "--objects goes with --apply"),
    (["--apply", "SCENE", "--objects", "Cube,Nope,Ghost", "--out", "OUT"],
     "no object named 'Nope', 'Ghost' in .* \\(objects: Camera, Cube, Light\\)"),
    (["--apply", "SCENE", "--objects", "Cube,Light", "--out", "OUT"], "Light cannot take a material"),
    (["--apply", "SCENE", "--objects", "Cube"], "--apply needs --out OUT.blend"),
    (["--apply", "SCENE", "--objects", "Cube", "--out", "OUT.png"], "must be a .blend file"),
    (["--apply", "MISSING", "--objects", "Cube", "--out", "OUT"], "the scene .* does not exist"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(blend, tmp_path, capsys, extra, words):
    import re

    out_dir, out = tmp_path / "maps", tmp_path / "out.blend"
    extra = [str(tmp_path / "none.blend") if a == "MISSING" else blend if a == "SCENE"
             else str(out) if a == "OUT" else str(tmp_path / "out.png") if a == "OUT.png" else a for a in extra]
    args = [a for a in TINY if a not in ("--size", "64")] if "--size" in extra else TINY
    assert run("x", "--out-dir", str(out_dir), *args, *extra) == 2
    line = one_error_line(capsys)
    assert re.search(words, line), line
    assert list(tmp_path.iterdir()) == [], "nothing written, not even the output folder"


def test_out_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "maps").write_text("not a folder")
    assert run("x", "--out-dir", str(tmp_path / "maps"), *TINY) == 2
    assert "is a file, not a folder" in one_error_line(capsys)


class IgnoresSeamless:
    """The tiny engine behind a backend that drops the seamless request and paints a ramp, which does not tile."""

    def __init__(self, engine):
        self.engine, self.model_id = engine, engine.model_id

    def generate(self, request, progress=None, cancel=None):
        from backend.engine.request import GeneratedImage

        ramp = np.repeat(np.tile(np.linspace(0, 255, request.width).astype(np.uint8), (request.height, 1))[..., None],
                         3, axis=2)
        return [GeneratedImage(Image.fromarray(ramp), 7, {"prompt": request.prompt, "seed": 7})]


def test_a_result_that_does_not_tile_is_refused(blend, tmp_path, capsys, monkeypatch, tiny_engine):
    monkeypatch.setattr(cli, "build_engine", lambda args, err=None: IgnoresSeamless(tiny_engine))
    assert run("x", "--out-dir", str(tmp_path / "maps"), *TINY, "--apply", blend, "--objects", "Cube",
               "--out", str(tmp_path / "out.blend")) == 2
    line = one_error_line(capsys)
    assert "does not tile" in line and "seamless" in line and "nothing was written" in line
    assert list(tmp_path.iterdir()) == []
