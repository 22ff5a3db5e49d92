"""`scene-diffusion generate`: outputs, metadata, progress, and one clear line for every bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.cli import main
from backend.metadata import read_png_parameters

TINY = ["--model", "testing/tiny-sd", "--steps", "2"]


def run_cli(*args: str) -> int:
    return main(["generate", *args])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_generate_writes_png_with_parameters(tmp_path, capsys):
    out = tmp_path / "wall.png"
    assert run_cli("brick wall", "-o", str(out), *TINY, "--width", "64", "--height", "96", "--seed", "5") == 0
    captured = capsys.readouterr()
    assert "step 2/2" in captured.err and f"wrote {out}" in captured.out
    with Image.open(out) as image:
        assert image.size == (64, 96)
        params = read_png_parameters(image)
        assert "Seed: 5" in image.text["parameters"]
    assert params["prompt"] == "brick wall" and params["seed"] == 5 and params["steps"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wall.png"], "no temporary files left"


def test_count_writes_numbered_files_with_consecutive_seeds(tmp_path):
    out = tmp_path / "v.png"
    assert run_cli("x", "-o", str(out), *TINY, "--width", "64", "--height", "64", "--seed", "9", "--count", "3") == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["v-1.png", "v-2.png", "v-3.png"]
    seeds = [read_png_parameters(Image.open(tmp_path / n))["seed"] for n in names]
    assert seeds == [9, 10, 11]


def test_every_mode_from_the_command_line(tmp_path):
    init, mask, depth = tmp_path / "init.png", tmp_path / "mask.png", tmp_path / "depth.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(init)
    m = Image.new("L", (64, 64), 0)
    m.paste(255, (0, 0, 32, 64))
    m.save(mask)
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))).save(depth)
    runs = {
        "img2img": ["--init", str(init), "--strength", "0.5"],
        "inpaint": ["--init", str(init), "--mask", str(mask), "--strength", "1"],
        "depth": ["--depth", str(depth), "--width", "64", "--height", "64"],
        "tiled": ["--seamless", "xy", "--width", "64", "--height", "64"],
    }
    for name, extra in runs.items():
        out = tmp_path / f"{name}.png"
        assert run_cli("stone", "-o", str(out), *TINY, *extra) == 0, name
        params = read_png_parameters(Image.open(out))
        assert params["mode"] == {"tiled": "txt2img"}.get(name, name)
    inpainted = np.asarray(Image.open(tmp_path / "inpaint.png"))
    assert np.array_equal(inpainted[:, 32:], np.asarray(Image.open(init))[:, 32:])


@pytest.fixture
def files(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(good)
    small = tmp_path / "small.png"
    Image.new("L", (32, 32)).save(small)
    broken = tmp_path / "broken.png"
    broken.write_text("this is not a png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    return dict(good=good, small=small, broken=broken, truncated=truncated)


BAD = [
    (["--width", "100"], "multiple of 8"),
    (["--height", "30"], "at least 64"),
    (["--steps", "0"], "steps must be at least 1"),
    (["--count", "0"], "count must be at least 1"),
    (["--steps", "5000"], "steps must be at most 500"),
    (["--init", "{good}", "--strength", "1.5"], "strength must be between 0 and 1"),
    (["--init", "{good}", "--strength", "-0.1"], "strength must be between 0 and 1"),
    (["--init", "{good}", "--mask", "{small}"], "mask image is 32x32 but the output is 64x64"),
    (["--depth", "{small}", "--width", "64", "--height", "64"], "depth image is 32x32 but the output is 64x64"),
    (["--init", "{broken}"], "not an image file"),
    (["--init", "{truncated}"], "damaged or truncated"),
    (["--init", "{missing}"], "does not exist"),
    (["--mask", "{good}"], "--mask needs --init"),
    (["--sampler", "warp"], "unknown sampler"),
]


@pytest.mark.parametrize("extra, words", BAD, ids=[w for _, w in BAD])
def test_bad_input_one_line_no_output(tmp_path, files, capsys, extra, words):
    out = tmp_path / "out" / "o.png"
    out.parent.mkdir()
    args = [a.format(missing=tmp_path / "missing.png", **files) for a in extra]
    assert run_cli("x", "-o", str(out), *TINY, *args) == 2
    assert words in one_error_line(capsys)
    assert list(out.parent.iterdir()) == []


def test_model_unavailable_offline(tmp_path, capsys):
    out = tmp_path / "o.png"
    assert run_cli("x", "-o", str(out), "--model", "owner/not-here") == 2
    line = one_error_line(capsys)
    assert "scene-diffusion download owner/not-here" in line and "testing/tiny-sd" in line
    assert not out.exists()


def test_pickle_refused_on_the_command_line(tmp_path, capsys):
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"\x80\x04")
    assert run_cli("x", "-o", str(tmp_path / "o.png"), "--model", str(ckpt)) == 2
    assert "--allow-pickle" in one_error_line(capsys)


def test_fallback_model_says_so_and_runs(tmp_path, capsys):
    out = tmp_path / "o.png"
    args = ["--model", "owner/not-here", "--fallback-model", "testing/tiny-sd", "--steps", "2", "--width", "64",
            "--height", "64"]
    assert run_cli("x", "-o", str(out), *args) == 0
    assert "note: model 'owner/not-here' is not in the local Hugging Face cache" in capsys.readouterr().err
    assert read_png_parameters(Image.open(out))["model"] == "testing/tiny-sd"


@pytest.mark.parametrize("output, words", [("o.jpg", "must be a .png"), ("nodir/o.png", "does not exist")])
def test_bad_output_path(tmp_path, capsys, output, words):
    assert run_cli("x", "-o", str(tmp_path / output), *TINY) == 2
    assert words in one_error_line(capsys)


def test_existing_output_survives_a_failed_run(tmp_path, capsys):
    out = tmp_path / "o.png"
    out.write_bytes(b"precious")
    assert run_cli("x", "-o", str(out), *TINY, "--width", "100") == 2
    assert out.read_bytes() == b"precious"


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, backend, backend.cli, backend.engine; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def scene_diffusion() -> str:
    return str(Path(sys.executable).with_name("scene-diffusion"))


def test_console_script_and_ctrl_c_leaves_nothing(tmp_path):
    out = tmp_path / "o.png"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [scene_diffusion(), "generate", "x", "-o", str(out), "--model", "testing/tiny-sd", "--steps", "500",
         "--width", "64", "--height", "64"],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    first = proc.stderr.readline()
    assert "step 1/500" in first
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "cancelled" in err
    assert list(tmp_path.iterdir()) == []


def test_download_offline_fails_clearly(capsys):
    assert main(["download", "owner/not-here"]) == 2
    assert "could not download 'owner/not-here'" in one_error_line(capsys)
    assert main(["download", "testing/tiny-sd"]) == 2
    assert "not a hub model id" in one_error_line(capsys)
