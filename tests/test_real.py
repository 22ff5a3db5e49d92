"""Checks that need a GPU or real weights: skipped here, never the only test of a feature."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import pixels

from backend.engine import GenerationRequest, create_engine


@pytest.mark.gpu
def test_cuda_half_precision_matches_cpu_noise():
    engine = create_engine("testing/tiny-sd", device="cuda")
    assert engine.info()["dtype"] == "float16"
    req = GenerationRequest("x", width=64, height=64, steps=3, seed=3)
    a, b = engine.generate(req)[0].image, engine.generate(req)[0].image
    assert np.array_equal(pixels(a), pixels(b))


@pytest.mark.weights
def test_default_model_paints_a_picture():
    engine = create_engine()
    (result,) = engine.generate(GenerationRequest("a red apple on a white table", width=512, height=512, steps=20,
                                                  seed=1))
    rgb = pixels(result.image)
    assert rgb.std() > 20
    # an apple on white: the centre is redder than the border
    centre, border = rgb[192:320, 192:320], np.concatenate([rgb[:32].reshape(-1, 3), rgb[-32:].reshape(-1, 3)])
    assert (centre[..., 0] - centre[..., 1]).mean() > (border[:, 0] - border[:, 1]).mean()
