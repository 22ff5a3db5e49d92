"""Seamless tiling: a seamless result has no edge at all, which we prove by translation equivariance.

If every convolution wraps around, the whole denoiser and decoder commute with circular shifts (by
multiples of 2 per downsampling level: the tiny UNet has one): start from noise rolled by (dy, dx)
latent pixels and the image comes out rolled by 8x that. Then the pixel
pair across the wrap-around edge is computed exactly as an interior pair is, so the edge is as
continuous as the interior (and the check fails for a plain, zero-padded model).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import pixels

from backend.engine import GenerationRequest
from backend.engine.seamless import seamless


def run(pipe, latents):
    return pipe("stone", latents=latents, num_inference_steps=3, output_type="np", guidance_scale=7.0).images[0]


@pytest.fixture
def pipe(tiny_engine):
    return tiny_engine._pipeline("txt2img")


@pytest.fixture
def latents():
    return torch.randn(1, 4, 12, 16, generator=torch.Generator().manual_seed(3))


def test_xy_is_equivariant_under_wraparound_shift(pipe, latents):
    with seamless([pipe.unet, pipe.vae], "xy"):
        a = run(pipe, latents)
        b = run(pipe, torch.roll(latents, shifts=(4, 6), dims=(2, 3)))
    assert np.allclose(np.roll(a, shift=(32, 48), axis=(0, 1)), b, atol=1e-4)


def test_plain_model_is_not(pipe, latents):
    a = run(pipe, latents)
    b = run(pipe, torch.roll(latents, shifts=(4, 6), dims=(2, 3)))
    assert not np.allclose(np.roll(a, shift=(32, 48), axis=(0, 1)), b, atol=1e-2)


def test_x_only_wraps_x_and_not_y(pipe, latents):
    with seamless([pipe.unet, pipe.vae], "x"):
        a = run(pipe, latents)
        bx = run(pipe, torch.roll(latents, shifts=6, dims=3))
        by = run(pipe, torch.roll(latents, shifts=4, dims=2))
    assert np.allclose(np.roll(a, shift=48, axis=1), bx, atol=1e-4)
    assert not np.allclose(np.roll(a, shift=32, axis=0), by, atol=1e-2)


def test_seamless_is_undone_after_the_job(tiny_engine):
    req = GenerationRequest("stone", width=64, height=64, steps=3, seed=4)
    before = pixels(tiny_engine.generate(req)[0].image)
    (tiled,) = tiny_engine.generate(GenerationRequest("stone", width=64, height=64, steps=3, seed=4, seamless="xy"))
    after = pixels(tiny_engine.generate(req)[0].image)
    assert np.array_equal(before, after)
    assert np.abs(pixels(tiled.image) - before).mean() > 1
    assert tiled.parameters["seamless"] == "xy"
    convs = [m for m in tiny_engine._base.unet.modules() if isinstance(m, torch.nn.Conv2d)]
    assert not any("_conv_forward" in vars(c) for c in convs)


def test_seamless_is_undone_when_the_job_fails(tiny_engine):
    import threading

    from backend.errors import Cancelled

    cancel = threading.Event()
    cancel_at_first_step = lambda p: cancel.set()  # noqa: E731
    with pytest.raises(Cancelled):
        tiny_engine.generate(GenerationRequest("s", width=64, height=64, steps=3, seamless="xy"),
                             progress=cancel_at_first_step, cancel=cancel)
    convs = [m for m in tiny_engine._base.vae.modules() if isinstance(m, torch.nn.Conv2d)]
    assert not any("_conv_forward" in vars(c) for c in convs)


def test_depth_job_wraps_the_controlnet_too(tiny_engine, gradient):
    # A depth job must tile as well: the ControlNet's convolutions are wrapped during the job.
    seen = {}
    controlnet = tiny_engine._depth_controlnet()
    conv = next(m for m in controlnet.modules() if isinstance(m, torch.nn.Conv2d) and m.padding != (0, 0))

    def spy(progress):
        seen["patched"] = "_conv_forward" in vars(conv)

    tiny_engine.generate(GenerationRequest("s", width=64, height=64, steps=2, depths=(gradient,), seamless="xy"),
                         progress=spy)
    assert seen["patched"] and "_conv_forward" not in vars(conv)
