"""The other model families, through their own tiny test models: SDXL (two text encoders, size
conditioning, XL pipelines and ControlNet) and SD 2 depth-to-image (depth as a fifth UNet channel)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import pixels
from PIL import Image

from backend.engine import GenerationRequest, create_engine
from backend.errors import UnsupportedMode


@pytest.fixture(scope="module")
def sdxl():
    return create_engine("testing/tiny-sdxl")


@pytest.fixture(scope="module")
def sd2_depth():
    return create_engine("testing/tiny-sd2-depth")


def gen(engine, **kw) -> Image.Image:
    return engine.generate(GenerationRequest("a cliff", width=64, height=64, steps=3, seed=2, **kw))[0].image


def test_sdxl_every_mode(sdxl, gradient, square_mask):
    assert sdxl.info()["family"] == "sdxl" and sdxl.modes() == ["depth", "img2img", "inpaint", "txt2img"]
    init = gen(sdxl)
    assert pixels(init).std() > 5
    assert gen(sdxl, init_images=(init,), strength=0.67).size == (64, 64)
    outside = np.asarray(square_mask) == 0
    inpainted = gen(sdxl, init_images=(init,), masks=(square_mask,))
    assert np.array_equal(pixels(inpainted)[outside], pixels(init)[outside])
    a = gen(sdxl, depths=(gradient,))
    b = gen(sdxl, depths=(gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT),))
    assert np.abs(pixels(a) - pixels(b)).mean() > 0.5, "depth must steer SDXL through its ControlNet"
    masked = gen(sdxl, depths=(gradient,), init_images=(init,), masks=(square_mask,))
    assert np.array_equal(pixels(masked)[outside], pixels(init)[outside])
    assert "ControlNet" in type(sdxl._pipeline("depth")).__name__ and "XL" in type(sdxl._pipeline("depth")).__name__


def test_sdxl_batch_of_views(sdxl, gradient):
    depths = (gradient, gradient.rotate(90))
    results = sdxl.generate(GenerationRequest("x", width=64, height=64, steps=2, seed=5, depths=depths, count=2))
    assert [r.seed for r in results] == [5, 6, 7, 8]
    gen_seed = sdxl.generate(GenerationRequest("x", width=64, height=64, steps=2, seed=7,
                                                       depths=(depths[1],)))[0]
    assert np.abs(pixels(results[2].image) - pixels(gen_seed.image)).max() <= 2 and gen_seed.seed == 7


def test_sd2_depth_uses_depth_natively(sd2_depth, gradient):
    assert sd2_depth.modes() == ["depth"]
    a = gen(sd2_depth, depths=(gradient,))
    b = gen(sd2_depth, depths=(gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT),))
    assert np.abs(pixels(a) - pixels(b)).mean() > 0.5
    init = gen(sd2_depth, depths=(gradient,))
    assert gen(sd2_depth, depths=(gradient,), init_images=(init,), strength=0.67).size == (64, 64)
    assert "controlnet_scale" not in sd2_depth.generate(
        GenerationRequest("x", width=64, height=64, steps=2, seed=1, depths=(gradient,)))[0].parameters


def test_sd2_depth_refuses_what_it_cannot_do(sd2_depth, gradient, square_mask):
    with pytest.raises(UnsupportedMode, match="cannot do txt2img; it can do: depth"):
        gen(sd2_depth)
    init = gen(sd2_depth, depths=(gradient,))
    with pytest.raises(UnsupportedMode, match="cannot do depth with mask"):
        gen(sd2_depth, depths=(gradient,), init_images=(init,), masks=(square_mask,))
