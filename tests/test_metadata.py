"""Parameters inside PNGs: the Automatic1111 text and our JSON, and reproduction from them."""

from __future__ import annotations

import numpy as np
from conftest import pixels
from PIL import Image

from backend.engine import GenerationRequest
from backend.images import save_png
from backend.metadata import format_a1111, parse_a1111, read_png_parameters

PARAMS = {
    "prompt": 'a "quoted", comma, prompt\nwith a second line',
    "negative_prompt": "blurry, low quality",
    "steps": 20,
    "sampler": "euler_a",
    "guidance": 7.5,
    "seed": 1234567,
    "width": 512,
    "height": 768,
    "model": "owner/model",
    "strength": 0.6,
    "mode": "img2img",
    "seamless": "xy",
    "version": "scene-diffusion 0.1.0",
}


def test_a1111_text_layout():
    text = format_a1111(PARAMS)
    lines = text.split("\n")
    assert lines[0] == 'a "quoted", comma, prompt'
    assert lines[2] == "Negative prompt: blurry, low quality"
    assert lines[3].startswith("Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 1234567, Size: 512x768")
    assert "Denoising strength: 0.6" in lines[3]


def test_a1111_round_trip():
    assert parse_a1111(format_a1111(PARAMS)) == PARAMS


def test_parse_text_written_by_automatic1111():
    text = (
        "masterpiece, castle on a hill\nNegative prompt: ugly\n"
        'Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 6, Seed: 42, Size: 640x512, Model hash: 6ce0161689, '
        'Model: v1-5-pruned-emaonly, Lora hashes: "a: 1, b: 2", Version: v1.9.4'
    )
    p = parse_a1111(text)
    assert p["prompt"] == "masterpiece, castle on a hill" and p["negative_prompt"] == "ugly"
    assert p["steps"] == 30 and p["seed"] == 42 and p["guidance"] == 6.0
    assert (p["width"], p["height"]) == (640, 512) and p["sampler"] == "dpmpp_2m_karras"
    assert p["Model hash"] == "6ce0161689" and p["Lora hashes"] == "a: 1, b: 2"


def test_prompt_only_text():
    assert parse_a1111("just a prompt") == {"prompt": "just a prompt", "negative_prompt": ""}


def test_png_carries_both_chunks(tmp_path):
    path = tmp_path / "x.png"
    save_png(Image.new("RGB", (8, 8)), path, PARAMS)
    with Image.open(path) as image:
        assert image.text["parameters"] == format_a1111(PARAMS)
        assert read_png_parameters(image) == PARAMS


def test_image_reproduces_from_its_own_metadata(tiny_engine, tmp_path):
    (result,) = tiny_engine.generate(GenerationRequest("a mossy stone", width=64, height=64, steps=3, seed=None,
                                                       negative_prompt="dull", sampler="euler", guidance=5.5))
    path = tmp_path / "r.png"
    save_png(result.image, path, result.parameters)
    with Image.open(path) as image:
        p = read_png_parameters(image)
        stored = pixels(image.convert("RGB"))
    again = GenerationRequest(p["prompt"], negative_prompt=p["negative_prompt"], width=p["width"],
                              height=p["height"], steps=p["steps"], guidance=p["guidance"], seed=p["seed"],
                              sampler=p["sampler"])
    assert np.array_equal(pixels(tiny_engine.generate(again)[0].image), stored)
